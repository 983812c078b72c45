#!/usr/bin/env bash
# Regenerates scripts/hot-sections.txt: the code sections `rexec /bin/true` runs (over TCP with a key,
# the deployed path), in the order it first runs them. `make build` gives the list to the linker (gold's
# --section-ordering-file), which lays those functions out next to each other instead of across 16 MB of
# text: the client's start-up takes fewer page faults (bench/RESULTS.md, rexec). Stale names do no harm
# (the linker skips them; new code on the path is just not grouped): rerun after changing that path.
#   scripts/hot-sections.sh        (needs cc and python3; starts a rexec_server on loopback)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

W=$(mktemp -d /tmp/hot-sections.XXXXXX)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

# The map says which input section (function) each address belongs to; the link that writes it lays
# the code out as the current list says, which does not matter: sections are named, not placed.
make build LINK_MAP="$W/dpuctl.map" >/dev/null
bin=$(readlink -f .build/release/dpuctl)
cc -O2 -Wall -o "$W/first-calls" scripts/first-calls.c

ln -s "$bin" "$W/rexec"
ln -s "$bin" "$W/rexec_server"
"$bin" key generate "$W/key" >/dev/null
echo /bin/true >"$W/whitelist"
printf '[rexec-server]\nruntime-dir = %s/run\n' "$W" >"$W/dpuctl.conf"
port=$(free_port)
"$W/rexec_server" --listen "tcp://127.0.0.1:$port" --key "$W/key" --whitelist "$W/whitelist" \
    --config "$W/dpuctl.conf" >"$W/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    ss -Hltn "sport = :$port" | grep -q . && break
    sleep 0.05
done

python3 scripts/hot-sections.py starts "$W/dpuctl.map" >"$W/starts"
"$W/first-calls" "$W/starts" "$W/hits" "$W/rexec" --connect "tcp://127.0.0.1:$port" --key "$W/key" /bin/true \
    </dev/null || { echo "hot-sections.sh: the traced rexec failed" >&2; cat "$W/server.log" >&2; exit 1; }
python3 scripts/hot-sections.py order "$W/dpuctl.map" "$W/hits" >scripts/hot-sections.txt
echo "scripts/hot-sections.txt: $(wc -l <scripts/hot-sections.txt) sections"
