#!/usr/bin/python3
"""libvirt's `virsh save` and `virsh restore` of a QEMU that rexec runs elsewhere, done as libvirt 9.0
does them, on the DPU side of rexec-passfd.sh.

  passfd-qemu.py save SOCKET FILE -- COMMAND...      QEMU's monitor is fd 29 (a listening socket); FILE
                                                     gets a header, then QEMU's migration stream through
                                                     an fd passed with `getfd` (`migrate fd:migrate`)
  passfd-qemu.py restore SOCKET FILE -- COMMAND...   FILE, open read-only past its header, is inherited
                                                     as fd 30; `-incoming defer`, then `migrate-incoming
                                                     fd:30`

Prints one line: "save completed" / "restore completed, status paused", or what went wrong.
"""
import array
import json
import os
import socket
import subprocess
import sys
import time

mode, path, file = sys.argv[1:4]
command = sys.argv[5:]
HEADER = b"LIBVIRT-LIKE-HEADER:"


class Monitor:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        for _ in range(200):
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        self.buffer = b""
        self.message()  # the greeting
        self.execute("qmp_capabilities")

    def message(self):
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the monitor connection ended")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def execute(self, name, arguments=None, fds=()):
        request = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], ancillary)
        while True:
            answer = self.message()
            if "event" in answer:
                continue
            if "error" in answer:
                raise RuntimeError("%s: %s" % (name, answer["error"].get("desc")))
            return answer.get("return")

    def wait_for_migration(self):
        for _ in range(600):
            status = self.execute("query-migrate").get("status")
            if status in ("completed", "failed", "cancelled"):
                return status
            time.sleep(0.05)
        return "timed out"


def run():
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    os.dup2(listener.fileno(), 29)
    os.set_inheritable(29, True)
    passed = [29]
    if mode == "restore":
        saved = os.open(file, os.O_RDONLY)
        os.lseek(saved, len(HEADER), os.SEEK_SET)
        os.dup2(saved, 30)
        os.set_inheritable(30, True)
        os.close(saved)
        passed.append(30)
    child = subprocess.Popen(command, pass_fds=passed)
    listener.close()
    for fd in passed:
        os.close(fd)
    try:
        monitor = Monitor(path)
        if mode == "save":
            # A running VM, as libvirt saves one (restored, it is paused until libvirt continues it).
            monitor.execute("cont")
            target = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(target, HEADER)
            monitor.execute("getfd", {"fdname": "migrate"}, fds=[target])
            os.close(target)
            monitor.execute("migrate", {"uri": "fd:migrate"})
            result = "save " + monitor.wait_for_migration()
        else:
            monitor.execute("migrate-incoming", {"uri": "fd:30"})
            result = "restore " + monitor.wait_for_migration()
            result += ", status " + monitor.execute("query-status").get("status", "?")
        try:
            monitor.execute("quit")
        except (EOFError, OSError):
            pass
    except Exception as error:  # noqa: BLE001 - one line for the test to show
        result = "%s failed: %s" % (mode, error)
    try:
        status = child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        status = "killed after 30 s"
    print(result, "/ QEMU exit", status)


run()
