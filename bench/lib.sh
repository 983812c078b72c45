# Helpers for bench/ scripts: install what a benchmark uses, and turn hyperfine's JSON into a markdown
# table of medians and ratios (the machines are noisy: medians and ratios, never a lone mean).

need() {  # need COMMAND [DEBIAN_PACKAGE]
    command -v "$1" >/dev/null 2>&1 && return 0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${2:-$1}" >/dev/null
}

# median_table JSON [BASELINE_NAME]: | command | median | ratio to baseline |, from hyperfine --export-json.
median_table() {
    local json=$1 baseline=${2:-}
    jq -r --arg base "$baseline" '
        (.results | map(select(.command == $base)) | first | .median) as $b |
        "| command | median | min | max | ratio to \(if $base == "" then "-" else $base end) |",
        "|---|---|---|---|---|",
        (.results[] | "| `\(.command)` | \(.median * 1000 | . * 100 | round / 100) ms | \(.min * 1000 | . * 100 | round / 100) ms | \(.max * 1000 | . * 100 | round / 100) ms | \(if $b then (.median / $b | . * 100 | round / 100 | tostring) + "×" else "-" end) |")
    ' "$json"
}

# A free TCP port on loopback (in the current network namespace).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }
    done
}
