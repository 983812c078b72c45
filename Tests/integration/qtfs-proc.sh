#!/usr/bin/env bash
# The host's /proc and /sys on the DPU: `-o proc` shows the host's processes and kernel files, while
# self, thread-self and the caller's own processes resolve to the DPU's procfs; /proc/sys writes, cgroup
# creation and cgroup.procs writes land on the host.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

qtfs_lab_up
# `ip netns exec` gave each machine a sysfs of its own, without cgroups: give the host a cgroup2
# hierarchy (the machine's own, mounted again), else a v1 pids one. The group made below is real:
# removed on exit, before the lab goes.
CGROOT=/sys/fs/cgroup
lab_host mount -t cgroup2 cgroup2 "$CGROOT" 2>/dev/null || lab_host mount -t cgroup -o pids cgroup "$CGROOT" 2>/dev/null ||
    CGROOT=""
CGROUP=$CGROOT/dpuctl-test-$$
on_exit "lab_host rmdir '$CGROUP'"

cat >"$W/whitelist" <<WL
[Mount]
Path=/proc;/sys
[Open]
Path=/proc;/sys
[Read]
Path=/proc;/sys
[Readdir]
Path=/proc;/sys
[Write]
Path=/proc/sys;/sys/fs/cgroup
[Mkdir]
Path=/sys/fs/cgroup
[Rmdir]
Path=/sys/fs/cgroup
[Setattr]
Path=/sys/fs/cgroup
WL
qtfs_engine_start
PROC=$W/dpu/proc
SYS=$W/dpu/sys
expect_status "mount -t qtfs -o proc /proc" 0 qtfs_mount /proc "$PROC" "proc,localproc=/proc"
expect_status "mount -t qtfs /sys" 0 qtfs_mount /sys "$SYS"

# The host's kernel files.
expect_eq "cpuinfo is the host's" "$(lab_host cat /proc/cpuinfo | md5sum)" "$(lab_dpu cat "$PROC/cpuinfo" | md5sum)"
expect_eq "meminfo is the host's (MemTotal)" "$(lab_host grep MemTotal /proc/meminfo)" "$(lab_dpu grep MemTotal "$PROC/meminfo")"
expect_eq "a size-0 file reads in full" "$(lab_host cat /proc/1/mountinfo | md5sum)" "$(lab_dpu cat "$PROC/1/mountinfo" | md5sum)"
lab_bg hostsleeper host sleep 600
hostpid=$(lab_host pgrep -x -n sleep)
expect_eq "the host's process status is the host's" "$(lab_host grep -E '^(Name|Pid|PPid|Uid):' "/proc/$hostpid/status")" \
    "$(lab_dpu grep -E '^(Name|Pid|PPid|Uid):' "$PROC/$hostpid/status")"
expect_eq "the host's process list is there" "yes" "$(lab_dpu ls "$PROC" | grep -qx "$hostpid" && echo yes)"
expect_eq "mounts is the host init's" "$(lab_host cat /proc/1/mounts | md5sum)" "$(lab_dpu cat "$PROC/mounts" | md5sum)"

# The caller's own view.
out=$(lab_dpu sh -c "echo \$\$; exec readlink '$PROC/self'")
expect_eq "readlink self gives the caller's own pid in the DPU's procfs" "/proc/$(echo "$out" | head -1)" "$(echo "$out" | tail -1)"
out=$(lab_dpu sh -c "echo \$\$; exec grep ^Pid: '$PROC/self/status'")
expect_eq "self/status is the caller's" "Pid:	$(echo "$out" | head -1)" "$(echo "$out" | tail -1)"
out=$(lab_dpu sh -c "echo \$\$; exec readlink '$PROC/thread-self'")
expect_eq "thread-self points at the caller's thread" "/proc/$(echo "$out" | head -1)/task/$(echo "$out" | head -1)" "$(echo "$out" | tail -1)"
out=$(lab_dpu sh -c "sleep 30 & echo \$!; exec readlink '$PROC/'\$!")
expect_eq "the caller's child is the DPU's process" "/proc/$(echo "$out" | head -1)" "$(echo "$out" | tail -1)"
lab_dpu kill "$(echo "$out" | head -1)" 2>/dev/null
lab_bg dpuonly dpu sleep 600
dpuonly=$(lab_dpu pgrep -x -n sleep)
if lab_host test -e "/proc/$dpuonly"; then
    pass "(pid $dpuonly exists on both: the host's wins for an unrelated caller)"
else
    expect_eq "a pid only the DPU has is the DPU's" "/proc/$dpuonly" "$(lab_dpu readlink "$PROC/$dpuonly")"
fi

# Writes land on the host: a per-network-namespace sysctl differs between the two machines.
lab_dpu sh -c "echo 1 > '$PROC/sys/net/ipv4/ip_forward'"
expect_eq "a /proc/sys write lands on the host" "1" "$(lab_host cat /proc/sys/net/ipv4/ip_forward)"
expect_eq "and not on the DPU" "0" "$(lab_dpu cat /proc/sys/net/ipv4/ip_forward)"
lab_dpu sh -c "echo 1 > '$PROC/sys/kernel/dpuctl-none'" 2>/dev/null
expect_eq "/proc stays a pseudo file system: no new files" "no" "$(lab_host test -e /proc/sys/kernel/dpuctl-none && echo yes || echo no)"

# /sys and cgroups.
expect_eq "/sys/class/net lists the host's interfaces" "$(lab_host ls /sys/class/net)" "$(lab_dpu ls "$SYS/class/net")"
expect_eq "a sysfs attribute reads as on the host" "$(lab_host cat /sys/kernel/mm/transparent_hugepage/enabled 2>&1)" \
    "$(lab_dpu cat "$SYS/kernel/mm/transparent_hugepage/enabled" 2>&1)"
if [ -n "$CGROOT" ]; then
    expect_status "mkdir of a cgroup through /sys" 0 lab_dpu mkdir "$SYS${CGROUP#/sys}"
    expect_eq "the cgroup exists on the host" "yes" "$(lab_host test -e "$CGROUP/cgroup.procs" && echo yes)"
    lab_dpu sh -c "echo $hostpid > '$SYS${CGROUP#/sys}/cgroup.procs'"
    expect_match "writing cgroup.procs moves the host's process" ":/dpuctl-test-$$" "$(lab_host cat "/proc/$hostpid/cgroup")"
    expect_eq "cgroup.procs reads back through the mount" "$hostpid" "$(lab_dpu cat "$SYS${CGROUP#/sys}/cgroup.procs")"
    lab_host kill -KILL "$hostpid"
    wait_for "! lab_host kill -0 $hostpid" 10
    expect_status "rmdir of the emptied cgroup" 0 wait_for "lab_dpu rmdir '$SYS${CGROUP#/sys}'" 10
    expect_eq "is gone on the host" "no" "$(lab_host test -e "$CGROUP" && echo yes || echo no)"
else
    skip "no writable cgroup hierarchy on this machine"
fi
finish
