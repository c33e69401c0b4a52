"""dead_pidfds.py: pidfds of processes already reaped.

    python3 dead_pidfds.py

Forks two children A and B, opens pidfds: fd 10 and fd 11 (PIDFD_NONBLOCK)
on A, fd 12 on B; kills and reaps both, prints "ready".
SIGTERM: fds 10 and 11 share one pidfs inode, fd 12 has another, each
reads "Pid: -1" in its fdinfo, polls readable (the process exited),
fd 11 is O_NONBLOCK and fd 10 is not; PASS or "FAIL: ..."
"""
import os
import select
import signal
import sys
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def child() -> int:
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(100)
    return pid


def main() -> int:
    signal.signal(signal.SIGTERM, on_term)
    a, b = child(), child()
    for fd, pid, flags in ((10, a, 0), (11, a, os.O_NONBLOCK), (12, b, 0)):
        p = os.pidfd_open(pid, flags)
        os.dup2(p, fd, inheritable=False)
        os.close(p)
    for pid in (a, b):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    say("ready")
    while not stop:
        time.sleep(0.05)
    errs = []
    ino = {fd: os.fstat(fd).st_ino for fd in (10, 11, 12)}
    if ino[10] != ino[11]:
        errs.append(f"fds 10 and 11 (one process) have inodes {ino[10]} and {ino[11]}")
    if ino[10] == ino[12]:
        errs.append("fds 10 and 12 (two processes) share an inode")
    for fd in (10, 11, 12):
        with open(f"/proc/self/fdinfo/{fd}") as f:
            if "Pid:\t-1" not in f.read():
                errs.append(f"fd {fd}: fdinfo does not say Pid -1")
        if not select.select([fd], [], [], 0)[0]:
            errs.append(f"fd {fd}: not readable (an exited process's pidfd is)")
    import fcntl
    if not fcntl.fcntl(11, fcntl.F_GETFL) & os.O_NONBLOCK or fcntl.fcntl(10, fcntl.F_GETFL) & os.O_NONBLOCK:
        errs.append("O_NONBLOCK is not on fd 11 only")
    if errs:
        say("FAIL: " + "; ".join(errs))
        return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
