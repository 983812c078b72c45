# The two-machine lab (DESIGN.md, Testing): "host" and "dpu" on one kernel.
#
# Each machine is a network namespace (veth pair, 198.51.100.1 = host, 198.51.100.2 = dpu; no other
# addresses) plus its own mount and pid namespaces, rooted at a small init process that reaps orphans.
# Killing that init ends every process of the machine and releases its mounts; lab_down does it, and
# common.sh runs lab_down on every exit path.
#
#   lab_up                     build both machines (skips the test without root)
#   lab_host CMD...            run CMD on the host (foreground)
#   lab_dpu CMD...             run CMD on the DPU
#   lab_bg NAME MACHINE CMD... start a background process; lab_pid NAME gives its pid as seen from here
#   lab_stop NAME [SIGNAL]     signal it (default TERM) and wait for it
#   lab_tmpfs MACHINE PATH     a private tmpfs at PATH on that machine only
#   lab_down                   tear everything down (automatic on exit)

_LAB_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOST_IP=198.51.100.1
DPU_IP=198.51.100.2

lab_up() {
    require_root
    require_command ip
    require_command nsenter
    require_command unshare
    [ -x /usr/bin/python3 ] || skip "needs /usr/bin/python3 for the lab's init (make deps installs it)"
    # Short, unique names: interface names are limited to 15 characters.
    LAB_ID="dl$$"
    LAB_DIR="$W/lab"
    mkdir -p "$LAB_DIR/pids"
    on_exit lab_down
    ip netns add "${LAB_ID}h" && ip netns add "${LAB_ID}d" || { echo "lab: cannot create network namespaces" >&2; exit 1; }
    ip link add "${LAB_ID}a" type veth peer name "${LAB_ID}b"
    ip link set "${LAB_ID}a" netns "${LAB_ID}h"
    ip link set "${LAB_ID}b" netns "${LAB_ID}d"
    ip -n "${LAB_ID}h" addr add "$HOST_IP/24" dev "${LAB_ID}a"
    ip -n "${LAB_ID}d" addr add "$DPU_IP/24" dev "${LAB_ID}b"
    for side in h d; do
        ip -n "${LAB_ID}$side" link set lo up
    done
    ip -n "${LAB_ID}h" link set "${LAB_ID}a" up
    ip -n "${LAB_ID}d" link set "${LAB_ID}b" up
    _lab_start_init host "${LAB_ID}h"
    _lab_start_init dpu "${LAB_ID}d"
}

# The machine's init: pid 1 of a new pid namespace with its own mount namespace, /proc and /run (so the
# daemons' default sockets and pid files, /run/qtfs/remote_uds.sock, /run/rexec/..., are the machine's
# own and two labs never meet there). It reaps the orphans re-parented to it and notes in
# $LAB_DIR/<machine>.deaths each that died of a signal or failed (lab-init.py): a failed test prints
# them. Its pid here goes to $LAB_DIR/<machine>.init.
_lab_start_init() {
    local machine=$1 netns=$2
    ip netns exec "$netns" unshare --pid --mount --fork --mount-proc --propagation private \
        bash -c 'mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && mkdir -m 1777 /run/lock || exit 1
            exec /usr/bin/python3 "$0" "$1"' "$_LAB_LIB/lab-init.py" "$LAB_DIR/$machine.deaths" \
        </dev/null >/dev/null 2>&1 &
    local unshare_pid=$!
    echo "$unshare_pid" >"$LAB_DIR/$machine.unshare"
    local init="" i
    for ((i = 0; i < 100; i++)); do
        init=$(pgrep -P "$unshare_pid" | head -1)
        [ -n "$init" ] && break
        sleep 0.02
    done
    [ -n "$init" ] || { echo "lab: the $machine init did not start" >&2; exit 1; }
    echo "$init" >"$LAB_DIR/$machine.init"
}

_lab_init() { cat "$LAB_DIR/$1.init"; }

# Runs a command inside a machine: its network, mount and pid namespaces, same working directory.
lab_run() {
    local machine=$1
    shift
    nsenter --target "$(_lab_init "$machine")" --mount --net --pid --wd="$PWD" -- "$@"
}
lab_host() { lab_run host "$@"; }
lab_dpu() { lab_run dpu "$@"; }

# lab_bg NAME MACHINE CMD...: start CMD in the background (output to $W/NAME.log). lab_pid gives the
# command's own pid (as seen from here), not nsenter's, so that lab_stop signals the command itself.
lab_bg() {
    local name=$1 machine=$2 target
    shift 2
    # The machine's init is looked up here, not in the background job: a command substitution there
    # is a child of that job too, and pgrep below could take it for the command (it did, in CI).
    target=$(_lab_init "$machine")
    nsenter --target "$target" --mount --net --pid --wd="$PWD" -- "$@" >"$W/$name.log" 2>&1 &
    local nsenter_pid=$! pid="" i
    disown "$nsenter_pid"  # its end (at lab_down) is expected: no job-control notice
    # With --pid, nsenter forks: the command is its only child. A loaded machine may take a while.
    for ((i = 0; i < 1000; i++)); do
        pid=$(pgrep -P "$nsenter_pid" | head -1)
        [ -n "$pid" ] && break
        kill -0 "$nsenter_pid" 2>/dev/null || break
        sleep 0.01
    done
    if [ -z "$pid" ] && kill -0 "$nsenter_pid" 2>/dev/null; then
        echo "lab_bg $name: nsenter $nsenter_pid has no child after 10 s; lab_stop will signal nsenter" >&2
    fi
    echo "${pid:-$nsenter_pid}" >"$LAB_DIR/pids/$name"
    echo "$nsenter_pid" >"$LAB_DIR/pids/$name.nsenter"
}
lab_pid() { cat "$LAB_DIR/pids/$1"; }

# lab_stop NAME [SIGNAL]: signal a background process and wait up to 10 s for it to go.
lab_stop() {
    local name=$1 signal=${2:-TERM} pid
    pid=$(lab_pid "$name")
    kill -s "$signal" "$pid" 2>/dev/null
    wait_for "! kill -0 $pid" 10
}

# lab_tmpfs MACHINE PATH: mount a tmpfs on PATH (created if missing) in that machine only.
lab_tmpfs() {
    lab_run "$1" sh -c 'mkdir -p "$1" && mount -t tmpfs -o mode=0755 tmpfs "$1"' sh "$2"
}

lab_down() {
    [ -n "${LAB_DIR:-}" ] || return 0
    local machine init
    for machine in dpu host; do
        [ -f "$LAB_DIR/$machine.init" ] || continue
        init=$(cat "$LAB_DIR/$machine.init")
        # SIGKILL to a pid namespace's init kills every process in it; FUSE mounts in its mount
        # namespace go with it.
        kill -KILL "$init" 2>/dev/null
        wait_for "! kill -0 $init" 10
        rm -f "$LAB_DIR/$machine.init"
    done
    ip netns del "${LAB_ID}h" 2>/dev/null
    ip netns del "${LAB_ID}d" 2>/dev/null
    LAB_DIR=""
}
