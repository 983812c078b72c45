#!/usr/bin/python3
"""QEMU's part in rexec-passfd.sh, run on the host through rexec: it gets an inherited listening unix
socket at fd 29 (libvirt's monitor socket) and serves three connections, one at a time.

Each command is one line sent with sendmsg, its fds (if any) in the same message, as libvirt sends
`getfd`. A command's line and its fds must arrive in one recvmsg; otherwise the reply is an error.

  write TEXT   + 1 fd   writes TEXT to the fd, closes it     -> "ok write KIND"
  read         + 1 fd   reads the fd to its end              -> "ok read KIND DATA"
  echo         + 1 fd   (a socket) sends "ping", reads to its end -> "ok echo KIND DATA"
  give                  replies "take" with a pipe's write end, reads the pipe to its end
                                                             -> "ok give DATA"
  ping                                                       -> "pong"

KIND is what the fd is here: fifo, file or socket. At the end it prints one line per connection.
"""
import array
import os
import socket
import stat
import sys

MAX_FDS = 64


def kind(fd):
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def read_all(fd):
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data.decode()


def receive(conn):
    """One recvmsg: (bytes, fds)."""
    data, ancillary, flags, _ = conn.recvmsg(4096, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = array.array("i")
    for level, kind_, payload in ancillary:
        if level == socket.SOL_SOCKET and kind_ == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def serve(conn):
    """Serves one connection; returns what happened on it."""
    done = []
    while True:
        data, fds = receive(conn)
        if not data:
            for fd in fds:
                os.close(fd)
            return "ended after " + (", ".join(done) if done else "no command")
        line = data.decode(errors="replace")
        if not line.endswith("\n") or line.count("\n") != 1:
            reply = "error: %r is not one whole command in one recvmsg" % line
        else:
            words = line.split()
            command, argument = words[0], " ".join(words[1:])
            wants_fd = command in ("write", "read", "echo")
            if wants_fd and len(fds) != 1:
                reply = "error: %s came with %d fds in its recvmsg" % (command, len(fds))
            elif not wants_fd and fds:
                reply = "error: %s came with fds" % command
            elif command == "write":
                reply = "ok write " + kind(fds[0])
                os.write(fds[0], argument.encode())
            elif command == "read":
                reply = "ok read %s %s" % (kind(fds[0]), read_all(fds[0]))
            elif command == "echo":
                sock = socket.socket(fileno=os.dup(fds[0]))
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := sock.recv(100):
                    answer += chunk
                sock.close()
                reply = "ok echo %s %s" % (kind(fds[0]), answer.decode())
            elif command == "give":
                read_end, write_end = os.pipe()
                conn.sendmsg([b"take\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [write_end]))])
                os.close(write_end)
                reply = "ok give " + read_all(read_end)
                os.close(read_end)
            elif command == "ping":
                reply = "pong"
            else:
                reply = "error: unknown command " + command
            done.append(command)
        for fd in fds:
            os.close(fd)
        conn.sendall((reply + "\n").encode())


listener = socket.socket(fileno=29)
results = []
for number in range(4):
    conn, _ = listener.accept()
    try:
        results.append("connection %d %s" % (number, serve(conn)))
    except OSError as error:
        results.append("connection %d failed: %s" % (number, error))
    conn.close()
for line in results:
    print("program:", line)
sys.stdout.flush()
