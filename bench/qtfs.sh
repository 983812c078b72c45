#!/usr/bin/env bash
# qtfs against its floor and its peer, side by side in one run on this machine: the local directory,
# sshfs through an sshd on loopback started here, and qtfs (engine and mount.qtfs) over TCP loopback.
# The data lives on a tmpfs, so the disk is out of the picture and what is measured is the file system.
#
#   bench/qtfs.sh [DPUCTL]     (root: mounts, sshd; installs fio, sshfs, openssh-server, hyperfine, jq)
#   RUNS=3 (fio runs per test, the median is shown)  HYPERFINE_RUNS=5  WALKS_ONLY=1 (no fio)
#   SETTLE=0.5 (seconds between the cache drop and each walk)
#
# fio: sequential read and write of 1 GiB in 128 KiB blocks (buffered: what a program sees), random 4 KiB
# reads with O_DIRECT (each one crosses the file system: the page cache would hide the transport).
# Metadata over 10,000 files in 100 directories, kernel caches dropped before each run: find, ls -lR,
# and reading every file (tar cf - . | wc -c).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ "$(id -u)" = 0 ] || { echo "bench/qtfs.sh needs root (FUSE mounts, an sshd)" >&2; exit 1; }
need fio
need sshfs
need sshd openssh-server
need hyperfine
need jq
bin=$(readlink -f "${1:-.build/release/dpuctl}")
[ -x "$bin" ] || make build
RUNS=${RUNS:-3}
HYPERFINE_RUNS=${HYPERFINE_RUNS:-5}

B=$(mktemp -d /tmp/qtfs-bench.XXXXXX)
pids=()
cleanup() {
    set +e
    for mnt in "$B/qtfs" "$B/qtfs-noxattr" "$B/sshfs"; do mountpoint -q "$mnt" && umount "$mnt"; done
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    sleep 0.5
    mountpoint -q "$B/data" && umount "$B/data"
    rm -rf "$B"
}
trap cleanup EXIT
mkdir -p "$B/data" "$B/qtfs" "$B/qtfs-noxattr" "$B/sshfs" "$B/ssh" "$B/out"
mount -t tmpfs -o size=3g tmpfs "$B/data"

# The data: one 1 GiB file to read, a tree of 10,000 files of 1 KiB in 100 directories.
fio --name=prepare --filename="$B/data/read.dat" --rw=write --bs=1M --size=1G --output=/dev/null
for d in $(seq -w 0 99); do
    mkdir -p "$B/data/tree/d$d"
    head -c $((100 * 1024)) /dev/urandom | split -b 1024 -a 2 -d - "$B/data/tree/d$d/f"
done

# sshd on loopback, root by key, and sshfs with its defaults.
ssh-keygen -q -t ed25519 -N '' -f "$B/ssh/host"
ssh-keygen -q -t ed25519 -N '' -f "$B/ssh/id"
cp "$B/ssh/id.pub" "$B/ssh/authorized_keys"
ssh_port=$(free_port)
cat >"$B/ssh/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $B/ssh/host
AuthorizedKeysFile $B/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
PidFile $B/ssh/sshd.pid
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -D -f "$B/ssh/sshd_config" -E "$B/ssh/sshd.log" &
pids+=($!)
sleep 0.5
sshfs -p "$ssh_port" -o "IdentityFile=$B/ssh/id,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null" \
    "root@127.0.0.1:$B/data" "$B/sshfs"

# qtfs: the engine exports the data directory over TCP loopback with a key; mount.qtfs with its defaults.
"$bin" key generate "$B/key" >/dev/null
for kind in Mount Open Read Write Readdir Mkdir Rmdir Create Unlink Rename Setattr Setxattr; do
    printf '[%s]\nPath=%s\n' "$kind" "$B/data"
done >"$B/whitelist"
qtfs_engine_up "$bin" "$B/whitelist" "$B/key" "$B/engine.log"
qtfs_mount_up "$bin" "$qtfs_port" "$B/key" "$B/data" "$B/qtfs" "$B/mount.log"
# The same without extended attributes, for the metadata walks: sshfs has none, and `ls -l` asks every
# file for two of them.
qtfs_mount_up "$bin" "$qtfs_port" "$B/key" "$B/data" "$B/qtfs-noxattr" "$B/mount.log" noxattr

targets=(local sshfs qtfs)
dir_of() { case $1 in local) echo "$B/data" ;; *) echo "$B/$1" ;; esac; }

# fio: the median of $RUNS runs of each test, per target.
fio_run() {  # fio_run TARGET NAME ARGS... -> prints MiB/s or IOPS of one run
    local target=$1 name=$2
    shift 2
    local json
    json=$(fio --name="$name" --output-format=json "$@")
    case $name in
    randread) echo "$json" | jq '.jobs[0].read.iops | floor' ;;
    seqread) echo "$json" | jq '.jobs[0].read.bw_bytes / 1048576 | floor' ;;
    seqwrite) echo "$json" | jq '.jobs[0].write.bw_bytes / 1048576 | floor' ;;
    esac
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A result
fio_targets=("${targets[@]}")
[ "${WALKS_ONLY:-0}" = 1 ] && fio_targets=()
for target in "${fio_targets[@]}"; do
    dir=$(dir_of "$target")
    for run in $(seq "$RUNS"); do
        fio_run "$target" seqread --filename="$dir/read.dat" --rw=read --bs=128k --size=1G >>"$B/out/$target.seqread"
        fio_run "$target" seqwrite --filename="$dir/write.dat" --rw=write --bs=128k --size=1G --end_fsync=1 >>"$B/out/$target.seqwrite"
        rm -f "$dir/write.dat"
        fio_run "$target" randread --filename="$dir/read.dat" --rw=randread --bs=4k --size=1G --direct=1 \
            --runtime=5 --time_based >>"$B/out/$target.randread"
    done
    for test in seqread seqwrite randread; do result[$target.$test]=$(median <"$B/out/$target.$test"); done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "-" }'; }
echo "bench/qtfs.sh, $(date -u +%Y-%m-%d), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), median of $RUNS fio runs"
echo
if [ ${#fio_targets[@]} -gt 0 ]; then
    echo "| fio | local | sshfs | qtfs | qtfs / sshfs | qtfs / local |"
    echo "|---|---|---|---|---|---|"
    for test in seqread seqwrite randread; do
        case $test in
        seqread) label="sequential read, 128 KiB (MiB/s)" ;;
        seqwrite) label="sequential write, 128 KiB (MiB/s)" ;;
        randread) label="random read, 4 KiB, O_DIRECT (IOPS)" ;;
        esac
        echo "| $label | ${result[local.$test]} | ${result[sshfs.$test]} | ${result[qtfs.$test]} | $(ratio "${result[qtfs.$test]}" "${result[sshfs.$test]}") | $(ratio "${result[qtfs.$test]}" "${result[local.$test]}") |"
    done
    echo
fi

# Metadata: hyperfine, caches dropped before every run (sshfs keeps its own cache of what it saw), then
# half a second for the FUSE servers to take the kernel's FORGETs of every dropped inode (thousands, for
# a few tens of ms of CPU): the walk is measured, not the aftermath of the drop, for every target alike.
# Each walk must give the same output everywhere first: a fast wrong answer is not a result.
check() {  # check WALK: qtfs's output equals the local directory's (sshfs shows other directory sizes)
    local walk=$1 target want got
    for target in local qtfs qtfs-noxattr; do
        local dir
        dir=$(dir_of "$target")/tree
        case $walk in
        find) got=$(cd "$dir" && find . | sort | md5sum) ;;
        "ls -lR") got=$(cd "$dir" && ls -lR . | md5sum) ;;
        tar) got=$(tar cf - -C "$dir" . | wc -c) ;;
        esac
        [ "$target" = local ] && want=$got
        if [ "$got" != "$want" ]; then
            echo "$walk on $target differs from the local directory's; logs:" >&2
            cat "$B/engine.log" "$B/mount.log" >&2
            exit 1
        fi
    done
}
for walk in find "ls -lR" tar; do
    check "$walk"
    commands=()
    for target in "${targets[@]}" qtfs-noxattr; do
        dir=$(dir_of "$target")/tree
        case $walk in
        find) commands+=(-n "find $target" "find $dir | wc -l") ;;
        "ls -lR") commands+=(-n "ls -lR $target" "ls -lR $dir | wc -l") ;;
        tar) commands+=(-n "tar $target" "tar cf - -C $dir . | wc -c") ;;
        esac
    done
    hyperfine --runs "$HYPERFINE_RUNS" --warmup 1 --prepare "sync; echo 3 > /proc/sys/vm/drop_caches; sleep ${SETTLE:-0.5}" \
        --export-json "$B/out/${walk// /}.json" "${commands[@]}" >/dev/null
    check "$walk"
    median_table "$B/out/${walk// /}.json" "$walk sshfs"
    echo
done
