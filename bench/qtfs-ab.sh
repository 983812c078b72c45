#!/usr/bin/env bash
# Two builds of dpuctl side by side on qtfs's data path: each with its own engine and mount over TCP loopback
# with a key, fio's sequential and random reads (as in bench/qtfs.sh) in interleaved rounds, the order
# alternating and the caches dropped before each run, then the medians. For a change to the send or receive
# path, where one build against the other is the question and the machine's noise is the enemy.
#
#   bench/qtfs-ab.sh OLD_DPUCTL NEW_DPUCTL [ROUNDS]     (root; installs fio and jq; ROUNDS default 8)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ "$(id -u)" = 0 ] || { echo "bench/qtfs-ab.sh needs root (FUSE mounts, tmpfs, drop_caches)" >&2; exit 1; }
[ $# -ge 2 ] || { echo "usage: bench/qtfs-ab.sh OLD_DPUCTL NEW_DPUCTL [ROUNDS]" >&2; exit 2; }
need fio
need jq
old=$(readlink -f "$1") new=$(readlink -f "$2") rounds=${3:-8}
for bin in "$old" "$new"; do [ -x "$bin" ] || { echo "bench/qtfs-ab.sh: $bin is not an executable" >&2; exit 2; }; done

B=$(mktemp -d /tmp/qtfs-ab.XXXXXX)
pids=()
cleanup() {
    set +e
    for mnt in "$B/old" "$B/new"; do mountpoint -q "$mnt" && umount "$mnt"; done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    sleep 0.5
    mountpoint -q "$B/data" && umount "$B/data"
    rm -rf "$B"
}
trap cleanup EXIT
mkdir -p "$B/data" "$B/old" "$B/new"
mount -t tmpfs -o size=2g tmpfs "$B/data"
fio --name=prepare --filename="$B/data/read.dat" --rw=write --bs=1M --size=1G --output=/dev/null
"$new" key generate "$B/key" >/dev/null
for kind in Mount Open Read; do printf '[%s]\nPath=%s\n' "$kind" "$B/data"; done >"$B/whitelist"
for side in old new; do
    qtfs_engine_up "${!side}" "$B/whitelist" "$B/key" "$B/$side.engine.log"
    qtfs_mount_up "${!side}" "$qtfs_port" "$B/key" "$B/data" "$B/$side" "$B/$side.mount.log"
done

for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for side in $order; do
        sync
        echo 3 >/proc/sys/vm/drop_caches
        fio --name=seqread --output-format=json --filename="$B/$side/read.dat" --rw=read --bs=128k --size=1G |
            jq '.jobs[0].read.bw_bytes / 1048576 | floor' >>"$B/$side.seqread"
        fio --name=randread --output-format=json --filename="$B/$side/read.dat" --rw=randread --bs=4k --size=1G \
            --direct=1 --runtime=4 --time_based | jq '.jobs[0].read.iops | floor' >>"$B/$side.randread"
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "bench/qtfs-ab.sh, $(date -u +%F), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), median of $rounds interleaved rounds"
echo "old: $old"
echo "new: $new"
echo
echo "| median | old | new | new / old |"
echo "|---|---|---|---|"
for test in seqread randread; do
    o=$(median <"$B/old.$test") n=$(median <"$B/new.$test")
    case $test in seqread) label="sequential read, 128 KiB (MiB/s)" ;; randread) label="random read, 4 KiB, O_DIRECT (IOPS)" ;; esac
    echo "| $label | $o | $n | $(awk -v a="$n" -v b="$o" 'BEGIN { printf "%.2f×", a / b }') |"
done
echo
echo "each run, old: $(tr '\n' ' ' <"$B/old.seqread")MiB/s; new: $(tr '\n' ' ' <"$B/new.seqread")MiB/s"
