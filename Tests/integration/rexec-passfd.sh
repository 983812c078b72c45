#!/usr/bin/env bash
# Descriptors passed with SCM_RIGHTS on a carried unix socket reach the remote program with the bytes
# they came with: what libvirt does for `virsh save` / `restore` / `dump` (QMP `getfd` on the monitor
# socket, the file's fd in the same sendmsg). A DPU program (libvirt's part) passes, on a connection to
# the listening socket it gave a host program (QEMU's part) through rexec: a pipe's write end, a file
# only the DPU has (written at its offset, and read from its offset), a file on a qtfs mount (opened by
# path on the host: a file there, not a pipe), a connected socket; and gets one passed back. Then more
# fds than one message may carry: only that connection is reset. Then QEMU itself (qemu-system-x86,
# which `make deps` installs) saved and restored the way libvirt 9.0 does it, to and from a DPU-only file
# and one on the qtfs mount. No fd is left behind in the client or the server.
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
REXEC_WHITELIST+=(/usr/bin/qemu-system-x86_64)
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

# Files on the qtfs mount inherited at exec (libvirt's log file, a restore file): reopened by path on the
# host, a regular file there, with the DPU fd's offset and flags (O_APPEND: a write lands at the end, past
# what was appended after the DPU opened it; without the flag it would overwrite from offset 0).
lab_host sh -c "printf 'skipped\nrest\n' >'$EXPORT/inherited'; printf 'HEAD\n' >'$EXPORT/appended'"
out=$(lab_dpu bash -c "exec 7<'$SHARE/inherited' 8>>'$SHARE/appended'; read -r skip <&7; echo more >>'$SHARE/appended'
    env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sh -c 'for fd in 7 8; do [ -f /dev/fd/\$fd ] && ! [ -p /dev/fd/\$fd ] && echo \$fd:file; done; cat <&7; echo tail >&8'" 2>&1)
expect_eq "a qtfs file inherited at exec is the host's file, read from the DPU fd's offset" "7:file 8:file rest" "$(echo $out)"
expect_eq "one open for append is appended to on the host" "HEAD more tail" "$(lab_host cat "$EXPORT/appended" | tr '\n' ' ' | sed 's/ $//')"

# With QEMU itself (the host's QEMU, running under TCG until it is saved): libvirt's `virsh save` to a file only the DPU has,
# then `virsh restore` from it (the file inherited at exec as fd 30, streamed), and the same with a file on
# the qtfs mount (reopened by path on the host).
QEMU=/usr/bin/qemu-system-x86_64
if [ -x "$QEMU" ]; then
    qemu=(rexec --key "$W/key" "$QEMU" -machine pc -accel tcg -m 64 -nodefaults -display none -S
        -chardev socket,id=monitor,fd=29,server=on,wait=off -mon chardev=monitor,mode=control)
    qemu_on_dpu() {  # MODE FILE [QEMU ARGS...]
        local mode=$1 file=$2
        shift 2
        lab_dpu rm -f /run/rexec/qmp.sock
        lab_dpu env CMD_NET_ADDR="$REXEC_URL" timeout 120 python3 "$HELPERS/passfd-qemu.py" "$mode" /run/rexec/qmp.sock "$file" -- \
            "${qemu[@]}" "$@" 2>>"$W/qemu.err"
    }
    for file in /run/rexec/local/vm.save "$SHARE/vm.save"; do
        # (The host's file is read on the host: the DPU's view of its size is cached for a second.)
        case $file in
        /run/*) where="a file only the DPU has" written=(lab_dpu head -c 24 "$file") ;;
        *) where="a file on the qtfs mount" written=(lab_host head -c 24 "$EXPORT/vm.save") ;;
        esac
        expect_eq "virsh save's way (getfd + migrate fd:migrate) to $where" "save completed / QEMU exit 0" \
            "$(qemu_on_dpu save "$file")"
        expect_match "(the migration stream is in the file, after its header)" "^LIBVIRT-LIKE-HEADER:QEVM" \
            "$("${written[@]}" | tr -d '\0')"
        expect_eq "virsh restore's way (fd 30 at exec, -incoming defer, migrate-incoming fd:30) from $where" \
            "restore completed, status paused / QEMU exit 0" "$(qemu_on_dpu restore "$file" -incoming defer)"
    done
    expect_eq "(the DPU-only save file stayed on the DPU)" "absent" \
        "$(lab_host sh -c 'test -e /run/rexec/local/vm.save && echo present || echo absent')"
    expect_eq "(the other one is the host's file)" "present" "$(lab_host sh -c "test -s '$EXPORT/vm.save' && echo present")"
else
    echo "  (no $QEMU: the checks with QEMU itself are left out)"
fi
wait_for "[ \"\$(server_fds)\" = $before ]" 10
expect_eq "no fd left in the server once the sessions ended" "$before" "$(server_fds)"

[ "$_failures" -gt 0 ] && { echo "--- caller output:"; cat "$W/out"; echo "--- stderr:"; cat "$W/err"; echo "--- server log:"; cat "$W/server.log"; cat "$W/qemu.err" 2>/dev/null; }
finish
