#!/usr/bin/env bash
# Host ptys through qtfs with `-o ptybridge`, as `virsh console` uses them: a host program holds a pty's
# controlling side (like QEMU's -chardev pty); on the DPU, the host's /dev/pts/N opens as a real terminal
# (tcgetattr/cfmakeraw/tcsetattr work), also from inside a chroot; bytes pass both ways unchanged; the host
# pty is opened only while the DPU has it open; the host closing its side gives the DPU reader the end;
# sessions leak no descriptor or thread; other device nodes stay metadata only.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

require_command python3
HELPER="python3 $ROOT/Tests/integration/helpers/pty-console.py"
qtfs_lab_up
# The host gets ptys of its own (the lab's machines share the kernel, and this one's /dev/pts).
lab_host mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
lab_host mount --bind /dev/pts/ptmx /dev/ptmx
qtfs_whitelist /dev/pts
qtfs_engine_start
# As in the DPU rootfs: the host's /dev/pts at ROOT/dev/pts, for programs chrooted in ROOT.
R=$W/dpu/root
MNT=$R/dev/pts
expect_status "mount /dev/pts with ptybridge" 0 qtfs_mount /dev/pts "$MNT" ptybridge
client=$(lab_dpu pgrep -f "qtfs mount --foreground.*$MNT")
fds() { lab_dpu sh -c "ls /proc/$client/fd | wc -l"; }
# The client's own threads: not libfuse's workers (they come and go with the load), not the one that
# sets the readahead once, not the Swift runtime's.
threads() { lab_dpu sh -c "cat /proc/$client/task/*/comm" | grep '^qtfs-' | grep -vcE '^qtfs-(fuse|readahead)$'; }
fds_before=$(fds)
threads_before=$(threads)

lab_bg console host $HELPER host "$W/pts-name" "$W/host-got"
wait_for "[ -s '$W/pts-name' ]" 10
name=$(cat "$W/pts-name")
N=${name#/dev/pts/}
connections() { grep -c '^connected' "$W/console.log"; }

# Looking at it opens nothing on the host.
expect_match "the host's pty is a link on the DPU" "^l" "$(lab_dpu ls -l "$MNT/$N")"
expect_match "to a local terminal, relative" "^\.qtfs-ptys/[0-9]+$" "$(lab_dpu readlink "$MNT/$N")"
expect_eq "which is a terminal of its own" "character special file" "$(lab_dpu stat -L -c %F "$MNT/$N")"
expect_eq "the host's pty was not opened for that" 0 "$(connections)"
expect_eq "the multiplexer stays a device node" "character special file" "$(lab_dpu stat -c %F "$MNT/ptmx")"
out=$(lab_dpu sh -c "exec 3<>'$MNT/ptmx'" 2>&1)
expect_match "and opening it is refused (metadata only)" "Permission denied" "$out"

# Opened as libvirt does: termios works, every byte value and CR/LF come back unchanged.
expect_match "console round trip through the mount" "^ok [0-9]+$" "$(lab_dpu $HELPER console check "$MNT/$N")"
expect_eq "the host program got exactly what the DPU wrote" \
    "$(python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4 + b"\r\n\n\r" * 64)' | md5sum)" \
    "$(md5sum <"$W/host-got")"
wait_for "grep -q '^disconnected' '$W/console.log'" 5
expect_eq "the host's pty was open for the session and closed after it" "connected disconnected" \
    "$(tr '\n' ' ' <"$W/console.log" | sed 's/ $//')"
expect_match "from inside a chroot too (the link is relative)" "^ok [0-9]+$" \
    "$(lab_dpu $HELPER console --chroot "$R" check "/dev/pts/$N")"

# Many sessions: nothing left behind on either side.
for i in $(seq 1 20); do lab_dpu $HELPER console check "$MNT/$N" >/dev/null || echo "session $i failed"; done
expect_eq "20 more sessions" 22 "$(connections)"
# A terminal whose link was read in the last 5 s stays; then it goes, and its devpts with it.
wait_for '[ "$(fds)" = "$fds_before" ]' 10
expect_eq "the client's descriptors are back to what they were before any console" "$fds_before" "$(fds)"
expect_eq "and its threads" "$threads_before" "$(threads)"
expect_eq "no local terminal is left mounted" "" "$(lab_dpu awk '$5 ~ /qtfs-ptys/' /proc/self/mountinfo)"
engine_ptys() { ls -l "/proc/$(lab_pid engine)/fd" | grep -c "/dev/pts/$N\$"; }
expect_eq "the engine holds no pty open" 0 "$(engine_ptys)"

# The host closing its side ends the DPU reader.
lab_bg reader dpu $HELPER console hold "$MNT/$N"
wait_for "grep -q '^open' '$W/reader.log'" 10
wait_for "[ \"\$(connections)\" = 23 ]" 5
lab_stop console KILL
wait_for "grep -qE '^(eof|eio)' '$W/reader.log'" 10
expect_match "the DPU reader gets the end when the host program goes" "^(eof|eio)$" "$(tail -1 "$W/reader.log")"
wait_for "[ \"\$(engine_ptys)\" = 0 ]" 5
expect_eq "and the engine closes the pty" 0 "$(engine_ptys)"
wait_for '[ "$(fds)" = "$fds_before" ]' 10
expect_eq "and the client lets its terminal go" "$fds_before" "$(fds)"

expect_status "umount" 0 lab_dpu umount "$MNT"
wait_for "! lab_dpu kill -0 $client 2>/dev/null" 10
expect_eq "the client ended" "gone" "$(lab_dpu kill -0 "$client" 2>/dev/null || echo gone)"
finish
