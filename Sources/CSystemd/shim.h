#pragma once
/* libsystemd's daemon API. It is not linked: DPUSystemd loads libsystemd.so.0 with dlopen the first
 * time a daemon needs it, because linking it (and the compression and crypto libraries it pulls in)
 * adds about 0.6 ms to every start of dpuctl, and the rexec client starts dpuctl on every remote exec.
 * The declarations here give the types the loaded symbols are called with. */
#include <systemd/sd-daemon.h>
#include <dlfcn.h>

typedef int (*cdpu_sd_notify_fn)(int unset_environment, const char *state);
typedef int (*cdpu_sd_listen_fds_with_names_fn)(int unset_environment, char ***names);
typedef int (*cdpu_sd_watchdog_enabled_fn)(int unset_environment, uint64_t *usec);
