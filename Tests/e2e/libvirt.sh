#!/usr/bin/env bash
# End to end (issue 7): Debian's unmodified libvirt on the DPU runs a VM whose QEMU runs on the host.
# Everything is driven from the DPU side with virsh, as an operator would; the host is only looked at.
#
# Uses `dpuctl demo up` (two machines in namespaces, host daemons, rootfs prepare, mount apply,
# virtlogd + libvirtd in the rootfs) and `dpuctl demo down`. Installs libvirt and QEMU when missing.
. "$(dirname "$0")/../integration/lib/common.sh"
require_root
[ -e /dev/fuse ] || skip "needs /dev/fuse"
for tool in /usr/sbin/libvirtd /usr/sbin/virtlogd /usr/bin/virsh /usr/bin/qemu-system-x86_64 /usr/bin/qemu-img; do
    [ -x "$tool" ] || skip "$tool is not installed (make deps installs libvirt and QEMU; dpuctl demo does too)"
done
"$DPUCTL" demo down >/dev/null 2>&1
on_exit '"$DPUCTL" demo down >/dev/null 2>&1'

if ! "$DPUCTL" demo up >"$W/up.log" 2>&1; then
    cat "$W/up.log"
    failed "dpuctl demo up"
    finish
fi
pass "dpuctl demo up: host daemons, DPU rootfs and mounts, libvirtd on the DPU"

dpu() { "$DPUCTL" demo exec dpu --rootfs -- "$@"; }
host() { "$DPUCTL" demo exec host -- "$@"; }
# A QEMU process: argv[0] is the emulator the domain names (/usr/bin/qemu-kvm, a link to qemu-system-x86_64
# on the demo host) or the one libvirt probes; the DPU's rexec stand-in starts with /usr/bin/rexec instead.
QEMU="^/usr/bin/qemu-(kvm|system-[^ ]*) "
virsh() { dpu /usr/bin/virsh -c qemu:///system "$@"; }
DOM=e2e-vm

# A disk image made on the DPU, in /home/VMs: it must be the host's file.
expect_status "qemu-img create on the DPU" 0 dpu /usr/bin/qemu-img create -q -f qcow2 /home/VMs/$DOM.qcow2 64M
expect_match "the image is on the host" "$DOM.qcow2" "$(host ls /home/VMs)"

cat >"$W/$DOM.xml" <<XML
<domain type="qemu" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>$DOM</name>
  <memory unit="MiB">128</memory>
  <os><type arch="x86_64" machine="pc">hvm</type><boot dev="hd"/></os>
  <devices>
    <emulator>/usr/bin/qemu-kvm</emulator>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="/home/VMs/$DOM.qcow2"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <serial type="pty"/>
    <memballoon model="none"/>
  </devices>
  <qemu:commandline><qemu:arg value="-machine"/><qemu:arg value="graphics=off"/></qemu:commandline>
</domain>
XML
"$DPUCTL" demo exec dpu -- cp "$W/$DOM.xml" /run/$DOM.xml
# virsh console wants a terminal: script(1) gives it one of the DPU's, as an operator's shell on the DPU
# has, and virsh runs in the rootfs; what is typed comes from a FIFO the test writes to.
cat >"$W/console.sh" <<SH
rm -f /run/console.in && mkfifo /run/console.in && exec 3<>/run/console.in
exec timeout 60 script -qfec "chroot /var/lib/dpuctl/demo/rootfs /usr/bin/virsh -c qemu:///system console --force $DOM" /dev/null <&3
SH
"$DPUCTL" demo exec dpu -- cp "$W/console.sh" /run/console.sh

expect_status "virsh define" 0 virsh define /var/run/$DOM.xml
# By now libvirt has probed the emulators (qemu -daemonize -pidfile, then kill(pid, SIGKILL) of the pid
# it read): the pid was a rexec stand-in's, and its death ended the probe's QEMU on the host.
wait_for "! host pgrep -f '$QEMU'" 15
expect_eq "the capability probes' QEMUs are gone from the host" "" "$(host pgrep -f "$QEMU")"
expect_eq "and so are their stand-ins on the DPU" "" "$("$DPUCTL" demo exec dpu -- pgrep -x rexec)"
expect_status "virsh start" 0 virsh start $DOM
expect_match "virsh list shows it running" "$DOM +running" "$(virsh list)"
expect_match "virsh dominfo: running" "State: +running" "$(virsh dominfo $DOM)"

host_qemu=$(host pgrep -f "$QEMU.*guest=$DOM")
[ -n "$host_qemu" ] && pass "QEMU runs in the host's pid namespace (pid $host_qemu there)" || failed "no QEMU for $DOM on the host"
dpu_qemu=$("$DPUCTL" demo exec dpu -- pgrep -f "$QEMU.*guest=$DOM")
expect_eq "and not in the DPU's (only its rexec stand-in)" "" "$dpu_qemu"

# libvirt put QEMU into the VM's cgroups through the host's /sys (the DPU pid it wrote became the host's).
expect_match "QEMU is in the VM's cgroup on the host" "machine/qemu-[0-9]+-$DOM" "$(host cat /proc/$host_qemu/cgroup)"
expect_match "virsh cpu-stats reads it" "cpu_time" "$(virsh cpu-stats $DOM --total)"

status=$(virsh qemu-monitor-command --pretty $DOM '{"execute":"query-status"}')
expect_match "QMP through the forwarded monitor socket: running" '"status": "running"' "$status"

# virsh console: QEMU made the serial port's pty on the host and libvirt opens that /dev/pts/N on the DPU,
# where the qtfs pty bridge makes it a terminal of the DPU relayed to the host's. SeaBIOS writes to the
# serial port (graphics=off): reset the VM while the console is connected and its banner must come out.
"$DPUCTL" demo exec dpu -- sh /run/console.sh >"$W/console.out" 2>&1 &
console_job=$!
wait_for "grep -q 'Connected to domain' '$W/console.out'" 10
expect_match "virsh console connects" "Connected to domain '?$DOM'?" "$(cat "$W/console.out")"
# QEMU notices a reader on its pty within a second (it polls); until then it drops what the VM writes,
# so the VM is reset until the banner comes out, a few times at most.
for _ in 1 2 3 4 5; do
    virsh reset $DOM >/dev/null && wait_for "grep -q 'No bootable device' '$W/console.out'" 2 && break
done
expect_match "the VM's serial output reaches virsh console on the DPU" "SeaBIOS \\(version" "$(cat "$W/console.out")"
"$DPUCTL" demo exec dpu -- sh -c "printf '\\035' > /run/console.in"
wait_for "! kill -0 $console_job" 10
expect_eq "Ctrl-] ends virsh console" "" "$("$DPUCTL" demo exec dpu -- pgrep -x virsh)"

expect_status "virsh suspend" 0 virsh suspend $DOM
expect_match "paused" "State: +paused" "$(virsh dominfo $DOM)"
expect_match "QMP agrees: paused" '"status": "paused"' "$(virsh qemu-monitor-command --pretty $DOM '{"execute":"query-status"}')"
expect_status "virsh resume" 0 virsh resume $DOM
expect_match "running again" "State: +running" "$(virsh dominfo $DOM)"

# virsh save/restore: libvirt hands QEMU the save file's descriptor (getfd over the monitor, then at exec
# for -incoming); one on the DPU's own disk is streamed, one under /home/VMs opened on the host by path.
expect_status "virsh save to a file of the DPU's own" 0 virsh save $DOM /root/$DOM.save
expect_match "the VM is shut off" "State: +shut off" "$(virsh dominfo $DOM)"
expect_eq "the save file is the DPU's, not the host's" "absent" "$(host sh -c "test -e /root/$DOM.save && echo present || echo absent")"
expect_status "virsh restore from it" 0 virsh restore /root/$DOM.save
expect_match "running after the restore" "State: +running" "$(virsh dominfo $DOM)"
dpu rm -f /root/$DOM.save  # the rootfs is kept for the next run
expect_status "virsh save into /home/VMs (the host's)" 0 virsh save $DOM /home/VMs/$DOM.save
expect_match "the save file is on the host" "$DOM.save" "$(host ls /home/VMs)"
expect_status "virsh restore from it" 0 virsh restore /home/VMs/$DOM.save
expect_match "running after that restore" "State: +running" "$(virsh dominfo $DOM)"
host rm -f /home/VMs/$DOM.save
# The same paths with O_DIRECT: libvirt's iohelper (on the DPU) writes the file, QEMU a pipe to it.
expect_status "virsh save --bypass-cache to a file of the DPU's own" 0 virsh save --bypass-cache $DOM /root/$DOM.save
expect_status "virsh restore --bypass-cache from it" 0 virsh restore --bypass-cache /root/$DOM.save
expect_match "running after it" "State: +running" "$(virsh dominfo $DOM)"
dpu rm -f /root/$DOM.save
# managedsave: the file is under /var/lib/libvirt/qemu/save, which is the host's.
expect_status "virsh managedsave" 0 virsh managedsave $DOM
expect_match "shut off with a managed save" "Managed save: +yes" "$(virsh dominfo $DOM)"
expect_match "the managed save file is on the host" "$DOM.save" "$(host ls /var/lib/libvirt/qemu/save)"
expect_status "virsh start restores it" 0 virsh start $DOM
expect_match "running, the managed save used up" "Managed save: +no" "$(virsh dominfo $DOM)"
# virsh dump --memory-only: QMP dump-guest-memory into a descriptor libvirt passes (getfd).
expect_status "virsh dump --memory-only into /home/VMs" 0 virsh dump --memory-only $DOM /home/VMs/$DOM.core
expect_eq "the host has an ELF core" "ELF" "$(host sh -c "head -c 4 /home/VMs/$DOM.core | tail -c 3")"
host rm -f /home/VMs/$DOM.core
expect_status "virsh dump --memory-only to a file of the DPU's own" 0 virsh dump --memory-only $DOM /root/$DOM.core
expect_eq "the DPU has an ELF core" "ELF" "$(dpu sh -c "head -c 4 /root/$DOM.core | tail -c 3")"
dpu rm -f /root/$DOM.core
expect_match "still running after the dumps" "State: +running" "$(virsh dominfo $DOM)"

expect_status "virsh destroy" 0 virsh destroy $DOM
wait_for "! host pgrep -f '$QEMU.*guest=$DOM'" 15
expect_eq "QEMU is gone from the host" "" "$(host pgrep -f "$QEMU.*guest=$DOM")"
expect_eq "no rexec is left on the DPU" "" "$("$DPUCTL" demo exec dpu -- pgrep -x rexec)"
# libvirt's capability probes ran QEMU with -daemonize and SIGKILLed the pid from its pid file: the rexec
# stand-ins they killed must have taken their host QEMUs with them.
expect_eq "no QEMU at all is left on the host (the capability probes' too)" "" "$(host pgrep -f "$QEMU")"
expect_status "virsh undefine" 0 virsh undefine $DOM
expect_eq "virsh list --all no longer has it" "" "$(virsh list --all --name | grep -x $DOM)"

out=$("$DPUCTL" demo down 2>&1)
expect_match "dpuctl demo down reverts every mount" "everything under .* unmounted" "$out"
expect_eq "no demo network namespace is left" "" "$(ip netns list | grep dpuctl-)"
expect_eq "no mount is left under the demo's rootfs" "" "$(grep ' /var/lib/dpuctl/demo/' /proc/self/mountinfo)"
# The demo's machines are pid namespaces: with their init gone, everything in them is gone.
expect_eq "no demo process is left" "" "$(pgrep -f 'demo machine-init|/var/lib/dpuctl/demo')"

# Ctrl-C in the middle of `dpuctl demo` (libvirtd starting on the DPU) tears everything down.
"$DPUCTL" demo >"$W/run.log" 2>&1 &
run=$!
wait_for "grep -q '^\[6/9\]' '$W/run.log'" 300
kill -INT $run
wait $run; rc=$?
expect_eq "dpuctl demo interrupted exits 130" 130 "$rc"
expect_match "and says so" "\[interrupted\]" "$(cat "$W/run.log")"
expect_eq "no demo network namespace is left" "" "$(ip netns list | grep dpuctl-)"
expect_eq "no mount is left under the demo's rootfs" "" "$(grep ' /var/lib/dpuctl/demo/' /proc/self/mountinfo)"
# The demo's machines are pid namespaces: with their init gone, everything in them is gone.
expect_eq "no demo process is left" "" "$(pgrep -f 'demo machine-init|/var/lib/dpuctl/demo')"
finish
