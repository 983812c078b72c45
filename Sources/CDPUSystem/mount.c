/* The new mount API, loop devices and copy_file_range as raw system calls (see cdpusystem.h). */
#define _GNU_SOURCE
#include "cdpusystem.h"

#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/loop.h>

/* The same numbers on every architecture since Linux 5.2 (the unified system call table). */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef SYS_fsconfig
#define SYS_fsconfig 431
#endif
#ifndef SYS_fsmount
#define SYS_fsmount 432
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
#endif

int cdpu_open_tree(int dirfd, const char *path, unsigned int flags) {
    return (int)syscall(SYS_open_tree, dirfd, path, flags);
}

int cdpu_move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path, unsigned int flags) {
    return (int)syscall(SYS_move_mount, from_dirfd, from_path, to_dirfd, to_path, flags);
}

int cdpu_fsopen(const char *fs_name, unsigned int flags) { return (int)syscall(SYS_fsopen, fs_name, flags); }

int cdpu_fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux) {
    return (int)syscall(SYS_fsconfig, fd, cmd, key, value, aux);
}

int cdpu_fsmount(int fd, unsigned int flags, unsigned int attr_flags) {
    return (int)syscall(SYS_fsmount, fd, flags, attr_flags);
}

/* struct mount_attr as in linux/mount.h, which cannot be included next to glibc's sys/mount.h. */
struct cdpu_mount_attr {
    unsigned long long attr_set;
    unsigned long long attr_clr;
    unsigned long long propagation;
    unsigned long long userns_fd;
};

int cdpu_mount_setattr(int dirfd, const char *path, unsigned int flags, unsigned long long attr_set,
                       unsigned long long attr_clr, unsigned long long propagation) {
    struct cdpu_mount_attr attr = {.attr_set = attr_set, .attr_clr = attr_clr, .propagation = propagation};
    return (int)syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof attr);
}

int cdpu_loop_configure(int loop_fd, int backing_fd, unsigned long long offset, unsigned long long size_limit,
                        unsigned int flags) {
    struct loop_config config;
    memset(&config, 0, sizeof config);
    config.fd = (unsigned int)backing_fd;
    config.info.lo_offset = offset;
    config.info.lo_sizelimit = size_limit;
    config.info.lo_flags = flags;
    return ioctl(loop_fd, LOOP_CONFIGURE, &config);
}

long cdpu_copy_file_range(int in_fd, long long *in_offset, int out_fd, long long *out_offset, size_t length) {
    return (long)syscall(SYS_copy_file_range, in_fd, (loff_t *)in_offset, out_fd, (loff_t *)out_offset, length, 0);
}
