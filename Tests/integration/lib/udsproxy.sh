# The udsproxy lab: a real server on the host, clients on the DPU with libudsproxy.so preloaded.
# Source after common.sh and lab.sh.
#
#   udsproxy_lab                      the lab, private /run and /srv on both machines, a key ($W/key),
#                                     /srv/remote on both (the socket files exist only on the host),
#                                     $W/shared seen by both machines (as qtfs would show host files)
#   udsproxy_start NAME MACHINE ARGS  start `dpuctl udsproxy ARGS` (log $W/NAME.log)
#   udsproxy_linked NAME              wait until NAME's log says its link is up
#   proxied CMD...                    run CMD on the DPU with the preload library
#   tool MODE PATH ARGS...            the Python server/client (lib/udsproxy_tool.py), on the DPU, preloaded

PRELOAD=${UDSPROXY_PRELOAD:-$(dirname "$DPUCTL")/libudsproxy.so}
TOOL_SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/udsproxy_tool.py
PYTHON=/usr/bin/python3

udsproxy_lab() {
    [ -f "$PRELOAD" ] || { echo "no $PRELOAD: run make build" >&2; exit 1; }
    [ -x "$PYTHON" ] || skip "needs python3 (make deps installs it)"
    require_command socat
    lab_up
    local machine
    for machine in host dpu; do
        lab_tmpfs "$machine" /run
        lab_tmpfs "$machine" /srv
        lab_run "$machine" mkdir -p /srv/remote
    done
    mkdir -p "$W/shared"
    "$DPUCTL" key generate "$W/key" >/dev/null
}

udsproxy_start() {
    local name=$1 machine=$2
    shift 2
    lab_bg "$name" "$machine" "$DPUCTL" udsproxy "$@"
}

udsproxy_linked() {
    wait_for "grep -q -e 'connected to the peer' -e 'the peer connected from' '$W/$1.log'" 15 \
        || { echo "$1 has no link:"; cat "$W/$1.log"; return 1; }
}

proxied() { lab_dpu env LD_PRELOAD="$PRELOAD" "$@"; }
tool() { proxied "$PYTHON" "$TOOL_SCRIPT" "$@"; }
host_tool() { lab_host "$PYTHON" "$TOOL_SCRIPT" "$@"; }
