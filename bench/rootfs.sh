#!/usr/bin/env bash
# `dpuctl rootfs prepare --from host` against the tools an operator would use instead, on this machine's
# real /usr, /bin, /sbin, /lib, /lib64: a first copy (cp -a and rsync -aHAX keep what the guide's cp -r
# loses) and a second run over a complete copy (only checking; dpuctl and rsync change nothing).
#   bench/rootfs.sh [DPUCTL]     installs hyperfine, jq and rsync if missing; needs root and ~2x /usr free
#   RUNS=N (default 3)           runs of each command
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need hyperfine
need jq
need rsync
bin=$(readlink -f "${1:-.build/release/dpuctl}")
[ -x "$bin" ] || make build
runs=${RUNS:-3}
work=$(mktemp -d /var/tmp/dpuctl-bench-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
t=$work/target
trees=$(for d in usr bin sbin lib lib64; do [ -e "/$d" ] && printf '/%s ' "$d"; done)

hyperfine --runs "$runs" --export-json "$work/first.json" --prepare "rm -rf $t && mkdir -p $t" \
    -n 'dpuctl rootfs prepare (first)' "$bin rootfs prepare --root $t --force" \
    -n 'cp -a' "cp -a $trees $t/" \
    -n 'rsync -aHAX' "rsync -aHAX $trees $t/" >/dev/null
rm -rf "$t"
"$bin" rootfs prepare --root "$t" >/dev/null
hyperfine --runs "$runs" --warmup 1 --export-json "$work/again.json" \
    -n 'dpuctl rootfs prepare (again)' "$bin rootfs prepare --root $t" \
    -n 'rsync -aHAX (again)' "rsync -aHAX $trees $t/" >/dev/null

size=$(du -sh --apparent-size /usr | cut -f1)
files=$(find /usr -xdev | wc -l)
echo "bench/rootfs.sh, $(date -u +%Y-%m-%d), $(nproc) cores, $runs runs each, /usr = $size in $files entries, target on $(findmnt -no FSTYPE -T "$work")"
echo
median_table "$work/first.json" 'cp -a'
echo
median_table "$work/again.json" 'rsync -aHAX (again)'
