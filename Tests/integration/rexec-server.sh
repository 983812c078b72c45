#!/usr/bin/env bash
# rexec_server as an operator meets it: authentication (key on TCP, SO_PEERCRED on unix), the whitelist
# and its reload, load (200 clients at once), peers that stall or send garbage, a restart while programs
# run, and the original C client on the unix socket. Regressions of the original: clients hanging under
# load, one stalled client freezing the server, no authentication, silent exit 0 on exec failure.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command python3
require_command socat
rexec_lab_up
ORIGINAL="python3 $ROOT/Tests/integration/helpers/original-rexec-client.py /run/rexec/rexec_uds.sock"

# Authentication.
out=$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/no-such-key" /bin/true 2>&1); status=$?
expect_eq "a client without the key is refused" 255 "$status"
expect_match "and told why" "^rexec: $REXEC_URL: .*requires a key" "$out"
expect_eq "(in one line)" 1 "$(echo "$out" | wc -l)"
"$DPUCTL" key generate "$W/other-key" >/dev/null
out=$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/other-key" /bin/true 2>&1); status=$?
expect_eq "a client with another key is refused" 255 "$status"
expect_match "and told why" "key differs" "$out"
expect_eq "(in one line)" 1 "$(echo "$out" | wc -l)"
lab_host chmod 666 /run/rexec/rexec_uds.sock  # past the file mode, to the SO_PEERCRED check
out=$(lab_host runuser -u nobody -- env CMD_NET_ADDR=unix:///run/rexec/rexec_uds.sock "$DPUCTL" rexec /bin/true 2>&1); status=$?
expect_eq "a non-root peer on the unix socket is refused (SO_PEERCRED)" 255 "$status"
expect_match "and told why" "refused: uid 65534 may not use unix:///run/rexec/rexec_uds.sock" "$out"
expect_eq "(in one line)" 1 "$(echo "$out" | wc -l)"
# socat waits up to 30 s for the peer after its own end of input: it ends sooner only if the server closes.
printf 'GET / HTTP/1.0\r\n\r\n' | lab_dpu timeout 5 socat -t 30 - TCP:$HOST_IP:$REXEC_PORT >/dev/null 2>&1; status=$?
expect_eq "garbage instead of a hello gets the connection closed at once" 0 "$status"
expect_match "and logged" "does not speak the rexec protocol \(first byte 0x47\)" "$(cat "$W/server.log")"
# A peer that offers no key is refused by the server itself, and its request never runs. (dpuctl's client
# gives up on its own once the server asks for a key, so the peer here plays what a keyless client sends
# first — its hello and EXEC in one write, captured on a listener of ours — to the server.)
timeout 10 socat -u UNIX-LISTEN:"$W/capture.sock" OPEN:"$W/keyless.bin",creat,trunc &
capture=$!
wait_for "test -S '$W/capture.sock'"
timeout 3 env CMD_NET_ADDR="unix://$W/capture.sock" "$DPUCTL" rexec --key "$W/no-such-key" /bin/sh -c "touch $W/pwned" \
    >/dev/null 2>&1
wait "$capture"
expect_match "(the captured request names its program)" "touch $W/pwned" "$(tr -c '[:print:]' ' ' <"$W/keyless.bin")"
(cat "$W/keyless.bin"; sleep 5) | lab_dpu timeout 10 socat -t 5 - TCP:$HOST_IP:$REXEC_PORT >/dev/null 2>&1; status=$?
expect_eq "a peer without the key that sends its request anyway is cut off at once" 0 "$status"
expect_match "and logged" "the client has no key; this server requires one" "$(cat "$W/server.log")"
expect_status "its program did not run" 1 test -e "$W/pwned"
out=$(lab_host "$W/bin/rexec_server" --listen tcp://$HOST_IP:7778 --key "$W/absent-key" --whitelist "$W/whitelist" --config "$W/none.conf" 2>&1); status=$?
expect_eq "a non-loopback listener without a key is refused at start" 1 "$status"
expect_match "saying what to do" "absent-key does not exist, and tcp://$HOST_IP:7778 is reachable from other machines: create a key .* or run with --insecure" "$out"
# With --insecure it does, and serves keyless clients there; READY=1 goes to NOTIFY_SOCKET once it listens.
socat -u UNIX-RECV:"$W/notify.sock" - >"$W/notify.log" 2>&1 &
notifier=$!
on_exit "kill $notifier 2>/dev/null"
wait_for "test -S '$W/notify.sock'"
lab_bg insecure host env NOTIFY_SOCKET="$W/notify.sock" "$W/bin/rexec_server" --listen tcp://$HOST_IP:7778 --insecure \
    --key "$W/absent-key" --whitelist "$W/whitelist" --config "$W/none.conf"
expect_status "--insecure: it starts without a key and tells the service manager READY=1" 0 \
    wait_for "grep -q READY=1 '$W/notify.log'" 10
expect_eq "and serves a client without a key" "open" \
    "$(lab_dpu env CMD_NET_ADDR=tcp://$HOST_IP:7778 rexec --key "$W/no-such-key" /bin/echo open)"
kill "$(descendant "$(lab_pid insecure)" rexec_server)"

# 200 clients at once: none hangs, every status is its own (the original lost some exit statuses).
lab_dpu bash -c "
    for i in \$(seq 1 200); do
        (timeout 60 env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c \"exit \$((i % 100))\"; echo \"\$i \$?\") &
    done >'$W/parallel'; wait"
expect_eq "200 parallel clients all finished" 200 "$(wc -l <"$W/parallel")"
expect_eq "each with its own exit status" 0 "$(awk '$2 != $1 % 100' "$W/parallel" | wc -l)"
# And 200 original C clients at once on the unix socket (the original's own clients hung under load).
lab_host bash -c "
    for i in \$(seq 1 200); do
        (timeout 60 $ORIGINAL /bin/sh -c \"exit \$((i % 100))\" >/dev/null 2>&1; echo \"\$i \$?\") &
    done >'$W/parallel-original'; wait"
expect_eq "200 parallel original clients all finished" 200 "$(wc -l <"$W/parallel-original")"
expect_eq "each with its own exit status" 0 "$(awk '$2 != $1 % 100' "$W/parallel-original" | wc -l)"

# Stalled and malformed peers lose their own connection and delay nobody.
lab_bg stall-tcp dpu sh -c "(printf 'DPUW\\000'; sleep 60) | socat - TCP:$HOST_IP:$REXEC_PORT"
lab_bg stall-unix host sh -c "(printf '\\132\\132\\000\\000\\002'; sleep 60) | socat - UNIX-CONNECT:/run/rexec/rexec_uds.sock"
expect_status "(the stalled TCP connection is open)" 0 \
    wait_for "[ \$(lab_host ss -Htn state established '( sport = :$REXEC_PORT )' | wc -l) -ge 1 ]"
expect_status "(and the stalled unix one)" 0 wait_for "[ \$(lab_host ss -Hx | grep -c ' /run/rexec/rexec_uds.sock ') -ge 1 ]"
# Well within the 10 s handshake limit: a server waiting behind the stalled peers would answer only then.
expect_eq "a client sending half a hello delays nobody" "fine" "$(lab_dpu timeout 4 env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/echo fine)"
expect_eq "nor does half an original header on the unix socket" "fine" "$(lab_host timeout 4 $ORIGINAL /bin/echo fine)"
expect_status "the stalled connections are dropped after the handshake limit: dpuctl's" 0 \
    wait_for "grep -q 'via $REXEC_URL: no request within' '$W/server.log'" 20
expect_status "and the original protocol's" 0 \
    wait_for "grep -q '(original protocol): no complete request within' '$W/server.log'" 20

# The original C client on the unix socket.
expect_eq "the original client runs a program" "hi" "$(lab_host $ORIGINAL /bin/echo hi)"
expect_eq "with its exit status" "exit 3" "$(status_of nsenter --target "$(_lab_init host)" --mount --net --pid -- $ORIGINAL /bin/sh -c 'exit 3')"
expect_eq "stdin and its end" "x" "$(echo x | lab_host $ORIGINAL /bin/cat)"
out=$(lab_host env REXEC_TEST_SHOW_PID=1 $ORIGINAL /bin/sh -c 'echo "shell $$"' 2>&1)
expect_match "PIDMAP names the program's pid" "^pid ([0-9]+) shell \1$" "$(echo $out)"
out=$(lab_host $ORIGINAL /nonexistent/program 2>&1); status=$?
expect_eq "an exec failure is 127, not the original's 0" 127 "$status"
expect_match "with a message on its stderr" "rexec_server: /nonexistent/program: not found on the server" "$out"
out=$(lab_host $ORIGINAL /bin/ls 2>&1); status=$?
expect_eq "a program outside the whitelist: the connection closes (status 1, as the original)" 1 "$status"
out=$(lab_host env REXEC_TEST_GATE=0 $ORIGINAL /bin/sh -c 'touch '"$W/gated" 2>&1); status=$?
expect_status "a start gate answered with 0 runs nothing" 1 test -e "$W/gated"
# An original client that disappears: its program's group gets SIGTERM, then SIGKILL after the grace (2 s
# here). The program outlives SIGTERM (it notes it and goes on), so only the SIGKILL ends it. (Its stdio
# are the client's own pipes in this protocol, gone with it: the shell's "Terminated" for its sleep would
# be a SIGPIPE, as it would be locally, so it writes elsewhere.)
lab_bg vanishing host sh -c "$ORIGINAL /bin/sh -c 'exec >/dev/null 2>&1; trap \"echo term >$W/legacy-term\" TERM
    echo \$\$ >$W/legacy.pid; while :; do sleep 1; done'"
wait_for "test -s '$W/legacy.pid'"
legacy=$(cat "$W/legacy.pid")
kill -KILL "$(descendant "$(lab_pid vanishing)" python3)"
expect_status "a vanished original client's program gets SIGTERM" 0 wait_for "test -s '$W/legacy-term'" 10
expect_status "then SIGKILL after the grace" 0 wait_for "! lab_host kill -0 $legacy" 10
expect_match "(logged)" "pid $legacy: its client .* went away; SIGTERM now, SIGKILL in 2" "$(cat "$W/server.log")"

# The whitelist: reloaded on SIGHUP without touching running programs; unsafe files refused.
lab_bg long dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c 'echo started; sleep 3; echo survived'
wait_for "grep -q started '$W/long.log'"
echo /usr/bin/id >>"$W/whitelist"
kill -HUP "$(server_pid)"
expect_status "SIGHUP reloads the whitelist (logged)" 0 \
    wait_for "grep -q 'allows $(wc -l <"$W/whitelist") programs' '$W/server.log'"
expect_eq "SIGHUP reloads the whitelist" "0" "$(rx /usr/bin/id -u)"
# Unsafe and without id: had it been loaded, id would be refused now.
sed -i '\|^/usr/bin/id$|d' "$W/whitelist"
chmod 666 "$W/whitelist"
kill -HUP "$(server_pid)"
expect_status "an unsafe whitelist is refused on reload (logged)" 0 \
    wait_for "grep -q 'reload failed, keeping the previous configuration: whitelist .* has mode 666' '$W/server.log'"
expect_eq "and the previous one stays" "0" "$(rx /usr/bin/id -u)"
chmod 644 "$W/whitelist"
wait_for "grep -q survived '$W/long.log'" 10
expect_eq "a running program is untouched by reloads" "started survived" "$(tr '\n' ' ' <"$W/long.log" | sed 's/ $//')"

# The key is reloaded on SIGHUP as well: new connections need the new key; a session opened with the old
# one goes on.
lab_bg keyed dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c 'echo started; sleep 2; echo survived'
wait_for "grep -q started '$W/keyed.log'"
cp -p "$W/key" "$W/old-key"
"$DPUCTL" key generate "$W/new-key" >/dev/null
reloads=$(grep -c 'whitelist: ' "$W/server.log")
cat "$W/new-key" >"$W/key"
kill -HUP "$(server_pid)"
expect_status "SIGHUP reloads the key (logged)" 0 wait_for "[ \$(grep -c 'whitelist: ' '$W/server.log') -gt $reloads ]"
out=$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/old-key" /bin/true 2>&1); status=$?
expect_eq "the old key is refused after the reload" 255 "$status"
expect_match "(the key differs)" "key differs" "$out"
expect_eq "the new one is accepted" "new" "$(rx /bin/echo new)"
wait_for "grep -q survived '$W/keyed.log'" 10
expect_eq "a session opened with the old key goes on" "started survived" "$(tr '\n' ' ' <"$W/keyed.log" | sed 's/ $//')"

# A restart while programs run: clients are told and exit 255; programs keep running (KillMode=process).
lab_bg running dpu sh -c 'env CMD_NET_ADDR="$1" rexec --key "$2" /bin/sh -c "echo \$\$ >$3; exec sleep 60"; echo "exit $?" >"$3.status"' \
    sh "$REXEC_URL" "$W/key" "$W/running.pid"
wait_for "test -s '$W/running.pid'"
running_client=$(descendant "$(lab_pid running)" rexec)
lab_bg original host sh -c "$ORIGINAL /bin/sh -c 'echo \$\$ >$W/original.pid; exec sleep 60'; echo \"exit \$?\" >$W/original.status"
wait_for "test -s '$W/original.pid'"
server=$(server_pid)
rexec_server_stop TERM
expect_status "the server stops on SIGTERM" 1 kill -0 "$server" 2>/dev/null
expect_status "its client exits" 0 wait_for "! kill -0 $running_client"
expect_status "with status 255" 0 wait_for "grep -qx 'exit 255' '$W/running.pid.status'"
expect_match "saying the program keeps running, and where" "rexec: the server at $REXEC_URL stopped \\(rexec_server is stopping; /bin/sh keeps running on the server as pid $(cat "$W/running.pid")\\)" "$(cat "$W/running.log")"
expect_status "the program still runs on the host" 0 lab_host kill -0 "$(cat "$W/running.pid")"
expect_status "the original client exits 255 too (KILL carries it)" 0 wait_for "grep -qx 'exit 255' '$W/original.status'"
expect_status "and its program still runs" 0 lab_host kill -0 "$(cat "$W/original.pid")"
lab_host kill "$(cat "$W/original.pid")"
rexec_server_start
expect_eq "a new server serves new clients" "back" "$(rx /bin/echo back)"
lab_host kill "$(cat "$W/running.pid")"

# Limits from the configuration. Sessions beyond max-sessions are refused with the reason; connections
# that stay silent hold at most max-pending places, and once they have had half the handshake limit
# (5 s) a new connection takes the oldest one's place rather than waiting behind them.
rexec_server_stop
printf '[rexec-server]\nmax-sessions = 2\nmax-pending = 2\nstop-policy = terminate\nallow-uid = 0\nallow-uid = 65534\n' \
    >"$W/limits.conf"
rexec_server_start --config "$W/limits.conf" --grace 30
lab_host chmod 666 /run/rexec/rexec_uds.sock
out=$(lab_host runuser -u nobody -- env CMD_NET_ADDR=unix:///run/rexec/rexec_uds.sock "$DPUCTL" rexec /bin/echo allowed 2>&1)
expect_eq "allow-uid lets another uid use the unix socket" "allowed" "$out"
for i in 1 2; do
    lab_bg sleeper$i dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c "echo \$\$ >$W/sleeper$i.pid; exec sleep 60"
done
wait_for "test -s '$W/sleeper1.pid' && test -s '$W/sleeper2.pid'"
out=$(rx /bin/true 2>&1); status=$?
expect_eq "a session beyond max-sessions is refused" 255 "$status"
expect_match "saying why" "refused: the server runs 2 sessions, its limit \(max-sessions\)" "$out"
lab_host kill "$(cat "$W/sleeper2.pid")"
wait_for "! kill -0 $(lab_pid sleeper2)"
for i in 1 2; do lab_bg silent$i dpu sh -c "sleep 30 | socat - TCP:$HOST_IP:$REXEC_PORT"; done
wait_for "[ \$(lab_host ss -Htn state established '( sport = :$REXEC_PORT )' | wc -l) -ge 3 ]"
sleep 6
expect_eq "silent connections beyond max-pending do not lock a client out" "through" \
    "$(lab_dpu timeout 3 env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/echo through)"
expect_match "the oldest is dropped, and that is logged" "dropped .*: still opening after [0-9]+ ms while 2 connections wait \(max-pending\)" \
    "$(cat "$W/server.log")"

# stop-policy = terminate: on SIGTERM the programs get SIGTERM too, and their clients say so. A program
# that ignores SIGTERM keeps the server in its grace period (30 s here); it accepts no one meanwhile.
lab_bg stubborn dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c \
    "trap '' TERM; echo \$\$ >$W/stubborn.pid; while :; do sleep 0.05; done"
wait_for "test -s '$W/stubborn.pid'"
sleeper=$(cat "$W/sleeper1.pid")
sleeper_client=$(descendant "$(lab_pid sleeper1)" rexec)
server=$(server_pid)
kill -TERM "$server"
expect_status "the program is terminated with the server" 0 wait_for "! lab_host kill -0 $sleeper"
expect_status "its client exits" 0 wait_for "! kill -0 $sleeper_client"
expect_match "saying the program is being terminated" \
    "rexec: the server at $REXEC_URL stopped \(rexec_server is stopping; /bin/sh \(pid $sleeper\) is being terminated\)" \
    "$(cat "$W/sleeper1.log")"
out=$(rx /bin/true 2>&1); status=$?
expect_eq "a stopping server accepts no new client" 255 "$status"
expect_match "(who is told it cannot connect)" "^rexec: cannot connect to $REXEC_URL" "$out"
expect_status "(while the server still waits for the program that ignores SIGTERM)" 0 kill -0 "$server"
lab_host kill -KILL "$(cat "$W/stubborn.pid")"
expect_status "and ends once it is gone" 0 wait_for "! kill -0 $server" 10
rexec_server_start

# Without a whitelist nothing runs, and the log says so.
rexec_server_stop
mv "$W/whitelist" "$W/whitelist.away"
rexec_server_start
expect_match "a missing whitelist is logged" "whitelist: .* does not exist: no program is allowed" "$(cat "$W/server.log")"
out=$(rx /bin/true 2>&1); status=$?
expect_eq "and nothing is allowed" 126 "$status"
expect_match "the client is told" "the server has no whitelist" "$out"
finish
