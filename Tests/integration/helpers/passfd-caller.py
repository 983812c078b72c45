#!/usr/bin/python3
"""libvirt's part in rexec-passfd.sh, on the DPU: binds the monitor socket, starts
`rexec ... python3 passfd-program.py` with it as fd 29, connects and passes fds with commands as libvirt
passes the save file with `getfd`.

  passfd-caller.py SOCKET LOCALDIR SHAREDFILE -- REXEC ARGS...

LOCALDIR is on the DPU only; SHAREDFILE is a path on a qtfs mount of a host directory. Prints one line
per result; the test compares them.
"""
import array
import os
import select
import socket
import subprocess
import sys
import time

path, local, shared = sys.argv[1:4]
command = sys.argv[5:]


def say(*words):
    print(*words)
    sys.stdout.flush()


def fds_of(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def steady(pid):
    """The client's fd count once it has not changed for half a second."""
    counts = []
    while len(counts) < 10 or len(set(counts[-10:])) > 1:
        counts.append(fds_of(pid))
        time.sleep(0.05)
    return counts[-1]


def settled(pid, baseline):
    """The client's fd count once it is back at `baseline` (or what it is after 10 s)."""
    for _ in range(200):
        count = fds_of(pid)
        if count == baseline:
            return count
        time.sleep(0.05)
    return fds_of(pid)


def send(conn, line, fds=()):
    conn.sendmsg([line.encode() + b"\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [])


def reply(conn):
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                return "(end of connection)"
            data += chunk
    except socket.timeout:
        return data.decode() + "(timed out)"
    return data.decode().strip()


def read_all(fd):
    """Reads to end of file; a copy of the write end held somewhere shows as "(timed out)"."""
    data = b""
    deadline = time.monotonic() + 10
    while True:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            return data.decode() + "(timed out)"
        chunk = os.read(fd, 65536)
        if not chunk:
            return data.decode()
        data += chunk


def wait_for_contents(file, expected):
    for _ in range(200):
        with open(file) as f:
            text = f.read()
        if text == expected:
            break
        time.sleep(0.05)
    return text


def connect():
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(20)
    conn.connect(path)
    return conn


listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
listener.listen()
os.dup2(listener.fileno(), 29)
os.set_inheritable(29, True)
child = subprocess.Popen(command, pass_fds=[29])
listener.close()
os.close(29)

# Connection 0: the client's fds with the program running and no connection open.
conn = connect()
send(conn, "ping")
say("ping:", reply(conn))
conn.close()
baseline = steady(child.pid)

# Connection 1: every kind of fd, both ways.
conn = connect()

# (a) the write end of a pipe: the program's writes arrive here.
read_end, write_end = os.pipe()
send(conn, "write into-the-pipe", [write_end])
os.close(write_end)
say("pipe:", reply(conn), "/", read_all(read_end))
os.close(read_end)

# (b) a file only the DPU has, open for writing after a header: streamed, lands at its offset here.
out = os.open(local + "/saved", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(out, b"HEADER:")
send(conn, "write guest-memory", [out])
os.close(out)
say("dpu file written:", reply(conn), "/", wait_for_contents(local + "/saved", "HEADER:guest-memory"))

# (c) a read-only fd of a DPU file, past its header: the program reads the rest.
with open(local + "/restore", "w") as f:
    f.write("HEADER:saved-state")
source = os.open(local + "/restore", os.O_RDONLY)
os.lseek(source, 7, os.SEEK_SET)
send(conn, "read", [source])
os.close(source)
say("dpu file read:", reply(conn))

# (d) a file on a qtfs mount: the host opens its own file by path (a regular file there, not a pipe).
out = os.open(shared, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(out, b"HEADER:")
send(conn, "write by-path", [out])
os.close(out)
say("shared file:", reply(conn))

# (e) a connected socket, both ways.
ours, theirs = socket.socketpair()
send(conn, "echo", [theirs.fileno()])
theirs.close()
ours.settimeout(20)
try:
    heard = ours.recv(100).decode()
except socket.timeout:
    heard = "(timed out)"
ours.sendall(b"pong")
ours.shutdown(socket.SHUT_WR)
say("socket:", reply(conn), "/ heard", heard)
ours.close()

# (f) the other way: the program passes the write end of its pipe with its reply.
send(conn, "give")
try:
    data, ancillary, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
except socket.timeout:
    data, ancillary = b"(timed out)", []
given = array.array("i")
for level, kind, payload in ancillary:
    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
        given.frombytes(payload)
say("given:", data.decode().strip(), "with", len(given), "fd")
for fd in given:
    os.write(fd, b"from-the-dpu")
    os.close(fd)
say("give:", reply(conn))
conn.close()
say("client fds after connection 1:", "baseline" if settled(child.pid, baseline) == baseline else fds_of(child.pid) - baseline)

# Connection 2: more fds than one message may carry: that connection is reset, none is kept.
conn = connect()
read_end, write_end = os.pipe()
copies = [os.dup(write_end) for _ in range(17)]
send(conn, "write too-many", copies)
for fd in copies + [write_end]:
    os.close(fd)
try:
    say("too many:", reply(conn))
except ConnectionResetError:
    say("too many: (end of connection)")
conn.close()
ready, _, _ = select.select([read_end], [], [], 10)
say("too many, the pipe's reader:", "end of file" if ready and os.read(read_end, 100) == b"" else "still held")
os.close(read_end)
say("client fds after connection 2:", "baseline" if settled(child.pid, baseline) == baseline else fds_of(child.pid) - baseline)

# Connection 3: the session goes on.
conn = connect()
send(conn, "ping")
say("after the reset:", reply(conn))
conn.close()
try:
    say("exit", child.wait(timeout=20))
except subprocess.TimeoutExpired:
    child.kill()
    say("exit (timed out)", child.wait())
