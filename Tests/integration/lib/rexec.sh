# The rexec lab: rexec_server on the host, clients on the DPU, as in the offload. Source after common.sh
# and lab.sh.
#
#   rexec_lab_up [SERVER ARGS...]   lab, key, whitelist, private /run/rexec on both machines, the server
#   rexec_setup [SERVER ARGS...]    the same in a lab that is up already (qtfs_lab_up's: $W/key is kept)
#   rexec_server_start [ARGS...]    (re)start the server as background process "server"
#   rexec_server_stop [SIGNAL]      stop it (TERM) and wait until it is gone
#   server_pid                      the server's pid
#   rx ARGS...                      rexec on the DPU over TCP with the key (like libvirt's wrapper would)
#   rx_unix ARGS...                 rexec on the host over the unix socket
#   status_of CMD...                "exit N" or "signal NAME": how CMD ended, as its parent sees it
#   rx_status ARGS...               the same for rexec ARGS on the DPU
#   descendant PID COMM             PID itself if named COMM, else the first process named COMM below it

REXEC_PORT=7777
REXEC_URL="tcp://$HOST_IP:$REXEC_PORT"
# Programs the tests run, as they spell them (the whitelist matches exactly).
REXEC_WHITELIST=(/bin/sh /bin/echo /bin/cat /usr/bin/env /bin/pwd /usr/bin/yes /bin/true /bin/false /bin/sleep
    /usr/bin/python3 /usr/bin/tty /bin/stty /usr/bin/head /nonexistent/program sh)

rexec_lab_up() {
    lab_up
    make_links
    rexec_setup "$@"
}

rexec_setup() {
    [ -e "$W/key" ] || "$DPUCTL" key generate "$W/key" >/dev/null || { echo "key generate failed" >&2; exit 1; }
    printf '%s\n' "${REXEC_WHITELIST[@]}" "$W/not-executable" >"$W/whitelist"
    chmod 644 "$W/whitelist"
    printf '#!/bin/sh\necho never\n' >"$W/not-executable"
    chmod 644 "$W/not-executable"
    : >"$W/none.conf"
    lab_tmpfs host /run/rexec
    lab_tmpfs dpu /run/rexec
    rexec_server_start "$@"
}

rexec_server_start() {
    lab_bg server host rexec_server --listen "$REXEC_URL" --listen unix:///run/rexec/rexec_uds.sock \
        --key "$W/key" --whitelist "$W/whitelist" --config "$W/none.conf" --grace 2 "$@"
    wait_for "grep -q 'ready:' '$W/server.log'" 10 || { cat "$W/server.log"; echo "rexec_server did not start" >&2; exit 1; }
}

server_pid() { descendant "$(lab_pid server)" rexec_server; }

rexec_server_stop() {
    local pid
    pid=$(server_pid) || return 0
    kill -s "${1:-TERM}" "$pid"
    wait_for "! kill -0 $pid" 30
}

rx() { lab_dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" "$@"; }
rx_unix() { lab_host env CMD_NET_ADDR=unix:///run/rexec/rexec_uds.sock rexec "$@"; }

rx_status() {
    status_of nsenter --target "$(_lab_init dpu)" --mount --net --pid --wd="$PWD" -- \
        env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" "$@"
}

status_of() {
    python3 -c '
import signal, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("signal " + signal.Signals(-code).name if code < 0 else "exit %d" % code)' "$@"
}

descendant() {
    local child
    if [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; then echo "$1"; return 0; fi
    for child in $(pgrep -P "$1"); do
        if [ "$(cat "/proc/$child/comm" 2>/dev/null)" = "$2" ]; then echo "$child"; return 0; fi
        descendant "$child" "$2" && return 0
    done
    return 1
}
