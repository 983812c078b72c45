#!/usr/bin/env bash
# Start-up time of the dpuctl binary (the rexec client pays it on every remote exec) against the floor.
#   bench/startup.sh [DPUCTL]        installs hyperfine and jq if missing
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need hyperfine
need jq
bin=$(readlink -f "${1:-.build/release/dpuctl}")
[ -x "$bin" ] || make build
links=$(mktemp -d)
trap 'rm -rf "$links"' EXIT
ln -s "$bin" "$links/rexec"
hyperfine -N --warmup 50 --runs 1000 --export-json "$links/startup.json" \
    -n '/bin/true' '/bin/true' \
    -n 'dpuctl --version' "$bin --version" \
    -n 'rexec --help' "$links/rexec --help" >/dev/null
echo "bench/startup.sh, $(date -u +%Y-%m-%d), $(nproc) cores, hyperfine -N, 1000 runs each"
echo
median_table "$links/startup.json" '/bin/true'
