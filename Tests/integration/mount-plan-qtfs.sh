#!/usr/bin/env bash
# The whole built-in plan with its qtfs mounts: an engine on the lab's host serves VM images, libvirt's
# state, /proc, /sys and /dev/pts; `dpuctl mount apply` on the DPU starts a qtfs client per entry, `status`
# sees them all, `apply` again starts none, and `revert` unmounts them, ends every client and leaves the
# mount table as it was.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/devtmpfs.sh"
. "$(dirname "$0")/lib/qtfs.sh"

require_root
qtfs_lab_up
devtmpfs_keep_clean

lab_host sh -c "mkdir -p '$HOSTDIR/VMs' '$HOSTDIR/libvirt/qemu' && echo disk-image > '$HOSTDIR/VMs/vm1.qcow2'"
qtfs_whitelist "$HOSTDIR" /proc /sys /dev/pts
qtfs_engine_start
printf '[qtfs]\nconnect = %s\n' "$ENGINE_URL" >"$W/dpuctl.conf"
# The built-in plan, with the two data directories taken from the host's test directory.
cat >"$W/plan.conf" <<PLAN
[plan]
base = default

[mount /home/VMs]
type = qtfs
source = $HOSTDIR/VMs

[mount /var/lib/libvirt]
type = qtfs
source = $HOSTDIR/libvirt
PLAN
R=$W/rootfs
mkdir -p "$R/var"
ln -s ../run "$R/var/run"
mounts() { lab_dpu cat /proc/self/mountinfo; }
clients() { lab_dpu pgrep -f "qtfs mount --foreground" | wc -l; }
d() { lab_dpu "$DPUCTL" mount "$1" --root "$R" --plan "$W/plan.conf" "${@:2}"; }
before=$(mounts)

out=$(d apply --config "$W/dpuctl.conf" --key "$W/key" 2>&1); rc=$?
expect_eq "apply with the qtfs mounts succeeds (output captured: no client holds it open)" 0 "$rc"
[ "$rc" = 0 ] || { echo "$out"; cat "$W/engine.log"; }
qtfs_mounted=$(grep -c '^mounted .* qtfs ' <<<"$out")
expect_eq "five qtfs mounts (the host has no /dev/vfio here, or six with it)" "yes" "$([ "$qtfs_mounted" -ge 5 ] && echo yes)"
expect_eq "one client each" "$qtfs_mounted" "$(clients)"
out=$(d status); rc=$?
expect_eq "status: everything present" 0 "$rc"
[ "$rc" = 0 ] || echo "$out"

expect_eq "the host's VM image through /home/VMs" "disk-image" "$(lab_dpu cat "$R/home/VMs/vm1.qcow2")"
expect_eq "libvirt's state is the host's, on top of the /var/lib bind" "qemu" "$(lab_dpu ls "$R/var/lib/libvirt")"
expect_eq "the host's network devices through /sys" "yes" "$(lab_dpu ls "$R/sys/class/net" | grep -qx "${LAB_ID}a" && echo yes)"
expect_eq "and this machine's at /local/sys" "yes" "$(lab_dpu ls "$R/local/sys/class/net" | grep -qx "${LAB_ID}b" && echo yes)"
hostpid=$(lab_host sh -c 'sleep 60 >/dev/null 2>&1 & echo $!')
expect_eq "the host's processes through /proc" "sleep" "$(lab_dpu cat "$R/proc/$hostpid/comm")"

out=$(d apply --config "$W/dpuctl.conf" --key "$W/key" 2>&1); rc=$?
expect_match "apply again mounts nothing" ": 0 mounted, [0-9]+ already present" "$out"
expect_eq "and starts no client" "$qtfs_mounted" "$(clients)"

# The host's terminals are links to local ones (ptybridge); the link just read keeps its terminal, and
# the devpts that holds it below /dev/pts, for a few seconds: status counts it in, revert copes with it.
lab_bg hostpty host python3 -c 'import os, time; controller, terminal = os.openpty(); print(os.ttyname(terminal), flush=True); time.sleep(300)'
wait_for "[ -s '$W/hostpty.log' ]" 10
expect_match "a host terminal is a link to a local one" "^\.qtfs-ptys/[0-9]+$" "$(lab_dpu readlink "$R$(cat "$W/hostpty.log")")"
expect_eq "whose devpts is below /dev/pts" "$R/dev/pts/.qtfs-ptys devpts" \
    "$(lab_dpu awk '$5 ~ /\.qtfs-ptys$/ { for (i = 7; i <= NF; i++) if ($i == "-") print $5, $(i + 1) }' /proc/self/mountinfo)"
out=$(d status); rc=$?
expect_eq "status: still everything present, nothing extra" 0 "$rc"
[ "$rc" = 0 ] || echo "$out"

out=$(d revert 2>&1); rc=$?
expect_eq "revert succeeds" 0 "$rc"
[ "$rc" = 0 ] || echo "$out"
expect_eq "every client ended" 0 "$(clients)"
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"

# A process inside a qtfs mount keeps it (and its client) until it goes, or until --lazy.
d apply --config "$W/dpuctl.conf" --key "$W/key" >/dev/null 2>&1
lab_bg holder dpu sh -c "cd '$R/home/VMs' && exec sleep 300"
wait_for "lab_dpu sh -c 'ls -l /proc/*/cwd 2>/dev/null' | grep -q '$R/home/VMs'" 5
out=$(d revert 2>&1); rc=$?
expect_eq "revert with a process in /home/VMs fails" 1 "$rc"
expect_match "naming it" "$R/home/VMs is busy \(held by [0-9]+ \(sleep\): cwd\)" "$out"
expect_eq "that mount's client still serves it" 1 "$(clients)"
busy=$out
out=$(d revert --lazy 2>&1); rc=$?
expect_eq "revert --lazy succeeds" 0 "$rc"
out=$busy
# The holder's pid as the DPU sees it, from revert's own report.
holder=$(grep -o 'held by [0-9]*' <<<"$out" | head -1 | awk '{print $3}')
expect_eq "the holder still reads through the detached mount" "disk-image" "$(lab_dpu cat "/proc/$holder/cwd/vm1.qcow2")"
lab_dpu kill -KILL "$holder"
wait_for '[ "$(clients)" = 0 ]' 10
expect_eq "once it is gone, the client ends" 0 "$(clients)"
expect_eq "the mount table is exactly as before" "$before" "$(mounts)"
finish
