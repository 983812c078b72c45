#!/usr/bin/env bash
# FIFOs on a qtfs export are carried between the machines (the DPU reads what a host process writes, and
# the other way), poll/select wait for real data, a reader that waits does not hold up anything else, and
# an interrupted open gives up on the host too.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

qtfs_lab_up
qtfs_whitelist "$EXPORT"
qtfs_engine_start
MNT=$W/dpu/mnt
expect_status "mount" 0 qtfs_mount "$EXPORT" "$MNT"

lab_dpu mkfifo "$MNT/up" "$MNT/down"
expect_eq "mkfifo on the DPU makes a FIFO on the host" "fifo" "$(lab_host stat -c %F "$EXPORT/up")"
expect_eq "the DPU shows it as a file it can carry" "regular empty file" "$(lab_dpu stat -c %F "$MNT/up")"

# A DPU reader waits in open until a host writer comes; meanwhile everything else works.
lab_bg dpureader dpu sh -c "cat '$MNT/up' > '$W/dpu-got'"
sleep 1
# The cat itself, as the DPU sees its processes. (lab_pid once named a passing helper here: lab_bg ran the
# machine lookup in its background job, fixed since; this check never needed the pid.)
expect_eq "the reader is still waiting" "yes" "$(lab_dpu pgrep -f "^cat $MNT/up\$" >/dev/null && [ ! -s "$W/dpu-got" ] && echo yes)"
for i in $(seq 1 20); do lab_dpu sh -c "echo $i > '$MNT/file$i' && cat '$MNT/file$i'" >/dev/null; done
expect_eq "20 files written and read while the reader waits" "20" "$(lab_dpu sh -c "ls '$MNT' | grep -c ^file")"
lab_host sh -c "echo host-to-dpu > '$EXPORT/up'"
wait_for "! kill -0 $(lab_pid dpureader)" 10
expect_eq "the DPU reader got what the host wrote" "host-to-dpu" "$(cat "$W/dpu-got")"

# The other way: a host reader, a DPU writer.
lab_bg hostreader host sh -c "cat '$EXPORT/down' > '$W/host-got'"
sleep 0.5
lab_dpu sh -c "seq 1 10000 > '$MNT/down'"
wait_for "! kill -0 $(lab_pid hostreader)" 10
expect_eq "the host reader got all the DPU wrote" "$(seq 1 10000 | md5sum)" "$(md5sum <"$W/host-got")"

# poll: socat -T1 gives up after one idle second only if poll says "nothing yet".
lab_bg silentwriter host sh -c "exec 3>'$EXPORT/up'; sleep 30"
lab_dpu timeout 10 socat -T1 -u "OPEN:$MNT/up,rdonly" STDOUT
expect_eq "poll waits for data (socat's idle timeout works)" "0" "$?"
lab_stop silentwriter
lab_bg pollwriter host sh -c "exec 3>'$EXPORT/up'; sleep 1; echo late >&3; sleep 5"
expect_eq "poll wakes up when the host writes" "late" "$(lab_dpu timeout 10 socat -T3 -u "OPEN:$MNT/up,rdonly" STDOUT)"
lab_stop pollwriter

# Many stalled readers at once, then fast operations still run.
for i in 1 2 3 4 5 6 7 8; do
    lab_dpu mkfifo "$MNT/stall$i"
    lab_bg "stall$i" dpu cat "$MNT/stall$i"
done
sleep 1
start=$(date +%s)
lab_dpu sh -c "for i in \$(seq 1 50); do stat '$MNT/file1' >/dev/null; done"
expect_eq "stat works while 8 readers wait on FIFOs" "0" "$?"
for i in 1 2 3 4 5 6 7 8; do lab_stop "stall$i" KILL; done
expect_eq "killed waiting readers leave" "" "$(for i in 1 2 3 4 5 6 7 8; do kill -0 "$(lab_pid stall$i)" 2>/dev/null && echo "stall$i"; done)"

# An interrupted open gives up: the engine's thread is released (a later writer does not hang).
lab_dpu timeout -s INT 1 cat "$MNT/up"
expect_eq "an open interrupted by SIGINT ends" "124" "$?"
lab_host timeout 2 sh -c "echo nobody > '$EXPORT/up'" 2>/dev/null
expect_eq "and no reader is left on the host side" "124" "$?"
finish
