#!/usr/bin/env bash
# udsproxyd and its peer: READY=1 only with the link up, STATUS= while the peer is away, reconnection
# after a peer restart, peers without the key (or with another key, or not speaking the protocol)
# refused, and a clean stop that tells the peer.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/udsproxy.sh"

udsproxy_lab
printf '[udsproxy]\nallow = /srv/remote\n' >"$W/udsproxy.conf"
lab_bg server host "$PYTHON" "$TOOL_SCRIPT" serve /srv/remote/tool.sock
"$PYTHON" "$TOOL_SCRIPT" notify-listen "$W/notify.sock" >"$W/notify.log" 2>&1 &
notify_pid=$!
on_exit "kill $notify_pid"
wait_for "test -S '$W/notify.sock'"

host_proxy() {
    udsproxy_start host-proxy host --listen "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/udsproxy.conf"
}

# The DPU's udsproxyd starts before the host's: it is not ready, and says why.
# (Under sh, to see its exit status at the end.)
lab_bg dpu-proxy dpu sh -c 'NOTIFY_SOCKET="$1" "$2" udsproxy --peer "$3" --key "$4" --config "$5"; echo "exit status $?"' sh \
    "$W/notify.sock" "$DPUCTL" "tcp://$HOST_IP:7001" "$W/key" "$W/udsproxy.conf"
wait_for "grep -q 'cannot reach the peer' '$W/dpu-proxy.log'"
sleep 1
expect_eq "no READY=1 without the peer" "" "$(grep READY=1 "$W/notify.log")"
expect_match "STATUS= says the peer is unreachable and when the next attempt is" \
    "STATUS=peer tcp://$HOST_IP:7001 unreachable \(connect.*Connection refused\), attempt [0-9]+ in [0-9.]+ s" \
    "$(grep STATUS= "$W/notify.log" | tail -1)"
expect_match "and logs it once" "cannot reach the peer tcp://$HOST_IP:7001: .*retrying with backoff" "$(cat "$W/dpu-proxy.log")"
expect_eq "a connect meanwhile gets the caller's own errno" "ENOENT" "$(tool errno /srv/remote/tool.sock)"

host_proxy
wait_for "grep -q READY=1 '$W/notify.log'" 15
expect_match "READY=1 once the link is up" "READY=1 \| STATUS=linked to tcp://$HOST_IP:7001; 0 connections" "$(grep READY=1 "$W/notify.log")"
expect_eq "and connections go through" "after-start" "$(tool echo /srv/remote/tool.sock after-start)"

# The host's udsproxyd restarts: the DPU says so, and reconnects.
lab_stop host-proxy
wait_for "grep -q 'link to the peer tcp://$HOST_IP:7001 closed' '$W/dpu-proxy.log'"
expect_match "a peer that stops tells why" "the peer tcp://$HOST_IP:7001 is going away: udsproxyd is stopping" "$(cat "$W/dpu-proxy.log")"
wait_for "tail -1 '$W/notify.log' | grep -q unreachable"
expect_match "STATUS= follows" "STATUS=peer tcp://$HOST_IP:7001 unreachable" "$(tail -1 "$W/notify.log")"
expect_eq "meanwhile the caller's own errno again" "ENOENT" "$(tool errno /srv/remote/tool.sock)"
host_proxy
wait_for "[ \$(grep -c 'connected to the peer' '$W/dpu-proxy.log') = 2 ]" 15
expect_eq "the DPU reconnected by itself" "2" "$(grep -c 'connected to the peer' "$W/dpu-proxy.log")"
expect_match "STATUS= says so" "STATUS=linked to tcp://$HOST_IP:7001" "$(tail -1 "$W/notify.log")"
expect_eq "connections go through again" "after-restart" "$(tool echo /srv/remote/tool.sock after-restart)"
expect_eq "READY=1 was said once" "1" "$(grep -c READY=1 "$W/notify.log")"

# Peers that cannot prove the key are refused; the real link is not disturbed.
"$DPUCTL" key generate "$W/other-key" >/dev/null
printf '[udsproxy]\ncontrol = /run/qtfs/intruder.sock\n' >"$W/intruder.conf"
udsproxy_start keyless dpu --peer "tcp://$HOST_IP:7001" --key "$W/no-such-key" --insecure --config "$W/intruder.conf"
wait_for "grep -q 'the client has no key' '$W/host-proxy.log'"
expect_match "a peer without a key is refused" "refused the peer connection $DPU_IP:[0-9]+: .*the client has no key; this server requires one" \
    "$(cat "$W/host-proxy.log")"
expect_match "and is told why" "the server requires a key" "$(cat "$W/keyless.log")"
lab_stop keyless
udsproxy_start wrong-key dpu --peer "tcp://$HOST_IP:7001" --key "$W/other-key" --config "$W/intruder.conf"
wait_for "grep -q \"the server's key differs\" '$W/wrong-key.log'"
expect_match "a peer with another key gives up on our proof" "the server's key differs from ours" "$(cat "$W/wrong-key.log")"
wait_for "grep -q 'ended in the handshake' '$W/host-proxy.log'"
expect_match "and the host notes it" "the peer connection $DPU_IP:[0-9]+ ended in the handshake" "$(cat "$W/host-proxy.log")"
lab_stop wrong-key
echo "GET / HTTP/1.0" | lab_dpu socat -t 1 - "TCP:$HOST_IP:7001" >/dev/null 2>&1
wait_for "grep -q 'does not speak the dpuctl protocol' '$W/host-proxy.log'"
expect_match "something that is not udsproxyd is refused" "refused the peer connection $DPU_IP:[0-9]+: .*does not speak the dpuctl protocol" \
    "$(cat "$W/host-proxy.log")"
expect_eq "the authenticated link still works" "still-linked" "$(tool echo /srv/remote/tool.sock still-linked)"

# Hosts without the key cannot take every handshake place from the peer: at most 4 from one address.
lab_dpu ip addr add 198.51.100.3/24 dev "${LAB_ID}b"
lab_bg squatter dpu "$PYTHON" -c 'import socket, sys, time
held = [socket.create_connection((sys.argv[1], 7001), source_address=("198.51.100.3", 0)) for _ in range(16)]
print("holding", flush=True)
time.sleep(30)' "$HOST_IP"
wait_for "grep -q holding '$W/squatter.log'"
udsproxy_start second dpu --peer "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/intruder.conf"
expect_status "a peer with the key still gets in at once" 0 wait_for "grep -q 'connected to the peer' '$W/second.log'" 3
expect_match "the others from that address are refused" \
    "refusing a connection from 198.51.100.3:[0-9]+: 4 handshakes from 198.51.100.3 already" "$(cat "$W/host-proxy.log")"
lab_stop second
lab_stop squatter

# A clean stop: the control socket goes, the exit status is 0.
kill -TERM "$(pgrep -P "$(lab_pid dpu-proxy)")"
wait_for "grep -q 'exit status' '$W/dpu-proxy.log'"
expect_eq "SIGTERM ends udsproxyd with status 0" "exit status 0" "$(grep 'exit status' "$W/dpu-proxy.log")"
expect_match "saying it stops" "stopping: no new connections" "$(cat "$W/dpu-proxy.log")"
expect_match "and STOPPING=1" "STOPPING=1" "$(cat "$W/notify.log")"
expect_eq "the control socket is removed" "absent" "$(lab_dpu sh -c 'test -e /run/qtfs/remote_uds.sock && echo present || echo absent')"
finish
