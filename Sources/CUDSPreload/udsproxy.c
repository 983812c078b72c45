/*
 * libudsproxy.so — the connect() interposer (see include/udsproxy.h).
 *
 * connect(fd, unix path) runs as usual. Only when it fails with ENOENT or ECONNREFUSED, on a SOCK_STREAM
 * socket with a path name, does the library ask the local udsproxyd to connect to the same path on the
 * peer. The daemon answers with a socket (SCM_RIGHTS) that is already connected to its relay; it is put in
 * place of the caller's socket with dup3, so the caller keeps its fd number, its O_NONBLOCK and its
 * close-on-exec flag. Nothing is created on disk, so concurrent connects to one path never collide.
 *
 * A blocking caller waits for the remote connect and gets 0, or -1 with the errno of its own failed local
 * connect. A non-blocking caller gets -1/EINPROGRESS at once, as from a TCP connect: the socket becomes
 * writable when the remote connect is done, and SO_ERROR is then 0, or ECONNRESET if it failed (the daemon
 * hands over a socket whose send queue it keeps full until then). When udsproxyd is not running, or
 * refuses the path (whitelist, not allowed for this user), the caller sees the errno of its own connect,
 * unchanged.
 *
 * No global state besides the cached address of the next connect(); no allocation; no threads.
 */
#define _GNU_SOURCE
#include "udsproxy.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

static int raw_connect(int fd, const struct sockaddr *address, socklen_t length) {
    return (int)syscall(SYS_connect, fd, address, length);
}

/* The connect() we stand in front of: the next one in link order (libc, or another preload). */
static connect_fn next_connect(void) {
    static connect_fn cached;
    connect_fn function = __atomic_load_n(&cached, __ATOMIC_ACQUIRE);
    if (function == NULL) {
        function = (connect_fn)dlsym(RTLD_NEXT, "connect");
        if (function == NULL) function = raw_connect;
        __atomic_store_n(&cached, function, __ATOMIC_RELEASE);
    }
    return function;
}

static const char *control_path(void) {
    const char *path = secure_getenv(UDSPROXY_CONTROL_ENV);
    if (path != NULL && path[0] == '/' && strlen(path) < sizeof(((struct sockaddr_un *)0)->sun_path)) return path;
    return UDSPROXY_CONTROL_PATH;
}

/* The absolute path of the socket the caller named, or 0 when it is not one the proxy can carry. */
static int requested_path(const struct sockaddr *address, socklen_t length, char out[sizeof(((struct sockaddr_un *)0)->sun_path)]) {
    const size_t capacity = sizeof(((struct sockaddr_un *)0)->sun_path);
    if (address == NULL || length <= offsetof(struct sockaddr_un, sun_path) || address->sa_family != AF_UNIX) return 0;
    const struct sockaddr_un *unix_address = (const struct sockaddr_un *)address;
    size_t available = length - offsetof(struct sockaddr_un, sun_path);
    if (available > capacity) available = capacity;
    size_t size = strnlen(unix_address->sun_path, available);
    if (size == 0 || size == capacity) return 0; /* abstract or unnamed, or not terminated */
    if (unix_address->sun_path[0] == '/') {
        memcpy(out, unix_address->sun_path, size);
        out[size] = 0;
        return 1;
    }
    /* A relative path means the caller's working directory, which the daemon does not share. */
    char directory[PATH_MAX];
    if (getcwd(directory, sizeof directory) == NULL) return 0;
    size_t prefix = strlen(directory);
    int slash = prefix > 0 && directory[prefix - 1] != '/';
    if (prefix + slash + size >= capacity) return 0;
    memcpy(out, directory, prefix);
    if (slash) out[prefix] = '/';
    memcpy(out + prefix + slash, unix_address->sun_path, size);
    out[prefix + slash + size] = 0;
    return 1;
}

static int send_all(int fd, const void *bytes, size_t size) {
    const char *cursor = bytes;
    while (size > 0) {
        ssize_t sent = send(fd, cursor, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR) continue;
        if (sent <= 0) return -1;
        cursor += sent;
        size -= (size_t)sent;
    }
    return 0;
}

/* Reads the 4-byte reply and the socket attached to it. Returns the socket, or -1. */
static int receive_socket(int control) {
    unsigned char reply[UDSPROXY_REPLY_SIZE];
    size_t have = 0;
    int socket_fd = -1;
    while (have < sizeof reply) {
        union {
            struct cmsghdr header;
            char space[CMSG_SPACE(sizeof(int) * 4)];
        } control_buffer;
        struct iovec vector = {.iov_base = reply + have, .iov_len = sizeof reply - have};
        struct msghdr message = {
            .msg_iov = &vector, .msg_iovlen = 1, .msg_control = control_buffer.space,
            .msg_controllen = sizeof control_buffer.space};
        ssize_t received = recvmsg(control, &message, MSG_CMSG_CLOEXEC);
        if (received < 0 && errno == EINTR) continue;
        if (received <= 0) break;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c != NULL; c = CMSG_NXTHDR(&message, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int fds[4];
            memcpy(fds, CMSG_DATA(c), count * sizeof(int));
            for (size_t i = 0; i < count; i++) {
                if (socket_fd < 0) socket_fd = fds[i];
                else close(fds[i]); /* never more than one: do not leak extras */
            }
        }
        have += (size_t)received;
    }
    uint32_t status = 1;
    if (have == sizeof reply) {
        memcpy(&status, reply, sizeof status);
        status = ntohl(status);
    }
    if (status != 0 && socket_fd >= 0) {
        close(socket_fd);
        socket_fd = -1;
    }
    return socket_fd;
}

/* Socket options a caller may have set before connecting, carried over to the replacement socket. */
static void copy_options(int from, int to) {
    struct timeval timeout;
    socklen_t length = sizeof timeout;
    if (getsockopt(from, SOL_SOCKET, SO_RCVTIMEO, &timeout, &length) == 0 && (timeout.tv_sec || timeout.tv_usec))
        setsockopt(to, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    length = sizeof timeout;
    if (getsockopt(from, SOL_SOCKET, SO_SNDTIMEO, &timeout, &length) == 0 && (timeout.tv_sec || timeout.tv_usec))
        setsockopt(to, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    int on = 0;
    length = sizeof on;
    if (getsockopt(from, SOL_SOCKET, SO_PASSCRED, &on, &length) == 0 && on)
        setsockopt(to, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
}

/* Asks udsproxyd for a socket connected to `path` on the peer and puts it in place of `fd`. Returns 0 on
 * success; -1 (errno irrelevant: the caller restores its own) when the proxy cannot help. */
static int connect_through_proxy(int fd, const char *path, int non_blocking) {
    const char *control_socket = control_path();
    if (strcmp(path, control_socket) == 0) return -1; /* the daemon itself is not there */

    int status_flags = fcntl(fd, F_GETFL);
    int descriptor_flags = fcntl(fd, F_GETFD);
    if (status_flags < 0 || descriptor_flags < 0) return -1;

    int control = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (control < 0) return -1;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, control_socket, sizeof address.sun_path - 1);
    socklen_t address_length = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(address.sun_path) + 1);
    int connected;
    do connected = next_connect()(control, (struct sockaddr *)&address, address_length);
    while (connected < 0 && errno == EINTR);
    if (connected < 0) {
        close(control);
        return -1;
    }
    /* A blocking caller waits as long as its own connect would (SO_SNDTIMEO, else until the daemon's own
     * bound); a non-blocking caller is answered at once by a live daemon, so a hung one is cut short. */
    struct timeval timeout = {0};
    socklen_t timeout_length = sizeof timeout;
    if (non_blocking) timeout.tv_sec = 5;
    else getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, &timeout_length);
    if (timeout.tv_sec || timeout.tv_usec) setsockopt(control, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);

    size_t path_length = strlen(path);
    unsigned char request[UDSPROXY_REQUEST_HEADER + sizeof address.sun_path];
    memcpy(request, UDSPROXY_REQUEST_MAGIC, 4);
    request[4] = UDSPROXY_REQUEST_VERSION;
    request[5] = non_blocking ? UDSPROXY_FLAG_NONBLOCKING : 0;
    request[6] = (unsigned char)(path_length >> 8);
    request[7] = (unsigned char)(path_length & 0xff);
    memcpy(request + UDSPROXY_REQUEST_HEADER, path, path_length);

    int replacement = -1;
    if (send_all(control, request, UDSPROXY_REQUEST_HEADER + path_length) == 0) replacement = receive_socket(control);
    close(control);
    if (replacement < 0) return -1;

    int flags = fcntl(replacement, F_GETFL);
    if (flags >= 0) fcntl(replacement, F_SETFL, (flags & ~O_NONBLOCK) | (status_flags & O_NONBLOCK));
    copy_options(fd, replacement);
    int result;
    do result = dup3(replacement, fd, (descriptor_flags & FD_CLOEXEC) ? O_CLOEXEC : 0);
    while (result < 0 && errno == EINTR);
    close(replacement);
    return result < 0 ? -1 : 0;
}

EXPORT int connect(int fd, const struct sockaddr *address, socklen_t length) {
    int result = next_connect()(fd, address, length);
    if (result == 0) return 0;
    int original = errno;
    if (original != ENOENT && original != ECONNREFUSED) return result;

    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (!requested_path(address, length, path)) goto unchanged;
    int type = 0;
    socklen_t type_length = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_length) != 0 || type != SOCK_STREAM) goto unchanged;
    int status_flags = fcntl(fd, F_GETFL);
    if (status_flags < 0) goto unchanged;
    int non_blocking = (status_flags & O_NONBLOCK) != 0;
    if (connect_through_proxy(fd, path, non_blocking) != 0) goto unchanged;
    if (non_blocking) {
        errno = EINPROGRESS;
        return -1;
    }
    return 0;

unchanged:
    errno = original;
    return result;
}
