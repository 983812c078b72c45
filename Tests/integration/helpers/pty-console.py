#!/usr/bin/env python3
"""Both ends of a console for qtfs-pty.sh.

  pty-console.py host NAMEFILE LOG
      Like QEMU's -chardev pty: opens a pseudo-terminal, closes its terminal side (QEMU keeps only the
      controlling side), writes the terminal's path to NAMEFILE, then echoes every byte it reads back
      unchanged and appends it to LOG. The terminal side is left in its default (cooked) modes: whoever
      opens it must make it raw. Prints `connected` / `disconnected` when the terminal side is opened or
      closed by someone (POLLHUP goes away, comes back).

  pty-console.py console [--chroot DIR] check|hold PATH
      Opens PATH the way libvirt's virsh console does (O_RDWR|O_NOCTTY, tcgetattr, cfmakeraw, tcsetattr)
      after an optional chroot. check: writes every byte value and CR/LF pairs, reads the echo, prints
      `ok N` if it came back unchanged. hold: prints `open`, then reads until the end and prints `eof`
      (read gave 0) or `eio`.
"""
import errno
import os
import select
import stat
import sys
import termios
import time


def host(name_file, log_file):
    controller, terminal = os.openpty()
    name = os.ttyname(terminal)
    os.close(terminal)
    with open(name_file + ".tmp", "w") as f:
        f.write(name + "\n")
    os.rename(name_file + ".tmp", name_file)
    log = open(log_file, "ab", buffering=0)
    poller = select.poll()
    poller.register(controller, select.POLLIN)
    connected = False
    while True:
        events = poller.poll(50)
        hung_up = any(e & select.POLLHUP for _, e in events)
        if connected != (not hung_up):
            connected = not hung_up
            print("connected" if connected else "disconnected", flush=True)
        if hung_up:
            time.sleep(0.05)
            continue
        if not any(e & select.POLLIN for _, e in events):
            continue
        try:
            data = os.read(controller, 65536)
        except OSError as e:
            if e.errno == errno.EIO:
                continue
            raise
        log.write(data)
        while data:
            data = data[os.write(controller, data):]


def make_raw(mode):
    # cfmakeraw(3), as libvirt's virFDStreamOpenPTY applies it.
    mode[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INLCR
                 | termios.IGNCR | termios.ICRNL | termios.IXON)
    mode[1] &= ~termios.OPOST
    mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    mode[2] &= ~(termios.CSIZE | termios.PARENB)
    mode[2] |= termios.CS8
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0


def console(args):
    if args[0] == "--chroot":
        os.chroot(args[1])
        os.chdir("/")
        args = args[2:]
    action, path = args
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    if not stat.S_ISCHR(os.fstat(fd).st_mode) or not os.isatty(fd):
        print("not a terminal", flush=True)
        return 1
    mode = termios.tcgetattr(fd)
    make_raw(mode)
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    if action == "hold":
        print("open", flush=True)
        try:
            while os.read(fd, 4096):
                pass
            print("eof", flush=True)
        except OSError as e:
            print("eio" if e.errno == errno.EIO else "error %s" % e, flush=True)
        return 0
    payload = bytes(range(256)) * 4 + b"\r\n\n\r" * 64
    view = payload
    while view:
        view = view[os.write(fd, view):]
    received = b""
    deadline = time.monotonic() + 10
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while len(received) < len(payload) and time.monotonic() < deadline:
        if poller.poll(200):
            received += os.read(fd, 65536)
    os.close(fd)
    if received == payload:
        print("ok %d" % len(received), flush=True)
        return 0
    first = next((i for i in range(min(len(received), len(payload))) if received[i] != payload[i]), None)
    print("sent %d bytes, got %d back, first difference at %s" % (len(payload), len(received), first), flush=True)
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "host":
        host(sys.argv[2], sys.argv[3])
    else:
        sys.exit(console(sys.argv[2:]))
