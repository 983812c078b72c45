#!/usr/bin/env bash
# udsproxyd as operators run it: the original's command line and whitelist file, one-line errors, socket
# activation, SIGHUP reloading the whitelist without dropping a connection, stray signals, and the
# systemd unit.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/udsproxy.sh"

make_links
require_command systemd-analyze
require_command systemd-socket-activate

# The unit as `make install` writes it.
sed "s|@bindir@|$W/bin|g" "$ROOT/systemd/udsproxyd.service.in" >"$W/udsproxyd.service"
out=$(systemd-analyze verify --man=no "$W/udsproxyd.service" 2>&1)
expect_eq "systemd-analyze verify accepts udsproxyd.service" "0 " "$? $out"

udsproxy_lab
: >"$W/empty.conf"
cat >"$W/qtfs-whitelist" <<'EOF'
[Open]
Path=/var/lib/libvirt
[Udsconnect]
Path=/srv/remote;/srv/spare
EOF
lab_bg host-server host "$PYTHON" "$TOOL_SCRIPT" serve /srv/remote/tool.sock
lab_bg dpu-server dpu "$PYTHON" "$TOOL_SCRIPT" serve /srv/remote/dpu.sock

# The original's command line, mirrored on the two machines: each dials the other.
lab_bg old-host host udsproxyd --key "$W/key" --config "$W/empty.conf" --whitelist "$W/qtfs-whitelist" 1 "$HOST_IP" 7101 "$DPU_IP" 7101
lab_bg old-dpu dpu udsproxyd --key "$W/key" --config "$W/empty.conf" --whitelist "$W/qtfs-whitelist" 1 "$DPU_IP" 7101 "$HOST_IP" 7101
wait_for "grep -q 'connected to the peer' '$W/old-host.log' && grep -q 'connected to the peer' '$W/old-dpu.log'" 15
expect_match "udsproxyd 1 ADDR PORT PEER PORT listens and dials" "connected to the peer tcp://$DPU_IP:7101" "$(cat "$W/old-host.log")"
expect_match "its whitelist is the original file's [Udsconnect]" "whitelist \($W/qtfs-whitelist \[Udsconnect\]\): /srv/remote /srv/spare" \
    "$(cat "$W/old-host.log")"
expect_eq "the DPU reaches the host's socket" "dpu-to-host" "$(tool echo /srv/remote/tool.sock dpu-to-host)"
expect_eq "and the host the DPU's" "host-to-dpu" \
    "$(lab_host env LD_PRELOAD="$PRELOAD" "$PYTHON" "$TOOL_SCRIPT" echo /srv/remote/dpu.sock host-to-dpu)"
lab_stop old-host
lab_stop old-dpu

# One-line errors, with the status that says which kind.
out=$(udsproxyd --key "$W/no-key" --config "$W/empty.conf" 1 "$HOST_IP" 7102 "$DPU_IP" 7102 2>&1); status=$?
expect_eq "no key for a network peer: status 1" "1" "$status"
expect_match "saying what to do" "^udsproxyd: key file $W/no-key does not exist, and tcp://$HOST_IP:7102 is reachable from other machines: create a key with \`dpuctl key generate\`" "$out"
expect_eq "in one line" "1" "$(printf '%s\n' "$out" | wc -l)"
out=$(udsproxyd 1 2 3 2>&1); status=$?
expect_eq "a wrong number of positional arguments is a usage error" "64" "$status"
expect_match "naming the original's form" "THREADS ADDR PORT PEER_ADDR PEER_PORT" "$out"
out=$(udsproxyd 1 not-an-address 7000 "$DPU_IP" 7000 2>&1)
expect_match "a bad address is named" "local address \`not-an-address\` must be an IPv4 address \(TCP\) or a vsock CID" "$out"
out=$(udsproxyd --config "$W/empty.conf" 2>&1); status=$?
expect_eq "nothing to talk to: status 1" "1" "$status"
expect_match "saying how to name the peer" "no peer to talk to: give --peer URL and/or --listen URL" "$out"
printf '[udsproxy]\npeer = tcp://%s:7000\nlisten-on = x\n' "$HOST_IP" >"$W/bad.conf"
out=$(udsproxyd --config "$W/bad.conf" 2>&1)
expect_match "a configuration error names file and line" "^udsproxyd: $W/bad.conf:3: unknown key \`listen-on\` in \[udsproxy\]" "$out"

# Socket activation on the host: the control socket and the peer listener come from systemd. The host
# dials nothing; its own connections use the link the DPU dialed.
printf '[udsproxy]\nallow = /srv/remote\n' >"$W/udsproxy.conf"
lab_bg activated host systemd-socket-activate -l /run/qtfs/remote_uds.sock -l "$HOST_IP:7201" \
    "$DPUCTL" udsproxy --key "$W/key" --config "$W/udsproxy.conf"
wait_for "grep -q 'listening for the peer on $HOST_IP:7201' '$W/activated.log'"
udsproxy_start dpu-proxy dpu --peer "tcp://$HOST_IP:7201" --key "$W/key" --config "$W/udsproxy.conf"
udsproxy_linked dpu-proxy || exit 1
expect_match "socket-activated listeners are used" "the peer connected from $DPU_IP" "$(cat "$W/activated.log")"
expect_eq "connections from the DPU go through" "activated" "$(tool echo /srv/remote/tool.sock activated)"
expect_eq "and from the host, over the link the DPU dialed" "reverse" \
    "$(lab_host env LD_PRELOAD="$PRELOAD" "$PYTHON" "$TOOL_SCRIPT" echo /srv/remote/dpu.sock reverse)"

# SIGHUP: a new whitelist for new connections; the open ones keep going.
lab_bg holder dpu env LD_PRELOAD="$PRELOAD" "$PYTHON" "$TOOL_SCRIPT" stall /srv/remote/tool.sock $((1 << 20)) "$W/resume"
wait_for "grep -q stalling '$W/holder.log'"
printf '[udsproxy]\nallow = /srv/spare\n' >"$W/udsproxy.conf"
kill -HUP "$(lab_pid activated)"
wait_for "grep -q 'reloaded configuration' '$W/activated.log'"
expect_match "SIGHUP reloads the whitelist" "whitelist \($W/udsproxy.conf \[udsproxy\]\): /srv/spare" "$(cat "$W/activated.log")"
expect_eq "a path no longer allowed is refused" "ENOENT" "$(tool errno /srv/remote/tool.sock)"
touch "$W/resume"
wait_for "grep -q resumed '$W/holder.log'"
expect_eq "a connection open across the reload keeps its data" "resumed: all 1048576 bytes back" "$(grep resumed "$W/holder.log")"
printf '[udsproxy]\nallow = /srv/remote\n' >"$W/udsproxy.conf"
kill -HUP "$(lab_pid activated)"
wait_for "[ \$(grep -c 'reloaded configuration' '$W/activated.log') = 2 ]"
expect_eq "allowed again after the next reload" "allowed-again" "$(tool echo /srv/remote/tool.sock allowed-again)"
printf '[udsproxy\n' >"$W/udsproxy.conf"
kill -HUP "$(lab_pid activated)"
wait_for "grep -q 'reload failed' '$W/activated.log'"
expect_match "a broken configuration is refused on reload" "reload failed, keeping the previous configuration: $W/udsproxy.conf:1: expected \`\]\`" \
    "$(cat "$W/activated.log")"
expect_eq "and the previous one stays" "still-allowed" "$(tool echo /srv/remote/tool.sock still-allowed)"

# Stray signals during a transfer: both daemons carry on, the bytes arrive intact.
tool duplex /srv/remote/tool.sock $((256 << 20)) >"$W/duplex.out" 2>&1 &
transfer=$!
sleep 0.3
for signal in PIPE CHLD WINCH URG CONT HUP; do
    kill -s "$signal" "$(lab_pid activated)" "$(lab_pid dpu-proxy)"
    sleep 0.05
done
wait "$transfer"
expect_eq "stray signals do not disturb a transfer" "ok 268435456 bytes each way, checksums match" "$(cat "$W/duplex.out")"
expect_status "the host's udsproxyd is still there" 0 kill -0 "$(lab_pid activated)"
expect_status "the DPU's too" 0 kill -0 "$(lab_pid dpu-proxy)"
finish
