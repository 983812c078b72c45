#!/usr/bin/env bash
# udsproxy relaying: servers on the host, clients on the DPU with LD_PRELOAD=libudsproxy.so, the two
# udsproxyd authenticated with a key. Echo (socat and Python), 1 GiB both ways, 64 simultaneous connects,
# a stalled connection beside a busy one, half-close, descriptors (file, pipes, a socket that cannot
# cross), non-blocking connects, the whitelist and the original errno.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/udsproxy.sh"

udsproxy_lab
cat >"$W/host.conf" <<EOF
[udsproxy]
allow = /srv/remote
allow = $W/shared
EOF
# The DPU lets its processes ask for anything under /srv: the host decides.
printf '[udsproxy]\nallow = /srv\nallow = %s\n' "$W/shared" >"$W/dpu.conf"

lab_host mkdir -p /srv/outside
lab_bg server host "$PYTHON" "$TOOL_SCRIPT" serve /srv/remote/tool.sock
lab_bg secret host "$PYTHON" "$TOOL_SCRIPT" serve /srv/outside/secret.sock
lab_bg socat-echo host socat UNIX-LISTEN:/srv/remote/socat.sock,fork EXEC:cat
lab_host ln -s /srv/outside/secret.sock /srv/remote/escape.sock
udsproxy_start host-proxy host --listen "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/host.conf"
udsproxy_start dpu-proxy dpu --peer "tcp://$HOST_IP:7001" --key "$W/key" --config "$W/dpu.conf"
wait_for "lab_host test -S /srv/remote/tool.sock && lab_host test -S /srv/outside/secret.sock && lab_host test -S /srv/remote/socat.sock"
udsproxy_linked dpu-proxy || exit 1
# How many descriptors a daemon holds; a pid with no process says so instead of counting 0.
open_fds() { local pid; pid=$(lab_pid "$1"); ls "/proc/$pid/fd" 2>/dev/null | wc -l | grep -v '^0$' || echo "no process $pid"; }
dpu_fds=$(open_fds dpu-proxy)
host_fds=$(open_fds host-proxy)
expect_match "both daemons' descriptors are counted" '^[0-9]+ [0-9]+$' "$dpu_fds $host_fds"
expect_eq "the server's socket is not on the DPU" "absent" "$(lab_dpu sh -c 'test -e /srv/remote/tool.sock && echo present || echo absent')"

# Echo, with socat as the client and with Python.
expect_eq "socat on the DPU talks to the host's socket" "hello from socat" \
    "$(echo "hello from socat" | proxied socat -t 2 - UNIX-CONNECT:/srv/remote/socat.sock)"
expect_eq "a Python client echoes" "hello-python" "$(tool echo /srv/remote/tool.sock hello-python)"
expect_eq "a relative path means the client's directory" "relative" \
    "$(lab_dpu sh -c "cd /srv/remote && LD_PRELOAD='$PRELOAD' '$PYTHON' '$TOOL_SCRIPT' echo tool.sock relative")"

expect_eq "1 GiB each way at once, checksums equal" "ok 1073741824 bytes each way, checksums match" \
    "$(tool duplex /srv/remote/tool.sock $((1 << 30)))"

expect_eq "64 simultaneous connects to one path all succeed" "64 of 64 ok" "$(tool many /srv/remote/tool.sock 64)"

# A connection whose client stops reading holds 64 MiB in flight; another one moves 256 MiB meanwhile.
lab_bg staller dpu env LD_PRELOAD="$PRELOAD" "$PYTHON" "$TOOL_SCRIPT" stall /srv/remote/tool.sock $((64 << 20)) "$W/resume"
wait_for "grep -q stalling '$W/staller.log'"
sleep 1
expect_eq "a busy connection runs beside a stalled one" "ok 268435456 bytes each way, checksums match" \
    "$(tool duplex /srv/remote/tool.sock $((256 << 20)))"
touch "$W/resume"
wait_for "grep -q resumed '$W/staller.log'" 60
expect_eq "the stalled connection gets all its data once it reads" "resumed: all 67108864 bytes back" "$(grep resumed "$W/staller.log")"

expect_eq "a reply after the client's shutdown(SHUT_WR) arrives" "ok" "$(tool halfclose /srv/remote/tool.sock)"

# Descriptors. A file both machines see at one path is reopened on the host with the same flags and
# offset; the server's append shows in the file.
printf 0123456789 >"$W/shared/data.txt"
expect_eq "a passed file is reopened with its flags and offset" "data=with-file fds=file(rw+append,offset=5,56789)" \
    "$(tool sendfile /srv/remote/tool.sock "$W/shared/data.txt" 5)"
expect_eq "and is the same file" "0123456789+server" "$(cat "$W/shared/data.txt")"
expect_eq "a file outside the host's whitelist is not reopened; the data still arrives" "data=with-file fds=none" \
    "$(tool sendfile /srv/remote/tool.sock /etc/hostname 0)"
expect_match "the host says why" "passed \`/etc/hostname\`, which is outside the whitelist" "$(cat "$W/host-proxy.log")"
expect_eq "pipes cross both ways" "data=with-pipes fds=pipe-write-end,pipe-read-end(to-server); our pipe got: from-server" \
    "$(tool sendpipe /srv/remote/tool.sock)"
expect_eq "a socket cannot cross; the data still arrives" "data=with-a-socket fds=none" "$(tool sendsocket /srv/remote/tool.sock)"
# Descriptors for a reader that does not read: at most 253 wait on the host, then that connection is
# reset (each one-byte message with a file would otherwise hold an open file there, without bound).
expect_eq "descriptors piling up for a stalled reader reset its connection" "reset" \
    "$(tool fdflood /srv/remote/tool.sock "$W/shared/data.txt" 20000)"
expect_match "(logged)" "more than 253 descriptors wait for its reader; resetting it" "$(cat "$W/host-proxy.log")"
expect_eq "and the link goes on" "after-flood" "$(tool echo /srv/remote/tool.sock after-flood)"
expect_match "the DPU says why" "not passing a descriptor to the peer: it is a socket" "$(cat "$W/dpu-proxy.log")"

# Non-blocking callers: EINPROGRESS, writable when connected, same fd number and flags.
expect_eq "a non-blocking connect" "connect=EINPROGRESS fd=3 nonblocking=True cloexec=True echo=nonblocking-echo" \
    "$(tool nonblock /srv/remote/tool.sock)"
expect_eq "a non-blocking connect the host cannot complete fails through SO_ERROR" "connect=EINPROGRESS so_error=ECONNRESET" \
    "$(tool nonblock-fail /srv/remote/missing.sock)"

# Refusals keep the caller's own errno.
expect_eq "a host path outside the whitelist: the original ENOENT" "ENOENT" "$(tool errno /srv/outside/secret.sock)"
expect_match "the host logs the refusal" "asked for /srv/outside/secret.sock, which is outside the whitelist" "$(cat "$W/host-proxy.log")"
expect_eq "a link out of the whitelist is followed before the check" "ENOENT" "$(tool errno /srv/remote/escape.sock)"
expect_eq "a path outside the DPU's own whitelist is not even asked for" "ENOENT" "$(tool errno /var/tmp/x.sock)"
expect_match "the DPU logs that" "refusing pid [0-9]+ \(uid 0\) a connection to /var/tmp/x.sock: outside the whitelist" "$(cat "$W/dpu-proxy.log")"
expect_eq "a missing socket on the host: ENOENT" "ENOENT" "$(tool errno /srv/remote/missing.sock)"
lab_dpu "$PYTHON" -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind("/srv/remote/stale.sock")'
expect_eq "a stale local socket: the original ECONNREFUSED, not ENOENT" "ECONNREFUSED" "$(tool errno /srv/remote/stale.sock)"
expect_eq "datagram sockets are left alone" "ENOENT" "$(tool errno /srv/remote/tool.sock dgram)"
expect_eq "nothing was created on the DPU" "stale.sock" "$(lab_dpu ls /srv/remote)"

# A client killed in the middle of a transfer: its connection ends on the host too.
lab_bg killed dpu env LD_PRELOAD="$PRELOAD" "$PYTHON" "$TOOL_SCRIPT" stall /srv/remote/tool.sock $((16 << 20)) "$W/never"
wait_for "grep -q stalling '$W/killed.log'"
lab_stop killed KILL

# Every connection was closed on both sides: the daemons hold the descriptors they started with.
wait_for "[ \"\$(open_fds dpu-proxy)\" = '$dpu_fds' ] && [ \"\$(open_fds host-proxy)\" = '$host_fds' ]" 10
expect_eq "the DPU's udsproxyd holds no descriptor of a finished connection" "$dpu_fds" "$(open_fds dpu-proxy)"
expect_eq "neither does the host's" "$host_fds" "$(open_fds host-proxy)"

lab_stop dpu-proxy
expect_eq "with udsproxyd stopped, the caller's own errno" "ENOENT" "$(tool errno /srv/remote/tool.sock)"
expect_eq "its control socket is gone" "absent" "$(lab_dpu sh -c 'test -e /run/qtfs/remote_uds.sock && echo present || echo absent')"
finish
