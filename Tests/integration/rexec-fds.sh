#!/usr/bin/env bash
# Inherited fds above 2 reach the remote program at the same numbers: files reopened by path with their
# flags and offset, pipes streamed in their direction, connected sockets streamed both ways, listening
# sockets carried connection by connection (libvirt's QEMU monitor), one stream for fds that share an
# object (stdout and stderr in order); a start that fails leaves the caller's pipes as it found them. The
# original carried regular files only (its pipe inheritance was disabled: remote read(3) gave EBADF).
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command python3
rexec_lab_up

# Regular files. $W is the same directory on both machines here, but not through qtfs: rexec cannot know
# the host's file of that name is this one, so these travel as streams (rexec-passfd.sh has files on a
# qtfs mount, which are reopened by path).
echo first >"$W/log"
lab_dpu bash -c "exec 7>>'$W/log'; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'echo appended >&7'"
expect_eq "a file open for append at fd 7 is appended to" "first appended" "$(tr '\n' ' ' <"$W/log" | sed 's/ $//')"
seq 1 100 >"$W/numbers"
out=$(lab_dpu bash -c "exec 8<'$W/numbers'; read -r a <&8; read -r b <&8; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'read -r line <&8; echo \$line'")
expect_eq "a file read partway continues at its offset" "3" "$out"
out=$(lab_dpu bash -c "exec 7>>'$W/log'; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key --exclude-fd 7 /bin/sh -c 'echo x >&7' 2>&1")
expect_match "--exclude-fd leaves one out" "Bad file descriptor" "$out"
out=$(lab_dpu bash -c "exec 7>>'$W/log' 8<'$W/numbers'; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key --exclude-fd all /bin/sh -c 'for fd in 7 8; do [ -e /dev/fd/\$fd ] && echo \$fd; done; echo done'" 2>&1)
expect_eq "--exclude-fd all leaves every fd above 2 out" "done" "$out"
# A file only the DPU has (no qtfs mount shares it; a host file of the same name would be another file)
# travels as a stream: read from its offset here, or written at it (virsh restore / save of a file on
# the DPU's own disk).
lab_dpu sh -c 'printf "skipped\ndpu-only\n" >/run/rexec/dpu-only.txt'
lab_host sh -c 'echo host-file >/run/rexec/dpu-only.txt'
out=$(lab_dpu bash -c "exec 9</run/rexec/dpu-only.txt; read -r skip <&9; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'cat <&9'" 2>&1)
expect_eq "a file only the DPU has is streamed from its offset (not the host's file of that name)" "dpu-only" "$out"
lab_dpu sh -c 'echo "header:" >/run/rexec/dpu-out.txt'
out=$(lab_dpu bash -c "exec 9>>/run/rexec/dpu-out.txt; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'test -p /dev/fd/9 && echo written by the program >&9'" 2>&1)
expect_eq "(no note)" "" "$out"
expect_eq "one written by the program lands in the DPU's file" "header: written by the program" "$(lab_dpu cat /run/rexec/dpu-out.txt | tr '\n' ' ' | sed 's/ $//')"
expect_eq "(the host has no such file)" "absent" "$(lab_host sh -c 'test -e /run/rexec/dpu-out.txt && echo present || echo absent')"
out=$(lab_dpu bash -c "exec 9<>/run/rexec/dpu-only.txt; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'echo ran; test -e /dev/fd/9 || echo no-fd-9'" 2>&1)
expect_match "one open for reading and writing cannot be, and the program still runs" "ran.*no-fd-9" "$(echo $out)"
expect_match "with a note naming the fd" "rexec: fd 9 is not carried: its file is open for reading and writing and only this machine has it" "$out"

# Pipes, both directions, at their numbers.
expect_eq "a pipe written by the program at fd 5" "via-fd5" \
    "$(lab_dpu bash -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'echo via-fd5 >&5' 5>&1 >/dev/null")"
expect_eq "a pipe read by the program at fd 6" "data6" \
    "$(echo data6 | lab_dpu bash -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'cat <&6' 6<&0 </dev/null")"
expect_eq "a pipe's end reaches the program (it stops reading)" "3" \
    "$(printf 'a\nb\nc\n' | lab_dpu bash -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'wc -l <&6' 6<&0 </dev/null" | tr -d ' ')"
expect_eq "stdout and stderr on one pipe keep their order" "1 2 3 4 5 6" \
    "$(rx /bin/sh -c 'echo 1; echo 2 >&2; echo 3; echo 4 >&2; echo 5; echo 6 >&2' 2>&1 | tr '\n' ' ' | sed 's/ $//')"
expect_eq "a closed stdout stays closed" "$(sh -c 'echo x' >&- 2>/dev/null; echo $?)" \
    "$(lab_dpu bash -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'echo x' >&- 2>/dev/null; echo \$?")"

# Named FIFOs: streamed in the direction they are open in; one open both ways has no direction.
lab_dpu mkfifo "$W/in.fifo" "$W/out.fifo" "$W/both.fifo"
lab_bg fifo-writer dpu sh -c "echo via-fifo >'$W/in.fifo'"
lab_bg fifo-reader dpu sh -c "cat '$W/out.fifo' >'$W/from-fifo'"
expect_eq "a FIFO read by the program at fd 7" "via-fifo" \
    "$(lab_dpu bash -c "exec 7<'$W/in.fifo'; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'cat <&7'")"
lab_dpu bash -c "exec 8>'$W/out.fifo'; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'echo to-fifo >&8'"
wait_for "! kill -0 $(lab_pid fifo-reader)"
expect_eq "a FIFO written by the program at fd 8" "to-fifo" "$(cat "$W/from-fifo")"
out=$(lab_dpu bash -c "exec 9<>'$W/both.fifo'; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'echo ran; test -e /dev/fd/9 || echo no-fd-9'" 2>&1)
expect_match "a FIFO open for reading and writing is left out" "ran.*no-fd-9" "$(echo $out)"
expect_match "with a note naming the fd" "rexec: fd 9 is not carried: a FIFO open for reading and writing has no direction to stream in" "$out"

# The program closing its stdout is end of file for our reader while it still runs.
mkfifo "$W/hold"
lab_bg closer dpu bash -c "env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'exec >&-; read x' <'$W/hold' | { cat; touch '$W/eof-seen'; }"
exec 3>"$W/hold"
expect_status "the reader sees end of file while the program runs" 0 wait_for "test -e '$W/eof-seen'" 10
expect_status "(the program is still running)" 0 kill -0 "$(lab_pid closer)"
exec 3>&-
wait_for "! kill -0 $(lab_pid closer)"

# Sockets: a connected one streamed both ways, a listening one carried connection by connection.
cat >"$W/pair.py" <<'EOF'
import os, socket, subprocess, sys
ours, theirs = socket.socketpair()
os.set_inheritable(theirs.fileno(), True)
os.dup2(theirs.fileno(), 9)
child = subprocess.Popen(sys.argv[1:], pass_fds=[9])
theirs.close(); os.close(9)
ours.sendall(b"ping\n")
ours.shutdown(socket.SHUT_WR)
reply = b""
while chunk := ours.recv(100):
    reply += chunk
print(reply.decode().strip(), child.wait())
EOF
expect_eq "a connected unix socket at fd 9, both ways and half-closed" "got ping 0" \
    "$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" python3 "$W/pair.py" rexec --key "$W/key" /bin/sh -c 'read line <&9; echo "got $line" >&9')"

cat >"$W/monitor.py" <<'EOF'
import socket, sys
listener = socket.socket(fileno=29)
for _ in range(2):
    conn, _ = listener.accept()
    data = conn.recv(100)
    conn.sendall(b"monitor:" + data.upper())
    conn.close()
EOF
cat >"$W/libvirt.py" <<'EOF'
# What libvirt does: bind the monitor socket, pass it as fd 29, connect to it while "QEMU" starts.
import os, socket, subprocess, sys
path = sys.argv[1]
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen()
os.dup2(listener.fileno(), 29)
os.set_inheritable(29, True)
child = subprocess.Popen(sys.argv[2:], pass_fds=[29])
listener.close(); os.close(29)
for word in (b"qmp_capabilities", b"query-status"):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.sendall(word)
    print(c.recv(100).decode())
    c.close()
print("exit", child.wait())
EOF
out=$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" python3 "$W/libvirt.py" /run/rexec/monitor.sock rexec --key "$W/key" /usr/bin/python3 "$W/monitor.py")
expect_eq "connections to a listening socket passed as fd 29 reach the remote program" \
    "monitor:QMP_CAPABILITIES monitor:QUERY-STATUS exit 0" "$(echo $out)"

# A QEMU lives long and libvirt may connect to its monitor any number of times: more connections over
# one session than the server's streams at once (1280), one after another.
cat >"$W/many-monitor.py" <<'EOF'
import socket, sys
listener = socket.socket(fileno=29)
for _ in range(int(sys.argv[1])):
    conn, _ = listener.accept()
    conn.sendall(conn.recv(100))
    conn.close()
EOF
cat >"$W/many-libvirt.py" <<'EOF'
import os, socket, subprocess, sys
path, count = sys.argv[1], int(sys.argv[2])
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen()
os.dup2(listener.fileno(), 29)
os.set_inheritable(29, True)
child = subprocess.Popen(sys.argv[3:] + [str(count)], pass_fds=[29])
listener.close(); os.close(29)
answered = 0
for n in range(count):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    c.sendall(b"%d" % n)
    answered += c.recv(100) == b"%d" % n
    c.close()
print(answered, "exit", child.wait())
EOF
expect_eq "1500 connections one after another over one session, all answered" "1500 exit 0" \
    "$(lab_dpu env CMD_NET_ADDR="$REXEC_URL" python3 "$W/many-libvirt.py" /run/rexec/many.sock 1500 rexec --key "$W/key" /usr/bin/python3 "$W/many-monitor.py")"

# What the program sees: the same fd numbers, nothing else of rexec's or the server's.
list='ls /proc/self/fd | sort -n | tr "\n" " "'
here=$(lab_dpu bash -c "exec 7>>'$W/log' 8</dev/null; /bin/sh -c '$list'")
there=$(lab_dpu bash -c "exec 7>>'$W/log' 8</dev/null; env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c '$list'" 2>/dev/null)
expect_match "(the caller has fds 7 and 8)" " 7 8 " "$here"
expect_eq "the program has the caller's fds, nothing of rexec's or the server's" "$here" "$there"

# The caller's pipe keeps its flags, even when rexec fails before the program runs. A pipe rexec cannot
# reopen privately (root's, 0600, rexec running as nobody) has its shared description made non-blocking
# while rexec relays it; an unreadable key file must not leave it so. (Here, not in the lab: no server
# is reached. The binary is copied where nobody can run it.)
mkdir -p "$W/as-nobody" && chmod 755 "$W" "$W/as-nobody"
cp "$DPUCTL" "$W/as-nobody/dpuctl" && chmod 755 "$W/as-nobody/dpuctl"
cat >"$W/as-nobody/pipe-flags.py" <<'EOF'
import fcntl, os, subprocess, sys
def as_nobody():
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
read_end, _ = os.pipe()
child = subprocess.run(["rexec", "--connect", "tcp://127.0.0.1:1", "--key", sys.argv[2], "/bin/true"], executable=sys.argv[1],
                       stdin=read_end, stderr=subprocess.DEVNULL, preexec_fn=as_nobody)
blocking = not fcntl.fcntl(read_end, fcntl.F_GETFL) & os.O_NONBLOCK
print("exit %d, the pipe is %s" % (child.returncode, "blocking" if blocking else "left non-blocking"))
EOF
expect_eq "a failed start leaves the caller's pipe blocking" "exit 255, the pipe is blocking" \
    "$(python3 "$W/as-nobody/pipe-flags.py" "$W/as-nobody/dpuctl" "$W/key")"
finish
