/*
 * udsbench: the unix-socket client and server of bench/udsproxy.sh (C, so that the tool's own cost is
 * small next to what it measures).
 *
 *   udsbench server PATH                 thread per connection; the first byte picks the mode:
 *                                        'E' echo until EOF, 'U' count until EOF and answer the count
 *                                        (8 bytes), 'D' + 8-byte N: send N bytes and close
 *   udsbench connect PATH COUNT          COUNT times: connect, send 'E' and one byte, read it back
 *   udsbench rtt PATH SIZE COUNT         one connection, COUNT round trips of SIZE bytes
 *   udsbench up PATH BYTES               send BYTES, read the server's count
 *   udsbench down PATH BYTES             receive BYTES
 *
 * Client modes print one line: the median (and min/p90) in microseconds, or MiB/s.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void write_all(int fd, const void *buffer, size_t size) {
    const char *p = buffer;
    while (size > 0) {
        ssize_t n = write(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("write");
        p += n;
        size -= (size_t)n;
    }
}

static void read_all(int fd, void *buffer, size_t size) {
    char *p = buffer;
    while (size > 0) {
        ssize_t n = read(fd, p, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die(n == 0 ? "read: unexpected end of stream" : "read");
        p += n;
        size -= (size_t)n;
    }
}

static int connect_to(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, path, sizeof address.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) die("connect");
    return fd;
}

static void *serve(void *argument) {
    int fd = (int)(intptr_t)argument;
    static char buffer[1 << 20];
    char *own = malloc(1 << 20);
    char mode;
    if (read(fd, &mode, 1) != 1) goto done;
    if (mode == 'E') {
        ssize_t n;
        while ((n = read(fd, own, 1 << 20)) > 0) write_all(fd, own, (size_t)n);
    } else if (mode == 'U') {
        uint64_t total = 0;
        ssize_t n;
        while ((n = read(fd, own, 1 << 20)) > 0) total += (uint64_t)n;
        write_all(fd, &total, sizeof total);
    } else if (mode == 'D') {
        uint64_t left;
        read_all(fd, &left, sizeof left);
        while (left > 0) {
            size_t chunk = left < sizeof buffer ? left : sizeof buffer;
            write_all(fd, buffer, chunk);
            left -= chunk;
        }
    }
done:
    free(own);
    close(fd);
    return NULL;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(double *samples, int count) {
    qsort(samples, (size_t)count, sizeof *samples, compare);
    printf("median_us=%.1f min_us=%.1f p90_us=%.1f n=%d\n", samples[count / 2], samples[0], samples[count * 9 / 10], count);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 3) {
        fprintf(stderr, "usage: udsbench server|connect|rtt|up|down PATH ...\n");
        return 2;
    }
    const char *mode = argv[1], *path = argv[2];
    if (strcmp(mode, "server") == 0) {
        int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un address = {.sun_family = AF_UNIX};
        strncpy(address.sun_path, path, sizeof address.sun_path - 1);
        unlink(path);
        if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0) die("bind");
        if (listen(listener, 512) != 0) die("listen");
        for (;;) {
            int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
            if (fd < 0) continue;
            pthread_t thread;
            pthread_attr_t attributes;
            pthread_attr_init(&attributes);
            pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&thread, &attributes, serve, (void *)(intptr_t)fd) != 0) close(fd);
        }
    }
    if (strcmp(mode, "connect") == 0 && argc == 4) {
        int count = atoi(argv[3]);
        double *samples = calloc((size_t)count, sizeof *samples);
        for (int i = 0; i < count; i++) {
            double start = now_us();
            int fd = connect_to(path);
            char request[2] = {'E', 'x'}, reply;
            write_all(fd, request, 2);
            read_all(fd, &reply, 1);
            samples[i] = now_us() - start;
            close(fd);
        }
        report(samples, count);
        return 0;
    }
    if (strcmp(mode, "rtt") == 0 && argc == 5) {
        size_t size = (size_t)atol(argv[3]);
        int count = atoi(argv[4]);
        double *samples = calloc((size_t)count, sizeof *samples);
        char *buffer = calloc(1, size);
        int fd = connect_to(path);
        write_all(fd, "E", 1);
        for (int i = 0; i < count + count / 10; i++) {
            double start = now_us();
            write_all(fd, buffer, size);
            read_all(fd, buffer, size);
            if (i >= count / 10) samples[i - count / 10] = now_us() - start; /* the first tenth warms up */
        }
        report(samples, count);
        return 0;
    }
    if ((strcmp(mode, "up") == 0 || strcmp(mode, "down") == 0) && argc == 4) {
        uint64_t bytes = (uint64_t)atoll(argv[3]);
        static char buffer[1 << 20];
        int fd = connect_to(path);
        double start = now_us();
        if (mode[0] == 'u') {
            write_all(fd, "U", 1);
            for (uint64_t left = bytes; left > 0;) {
                size_t chunk = left < sizeof buffer ? left : sizeof buffer;
                write_all(fd, buffer, chunk);
                left -= chunk;
            }
            shutdown(fd, SHUT_WR);
            uint64_t counted;
            read_all(fd, &counted, sizeof counted);
            if (counted != bytes) {
                fprintf(stderr, "the server counted %llu bytes, not %llu\n", (unsigned long long)counted, (unsigned long long)bytes);
                return 1;
            }
        } else {
            write_all(fd, "D", 1);
            write_all(fd, &bytes, sizeof bytes);
            uint64_t total = 0;
            ssize_t n;
            while ((n = read(fd, buffer, sizeof buffer)) > 0) total += (uint64_t)n;
            if (total != bytes) {
                fprintf(stderr, "received %llu bytes, not %llu\n", (unsigned long long)total, (unsigned long long)bytes);
                return 1;
            }
        }
        double seconds = (now_us() - start) / 1e6;
        printf("mib_per_s=%.0f seconds=%.3f\n", (double)bytes / (1 << 20) / seconds, seconds);
        return 0;
    }
    fprintf(stderr, "udsbench: bad arguments\n");
    return 2;
}
