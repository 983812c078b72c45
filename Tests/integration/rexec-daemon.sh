#!/usr/bin/env bash
# A program that daemonizes (libvirt's capability probe runs `qemu -daemonize -pidfile FILE`, then reads
# FILE and later kill(pid, SIGKILL)s it on the DPU): with --daemon-pidfile the client exits 0 as the
# program did, leaving a stand-in on the DPU whose pid replaces the host pid in FILE; signals to the
# stand-in reach the daemon; the stand-in's death (even SIGKILL) ends the daemon on the host; the
# daemon's own end ends the stand-in. A pid file the server must not follow is said on stderr.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command python3
QEMU=/usr/bin/qemu-system-x86_64
REXEC_WHITELIST+=("$QEMU")
rexec_lab_up

# The program: like QEMU, a double fork whose daemon has no stdio of ours, the pid file written before
# the program exits 0. $W is the same directory on both machines (qtfs in the offload).
DAEMONIZE='(exec sleep 300 </dev/null >/dev/null 2>&1 & echo $! >"$0"); exit 0'

# daemonize PIDFILE [PROGRAM SCRIPT]: runs rexec on the DPU as libvirt's virCommandRun would (stdout and
# stderr read to end of file); prints how it ended, then its stderr.
daemonize() {
    local pidfile=$1 script=${2:-$DAEMONIZE}
    nsenter --target "$(_lab_init dpu)" --mount --net --pid --wd="$PWD" -- python3 -c '
import signal, subprocess, sys
try:
    run = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
except subprocess.TimeoutExpired:
    print("hung"); sys.exit()
print("signal " + signal.Signals(-run.returncode).name if run.returncode < 0 else "exit %d" % run.returncode)
sys.stdout.write(run.stderr.decode())' \
        env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" --daemon-pidfile "$pidfile" /bin/sh -c "$script" "$pidfile"
}
alive_on() { lab_run "$1" sh -c 'test -e "/proc/$0" && ! grep -q "^State:.*Z" "/proc/$0/status"' "$2"; }

# 1. The stand-in.
expect_eq "the client exits 0 as the daemonizing program did, leaving stdout and stderr" "exit 0" "$(daemonize "$W/d1.pid")"
standin=$(cat "$W/d1.pid")
expect_match "the pid file holds a pid" '^[0-9]+$' "$standin"
expect_status "that pid is alive on the DPU" 0 alive_on dpu "$standin"
expect_eq "and it is a rexec stand-in" "rexec" "$(lab_dpu cat "/proc/$standin/comm")"
daemon=$(lab_dpu cat "/run/rexec/pids/$standin")
expect_match "/var/run/rexec/pids/<stand-in> holds the daemon's pid" '^[0-9]+$' "$daemon"
expect_eq "which is the daemon on the host" "sleep" "$(lab_host cat "/proc/$daemon/comm")"
lab_dpu kill -TERM "$standin"
wait_for "! alive_on host $daemon" 10
expect_status "SIGTERM to the stand-in ends the daemon on the host" 1 alive_on host "$daemon"
wait_for "! alive_on dpu $standin" 10
expect_status "and the stand-in then ends" 1 alive_on dpu "$standin"
expect_status "removing its /var/run/rexec/pids entry" 1 lab_dpu test -e "/run/rexec/pids/$standin"

# 2. The stand-in SIGKILLed (what libvirt does to the probe's pid): the server ends the daemon.
expect_eq "a second daemonizing run exits 0" "exit 0" "$(daemonize "$W/d2.pid")"
standin=$(cat "$W/d2.pid")
daemon=$(lab_dpu cat "/run/rexec/pids/$standin")
expect_status "its daemon runs on the host" 0 alive_on host "$daemon"
lab_dpu kill -KILL "$standin"
wait_for "! alive_on host $daemon" 10
expect_status "SIGKILL to the stand-in ends the daemon on the host within seconds" 1 alive_on host "$daemon"
expect_match "the server says why" "stand-in .* went away; SIGTERM" "$(grep "pid $daemon:" "$W/server.log")"

# 3. The daemon ends by itself: so does the stand-in.
expect_eq "a daemon that ends by itself" "exit 0" "$(daemonize "$W/d3.pid")"
standin=$(cat "$W/d3.pid")
daemon=$(lab_dpu cat "/run/rexec/pids/$standin")
lab_host kill -TERM "$daemon"
wait_for "! alive_on dpu $standin" 10
expect_status "ends its stand-in on the DPU" 1 alive_on dpu "$standin"
expect_status "which removes its /var/run/rexec/pids entry" 1 lab_dpu test -e "/run/rexec/pids/$standin"

# 4. What the server must not follow: said in one line, and the client ends as today.
echo 1 >"$W/init.pid"
out=$(daemonize "$W/init.pid" 'exit 0')
expect_eq "a pid file naming pid 1: exit 0" "exit 0" "$(head -1 <<<"$out")"
expect_match "and one line on stderr saying why" "^rexec: the daemon's pid file $W/init.pid names pid 1, which is not the program's daemon$" "$(tail -n +2 <<<"$out")"
expect_eq "the pid file is left as it was" "1" "$(cat "$W/init.pid")"
lab_bg older host sleep 300  # root's, and older than the program
wait_for "lab_host pgrep -x sleep >/dev/null" 10
lab_host pgrep -o -x sleep >"$W/old.pid"  # its pid as the host sees it
out=$(daemonize "$W/old.pid" 'exit 0')
expect_match "a pid file naming a process older than the program is refused" "which was not started by the program$" "$(tail -n +2 <<<"$out")"
lab_stop older
out=$(daemonize "$W/garbage.pid" 'echo "12x" >"$0"; exit 0')
expect_match "garbage in the pid file is refused without echoing it" "does not hold a pid$" "$(tail -n +2 <<<"$out")"
out=$(daemonize "$W/missing.pid" 'exit 0')
expect_match "a missing pid file is said" "^rexec: the server cannot read the daemon's pid file $W/missing.pid \(No such file or directory\)$" "$(tail -n +2 <<<"$out")"
expect_eq "a program that fails is reported as today" "exit 3" "$(daemonize "$W/fail.pid" 'exit 3')"

# 5. The real thing, when QEMU is installed (make e2e installs it): libvirt's capability probe's options.
if [ -x "$QEMU" ]; then
    out=$(nsenter --target "$(_lab_init dpu)" --mount --net --pid --wd="$PWD" -- timeout 30 \
        env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" --daemon-pidfile "$W/qmp.pid" "$QEMU" -S -no-user-config \
        -nodefaults -display none -machine none,accel=tcg -qmp "unix:$W/qmp.monitor,server=on,wait=off" \
        -pidfile "$W/qmp.pid" -daemonize </dev/null 2>&1; echo "exit $?")
    expect_eq "QEMU -daemonize -pidfile through rexec exits 0" "exit 0" "$out"
    standin=$(cat "$W/qmp.pid")
    expect_eq "its pid file names the stand-in on the DPU" "rexec" "$(lab_dpu cat "/proc/$standin/comm")"
    qemu=$(lab_dpu cat "/run/rexec/pids/$standin")
    expect_match "whose pids entry is QEMU on the host" '^qemu-system' "$(lab_host cat "/proc/$qemu/comm")"
    expect_match "QEMU answers on its QMP socket" '"QMP"' "$(timeout 5 python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(s.recv(4096).decode())' "$W/qmp.monitor")"
    lab_dpu kill -KILL "$standin"  # what libvirt does when the probe is done
    wait_for "! alive_on host $qemu" 10
    expect_status "SIGKILL to the stand-in ends QEMU on the host" 1 alive_on host "$qemu"
else
    echo "  (QEMU not installed: the check with the real emulator is left out)"
fi

expect_eq "no daemon is left running on the host" "" "$(lab_host pgrep -f '^sleep 300$' || true)"
finish
