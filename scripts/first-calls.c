/* first-calls ADDRESSES OUT PROGRAM [ARGS...]: which of the given code addresses PROGRAM reaches, in the
 * order it first reaches them. ADDRESSES holds hexadecimal addresses, one a line, in the executable's own
 * (non-PIE) address space: here, the start of every function section of dpuctl. Each gets a one-shot
 * breakpoint before the program's first instruction; a hit is written to OUT and the instruction put
 * back, so the program runs at nearly full speed (its peers' timeouts still hold). Used by
 * scripts/hot-sections.sh. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

struct breakpoint {
    uint64_t address;
    unsigned char original;
    int armed;
};

static int by_address(const void *a, const void *b) {
    uint64_t x = ((const struct breakpoint *)a)->address, y = ((const struct breakpoint *)b)->address;
    return x < y ? -1 : x > y;
}

/* Replaces the byte at `address` in the child, returning the old one through `old`. */
static int poke_byte(pid_t child, uint64_t address, unsigned char byte, unsigned char *old) {
    errno = 0;
    long word = ptrace(PTRACE_PEEKTEXT, child, (void *)address, NULL);
    if (errno != 0) return -1;
    if (old != NULL) *old = (unsigned char)(word & 0xff);
    word = (word & ~0xffL) | byte;
    return ptrace(PTRACE_POKETEXT, child, (void *)address, (void *)word) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: first-calls ADDRESSES OUT PROGRAM [ARGS...]\n");
        return 2;
    }
    FILE *list = fopen(argv[1], "r");
    FILE *out = fopen(argv[2], "w");
    if (list == NULL || out == NULL) {
        perror(list == NULL ? argv[1] : argv[2]);
        return 1;
    }
    size_t count = 0, capacity = 1 << 16;
    struct breakpoint *points = malloc(capacity * sizeof *points);
    char line[64];
    while (points != NULL && fgets(line, sizeof line, list) != NULL) {
        if (count == capacity) points = realloc(points, (capacity *= 2) * sizeof *points);
        if (points == NULL) break;
        points[count].address = strtoull(line, NULL, 16);
        points[count].armed = 0;
        if (points[count].address != 0) count++;
    }
    if (points == NULL) {
        fprintf(stderr, "first-calls: out of memory\n");
        return 1;
    }
    qsort(points, count, sizeof *points, by_address);
    size_t unique = 0;
    for (size_t i = 0; i < count; i++)
        if (unique == 0 || points[i].address != points[unique - 1].address) points[unique++] = points[i];
    count = unique;

    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0) _exit(126);
        execv(argv[3], argv + 3);
        _exit(127);
    }
    int status;
    if (waitpid(child, &status, 0) < 0 || !WIFSTOPPED(status)) {
        fprintf(stderr, "first-calls: %s did not start\n", argv[3]);
        return 1;
    }
    /* Stopped after execve: the executable is mapped, nothing of it has run. */
    size_t armed = 0;
    for (size_t i = 0; i < count; i++) {
        if (poke_byte(child, points[i].address, 0xcc, &points[i].original) == 0) {
            points[i].armed = 1;
            armed++;
        }
    }
    fprintf(stderr, "first-calls: %zu breakpoints\n", armed);
    int pass = 0;
    for (;;) {
        if (ptrace(PTRACE_CONT, child, NULL, (void *)(long)pass) < 0) break;
        if (waitpid(child, &status, 0) < 0 || WIFEXITED(status) || WIFSIGNALED(status)) break;
        pass = 0;
        if (!WIFSTOPPED(status)) continue;
        if (WSTOPSIG(status) != SIGTRAP) {
            pass = WSTOPSIG(status);
            continue;
        }
        struct user_regs_struct regs;
        if (ptrace(PTRACE_GETREGS, child, NULL, &regs) < 0) break;
        struct breakpoint key = {.address = regs.rip - 1};
        struct breakpoint *hit = bsearch(&key, points, count, sizeof *points, by_address);
        if (hit == NULL || !hit->armed) {
            pass = SIGTRAP; /* not ours */
            continue;
        }
        hit->armed = 0;
        fprintf(out, "%llx\n", (unsigned long long)hit->address);
        if (poke_byte(child, hit->address, hit->original, NULL) < 0) break;
        regs.rip = hit->address;
        if (ptrace(PTRACE_SETREGS, child, NULL, &regs) < 0) break;
    }
    if (fclose(out) != 0) {
        perror(argv[2]);
        return 1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
