#!/usr/bin/env bash
# Nothing the DPU does reaches outside the export or past the whitelist: symbolic links (absolute,
# relative, made on either side), `..`, renames racing with lookups, hard links, device nodes, attach
# paths, and peers that do not speak the protocol or lack the key.
. "$(dirname "$0")/lib/common.sh"
. "$(dirname "$0")/lib/lab.sh"
. "$(dirname "$0")/lib/qtfs.sh"

qtfs_lab_up
OUTSIDE=$HOSTDIR/outside
lab_host sh -c "mkdir -p '$OUTSIDE' '$EXPORT/public' '$EXPORT/private' && echo secret > '$OUTSIDE/secret' &&
    echo private > '$EXPORT/private/file' && echo public > '$EXPORT/public/file' &&
    ln -s ../outside '$EXPORT/relative' && ln -s '$OUTSIDE' '$EXPORT/absolute' && ln -s / '$EXPORT/root' &&
    mknod '$EXPORT/hostnull' c 1 3 && mkdir '$EXPORT/sub' && ln -s '$OUTSIDE' '$EXPORT/sub/out'"
{
    printf '[Mount]\nPath=%s\n[Open]\nPath=%s/public\n[Read]\nPath=%s/public\n' "$EXPORT" "$EXPORT" "$EXPORT"
    for kind in Write Readdir Mkdir Rmdir Create Unlink Rename Setattr Setxattr; do printf '[%s]\nPath=%s\n' "$kind" "$EXPORT"; done
} >"$W/whitelist"
qtfs_engine_start
MNT=$W/dpu/mnt
expect_status "mount" 0 qtfs_mount "$EXPORT" "$MNT"
secret_unchanged() { expect_eq "$1 (the host's secret is untouched)" "secret" "$(lab_host cat "$OUTSIDE/secret")"; }

# Symbolic links are followed on the DPU, in the DPU's own tree: they never lead into the host's.
for link in relative absolute root; do
    lab_dpu cat "$MNT/$link/secret" "$MNT/$link$OUTSIDE/secret" >/dev/null 2>&1
    expect_eq "reading through the host's link \`$link\` does not reach the host's secret" "1" "$?"
    lab_dpu sh -c "echo pwned > '$MNT/$link/secret'" 2>/dev/null
done
secret_unchanged "writing through host-made links"
lab_dpu ln -s "$OUTSIDE" "$MNT/dpulink"
lab_dpu ln -s ../../../.. "$MNT/public/up"
lab_dpu sh -c "echo pwned > '$MNT/dpulink/secret'; echo pwned > '$MNT/public/up$OUTSIDE/secret'" 2>/dev/null
secret_unchanged "writing through DPU-made links"
expect_eq "a link made on the DPU is stored verbatim on the host" "$OUTSIDE" "$(lab_host readlink "$EXPORT/dpulink")"
lab_dpu sh -c "cat '$MNT/../outside/secret' '$MNT/public/../../outside/secret'" >/dev/null 2>&1
expect_eq "\`..\` stays on the DPU's side" "1" "$?"

# Renames racing with lookups that go through the renamed directory.
lab_dpu mkdir -p "$MNT/a/b"
lab_bg renamer dpu sh -c "while :; do mv '$MNT/a/b' '$MNT/c' 2>/dev/null; mv '$MNT/c' '$MNT/a/b' 2>/dev/null; done"
lab_dpu sh -c "for i in \$(seq 1 300); do cat '$MNT/a/b/../../relative/secret' '$MNT/c/../relative/secret' 2>/dev/null; ls '$MNT/a/b/..' >/dev/null 2>&1; done" >"$W/race"
lab_stop renamer KILL
expect_eq "lookups racing with renames read nothing from outside" "" "$(grep -c secret "$W/race" | grep -v '^0$')"
secret_unchanged "after the rename race"

# The whitelist: private/ may be listed and changed but not opened.
lab_dpu cat "$MNT/private/file" >/dev/null 2>&1
expect_eq "opening a file the whitelist does not allow fails" "1" "$?"
expect_match "with EACCES" "Permission denied" "$(lab_dpu cat "$MNT/private/file" 2>&1)"
expect_match "a hard link may not carry it where it could be opened" "Permission denied" \
    "$(lab_dpu ln "$MNT/private/file" "$MNT/public/stolen" 2>&1)"
expect_match "nor may a rename" "Permission denied" "$(lab_dpu mv "$MNT/private/file" "$MNT/public/stolen" 2>&1)"
expect_eq "the private file stays where it was" "private" "$(lab_host cat "$EXPORT/private/file")"
expect_match "a hard link to a file outside the mount is refused by the kernel" "cross-device" \
    "$(lab_dpu ln /etc/hostname "$MNT/public/hostname" 2>&1)"

# Devices.
expect_match "no device node can be made" "Operation not permitted" "$(lab_dpu mknod "$MNT/public/null" c 1 3 2>&1)"
expect_eq "none was made on the host" "no" "$(lab_host test -e "$EXPORT/public/null" && echo yes || echo no)"
expect_eq "the host's device node shows as one" "character special file" "$(lab_dpu stat -c %F "$MNT/hostnull")"
expect_match "but cannot be opened from the DPU" "Permission denied" "$(lab_dpu sh -c "echo x > '$MNT/hostnull'" 2>&1)"

# Attach paths.
for bad in "$EXPORT/../outside" "$HOSTDIR" "$OUTSIDE" "$EXPORT/sub/out" "$EXPORT/root"; do
    lab_dpu mkdir -p "$W/dpu/bad"
    out=$(lab_dpu mount -t qtfs -o "server=$ENGINE_URL,key=$W/key" "$bad" "$W/dpu/bad" 2>&1)
    expect_eq "attaching $bad is refused" "32" "$?"
done

# Peers: garbage and an unauthenticated client lose their own connection only.
echo "GET / HTTP/1.0" | lab_dpu timeout 5 socat - "TCP:$HOST_IP:$QTFS_PORT" >/dev/null 2>&1
head -c 100000 /dev/urandom | lab_dpu timeout 5 socat - "TCP:$HOST_IP:$QTFS_PORT" >/dev/null 2>&1
out=$(lab_dpu mount -t qtfs -o "server=$ENGINE_URL,key=/nonexistent" "$EXPORT" "$W/dpu/bad" 2>&1)
expect_eq "a client without the key is refused" "32" "$?"
expect_eq "the mount still works after all that" "public" "$(lab_dpu cat "$MNT/public/file")"
expect_match "the engine logged the garbage" "refusing" "$(cat "$W/engine.log")"
finish
