# The kernel has one devtmpfs: a rootfs's /dev (mounted by the mount plan) is the same file system as this
# machine's /dev, so a directory the plan creates there (dev/hugepages, dev/mqueue) appears in it.
#
#   devtmpfs_keep_clean   remember what is there now; on exit, remove those of hugepages, mqueue and vfio
#                         that the test made

_devtmpfs_list() {
    unshare -m --propagation private sh -c 'd=$(mktemp -d) && mount -t devtmpfs devtmpfs "$d" && ls -A "$d"; umount "$d"; rmdir "$d"'
}

devtmpfs_keep_clean() {
    _devtmpfs_before=$(_devtmpfs_list)
    on_exit _devtmpfs_cleanup
}

_devtmpfs_cleanup() {
    local made
    made=$(comm -13 <(echo "$_devtmpfs_before" | sort) <(_devtmpfs_list | sort) | grep -Ex 'hugepages|mqueue|vfio')
    [ -n "$made" ] || return 0
    unshare -m --propagation private sh -c \
        'd=$(mktemp -d) && mount -t devtmpfs devtmpfs "$d" && for x in "$@"; do rmdir "$d/$x"; done; umount "$d"; rmdir "$d"' sh $made
}
