#!/usr/bin/env python3
"""The original C rexec client's wire behaviour (reference/rexec.md §6), for testing that rexec_server
still serves unchanged DPU images: one EXEC message with argv and a JSON file list carrying the stdin
pipe, two PIPE messages carrying the stdout and stderr pipes (one SCM_RIGHTS fd each, header in host byte
order), PIDMAP answered by HANDSHAKE '1', KILL with the shell-style status ends it (after what its pipes hold
then).

    original-rexec-client.py SOCKET PROGRAM [ARG...]     (REXEC_TEST_GATE=0 answers the gate with '0')

Unlike the original it closes the remote stdin at end of input, so that EOF can be tested.
"""
import json, os, select, socket, struct, sys

EXEC, KILL, PIPE, PIDMAP, HANDSHAKE = 0x5A5A, 0x5A5B, 0x5A5C, 0x5A5D, 0x5A5E


def header(kind, argc=0, pipefd=0, length=0):
    return struct.pack("<6i", kind, argc, pipefd, length, 0, 0)


def main():
    path, argv = sys.argv[1], sys.argv[2:]
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(path)
    except OSError:
        sys.exit(255)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    files = []
    for fd in range(3, 64):
        try:
            if os.get_inheritable(fd) and os.path.isfile("/proc/self/fd/%d" % fd):
                files.append({"Fd": fd, "Path": os.readlink("/proc/self/fd/%d" % fd), "Perm": 0, "Offset": 0})
        except OSError:
            pass
    payload = b"".join(a.encode() + b"\0" for a in argv) + json.dumps({"Files": files}).encode()
    socket.send_fds(conn, [header(EXEC, len(argv), 0, len(payload)) + payload], [stdin_r])
    socket.send_fds(conn, [header(PIPE, 0, 1)], [stdout_w])
    socket.send_fds(conn, [header(PIPE, 0, 2)], [stderr_w])
    for fd in (stdin_r, stdout_w, stderr_w):
        os.close(fd)

    sources = {conn.fileno(): None, stdout_r: 1, stderr_r: 2, 0: stdin_w}
    buffer = b""
    while True:
        readable, _, _ = select.select(list(sources), [], [])
        for fd in readable:
            if fd == conn.fileno():
                data = conn.recv(24 - len(buffer))
                if not data:
                    sys.exit(1)  # the original: connection lost -> 1
                buffer += data
                if len(buffer) < 24:
                    continue
                kind, _, _, _, exit_status, pid = struct.unpack("<6i", buffer)
                buffer = b""
                if kind == PIDMAP:
                    print("pid", pid, file=sys.stderr) if os.environ.get("REXEC_TEST_SHOW_PID") else None
                    conn.sendall(header(HANDSHAKE, 0, 0, 1) + os.environ.get("REXEC_TEST_GATE", "1").encode())
                elif kind == KILL:
                    # The original exits at once and may cut off output still in the pipes; this takes
                    # what is there now (all of it when the program has ended), then exits likewise.
                    for reader in (stdout_r, stderr_r):
                        if reader in sources:
                            os.set_blocking(reader, False)
                            try:
                                while data := os.read(reader, 65536):
                                    os.write(sources[reader], data)
                            except BlockingIOError:
                                pass
                    sys.exit(exit_status)
            elif fd == 0:
                data = os.read(0, 65536)
                if data:
                    os.write(stdin_w, data)
                else:
                    os.close(stdin_w)
                    del sources[0]
            else:
                data = os.read(fd, 65536)
                if data:
                    os.write(sources[fd], data)
                else:
                    del sources[fd]


main()
