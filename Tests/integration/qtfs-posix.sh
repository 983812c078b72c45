#!/usr/bin/env bash
# A normal qtfs export behaves like a local file system: the POSIX suite gives the same transcript on the
# DPU's qtfs mount as on a local directory, and what the DPU writes is on the host.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"
require_command setfattr
require_command setfacl

qtfs_lab_up
qtfs_whitelist "$EXPORT"
qtfs_engine_start
MNT=$W/dpu/mnt
LOCAL=$W/dpu/local
lab_dpu mkdir -p "$MNT" "$LOCAL"
lab_tmpfs dpu "$LOCAL"

expect_status "mount -t qtfs works on the DPU" 0 qtfs_mount "$EXPORT" "$MNT"
expect_match "mountinfo names the export" "qtfs:$EXPORT" "$(lab_dpu grep " $MNT " /proc/self/mountinfo)"
expect_match "the mount is nodev by default" "nodev" "$(lab_dpu grep " $MNT " /proc/self/mountinfo)"

lab_dpu bash "$ROOT/Tests/integration/lib/posix-suite.sh" "$LOCAL" >"$W/local.txt"
lab_dpu bash "$ROOT/Tests/integration/lib/posix-suite.sh" "$MNT" >"$W/qtfs.txt"
expect_eq "the suite ran every step" "$(grep -c '^step ' "$ROOT/Tests/integration/lib/posix-suite.sh")" "$(wc -l <"$W/qtfs.txt")"
if diff -u "$W/local.txt" "$W/qtfs.txt" >"$W/posix.diff"; then
    pass "the POSIX suite gives the same transcript on qtfs as on a local directory"
else
    failed "the POSIX suite differs on qtfs:"
    cat "$W/posix.diff"
fi

# Both directions: the host sees the DPU's writes, the DPU sees the host's.
lab_dpu sh -c "echo from-dpu > '$MNT/shared'"
expect_eq "a file written on the DPU is on the host" "from-dpu" "$(lab_host cat "$EXPORT/shared")"
lab_host sh -c "echo from-host > '$EXPORT/shared'"
expect_eq "a change on the host is seen on the DPU within the attribute timeout" "from-host" \
    "$(sleep 1.2; lab_dpu cat "$MNT/shared")"
# Walks: listings of subdirectories are fetched ahead (prefetch=); what they show stays as fresh as the
# entry timeout, a change made through the mount is seen at once, and a directory larger than one
# listing reads on past what was fetched ahead.
lab_host sh -c "mkdir -p '$EXPORT/walk/a' '$EXPORT/walk/b' '$EXPORT/walk/big' && touch '$EXPORT/walk/a/1' '$EXPORT/walk/b/1' &&
    cd '$EXPORT/walk/big' && seq 1500 | xargs touch"
expect_eq "ls -R of a tree is the host's" "$(lab_host sh -c "cd '$EXPORT/walk' && ls -R")" "$(lab_dpu sh -c "cd '$MNT/walk' && ls -R")"
lab_dpu ls "$MNT/walk" >/dev/null
lab_dpu touch "$MNT/walk/b/made-here"
expect_eq "a file made through the mount is listed at once" "1 made-here" "$(lab_dpu ls "$MNT/walk/b" | xargs)"
lab_dpu ls "$MNT/walk" >/dev/null
lab_host touch "$EXPORT/walk/a/made-there"
expect_eq "a file made on the host is listed within the entry timeout" "1 made-there" \
    "$(sleep 1.2; lab_dpu ls "$MNT/walk/a" | xargs)"
expect_eq "a large directory opened from a listing fetched ahead is read to its end" 1500 \
    "$(lab_dpu ls "$MNT/walk" >/dev/null; lab_dpu ls -f "$MNT/walk/big" | grep -c '^[0-9]')"
lab_dpu chown 4242:4343 "$MNT/shared"
expect_eq "ownership set on the DPU is the host's" "4242:4343" "$(lab_host stat -c %u:%g "$EXPORT/shared")"
chmod 755 "$W" "$W/dpu"
lab_dpu chmod 1777 "$MNT"
lab_dpu setpriv --reuid=4242 --regid=4343 --clear-groups mkdir "$MNT/byuser"
expect_eq "a directory made by a DPU user belongs to that user on the host" "4242:4343" "$(lab_host stat -c %u:%g "$EXPORT/byuser")"

# dpuctl qtfs mount works as well, and a second mount of the same export is independent.
MNT2=$W/dpu/mnt2
lab_dpu mkdir -p "$MNT2"
expect_status "dpuctl qtfs mount" 0 lab_dpu "$DPUCTL" qtfs mount -o "server=$ENGINE_URL,key=$W/key" "$EXPORT" "$MNT2"
expect_eq "both mounts show the same file" "from-host" "$(lab_dpu cat "$MNT2/shared")"

# Extended attributes: libvirt's (trusted.*) travel; POSIX ACLs and LSM labels only with acl, seclabel
# (the DPU's kernel does not enforce the host's ACLs, the host's labels are its own policy's).
lab_host sh -c "touch '$EXPORT/labelled' && setfacl -m u:4242:r '$EXPORT/labelled' &&
    setfattr -n security.selinux -v host_t '$EXPORT/labelled' && setfattr -n trusted.libvirt.security.dac -v +0:+0 '$EXPORT/labelled'"
expect_eq "trusted.* attributes travel" "+0:+0" "$(lab_dpu getfattr --only-values -n trusted.libvirt.security.dac "$MNT/labelled")"
expect_match "a host ACL is not shown by default" "Operation not supported" \
    "$(lab_dpu getfattr -n system.posix_acl_access "$MNT/labelled" 2>&1)"
expect_eq "ls -l shows no ACL mark by default" "-rw-r--r--" "$(lab_dpu ls -l "$MNT/labelled" | cut -c1-11 | xargs)"
expect_match "an SELinux label is not read by default" "Operation not supported" \
    "$(lab_dpu getfattr -n security.selinux "$MNT/labelled" 2>&1)"
expect_match "nor set on the host from the DPU" "Operation not supported" \
    "$(lab_dpu setfattr -n security.selinux -v dpu_t "$MNT/labelled" 2>&1)"
expect_eq "the host's label is untouched" "host_t" "$(lab_host getfattr --only-values -n security.selinux "$EXPORT/labelled")"
expect_eq "listxattr shows only what travels" "trusted.libvirt.security.dac" \
    "$(lab_dpu getfattr -d -m - --absolute-names "$MNT/labelled" | sed -n 's/=.*//p' | xargs)"
MNT3=$W/dpu/mnt3
lab_dpu mkdir -p "$MNT3"
expect_status "a mount with acl,seclabel" 0 lab_dpu "$DPUCTL" qtfs mount -o "server=$ENGINE_URL,key=$W/key,acl,seclabel" "$EXPORT" "$MNT3"
expect_match "with acl the host's ACL is shown" "user:4242:r--" "$(lab_dpu getfacl -p "$MNT3/labelled")"
expect_match "and ls -l marks it" "^-rw-r--r--\+" "$(lab_dpu ls -l "$MNT3/labelled")"
expect_eq "with seclabel the label is read" "host_t" "$(lab_dpu getfattr --only-values -n security.selinux "$MNT3/labelled")"
lab_dpu umount "$MNT3"

# Unmounting: umount ends the client; SIGTERM unmounts.
client2=$(lab_dpu pgrep -f "qtfs mount --foreground.* $MNT2\$")
lab_dpu umount "$MNT2"
expect_status "umount ends that client" 0 wait_for "! lab_dpu kill -0 $client2" 10
client=$(lab_dpu pgrep -f "qtfs mount --foreground.* $MNT\$")
lab_dpu kill -TERM "$client"
expect_status "SIGTERM ends the client" 0 wait_for "! lab_dpu kill -0 $client" 10
expect_eq "and unmounts" "" "$(lab_dpu grep " $MNT " /proc/self/mountinfo)"

# Failures are one line and mount(8)'s status 32.
out=$(lab_dpu mount -t qtfs -o "server=$ENGINE_URL,key=$W/key" /not/exported "$MNT" 2>&1); status=$?
expect_eq "mounting a path the host does not export fails with 32" 32 "$status"
expect_match "saying why" "does not export /not/exported" "$out"
out=$(lab_dpu mount -t qtfs -o "server=$ENGINE_URL,key=$W/key,bogus" "$EXPORT" "$MNT" 2>&1); status=$?
expect_match "an unknown option is named" 'unknown option `bogus`' "$out"
"$DPUCTL" key generate "$W/otherkey" >/dev/null
out=$(lab_dpu mount -t qtfs -o "server=$ENGINE_URL,key=$W/otherkey" "$EXPORT" "$MNT" 2>&1); status=$?
expect_eq "a wrong key fails the mount" 32 "$status"
expect_match "saying the keys differ" "key" "$out"
finish
