#!/usr/bin/env bash
# The lab itself: two machines that reach each other only over the veth, with separate pid and mount
# namespaces, and nothing left behind afterwards.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"

lab_up
expect_match "host has its address" "inet $HOST_IP/24" "$(lab_host ip -4 addr show)"
expect_match "dpu has its address" "inet $DPU_IP/24" "$(lab_dpu ip -4 addr show)"
require_command socat
lab_bg listener host socat -u TCP-LISTEN:7000,bind=$HOST_IP OPEN:$W/received,creat
wait_for "lab_host ss -ltn | grep -q $HOST_IP:7000"
echo over-the-veth | lab_dpu socat -u - TCP:$HOST_IP:7000
wait_for "grep -q over-the-veth $W/received"
expect_eq "the dpu reaches the host over the veth" "over-the-veth" "$(cat "$W/received")"
expect_status "but not the host's loopback" 1 lab_dpu socat -u - TCP:127.0.0.1:7000,connect-timeout=1 </dev/null 2>/dev/null
expect_eq "the init is pid 1 on the dpu" "1" "$(lab_dpu sh -c 'cat /proc/1/stat | cut -d" " -f1')"
host_pids=$(lab_host sh -c 'ls /proc | grep -c "^[0-9]"')
[ "$host_pids" -lt 10 ] && pass "the host sees only its own processes ($host_pids)" || failed "host sees $host_pids processes"
lab_tmpfs host /mnt
lab_host sh -c 'echo host-only > /mnt/marker'
expect_eq "a host tmpfs is invisible on the dpu" "absent" "$(lab_dpu sh -c 'test -e /mnt/marker && echo present || echo absent')"
expect_eq "and invisible here" "absent" "$(test -e /mnt/marker && echo present || echo absent)"

# Orphans are reaped by the machine's init.
lab_dpu sh -c 'sleep 0.2 & exit 0'
sleep 0.5
zombies=$(lab_dpu ps -eo stat= | grep -c '^Z' || true)
expect_eq "no zombies on the dpu" "0" "$zombies"
# ... and how an orphan died is noted for a failed test to print: a detached daemon (mount.qtfs) that
# dies of a signal has no other parent to see it.
orphan=$(lab_dpu sh -c 'sleep 300 >/dev/null 2>&1 & echo $!')
lab_dpu kill -PIPE "$orphan"
wait_for "grep -q 'pid $orphan ' '$LAB_DIR/dpu.deaths' 2>/dev/null" 10
expect_eq "the dpu's init notes an orphan's death by a signal" "sleep (pid $orphan in the machine) killed by SIGPIPE" \
    "$(grep "pid $orphan " "$LAB_DIR/dpu.deaths" 2>/dev/null)"
expect_eq "but not the orphan that ended well" "" "$(grep -v "pid $orphan " "$LAB_DIR/dpu.deaths" 2>/dev/null)"

# lab_stop signals the command itself, not the nsenter that started it.
lab_bg stoppable dpu sleep 300
stoppable=$(lab_pid stoppable)
expect_eq "lab_pid is the command's pid" "sleep" "$(ps -o comm= -p "$stoppable")"
lab_stop stoppable TERM
expect_status "lab_stop ends the command" 1 kill -0 "$stoppable" 2>/dev/null
# Even when finding the machine takes a while, lab_pid names the command: the lookup must not run in
# lab_bg's background job, where pgrep would take it for nsenter's child (udsproxy.sh failed in CI so:
# lab_pid named a helper long gone, and lab_stop signalled nobody).
real_lab_init=$(declare -f _lab_init)
_lab_init() { sleep 0.3; cat "$LAB_DIR/$1.init"; }
lab_bg slowlookup dpu sleep 300
expect_eq "lab_pid is the command's pid when the machine's lookup is slow" "sleep" "$(ps -o comm= -p "$(lab_pid slowlookup)")"
eval "$real_lab_init"
lab_stop slowlookup KILL

lab_bg sleeper dpu sleep 300
sleeper=$(lab_pid sleeper)
netns_before=$(ip netns list | grep -c "^$LAB_ID" || true)
expect_eq "two network namespaces exist" "2" "$netns_before"
lab_down
expect_status "the background process died with its machine" 1 kill -0 "$sleeper" 2>/dev/null
expect_eq "no network namespace is left" "0" "$(ip netns list | grep -c "^$LAB_ID" || true)"
finish
