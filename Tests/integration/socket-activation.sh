#!/usr/bin/env bash
# rexec_server, the first real daemon, under socket activation: systemd-socket-activate binds a TCP and a
# unix socket and starts the server on the first connection; the server adopts both fds, serves that
# connection, and tells the service manager READY=1 (on our own NOTIFY_SOCKET) and STOPPING=1 on SIGTERM.
# The shipped units pass systemd-analyze verify with what we build.
. "$(dirname "$0")/lib/common.sh"
require_root
require_command systemd-socket-activate
require_command socat
make_links

port=$(free_port)
mkdir -p "$W/run"
printf '/bin/echo\n' >"$W/whitelist"
# Everything the server writes stays in the work directory.
printf '[rexec-server]\nruntime-dir = %s/run\n' "$W" >"$W/dpuctl.conf"

# Our own service manager's notification socket.
socat -u UNIX-RECV:"$W/notify.sock" - >"$W/notify.log" 2>&1 &
notifier=$!
on_exit "kill $notifier"
wait_for "test -S '$W/notify.sock'"

NOTIFY_SOCKET="$W/notify.sock" systemd-socket-activate -l "127.0.0.1:$port" -l "$W/rexec.sock" -E NOTIFY_SOCKET \
    rexec_server --whitelist "$W/whitelist" --config "$W/dpuctl.conf" --key "$W/no-key" >"$W/server.log" 2>&1 &
activator=$!
on_exit "kill $activator"
wait_for "ss -Hltn 'sport = :$port' | grep -q ."
expect_eq "the server is started by the first connection and serves it" "activated" \
    "$(CMD_NET_ADDR=tcp://127.0.0.1:$port rexec --key "$W/no-key" /bin/echo activated)"
wait_for "grep -q READY=1 '$W/notify.log'"
expect_match "it said READY=1 on the activator's NOTIFY_SOCKET" "READY=1" "$(cat "$W/notify.log")"
expect_match "with a STATUS= line" "STATUS=.*program" "$(cat "$W/notify.log")"
expect_match "it adopted the TCP socket" "listening on tcp://127.0.0.1:$port \\(socket activation\\)" "$(cat "$W/server.log")"
expect_match "and the unix socket" "listening on unix://$W/rexec.sock \\(socket activation\\)" "$(cat "$W/server.log")"
expect_eq "the activated unix socket serves too" "via unix" \
    "$(CMD_NET_ADDR=unix://$W/rexec.sock rexec /bin/echo via unix)"
server=$(pgrep -P "$activator" -x rexec_server || echo "$activator")
kill -TERM "$server"
wait_for "! kill -0 $server" 30
expect_match "SIGTERM: STOPPING=1" "STOPPING=1" "$(cat "$W/notify.log")"
expect_status "and the socket file activation made is left to its owner" 0 test -S "$W/rexec.sock"

# The units, with @bindir@ filled in as make install does.
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$W/units" "$W/usr/bin"
    ln -s "$DPUCTL" "$W/usr/bin/rexec_server"
    sed "s|@bindir@|$W/usr/bin|g" "$ROOT/systemd/rexec.service.in" >"$W/units/rexec.service"
    cp "$ROOT/systemd/rexec.socket" "$W/units/rexec.socket"
    out=$(cd "$W/units" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no ./rexec.socket ./rexec.service 2>&1)
    expect_eq "rexec.service and rexec.socket pass systemd-analyze verify" "" "$out"
    expect_match "the service is Type=notify" "^Type=notify$" "$(grep '^Type=' "$W/units/rexec.service")"
fi
finish
