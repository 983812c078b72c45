#!/usr/bin/env bash
# libvirt's view of a VM that rexec runs on the host: on the DPU, vm->pid is the local rexec client
# standing in for QEMU. Through the `-o proc` mount, /proc/<that pid> is the host's process (status,
# stat, threads, exe), also for the client's own parent (libvirtd starts it); writing that pid into a
# host cgroup's cgroup.procs through the /sys mount moves the host's process; once the client is gone
# (even killed, leaving its pid file behind) the pid no longer means the host's process. libvirt's start
# of a VM: the pid of its child written into a cgroup before the child execs rexec is placed once it has.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

qtfs_lab_up
CGROOT=/sys/fs/cgroup
lab_host mount -t cgroup2 cgroup2 "$CGROOT" 2>/dev/null || lab_host mount -t cgroup -o pids cgroup "$CGROOT" 2>/dev/null ||
    CGROOT=""
CGROUP=$CGROOT/dpuctl-rexec-$$
on_exit "lab_host rmdir '$CGROUP' 2>/dev/null"

# The engine serves /proc and /sys; rexec_server runs sleep; both clients on the DPU, with /run/rexec
# (the pid files) private to each machine.
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
Path=/sys/fs/cgroup
[Mkdir]
Path=/sys/fs/cgroup
[Rmdir]
Path=/sys/fs/cgroup
WL
qtfs_engine_start
REXEC_URL="tcp://$HOST_IP:7777"
printf '/bin/sleep\n/bin/sh\n' >"$W/rexec.whitelist"
: >"$W/none.conf"
lab_tmpfs host /run/rexec
lab_tmpfs dpu /run/rexec
# A long grace: a program whose client vanished lives on for a while (SIGTERM first, SIGKILL 60 s later).
lab_bg server host rexec_server --listen "$REXEC_URL" --key "$W/key" --whitelist "$W/rexec.whitelist" --config "$W/none.conf" \
    --grace 60
wait_for "grep -q 'ready:' '$W/server.log'" 10 || { cat "$W/server.log"; echo "rexec_server did not start" >&2; exit 1; }
PROC=$W/dpu/proc
SYS=$W/dpu/sys
expect_status "mount -t qtfs -o proc /proc" 0 qtfs_mount /proc "$PROC" "proc,localproc=/proc"
expect_status "mount -t qtfs /sys" 0 qtfs_mount /sys "$SYS"

# A stand-in: rexec on the DPU running sleep on the host (deaf to SIGTERM, for the end of the test).
lab_bg standin dpu env CMD_NET_ADDR="$REXEC_URL" rexec --key "$W/key" /bin/sh -c "trap '' TERM; exec /bin/sleep 601"
wait_for "lab_dpu pgrep -f 'rexec --key .*sleep 601' >/dev/null" 10
client=$(lab_dpu pgrep -f 'rexec --key .*sleep 601')
wait_for "lab_dpu test -s /var/run/rexec/pids/$client" 10
remote=$(lab_dpu cat "/var/run/rexec/pids/$client")
on_exit "lab_host kill -KILL $remote 2>/dev/null"
wait_for "[ \"\$(lab_host cat /proc/$remote/comm)\" = sleep ]" 10
expect_eq "the host runs the program (pid $remote for the DPU's $client)" "sleep" "$(lab_host cat "/proc/$remote/comm")"

fields() { grep -E '^(Name|Tgid|Pid|PPid|Threads):' "$1"; }
expect_eq "/proc/<stand-in>/status is the host process's" "$(lab_host bash -c "$(declare -f fields); fields /proc/$remote/status")" \
    "$(lab_dpu bash -c "$(declare -f fields); fields $PROC/$client/status")"
expect_eq "its stat too (pid, comm, state, ppid)" "$(lab_host cut -d' ' -f1-4 "/proc/$remote/stat")" \
    "$(lab_dpu cut -d' ' -f1-4 "$PROC/$client/stat")"
expect_eq "its threads are the host's" "$(lab_host ls "/proc/$remote/task")" "$(lab_dpu ls "$PROC/$client/task")"
expect_eq "a thread's stat reads" "$(lab_host cut -d' ' -f1-2 "/proc/$remote/task/$remote/stat")" \
    "$(lab_dpu cut -d' ' -f1-2 "$PROC/$client/task/$remote/stat")"
expect_eq "its executable is the host's" "$(lab_host readlink "/proc/$remote/exe")" "$(lab_dpu readlink "$PROC/$client/exe")"
expect_eq "it is a directory, as a process is" "directory" "$(lab_dpu stat -c %F "$PROC/$client")"
expect_eq "the DPU's own procfs still shows the client" "rexec" "$(lab_dpu cat "/proc/$client/comm")"

# libvirtd's case: the stand-in is the caller's own child, which is otherwise shown as the DPU's.
out=$(lab_dpu sh -c "
    env CMD_NET_ADDR='$REXEC_URL' rexec --key '$W/key' /bin/sleep 602 & child=\$!
    i=0; while [ ! -s /var/run/rexec/pids/\$child ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
    cat /var/run/rexec/pids/\$child; echo
    grep ^Pid: '$PROC/'\$child/status
    kill \$child; wait \$child")
child_remote=$(echo "$out" | head -1)
expect_eq "the caller's own rexec child is the host process too" "Pid:	$child_remote" "$(echo "$out" | sed -n 2p)"

# cgroups: libvirt writes vm->pid; the host's process moves.
if [ -n "$CGROOT" ]; then
    lab_dpu mkdir "$SYS${CGROUP#/sys}"
    expect_status "writing the stand-in's pid into cgroup.procs succeeds" 0 \
        lab_dpu sh -c "echo $client > '$SYS${CGROUP#/sys}/cgroup.procs'"
    expect_match "the host's process is now in the cgroup" ":/dpuctl-rexec-$$\$" "$(lab_host cat "/proc/$remote/cgroup")"
    expect_eq "cgroup.procs lists the host pid" "$remote" "$(lab_dpu cat "$SYS${CGROUP#/sys}/cgroup.procs")"
    expect_match "written without a newline too (libvirt's way)" "^$remote\$" \
        "$(lab_dpu sh -c "printf %s $client > '$SYS${CGROUP#/sys}/cgroup.procs' && cat '$SYS${CGROUP#/sys}/cgroup.procs'")"
    # Any other pid is the host's own and goes as it is.
    hostpid=$(lab_host sh -c 'sleep 600 >/dev/null 2>&1 & echo $!')
    on_exit "lab_host kill $hostpid 2>/dev/null"
    if [ "$hostpid" != "$client" ]; then
        lab_dpu sh -c "echo $hostpid > '$SYS${CGROUP#/sys}/cgroup.procs'"
        expect_match "a host pid written goes as it is" ":/dpuctl-rexec-$$\$" "$(lab_host cat "/proc/$hostpid/cgroup")"
    fi
    lab_host kill "$hostpid"

    # Starting a VM, libvirt forks a child, writes its pid into the VM's cgroups and only then lets it
    # exec the emulator (rexec): at the write there is no host process yet. The write succeeds, and the
    # host's process is placed once the child runs as a rexec client.
    VMCG=$CGROOT/dpuctl-rexec-vm-$$
    on_exit "lab_host rmdir '$VMCG' 2>/dev/null"
    lab_dpu mkdir "$SYS${VMCG#/sys}"
    lab_dpu mkfifo "$W/release"
    out=$(lab_dpu sh -c "
        ( read go < '$W/release'; exec env CMD_NET_ADDR='$REXEC_URL' rexec --key '$W/key' /bin/sleep 603 ) >/dev/null 2>&1 &
        child=\$!
        printf %s \$child > '$SYS${VMCG#/sys}/cgroup.procs' && echo written
        echo go > '$W/release'
        i=0; while [ ! -s /var/run/rexec/pids/\$child ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
        echo \$child; cat /var/run/rexec/pids/\$child; echo")
    expect_eq "the child's pid written before it execs rexec: the write succeeds" "written" "$(echo "$out" | head -1)"
    vm_child=$(echo "$out" | sed -n 2p)
    vm_remote=$(echo "$out" | sed -n 3p)
    on_exit "lab_host kill -KILL $vm_remote 2>/dev/null; lab_dpu kill -KILL $vm_child 2>/dev/null"
    wait_for "lab_host grep -q ':/dpuctl-rexec-vm-$$\$' /proc/$vm_remote/cgroup" 10
    expect_match "once it runs as a rexec client, the host's process is in the cgroup" ":/dpuctl-rexec-vm-$$\$" \
        "$(lab_host cat "/proc/$vm_remote/cgroup")"
    expect_eq "the cgroup lists the host pid" "$vm_remote" "$(lab_dpu cat "$SYS${VMCG#/sys}/cgroup.procs")"
    lab_dpu kill "$vm_child"
    wait_for "! lab_host kill -0 $vm_remote 2>/dev/null" 10

    # The same from the process itself: it writes its own pid, then execs rexec.
    out=$(lab_dpu sh -c "
        sh -c 'printf %s \$\$ > \"$SYS${VMCG#/sys}/cgroup.procs\" && exec env CMD_NET_ADDR=$REXEC_URL rexec --key $W/key /bin/sleep 604' \
            >/dev/null 2>&1 &
        child=\$!
        i=0; while [ ! -s /var/run/rexec/pids/\$child ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
        echo \$child; cat /var/run/rexec/pids/\$child; echo")
    self_child=$(echo "$out" | sed -n 1p)
    self_remote=$(echo "$out" | sed -n 2p)
    on_exit "lab_host kill -KILL $self_remote 2>/dev/null; lab_dpu kill -KILL $self_child 2>/dev/null"
    wait_for "lab_host grep -q ':/dpuctl-rexec-vm-$$\$' /proc/$self_remote/cgroup" 10
    expect_match "a process that writes its own pid, then execs rexec, is placed too" ":/dpuctl-rexec-vm-$$\$" \
        "$(lab_host cat "/proc/$self_remote/cgroup")"
    lab_dpu kill "$self_child"
    wait_for "! lab_host kill -0 $self_remote 2>/dev/null" 10

    # A DPU process that is not the writer's own is not deferred: its pid means the host's process of
    # that number, and with none the write fails as the same write on the host does.
    other=$(lab_dpu sh -c 'sleep 600 >/dev/null 2>&1 & echo $!')
    on_exit "lab_dpu kill $other 2>/dev/null"
    if ! lab_host kill -0 "$other" 2>/dev/null; then
        out=$(lab_dpu sh -c "printf %s $other > '$SYS${VMCG#/sys}/cgroup.procs'" 2>&1; echo "status $?")
        expect_match "another DPU process's pid: the write fails" "status [1-9]" "$out"
        expect_eq "... as the same write on the host does" \
            "$(lab_host sh -c "printf %s $other > '$VMCG/cgroup.procs'" 2>&1; echo "status $?")" "$out"
    fi
    lab_dpu kill "$other"
else
    skip "no writable cgroup hierarchy on this machine"
fi

# The stand-in dies without cleaning up: its pid file stays, unlocked, and no longer counts, although
# the host's process lives on (it ignores the SIGTERM the server sent when the client went).
lab_dpu kill -KILL "$client"
wait_for "! lab_dpu kill -0 $client 2>/dev/null" 10
expect_status "the dead client's pid file is still there" 0 lab_dpu test -e "/var/run/rexec/pids/$client"
expect_status "the host's process still runs" 0 lab_host kill -0 "$remote"
expect_eq "/proc/<dead stand-in> is no longer the host's process" "no" \
    "$(lab_dpu grep -qx "Pid:	$remote" "$PROC/$client/status" 2>/dev/null && echo yes || echo no)"
lab_host kill -KILL "$remote"
wait_for "! lab_host kill -0 $remote 2>/dev/null" 10
finish
