#define _GNU_SOURCE
#include "cdpusystem.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdio.h>
#include <dirent.h>
#include <linux/openat2.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* ---- SCM_RIGHTS ---------------------------------------------------------------------------------- */

size_t cdpu_cmsg_space_fds(size_t count) {
    return count == 0 ? 0 : CMSG_SPACE(count * sizeof(int));
}

void cdpu_cmsg_put_fds(struct msghdr *msg, void *control, const int *fds, size_t count) {
    if (count == 0) {
        msg->msg_control = NULL;
        msg->msg_controllen = 0;
        return;
    }
    size_t space = CMSG_SPACE(count * sizeof(int));
    memset(control, 0, space);
    msg->msg_control = control;
    msg->msg_controllen = space;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(count * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, count * sizeof(int));
}

size_t cdpu_cmsg_get_fds(const struct msghdr *msg, int *fds, size_t capacity, int *truncated) {
    size_t n = 0;
    *truncated = (msg->msg_flags & MSG_CTRUNC) ? 1 : 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR((struct msghdr *)msg); c != NULL;
         c = CMSG_NXTHDR((struct msghdr *)msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof(int));
            if (n < capacity) {
                fds[n++] = fd;
            } else {
                close(fd); /* never leak an fd the caller cannot see */
                *truncated = 1;
            }
        }
    }
    return n;
}

/* ---- spawn --------------------------------------------------------------------------------------- */

/* cdpu_wake_on_signal's table (below): the eventfd each signal wakes, and whether its handler is ours. */
static volatile int wake_fds[65];
static volatile sig_atomic_t wake_installed[65];

/* Runs in the vfork (or fork) child: may only make system calls and write to `res` (shared with the
 * parent after vfork) or to `report_fd` (after fork). Never returns. */
struct spawn_result {
    volatile int error;
    const char *volatile step;
};

/* What a gated child writes to its report pipe when it fails before the program runs. The step is a
 * string literal, so its address means the same in the parent. */
struct spawn_report {
    int error;
    const char *step;
};

static void child_fail(struct spawn_result *res, int report_fd, const char *step) {
    int error = errno;
    if (report_fd >= 0) {
        struct spawn_report report = {.error = error, .step = step};
        (void)write(report_fd, &report, sizeof report);
    } else {
        res->error = error;
        res->step = step;
    }
    _exit(127);
}

static void spawn_child(const struct cdpu_spawn_attr *a, struct spawn_result *res, int gate_fd, int report_fd) {
    /* Signal handlers belong to the parent: reset every caught signal to its default before unblocking,
     * so no handler can run on the shared stack. Ignored signals are reset too: a program expects a
     * clean slate (SIGPIPE ignored by a daemon would otherwise leak into the child). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)sigaction(sig, &dfl, NULL); /* fails harmlessly for the libc-reserved RT signals */
    }
    if (a->parent_death_signal > 0 && prctl(PR_SET_PDEATHSIG, a->parent_death_signal, 0, 0, 0) < 0)
        child_fail(res, report_fd, "prctl(PR_SET_PDEATHSIG)");
    if (a->new_session) {
        if (setsid() < 0) child_fail(res, report_fd, "setsid");
    } else if (a->new_process_group) {
        if (setpgid(0, 0) < 0) child_fail(res, report_fd, "setpgid");
    }
    if (a->cwd != NULL && chdir(a->cwd) < 0) child_fail(res, report_fd, "chdir");
    if (a->umask >= 0) umask((mode_t)a->umask);

    /* The fd map may overlap itself ({0: 5, 5: 0}): first move every source above all targets, then
     * dup2 into place (dup2 clears FD_CLOEXEC on the target), then close everything above. */
    int top = 2;
    for (size_t i = 0; i < a->fd_count; i++) {
        if (a->fds[i].child_fd > top) top = a->fds[i].child_fd;
        if (a->fds[i].parent_fd > top) top = a->fds[i].parent_fd;
    }
    /* A gated child keeps its gate and report pipes at two numbers above everything it moves; they are
     * close-on-exec, so the report pipe reads as end-of-file in the parent once the program runs. */
    int reserved = top + 1;
    if (gate_fd >= 0) {
        if (gate_fd >= reserved) reserved = gate_fd + 1;
        if (report_fd >= reserved) reserved = report_fd + 1;
        if (dup3(gate_fd, reserved, O_CLOEXEC) < 0) child_fail(res, report_fd, "dup3");
        if (dup3(report_fd, reserved + 1, O_CLOEXEC) < 0) child_fail(res, report_fd, "dup3");
        gate_fd = reserved;
        report_fd = reserved + 1;
        if (reserved > top + 1) (void)syscall(SYS_close_range, (unsigned)(top + 1), (unsigned)(reserved - 1), 0);
        top = reserved + 1;
    }
    int moved[a->fd_count > 0 ? a->fd_count : 1];
    for (size_t i = 0; i < a->fd_count; i++) {
        moved[i] = fcntl(a->fds[i].parent_fd, F_DUPFD_CLOEXEC, top + 1);
        if (moved[i] < 0) child_fail(res, report_fd, "fcntl(F_DUPFD_CLOEXEC)");
    }
    /* Close the low range first so fds not in the map do not survive, then place the map. */
    /* close_range over the gaps between wanted numbers: a server with many fds open would otherwise pay
     * one close per fd number for every program it starts. */
    int low_end = gate_fd >= 0 ? gate_fd - 1 : top;
    int next = 0;
    while (next <= low_end) {
        int wanted_at = low_end + 1; /* the lowest wanted child fd at or above `next` */
        for (size_t i = 0; i < a->fd_count; i++)
            if (a->fds[i].child_fd >= next && a->fds[i].child_fd < wanted_at) wanted_at = a->fds[i].child_fd;
        if (wanted_at > next && syscall(SYS_close_range, (unsigned)next, (unsigned)(wanted_at - 1), 0) < 0) {
            for (int fd = next; fd < wanted_at; fd++) (void)close(fd);
        }
        next = wanted_at + 1;
    }
    for (size_t i = 0; i < a->fd_count; i++) {
        if (dup2(moved[i], a->fds[i].child_fd) < 0) child_fail(res, report_fd, "dup2");
    }
    int highest = top;
    for (size_t i = 0; i < a->fd_count; i++)
        if (moved[i] > highest) highest = moved[i];
    if (syscall(SYS_close_range, (unsigned)(top + 1), ~0U, 0) < 0) {
        for (int fd = top + 1; fd <= highest; fd++) (void)close(fd);
    }

    if (a->controlling_tty_fd >= 0 && ioctl(a->controlling_tty_fd, TIOCSCTTY, 0) < 0)
        child_fail(res, report_fd, "ioctl(TIOCSCTTY)");

    if (gate_fd >= 0) {
        /* Wait for the parent's word: '1' runs the program, anything else (or the parent's end closing)
         * ends the child without running it. */
        char word = 0;
        ssize_t got;
        do {
            got = read(gate_fd, &word, 1);
        } while (got < 0 && errno == EINTR);
        if (got != 1 || word != '1') _exit(125);
    }

    sigset_t empty;
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, a->signal_mask ? a->signal_mask : &empty, NULL) < 0)
        child_fail(res, report_fd, "sigprocmask");
    execve(a->path, a->argv, a->envp);
    child_fail(res, report_fd, "execve");
}

int cdpu_spawn(const struct cdpu_spawn_attr *attr, pid_t *pid, const char **failed_step) {
    struct spawn_result res = {.error = 0, .step = NULL};
    sigset_t all, old;
    sigfillset(&all);
    /* Block everything so that no handler of ours runs in the child before it resets them; except the
     * signals whose handler only writes a wake-up to an eventfd (cdpu_wake_on_signal), harmless even in
     * the child. A short program often runs to its end before this thread gets its CPU back from vfork:
     * its SIGCHLD then waits for this thread (vfork's sleep is not interrupted by it) instead of going
     * to another thread that would have to be woken for it. */
    for (int sig = 1; sig < 65; sig++)
        if (wake_installed[sig]) sigdelset(&all, sig);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t child = vfork();
    if (child == 0) {
        spawn_child(attr, &res, -1, -1);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (child < 0) {
        *failed_step = "vfork";
        return saved;
    }
    if (res.error != 0) {
        int status;
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
        }
        *failed_step = res.step;
        return res.error;
    }
    *pid = child;
    return 0;
}

int cdpu_spawn_gated(const struct cdpu_spawn_attr *attr, pid_t *pid, int *gate_fd, int *report_fd,
                     const char **failed_step) {
    int gate[2], report[2];
    if (pipe2(gate, O_CLOEXEC) < 0) {
        *failed_step = "pipe2";
        return errno;
    }
    if (pipe2(report, O_CLOEXEC) < 0) {
        int saved = errno;
        close(gate[0]);
        close(gate[1]);
        *failed_step = "pipe2";
        return saved;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* fork, not vfork: the child waits at the gate, and a vfork parent would wait with it. */
    pid_t child = fork();
    if (child == 0) {
        spawn_child(attr, NULL, gate[0], report[1]);
    }
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(gate[0]);
    close(report[1]);
    if (child < 0) {
        close(gate[1]);
        close(report[0]);
        *failed_step = "fork";
        return saved;
    }
    *pid = child;
    *gate_fd = gate[1];
    *report_fd = report[0];
    return 0;
}

int cdpu_spawn_report_read(int report_fd, int *error, const char **step) {
    struct spawn_report report;
    ssize_t got;
    do {
        got = read(report_fd, &report, sizeof report);
    } while (got < 0 && errno == EINTR);
    if (got < 0) return -1;
    if (got != (ssize_t)sizeof report) return 0;
    *error = report.error;
    *step = report.step;
    return 1;
}

/* ---- small wrappers ------------------------------------------------------------------------------ */

int cdpu_pidfd_open(pid_t pid, unsigned int flags) { return (int)syscall(SYS_pidfd_open, pid, flags); }

int cdpu_pidfd_send_signal(int pidfd, int sig, unsigned int flags) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, flags);
}

int cdpu_close_range(unsigned int first, unsigned int last, unsigned int flags) {
    return (int)syscall(SYS_close_range, first, last, flags);
}

int cdpu_ioctl_int(int fd, unsigned long request, int value) { return ioctl(fd, request, value); }
int cdpu_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }
int cdpu_fcntl_int(int fd, int cmd, int value) { return fcntl(fd, cmd, value); }
int cdpu_open(const char *path, int flags, unsigned int mode) { return open(path, flags, (mode_t)mode); }
int cdpu_openat(int dirfd, const char *path, int flags, unsigned int mode) {
    return openat(dirfd, path, flags, (mode_t)mode);
}

int cdpu_setns(int fd, int nstype) { return setns(fd, nstype); }
int cdpu_unshare(int flags) { return unshare(flags); }
int cdpu_accept4(int fd, int flags) { return accept4(fd, NULL, NULL, flags); }
int cdpu_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

int cdpu_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int cdpu_openat2(int dirfd, const char *path, unsigned long long flags, unsigned long long mode,
                 unsigned long long resolve) {
    struct open_how how = {.flags = flags, .mode = mode, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int cdpu_fchmodat2(int dirfd, const char *path, unsigned int mode, int flags) {
    return (int)syscall(452 /* SYS_fchmodat2, absent from older headers */, dirfd, path, mode, flags);
}

int cdpu_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

long cdpu_getdents64(int fd, void *buffer, size_t size) { return (long)getdents64(fd, buffer, size); }

pid_t cdpu_gettid(void) { return gettid(); }

long cdpu_listxattrat(int dirfd, const char *path, unsigned int flags, char *list, size_t size) {
    return syscall(465 /* SYS_listxattrat */, dirfd, path, flags, list, size);
}

void cdpu_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, sizeof short_name - 1);
    short_name[sizeof short_name - 1] = 0;
    prctl(PR_SET_NAME, short_name, 0, 0, 0);
}

ssize_t cdpu_splice(int fd_in, int fd_out, size_t count) {
    return splice(fd_in, NULL, fd_out, NULL, count, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
}

int cdpu_posix_openpt(int flags) { return posix_openpt(flags); }
int cdpu_unlockpt(int fd) { return unlockpt(fd); }

static void wake_handler(int sig) {
    int saved = errno;
    if (sig > 0 && sig < 65 && wake_fds[sig] >= 0) {
        unsigned long long one = 1;
        (void)write(wake_fds[sig], &one, sizeof one);
    }
    errno = saved;
}

int cdpu_wake_on_signal(int sig, int event_fd) {
    if (sig <= 0 || sig >= 65) {
        errno = EINVAL;
        return -1;
    }
    wake_fds[sig] = event_fd;
    wake_installed[sig] = 1;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = wake_handler;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    return sigaction(sig, &action, NULL);
}

int cdpu_errno(void) { return errno; }
void cdpu_set_errno(int value) { errno = value; }
