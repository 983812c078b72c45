#pragma once
/* Pin the API before the include: below 312, fuse_session_loop_mt is a macro Swift cannot call. */
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

/* FUSE_ARGS_INIT is a macro; argv[0] must be the program name. */
static inline struct fuse_args cfuse_args(int argc, char **argv) {
    struct fuse_args a = FUSE_ARGS_INIT(argc, argv);
    return a;
}
