/* argc and argv for Swift's CommandLine, as the kernel passed them to the process.
 *
 * The Swift runtime finds them through _swift_stdlib_getUnsafeArgvArgc. On Linux its own definition
 * (libswiftCore.a's CommandLine.cpp.o) comes with a static constructor that runs before main in every
 * process: it reads all of /proc/self/maps and sscanf()s each line to find the stack, then walks back
 * from environ to argv (~40 us here, on every dpuctl start: `rexec /bin/true` is one). glibc already hands
 * argc and argv to every function in the executable's .preinit_array, before any constructor runs; these
 * two definitions keep that and answer from it. Defined here, the linker never pulls CommandLine.cpp.o
 * out of the archive (a toolchain that adds a symbol to it fails the link with a duplicate definition
 * instead of changing behaviour quietly). The override is the runtime's own contract, kept as is. */
#include <stddef.h>

static char **processArgv;
static int processArgc;
static char **overrideArgv;
static int overrideArgc;

static void captureArguments(int argc, char **argv, char **envp) {
    (void)envp;
    processArgc = argc;
    processArgv = argv;
}

__attribute__((section(".preinit_array"), used)) static void (*const captureArgumentsEntry)(int, char **, char **) =
    captureArguments;

__attribute__((visibility("hidden"))) char **_swift_stdlib_getUnsafeArgvArgc(int *outArgLen) {
    if (overrideArgv != NULL) {
        *outArgLen = overrideArgc;
        return overrideArgv;
    }
    static char *empty[] = {NULL};
    if (processArgv == NULL) {  /* not run from an executable's start (never in dpuctl) */
        *outArgLen = 0;
        return empty;
    }
    *outArgLen = processArgc;
    return processArgv;
}

__attribute__((visibility("hidden"))) void _swift_stdlib_overrideUnsafeArgvArgc(char **argv, int argc) {
    overrideArgv = argv;
    overrideArgc = argc;
}
