/*
 * The few pieces of libc that Swift cannot call directly: the CMSG_* macros for SCM_RIGHTS, a spawn that
 * can set the umask and a controlling terminal (posix_spawn cannot), and the vsock address type.
 * Everything else in DPUSystem calls libc from Swift.
 */
#pragma once

#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <signal.h>
#include <linux/vm_sockets.h>
#include <sys/signalfd.h>
/* Headers the Glibc module leaves out (xattr, statfs, epoll, eventfd); included here so that Swift sees their declarations. */
#include <sys/xattr.h>
#include <sys/vfs.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <sys/sendfile.h>
#include <sys/file.h>
#include <termios.h>
#include <sys/random.h>

/* ---- SCM_RIGHTS ---------------------------------------------------------------------------------- */

/* Bytes of control buffer needed to carry `count` file descriptors. */
size_t cdpu_cmsg_space_fds(size_t count);

/* Fills `control` (at least cdpu_cmsg_space_fds(count) bytes) with one SCM_RIGHTS message carrying `fds`,
 * and points `msg` at it. */
void cdpu_cmsg_put_fds(struct msghdr *msg, void *control, const int *fds, size_t count);

/* Walks the control messages of a received `msg` and copies up to `capacity` SCM_RIGHTS fds into `fds`.
 * Returns the number copied. Any further fds the kernel installed are closed (they cannot be returned),
 * and *truncated is set to 1 when that happened or when MSG_CTRUNC was set. */
size_t cdpu_cmsg_get_fds(const struct msghdr *msg, int *fds, size_t capacity, int *truncated);

/* ---- spawn --------------------------------------------------------------------------------------- */

struct cdpu_fd_mapping {
    int child_fd;   /* the number the child sees */
    int parent_fd;  /* the parent's fd to put there */
};

struct cdpu_spawn_attr {
    const char *path;                 /* absolute or relative path of the program, no PATH search */
    char *const *argv;                /* NULL-terminated */
    char *const *envp;                /* NULL-terminated */
    const char *cwd;                  /* NULL: inherit */
    int umask;                        /* < 0: inherit */
    const struct cdpu_fd_mapping *fds;/* the child's complete fd table; every other fd is closed */
    size_t fd_count;
    int new_session;                  /* setsid() */
    int new_process_group;            /* setpgid(0, 0) (ignored with new_session) */
    int controlling_tty_fd;           /* child fd to make the controlling terminal (needs new_session); -1: none */
    int parent_death_signal;          /* prctl(PR_SET_PDEATHSIG); 0: none */
    const sigset_t *signal_mask;      /* the child's signal mask; NULL: empty */
};

/* Starts a child (vfork + execve). On success returns 0 and sets *pid. If anything before or in execve
 * fails, the child exits and the function returns that errno (with *pid reaped already); `failed_step`
 * then names the step ("chdir", "execve", ...). */
int cdpu_spawn(const struct cdpu_spawn_attr *attr, pid_t *pid, const char **failed_step);

/* Starts a child that stops just before execve until the parent writes '1' to *gate_fd (anything else,
 * or closing *gate_fd, makes it exit 125 without running the program). Uses fork, not vfork, so the
 * parent is free meanwhile. Failures of the child's set-up or of execve arrive on *report_fd (read them
 * with cdpu_spawn_report_read); the report pipe reaches end-of-file without data once the program runs.
 * Both returned fds are close-on-exec. Returns 0 or an errno (with *failed_step) if nothing started. */
int cdpu_spawn_gated(const struct cdpu_spawn_attr *attr, pid_t *pid, int *gate_fd, int *report_fd,
                     const char **failed_step);

/* Reads a gated child's report: 1 with *error and *step when it failed, 0 at end of file (the program
 * runs), -1 with errno (EAGAIN when nothing arrived yet on a non-blocking fd). */
int cdpu_spawn_report_read(int report_fd, int *error, const char **step);

/* ---- small wrappers for calls glibc does not export or Swift cannot see ---------------------------- */

int cdpu_pidfd_open(pid_t pid, unsigned int flags);
int cdpu_pidfd_send_signal(int pidfd, int sig, unsigned int flags);
int cdpu_close_range(unsigned int first, unsigned int last, unsigned int flags);
int cdpu_ioctl_int(int fd, unsigned long request, int value);
int cdpu_ioctl_ptr(int fd, unsigned long request, void *arg);
int cdpu_fcntl_int(int fd, int cmd, int value);
int cdpu_open(const char *path, int flags, unsigned int mode);
int cdpu_openat(int dirfd, const char *path, int flags, unsigned int mode);
int cdpu_setns(int fd, int nstype);
int cdpu_accept4(int fd, int flags);
int cdpu_pipe2(int fds[2], int flags);
/* getsockopt(SO_PEERCRED) */
int cdpu_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);
int cdpu_unshare(int flags);

/* ---- file system calls without a glibc wrapper, or declared only under _GNU_SOURCE --------------- */

/* openat2(2) with `struct open_how` {flags, mode, resolve}. */
int cdpu_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve);
/* fchmodat2(2) (Linux 6.6): fchmodat that honours AT_SYMLINK_NOFOLLOW. */
int cdpu_fchmodat2(int dirfd, const char *path, unsigned int mode, int flags);
int cdpu_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
long cdpu_getdents64(int fd, void *buffer, size_t size);
pid_t cdpu_gettid(void);
/* listxattrat(2) (Linux 6.13): listxattr relative to a directory descriptor. */
long cdpu_listxattrat(int dirfd, const char *path, unsigned int flags, char *list, size_t size);
/* Names the calling thread (prctl(PR_SET_NAME) is variadic); longer names are cut to 15 bytes. */
void cdpu_set_thread_name(const char *name);
/* TIOCGPTPEER and TIOCGPTN are function-like macros Swift cannot import. */
#define CDPU_TIOCGPTPEER 0x5441
#define CDPU_TIOCGPTN 0x80045430
/* Only visible with _GNU_SOURCE, which Swift's Glibc module does not define. */
#define CDPU_F_SETPIPE_SZ 1031
#define CDPU_F_GETPIPE_SZ 1032
int cdpu_posix_openpt(int flags);
int cdpu_unlockpt(int fd);

/* errno is a macro over a thread-local; these make it reachable from Swift without Glibc's overlay. */
int cdpu_errno(void);
void cdpu_set_errno(int value);

/* ---- the new mount API, loop devices, copy_file_range (mount.c) ---------------------------------- */
/* Raw system calls rather than glibc's wrappers: glibc declares fsopen & co. only from 2.36, and a binary
 * that needs them from glibc would not start on the older distributions DPUs run. */

int cdpu_open_tree(int dirfd, const char *path, unsigned int flags);
int cdpu_move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path, unsigned int flags);
int cdpu_fsopen(const char *fs_name, unsigned int flags);
int cdpu_fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux);
int cdpu_fsmount(int fd, unsigned int flags, unsigned int attr_flags);
/* mount_setattr(2) setting `attr_set` and clearing `attr_clr` (MOUNT_ATTR_*), `propagation` 0 = unchanged. */
int cdpu_mount_setattr(int dirfd, const char *path, unsigned int flags, unsigned long long attr_set,
                       unsigned long long attr_clr, unsigned long long propagation);

/* Binds `backing_fd` to the loop device `loop_fd` (LOOP_CONFIGURE) from `offset` for `size_limit` bytes
 * (0: to the end) with LO_FLAGS_* `flags`. */
int cdpu_loop_configure(int loop_fd, int backing_fd, unsigned long long offset, unsigned long long size_limit,
                        unsigned int flags);

long cdpu_copy_file_range(int in_fd, long long *in_offset, int out_fd, long long *out_offset, size_t length);
/* Installs a handler for `sig` that only writes 8 bytes to `event_fd` (an eventfd): a thread's event loop
 * learns of the signal whatever other threads block (a signalfd needs it blocked in every thread, which a
 * process with library threads cannot promise). SA_RESTART, errno preserved. */
int cdpu_wake_on_signal(int sig, int event_fd);

/* splice(2) between two fds without offsets (a pipe and a socket), non-blocking; only with _GNU_SOURCE. */
ssize_t cdpu_splice(int fd_in, int fd_out, size_t count);
