#!/usr/bin/env bash
# Descriptors passed with SCM_RIGHTS on a carried unix socket reach the remote program with the bytes
# they came with: what libvirt does for `virsh save` / `restore` / `dump` (QMP `getfd` on the monitor
# socket, the file's fd in the same sendmsg). A DPU program (libvirt's part) passes, on a connection to
# the listening socket it gave a host program (QEMU's part) through rexec: a pipe's write end, a file
# only the DPU has (written at its offset, and read from its offset), a file on a qtfs mount (opened by
# path on the host: a file there, not a pipe), a connected socket; and gets one passed back. Then more
# fds than one message may carry: only that connection is reset. No fd is left behind in the client or
# the server.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"
. "$(dirname "$0")/lib/rexec.sh"
require_command python3
HELPERS=$(cd "$(dirname "$0")/helpers" && pwd)

# The host exports $EXPORT (a host-only tmpfs); the DPU mounts it with qtfs at $W/dpu/share. The engine
# reads its whitelist at start; rexec_setup then writes the rexec server's over that file name.
qtfs_lab_up
qtfs_whitelist "$EXPORT"
qtfs_engine_start
rexec_setup
SHARE=$W/dpu/share
expect_status "mount -t qtfs the host's export on the DPU" 0 qtfs_mount "$EXPORT" "$SHARE"
lab_dpu mkdir -p /run/rexec/local

# (server_pid is the pid as seen from here, outside the lab's pid namespaces.)
server_fds() { ls "/proc/$(server_pid)/fd" | wc -l; }
before=$(server_fds)
expect_match "(the server's fds are counted)" "^[0-9]+$" "$before"
lab_dpu env CMD_NET_ADDR="$REXEC_URL" python3 "$HELPERS/passfd-caller.py" /run/rexec/monitor.sock /run/rexec/local "$SHARE/shared" -- \
    rexec --key "$W/key" /usr/bin/python3 "$HELPERS/passfd-program.py" >"$W/out" 2>"$W/err"
status=$?
out=$(cat "$W/out")
line() { grep "^$1" "$W/out" | head -1 | cut -d: -f2- | sed 's/^ //'; }

expect_eq "the caller ran to its end" "0" "$status"
expect_eq "a plain command on the monitor connection" "pong" "$(line ping:)"
expect_eq "a pipe's write end: the host program writes into a pipe, the bytes arrive in the DPU's pipe" \
    "ok write fifo / into-the-pipe" "$(line pipe:)"
expect_eq "a DPU-only file open for writing: streamed, the bytes land in the DPU's file at its offset" \
    "ok write fifo / HEADER:guest-memory" "$(line 'dpu file written:')"
expect_eq "(the host has no such file)" "absent" "$(lab_host sh -c 'test -e /run/rexec/local/saved && echo present || echo absent')"
expect_eq "a read-only fd of a DPU-only file: the host program reads it from its offset" \
    "ok read fifo saved-state" "$(line 'dpu file read:')"
expect_eq "a file on a qtfs mount: opened by path on the host, a regular file there" "ok write file" "$(line 'shared file:')"
expect_eq "(written at its offset in the host's file)" "HEADER:by-path" "$(lab_host cat "$EXPORT/shared")"
expect_eq "a connected socket, both ways" "ok echo socket pong / heard ping" "$(line socket:)"
expect_eq "the host program passes a pipe back with its reply" "take with 1 fd" "$(line given:)"
expect_eq "(what the DPU writes into it reaches the host program)" "ok give from-the-dpu" "$(line give:)"
expect_eq "each command and its fds arrived in one recvmsg on the host (no error replies)" "" "$(grep error "$W/out")"
expect_eq "no fd left in the client once the connection closed" "baseline" "$(line 'client fds after connection 1:')"
expect_eq "more fds than one message may carry: that connection is reset" "(end of connection)" "$(line 'too many:')"
expect_eq "(none of them is held on either side)" "end of file" "$(line 'too many, the pipe.s reader:')"
expect_match "(with a line on the client's stderr)" \
    "rexec: a program passed more than 16 file descriptors in one message on a carried connection \\(stream [0-9]+\\); that connection is reset" \
    "$(cat "$W/err")"
expect_eq "(no fd left in the client)" "baseline" "$(line 'client fds after connection 2:')"
expect_eq "the session goes on: the next connection works" "pong" "$(line 'after the reset:')"
expect_eq "the host program served every connection" \
    "connection 0 ended after ping|connection 1 ended after write, write, read, write, echo, give|connection 2 ended after no command|connection 3 ended after ping" \
    "$(grep '^program:' "$W/out" | sed 's/^program: //' | paste -sd'|')"
expect_eq "and exited 0" "exit 0" "$(line exit)"
wait_for "[ \"\$(server_fds)\" = $before ]" 10
expect_eq "no fd left in the server once the session ended" "$before" "$(server_fds)"
[ "$_failures" -gt 0 ] && { echo "--- caller output:"; cat "$W/out"; echo "--- stderr:"; cat "$W/err"; echo "--- server log:"; cat "$W/server.log"; }
finish
