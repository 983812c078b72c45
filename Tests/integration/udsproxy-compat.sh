#!/usr/bin/env bash
# What the original's clients see: its libudsproxy.so and the qtfs kernel hook send the 112-byte request
# to /var/run/qtfs/remote_uds.sock and connect to `<path>.proxy`. udsproxyd serves that too, without the
# original's races: simultaneous requests for one path queue, only the requesting process may connect to
# its `.proxy` socket, and the file is gone afterwards. Also: what libudsproxy.so itself exports.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/udsproxy.sh"

udsproxy_lab
printf '[udsproxy]\nallow = /srv/remote\n' >"$W/udsproxy.conf"
lab_bg server host "$PYTHON" "$TOOL_SCRIPT" serve /srv/remote/tool.sock
udsproxy_start host-proxy host --listen "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/udsproxy.conf"
udsproxy_start dpu-proxy dpu --peer "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/udsproxy.conf"
udsproxy_linked dpu-proxy || exit 1
wait_for "lab_host test -S /srv/remote/tool.sock"
legacy() { lab_dpu "$PYTHON" "$TOOL_SCRIPT" "$@"; }

expect_eq "the thread that connects is named udsproxyd (the qtfs kernel hook lets it through)" "udsproxyd" \
    "$(cat /proc/"$(lab_pid host-proxy)"/task/*/comm | grep -x udsproxyd)"
expect_eq "the original's request, then <path>.proxy" "legacy-echo" "$(legacy legacy /srv/remote/tool.sock legacy-echo)"
lab_bg greeter host "$PYTHON" "$TOOL_SCRIPT" greet /srv/remote/greeter.sock hello-first
wait_for "lab_host test -S /srv/remote/greeter.sock"
expect_eq "a server that speaks first (QMP): its greeting waits for the client's .proxy connection" "hello-first then-echo" \
    "$(legacy legacy-greeted /srv/remote/greeter.sock then-echo)"
expect_eq "(and the link stays up)" "" "$(grep -i 'protocol error\|link .*lost\|before it was open' "$W/dpu-proxy.log")"
expect_eq "16 simultaneous requests for one path all succeed" "16 of 16 ok" "$(legacy legacy-many /srv/remote/tool.sock 16)"
expect_eq "only the requesting process may use its .proxy socket" "intruder refused; requester got requester" \
    "$(legacy legacy-hijack /srv/remote/tool.sock)"
expect_match "and the intruder is logged" "connected to /srv/remote/tool.sock.proxy, which waits for pid [0-9]+; refused" "$(cat "$W/dpu-proxy.log")"
expect_eq "a path outside the whitelist is refused" "refused" "$(legacy legacy /srv/elsewhere/x.sock x)"
expect_eq "no .proxy file is left behind" "" "$(lab_dpu ls /srv/remote)"
printf '[udsproxy]\nallow = /srv/remote\nlegacy-clients = no\n' >"$W/udsproxy.conf"
kill -HUP "$(lab_pid dpu-proxy)"
wait_for "grep -q 'reloaded configuration' '$W/dpu-proxy.log'"
expect_eq "legacy-clients = no turns them away" "refused" "$(legacy legacy /srv/remote/tool.sock x)"
expect_eq "while libudsproxy.so still works" "current" "$(tool echo /srv/remote/tool.sock current)"
# The longest path a unix socket may have (107 bytes): its request is 115 bytes, longer than the original's.
long=/srv/remote/$(printf 'x%.0s' $(seq 95))
lab_bg long-server host "$PYTHON" "$TOOL_SCRIPT" serve "$long"
wait_for "lab_host test -S '$long'"
expect_eq "a socket path of 107 bytes" "longest" "$(tool echo "$long" longest)"

# Only the users in allow-users are served (SO_PEERCRED); the others keep their own errno.
as_nobody() { lab_dpu setpriv --reuid=65534 --regid=65534 --clear-groups env LD_PRELOAD="$PRELOAD" "$PYTHON" "$TOOL_SCRIPT" "$@"; }
expect_eq "a user not in allow-users gets its own errno" "ENOENT" "$(as_nobody errno /srv/remote/tool.sock)"
expect_match "and the refusal is logged" "refusing pid [0-9]+ \(uid 65534\) a connection to /srv/remote/tool.sock: uid 65534 is not in allow-users" \
    "$(cat "$W/dpu-proxy.log")"
printf '[udsproxy]\nallow = /srv/remote\nallow-users = root nobody\n' >"$W/udsproxy.conf"
kill -HUP "$(lab_pid dpu-proxy)"
wait_for "[ \$(grep -c 'reloaded configuration' '$W/dpu-proxy.log') = 2 ]"
expect_eq "once allowed (allow-users = root nobody, SIGHUP), it is served" "as-nobody" "$(as_nobody echo /srv/remote/tool.sock as-nobody)"

# The preload library: one symbol, no dependency but libc (unless this is SwiftPM's development build,
# which links the Swift runtime: `make build` links the one that is installed).
case $PRELOAD in
*/.build/debug/* | */debug/libudsproxy.so) echo "  (skipping the export checks for the development build $PRELOAD)" ;;
*)
    expect_eq "libudsproxy.so exports only connect" "connect" "$(nm -D --defined-only "$PRELOAD" | awk '$2 == "T" { print $3 }')"
    expect_eq "and needs only libc" "libc.so.6" "$(readelf -d "$PRELOAD" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
    ;;
esac
expect_eq "programs that never connect to a missing socket are untouched" "hello" "$(LD_PRELOAD="$PRELOAD" sh -c 'echo hello')"
finish
