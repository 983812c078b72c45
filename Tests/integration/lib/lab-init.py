"""pid 1 of a lab machine (lab.sh): reaps the orphans re-parented to it, and writes one line to the file
named by its argument for each that did not end well (a signal, or a non-zero status). A daemon that
detached (mount.qtfs, a rexec stand-in) has no other parent to see its end: without this, a test could
only tell that it had gone, not that it died of SIGPIPE or SIGSEGV.

The end is peeked at (WNOWAIT) before the reap, while /proc still has the zombie's name."""
import os
import signal
import sys

deaths_path = sys.argv[1]
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


def name_of(pid):
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return "?"


def reap_all():
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        name = name_of(info.si_pid)
        os.waitid(os.P_PID, info.si_pid, os.WEXITED)
        if info.si_code == os.CLD_EXITED:
            if info.si_status == 0:
                continue
            how = f"exited with status {info.si_status}"
        else:
            how = f"killed by {signal.Signals(info.si_status).name}" if info.si_status in signal.valid_signals() else f"killed by signal {info.si_status}"
            if info.si_code == os.CLD_DUMPED:
                how += " (core dumped)"
        with open(deaths_path, "a") as deaths:
            deaths.write(f"{name} (pid {info.si_pid} in the machine) {how}\n")


while True:
    reap_all()
    signal.sigtimedwait({signal.SIGCHLD}, 1.0)
