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

# pool_rounds OUT IN...: one hyperfine JSON from several runs of the same command list (rounds taken
# in turn, so a burst of the machine's other load falls on every command alike): each command's times
# pooled, median, min and max over all of them.
pool_rounds() {
    local out=$1
    shift
    jq -s '{results: (map(.results) | transpose | map(
        {command: .[0].command, times: (map(.times) | add | sort)}
        | .median = (.times | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end)
        | .min = .times[0] | .max = .times[-1]))}' "$@" >"$out"
}

# round_ratios JSON... COMMAND BASELINE: the ratio of COMMAND's median to BASELINE's in each round, as
# "lowest-highest" (how much the rounds agree).
round_ratios() {
    local base=${*: -1} command=${*: -2:1}
    local files=("${@:1:$#-2}")
    jq -rs --arg c "$command" --arg b "$base" '
        map((.results | map(select(.command == $c)) | first | .median) / (.results | map(select(.command == $b)) | first | .median))
        | "\(min * 100 | round / 100)-\(max * 100 | round / 100)×"' "${files[@]}"
}

# A free TCP port on loopback (in the current network namespace).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 30000))
        ss -Hltn "sport = :$port" | grep -q . || { echo "$port"; return; }
    done
}

# qtfs_engine_up DPUCTL WHITELIST KEY LOG: an engine on a free loopback port (in $qtfs_port) with the key,
# waited for until it listens; its pid joins the caller's `pids`.
qtfs_engine_up() {
    local bin=$1 whitelist=$2 key=$3 log=$4
    qtfs_port=$(free_port)
    "$bin" qtfs-engine --listen "tcp://127.0.0.1:$qtfs_port" --whitelist "$whitelist" --key "$key" 2>"$log" &
    pids+=($!)
    for _ in $(seq 50); do ss -Hltn "sport = :$qtfs_port" | grep -q . && break; sleep 0.1; done
}

# qtfs_mount_up DPUCTL PORT KEY SOURCE MOUNTPOINT LOG [OPTIONS]: mount.qtfs against that engine; the pid of
# the detached client joins `pids`.
qtfs_mount_up() {
    local bin=$1 port=$2 key=$3 source=$4 mountpoint=$5 log=$6 options=${7:+,$7}
    "$bin" qtfs mount -o "server=tcp://127.0.0.1:$port,key=$key$options" "$source" "$mountpoint" 2>>"$log"
    pids+=($(pgrep -f "qtfs mount --foreground.* $mountpoint\$"))
}
