/*
 * libudsproxy.so: LD_PRELOAD this into a process so that a connect() to a unix socket that fails locally
 * (ENOENT, ECONNREFUSED) is carried by udsproxyd to the same path on the peer machine.
 *
 * The library exports exactly one symbol, connect(). Everything else is internal. The control protocol it
 * speaks to the local udsproxyd is documented in Sources/UDSProxy/README.md and defined, with its decoder
 * tests, in Sources/DPUWire/UDSProxy+Messages.swift (UDSProxyControlRequest): keep the three in step.
 */
#pragma once

/* The daemon's control socket; the environment variable below overrides it (tests, two daemons on one
 * machine). The path is the original's, so one daemon serves both this library and the original one. */
#define UDSPROXY_CONTROL_PATH "/var/run/qtfs/remote_uds.sock"
#define UDSPROXY_CONTROL_ENV "DPUCTL_UDSPROXY_SOCKET"

/* Request: "UDSP", version, flags, u16 path length (big-endian), path bytes (no NUL). */
#define UDSPROXY_REQUEST_MAGIC "UDSP"
#define UDSPROXY_REQUEST_VERSION 1
#define UDSPROXY_REQUEST_HEADER 8
/* Answer at once with a socket that becomes writable when the remote connect is done. */
#define UDSPROXY_FLAG_NONBLOCKING 0x01
/* Reply: i32 big-endian, 0 = success with the socket attached (SCM_RIGHTS), else an errno. */
#define UDSPROXY_REPLY_SIZE 4
