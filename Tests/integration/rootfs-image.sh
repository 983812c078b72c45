#!/usr/bin/env bash
# `dpuctl rootfs prepare --from-image`: a qcow2 disk with a GPT (a /boot partition first, the root file
# system second), built here with sfdisk, mkfs.ext4 -d and qemu-img. The root is found by looking, read
# through qemu-nbd where the kernel has nbd, else through qemu-img convert and a loop device; a raw image
# goes straight to a loop device. Whatever it attached is detached afterwards, on success and on failure.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"

require_root
for tool in qemu-img sfdisk mkfs.ext4 setcap getcap losetup; do require_command "$tool"; done
nbd_missing=""
[ -e /sys/module/nbd ] || modprobe -q nbd max_part=16 2>/dev/null
[ -e /sys/module/nbd ] || nbd_missing="this kernel has no nbd module (no /sys/module/nbd; modprobe nbd fails)"
loop_missing=""
[ -e /dev/loop-control ] || loop_missing="this kernel has no loop devices (no /dev/loop-control)"
[ -n "$nbd_missing" ] && [ -n "$loop_missing" ] && skip "images need nbd or loop devices: $nbd_missing; $loop_missing"
lab_up

# --- the image ---------------------------------------------------------------------------------------
src=$W/src
mkdir -p "$src/root"/{usr/bin,usr/lib,etc,var} "$src/boot"
echo setuid >"$src/root/usr/bin/tool" && chmod 4755 "$src/root/usr/bin/tool"
cp /bin/true "$src/root/usr/bin/capped" && setcap cap_net_raw+ep "$src/root/usr/bin/capped"
echo shared >"$src/root/usr/lib/a" && ln "$src/root/usr/lib/a" "$src/root/usr/lib/b"
ln -s a "$src/root/usr/lib/link"
echo owned >"$src/root/etc/owned" && chown 4321:8765 "$src/root/etc/owned"
ln -s /run "$src/root/var/run"   # absolute, as Debian and Fedora images have it
echo kernel >"$src/boot/vmlinuz"
disk=$W/disk.raw
truncate -s 48M "$disk"
sfdisk -q "$disk" <<'EOF'
label: gpt
start=2048, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=boot
start=10240, size=86016, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root
EOF
mkfs.ext4 -q -F -E offset=$((2048 * 512)) -d "$src/boot" "$disk" 4M
mkfs.ext4 -q -F -E offset=$((10240 * 512)) -d "$src/root" "$disk" $((86016 / 2))k
qemu-img convert -f raw -O qcow2 "$disk" "$W/disk.qcow2"

attached() { { losetup -a; ls /sys/block/ | grep '^nbd' | while read -r d; do [ -e "/sys/block/$d/pid" ] && echo "$d"; done; ls -d /var/tmp/dpuctl-image.* 2>/dev/null; } | sort; }
before=$(attached)
prepare() { lab_dpu "$DPUCTL" rootfs prepare "$@"; }

check_copy() {
    local R=$1 what=$2
    expect_eq "$what: setuid kept" "-rwsr-xr-x" "$(stat -c %A "$R/usr/bin/tool")"
    expect_eq "$what: capability kept" "cap_net_raw=ep" "$(getcap "$R/usr/bin/capped" | awk '{print $2}')"
    expect_eq "$what: owner kept" "4321:8765" "$(stat -c %u:%g "$R/etc/owned")"
    expect_eq "$what: hard link kept" "$(stat -c %i "$R/usr/lib/a")" "$(stat -c %i "$R/usr/lib/b")"
    expect_eq "$what: symbolic link kept" "a" "$(readlink "$R/usr/lib/link")"
    expect_eq "$what: var/run made relative" "../run" "$(readlink "$R/var/run")"
    expect_status "$what: /boot's partition was not copied" 1 test -e "$R/vmlinuz"
    expect_status "$what: dpuctl's pieces installed" 0 test -x "$R/usr/bin/qemu-kvm"
}

# qcow2: through nbd, else through a raw copy on a loop device.
out=$(prepare --root "$W/from-qcow2" --from-image "$W/disk.qcow2" 2>&1); rc=$?
expect_eq "prepare from the qcow2 image" 0 "$rc"
[ "$rc" = 0 ] || echo "$out"
if [ -z "$nbd_missing" ]; then
    expect_match "read through qemu-nbd" "partition 2 \(ext4\) through qemu-nbd" "$out"
else
    echo "  skip: the qemu-nbd path: $nbd_missing"
    expect_match "read through qemu-img convert and a loop device" "partition 2 \(ext4\) through qemu-img convert and a loop device" "$out"
    expect_match "saying why not nbd" "no nbd" "$out"
fi
check_copy "$W/from-qcow2" qcow2
expect_eq "everything attached was detached" "$before" "$(attached)"
out=$(prepare --root "$W/from-qcow2" --from-image "$W/disk.qcow2" 2>&1)
expect_match "a second run changes nothing" "nothing to change" "$out"

# raw: straight to a loop device.
if [ -z "$loop_missing" ]; then
    out=$(prepare --root "$W/from-raw" --from-image "$disk" 2>&1); rc=$?
    expect_eq "prepare from the raw image" 0 "$rc"
    expect_match "read through a loop device" "partition 2 \(ext4\) through a loop device \(/dev/loop[0-9]+\)" "$out"
    check_copy "$W/from-raw" raw
    expect_eq "the loop device was detached" "$before" "$(attached)"
else
    echo "  skip: raw images: $loop_missing"
fi

# Failures name the cause and leave nothing attached.
dd if="$disk" of="$W/boot-only.raw" bs=512 count=10240 status=none
sfdisk -q --delete "$W/boot-only.raw" 2 2>/dev/null
out=$(prepare --root "$W/none" --from-image "$W/boot-only.raw" 2>&1); rc=$?
expect_eq "an image without a root fails" 1 "$rc"
expect_match "naming what it tried" "no root file system found in .*partition 1 \(ext4\): not a root file system \(no usr or etc\)" "$out"
expect_eq "and leaves nothing attached" "$before" "$(attached)"
printf '\xfd7zXZ\0rest' >"$W/disk.qcow2.xz"
out=$(prepare --root "$W/none" --from-image "$W/disk.qcow2.xz" 2>&1); rc=$?
expect_eq "a compressed image fails" 1 "$rc"
expect_match "saying how to decompress it" "xz-compressed: decompress it first \(xz -dk " "$out"
finish
