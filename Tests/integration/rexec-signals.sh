#!/usr/bin/env bash
# Signals both ways: what the caller sends the stand-in reaches the remote program; what kills the
# remote program kills the stand-in the same way; a stop is a stop on both sides; a client that
# disappears leaves nothing running (SIGTERM, then SIGKILL after the grace period). The original forwarded
# nothing and SIGKILLed the remote program whenever the client died.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command python3
rexec_lab_up

# A remote program that reports which signal it got; its stand-in runs under a status reporter.
waiter() {  # waiter NAME SIGNAL: start rexec running a trap for SIGNAL, wait until the trap is set
    local name=$1 sig=$2
    lab_bg "$name" dpu python3 -c '
import signal, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("status", "signal " + signal.Signals(-code).name if code < 0 else "exit %d" % code)' \
        env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c \
        "trap 'echo got $sig; exit 7' $sig; echo ready; while :; do sleep 0.05; done"
    wait_for "grep -q ready '$W/$name.log'" 10 ||
        failed "$name: the remote program did not start within 10 s (log: [$(tr '\n' '|' <"$W/$name.log")])"
}
# The rexec client started as background process NAME. When it cannot be found, say what runs there
# instead (the flake this test once had left nothing to go on).
client_of() {
    local top
    top=$(lab_pid "$1")
    descendant "$top" rexec && return 0
    echo "  no rexec below $1 (pid $top): $(ps -o pid=,stat=,comm= --ppid "$top" -p "$top" | tr -s ' \n' ' ')" >&2
    return 1
}

for sig in TERM INT HUP QUIT USR1 USR2 WINCH ALRM; do
    waiter "w$sig" "$sig"
    kill -s "$sig" "$(client_of "w$sig")"
    wait_for "grep -q '^status' '$W/w$sig.log'" 10
    expect_eq "SIG$sig sent to rexec reaches the remote program" "got $sig|status exit 7" \
        "$(grep -v ready "$W/w$sig.log" | tr '\n' '|' | sed 's/|$//')"
done

# Untrapped: the remote program dies of it, and so does its stand-in.
lab_bg plain dpu python3 -c '
import signal, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("status", "signal " + signal.Signals(-code).name if code < 0 else "exit %d" % code)' \
    env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c 'echo ready; exec sleep 60'
wait_for "grep -q ready '$W/plain.log'" 10
wait_for "lab_host pgrep -x sleep"
kill -TERM "$(client_of plain)"
wait_for "grep -q '^status' '$W/plain.log'" 10
expect_eq "an untrapped SIGTERM kills the remote program and rexec dies of it" "status signal SIGTERM" "$(grep status "$W/plain.log")"

# The other way: the remote program killed on the host by SIGUSR1.
lab_bg remote dpu python3 -c '
import signal, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print("status", "signal " + signal.Signals(-code).name if code < 0 else "exit %d" % code)' \
    env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c 'echo $$ >'"$W/remote.pid"'; exec sleep 60'
wait_for "test -s '$W/remote.pid'"
lab_host kill -USR1 "$(cat "$W/remote.pid")"
wait_for "grep -q '^status' '$W/remote.log'" 10
expect_eq "a remote death by SIGUSR1 (sent on the host) is rexec's death by SIGUSR1" "status signal SIGUSR1" "$(grep status "$W/remote.log")"

# Stop and continue: the stand-in stops when the remote program stops (its parent sees it stopped).
rm -f "$W/remote.pid"
lab_bg stopper dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c \
    'echo $$ >'"$W/remote.pid"'; i=0; while [ $i -lt 40 ]; do i=$((i+1)); sleep 0.05; done; echo finished'
wait_for "test -s '$W/remote.pid'"
client=$(client_of stopper)
kill -TSTP "$client"
expect_status "SIGTSTP stops the remote program" 0 wait_for "[ \"\$(lab_host ps -o stat= -p $(cat "$W/remote.pid") | cut -c1)\" = T ]" 10
expect_status "and the stand-in" 0 wait_for "[ \"\$(ps -o stat= -p $client | cut -c1)\" = T ]" 10
kill -CONT "$client"
expect_status "SIGCONT continues both and the program finishes" 0 wait_for "grep -q finished '$W/stopper.log'" 20

# The client disappears: its program gets SIGTERM, and SIGKILL after the grace period if it ignores it.
# The whole process group: a child the program started in the background goes too.
# (The child notes its SIGTERM itself: a group SIGKILL alone, 2 s later, would end it too.)
rm -f "$W/remote.pid" "$W/termed" "$W/child.pid" "$W/child-termed"
lab_bg vanisher dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c \
    'echo $$ >'"$W/remote.pid"'; (trap "touch '"$W/child-termed"'; exit 0" TERM; while :; do sleep 0.05; done) &
    echo $! >'"$W/child.pid"'; trap "touch '"$W/termed"'" TERM; while :; do sleep 0.05; done'
wait_for "test -s '$W/remote.pid' && test -s '$W/child.pid'"
remote=$(cat "$W/remote.pid")
child=$(cat "$W/child.pid")
kill -KILL "$(client_of vanisher)"
expect_status "a client killed with SIGKILL: its program gets SIGTERM" 0 wait_for "test -e '$W/termed'" 10
expect_status "and so does its process group (a background child)" 0 wait_for "test -e '$W/child-termed'" 10
expect_status "(which then ends)" 0 wait_for "! lab_host kill -0 $child" 10
expect_status "and, ignoring it, SIGKILL after the grace period (2 s here)" 0 wait_for "! lab_host kill -0 $remote" 15
expect_match "the server says so" "pid $remote: its client .* went away; SIGTERM now, SIGKILL in 2" "$(cat "$W/server.log")"

# The network between the machines goes away: keep-alive notices (3 s here), and the program is ended.
rexec_server_stop
printf '[rexec-server]\nkeepalive = 3\n' >"$W/keepalive.conf"
rexec_server_start --config "$W/keepalive.conf"
rm -f "$W/remote.pid"
lab_bg cut dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c 'echo $$ >'"$W/remote.pid"'; exec sleep 120'
wait_for "test -s '$W/remote.pid'"
remote=$(cat "$W/remote.pid")
lab_dpu ip link set "${LAB_ID}b" down
expect_status "when the link dies, keep-alive ends the session and the program" 0 wait_for "! lab_host kill -0 $remote" 30
expect_match "the server says its client went away" "pid $remote: its client .* went away" "$(cat "$W/server.log")"
lab_dpu ip link set "${LAB_ID}b" up
finish
