/* libfuse3 loaded on first use (see include/shim.h): each function QTFSFuse calls is defined here with
 * libfuse's prototype and calls the library's symbol of the version a link would bind (dlvsym). */
#define _GNU_SOURCE
#include "shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define CFUSE_FUNCTIONS(X) \
    X(fuse_session_new, "FUSE_3.0") X(fuse_session_mount, "FUSE_3.0") X(fuse_session_unmount, "FUSE_3.0") \
    X(fuse_session_exit, "FUSE_3.0") X(fuse_session_destroy, "FUSE_3.0") X(fuse_session_loop_mt, "FUSE_3.12") \
    X(fuse_loop_cfg_create, "FUSE_3.12") X(fuse_loop_cfg_destroy, "FUSE_3.12") \
    X(fuse_loop_cfg_set_idle_threads, "FUSE_3.12") X(fuse_loop_cfg_set_max_threads, "FUSE_3.12") \
    X(fuse_opt_free_args, "FUSE_3.0") X(fuse_req_userdata, "FUSE_3.0") X(fuse_req_ctx, "FUSE_3.0") \
    X(fuse_req_interrupt_func, "FUSE_3.0") X(fuse_reply_none, "FUSE_3.0") X(fuse_reply_err, "FUSE_3.0") \
    X(fuse_reply_entry, "FUSE_3.0") X(fuse_reply_create, "FUSE_3.0") X(fuse_reply_attr, "FUSE_3.0") \
    X(fuse_reply_readlink, "FUSE_3.0") X(fuse_reply_open, "FUSE_3.0") X(fuse_reply_write, "FUSE_3.0") \
    X(fuse_reply_buf, "FUSE_3.0") X(fuse_reply_statfs, "FUSE_3.0") X(fuse_reply_xattr, "FUSE_3.0") \
    X(fuse_reply_poll, "FUSE_3.0") X(fuse_add_direntry, "FUSE_3.0") X(fuse_add_direntry_plus, "FUSE_3.0") \
    X(fuse_lowlevel_notify_store, "FUSE_3.0") X(fuse_lowlevel_notify_poll, "FUSE_3.0") \
    X(fuse_pollhandle_destroy, "FUSE_3.0")

/* One pointer per function, typed from libfuse's own declaration. */
static struct {
#define CFUSE_FIELD(name, version) __typeof__(&name) name;
    CFUSE_FUNCTIONS(CFUSE_FIELD)
#undef CFUSE_FIELD
} fns;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char load_error[512];

static void load(void) {
    void *handle = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        snprintf(load_error, sizeof load_error, "cannot load libfuse3.so.3 (install fuse3/libfuse3-3): %s", dlerror());
    }
#define CFUSE_RESOLVE(name, version) \
    if (handle != NULL && load_error[0] == 0) { \
        fns.name = (__typeof__(fns.name))dlvsym(handle, #name, version); \
        if (fns.name == NULL) snprintf(load_error, sizeof load_error, "libfuse3.so.3 lacks %s@%s (libfuse 3.12 or later is needed)", #name, version); \
    }
    CFUSE_FUNCTIONS(CFUSE_RESOLVE)
#undef CFUSE_RESOLVE
    if (load_error[0] != 0) fprintf(stderr, "dpuctl: %s\n", load_error);
}

const char *cfuse_load_error(void) {
    pthread_once(&once, load);
    return load_error[0] != 0 ? load_error : NULL;
}

/* Every function but fuse_session_new runs only once a session exists, so libfuse3 is loaded by then. */
static void loaded(void) {
    if (cfuse_load_error() != NULL) abort();
}

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op, size_t op_size, void *userdata) {
    if (cfuse_load_error() != NULL) {
        errno = ENOENT;
        return NULL;
    }
    return fns.fuse_session_new(args, op, op_size, userdata);
}

void fuse_opt_free_args(struct fuse_args *args) {
    /* Also on fuse_session_new's failure path: nothing was allocated if libfuse3 never loaded. */
    if (cfuse_load_error() == NULL) fns.fuse_opt_free_args(args);
}

int fuse_session_mount(struct fuse_session *se, const char *mountpoint) { loaded(); return fns.fuse_session_mount(se, mountpoint); }
void fuse_session_unmount(struct fuse_session *se) { loaded(); fns.fuse_session_unmount(se); }
void fuse_session_exit(struct fuse_session *se) { loaded(); fns.fuse_session_exit(se); }
void fuse_session_destroy(struct fuse_session *se) { loaded(); fns.fuse_session_destroy(se); }
int fuse_session_loop_mt(struct fuse_session *se, struct fuse_loop_config *config) { loaded(); return fns.fuse_session_loop_mt(se, config); }
struct fuse_loop_config *fuse_loop_cfg_create(void) { loaded(); return fns.fuse_loop_cfg_create(); }
void fuse_loop_cfg_destroy(struct fuse_loop_config *config) { loaded(); fns.fuse_loop_cfg_destroy(config); }
void fuse_loop_cfg_set_idle_threads(struct fuse_loop_config *config, unsigned int value) { loaded(); fns.fuse_loop_cfg_set_idle_threads(config, value); }
void fuse_loop_cfg_set_max_threads(struct fuse_loop_config *config, unsigned int value) { loaded(); fns.fuse_loop_cfg_set_max_threads(config, value); }
void *fuse_req_userdata(fuse_req_t req) { loaded(); return fns.fuse_req_userdata(req); }
const struct fuse_ctx *fuse_req_ctx(fuse_req_t req) { loaded(); return fns.fuse_req_ctx(req); }
void fuse_req_interrupt_func(fuse_req_t req, fuse_interrupt_func_t func, void *data) { loaded(); fns.fuse_req_interrupt_func(req, func, data); }
void fuse_reply_none(fuse_req_t req) { loaded(); fns.fuse_reply_none(req); }
int fuse_reply_err(fuse_req_t req, int err) { loaded(); return fns.fuse_reply_err(req, err); }
int fuse_reply_entry(fuse_req_t req, const struct fuse_entry_param *e) { loaded(); return fns.fuse_reply_entry(req, e); }
int fuse_reply_create(fuse_req_t req, const struct fuse_entry_param *e, const struct fuse_file_info *fi) { loaded(); return fns.fuse_reply_create(req, e, fi); }
int fuse_reply_attr(fuse_req_t req, const struct stat *attr, double attr_timeout) { loaded(); return fns.fuse_reply_attr(req, attr, attr_timeout); }
int fuse_reply_readlink(fuse_req_t req, const char *link) { loaded(); return fns.fuse_reply_readlink(req, link); }
int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi) { loaded(); return fns.fuse_reply_open(req, fi); }
int fuse_reply_write(fuse_req_t req, size_t count) { loaded(); return fns.fuse_reply_write(req, count); }
int fuse_reply_buf(fuse_req_t req, const char *buf, size_t size) { loaded(); return fns.fuse_reply_buf(req, buf, size); }
int fuse_reply_statfs(fuse_req_t req, const struct statvfs *stbuf) { loaded(); return fns.fuse_reply_statfs(req, stbuf); }
int fuse_reply_xattr(fuse_req_t req, size_t count) { loaded(); return fns.fuse_reply_xattr(req, count); }
int fuse_reply_poll(fuse_req_t req, unsigned revents) { loaded(); return fns.fuse_reply_poll(req, revents); }
size_t fuse_add_direntry(fuse_req_t req, char *buf, size_t bufsize, const char *name, const struct stat *stbuf, off_t off) {
    loaded();
    return fns.fuse_add_direntry(req, buf, bufsize, name, stbuf, off);
}
size_t fuse_add_direntry_plus(fuse_req_t req, char *buf, size_t bufsize, const char *name, const struct fuse_entry_param *e, off_t off) {
    loaded();
    return fns.fuse_add_direntry_plus(req, buf, bufsize, name, e, off);
}
int fuse_lowlevel_notify_store(struct fuse_session *se, fuse_ino_t ino, off_t offset, struct fuse_bufvec *bufv, enum fuse_buf_copy_flags flags) {
    loaded();
    return fns.fuse_lowlevel_notify_store(se, ino, offset, bufv, flags);
}
int fuse_lowlevel_notify_poll(struct fuse_pollhandle *ph) { loaded(); return fns.fuse_lowlevel_notify_poll(ph); }
void fuse_pollhandle_destroy(struct fuse_pollhandle *ph) { loaded(); fns.fuse_pollhandle_destroy(ph); }
