#pragma once
/* libfuse's low-level API. libfuse3 is not linked: fuse3.c loads libfuse3.so.3 with dlopen the first time
 * one of these functions is called (only the qtfs mount does), because a linked libfuse3 costs every
 * start of dpuctl about 36 page faults and a library to find, map and relocate, and the rexec client
 * starts dpuctl on every remote exec (bench/RESULTS.md, rexec). The functions QTFSFuse calls are
 * defined in fuse3.c with the prototypes below and forward to the loaded library.
 * Pin the API before the include: below 312, fuse_session_loop_mt is a macro Swift cannot call. */
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>

/* FUSE_ARGS_INIT is a macro; argv[0] must be the program name. */
static inline struct fuse_args cfuse_args(int argc, char **argv) {
    struct fuse_args a = FUSE_ARGS_INIT(argc, argv);
    return a;
}

/* Why libfuse3 could not be loaded (also said on stderr once), or NULL when it is loaded. Loads it if
 * that has not been tried yet. fuse_session_new returns NULL when it cannot be loaded. */
const char *cfuse_load_error(void);
