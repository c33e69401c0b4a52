"""The system console and a virtual console held open, the VT being the
session's controlling terminal (zdtm console, vt).

    console_vt.py DIR

Makes DIR/console (5:1) and DIR/vt (4:5), opens the console read-only
(fd 3) and the VT read-write without O_NOCTTY (fd 4): this process, a
session leader without a terminal, takes it as its controlling terminal.
A child is put in a process group of its own, made the VT's foreground
group.  Prints "ready".  On SIGTERM: both fds are on their nodes, the VT
is this session's controlling terminal (/proc/self/stat) with the child's
group in the foreground (TIOCGPGRP, TIOCGSID); PASS or FAIL.
"""
import fcntl
import os
import signal
import struct
import sys
import time

TIOCGSID = 0x5429


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def main() -> int:
    d = sys.argv[1]
    os.mknod(f"{d}/console", 0o600 | 0o020000, os.makedev(5, 1))
    os.mknod(f"{d}/vt", 0o600 | 0o020000, os.makedev(4, 5))
    os.closerange(3, 64)
    if os.open(f"{d}/console", os.O_RDONLY) != 3 or os.open(f"{d}/vt", os.O_RDWR) != 4:
        say("FAIL: not fds 3 and 4")
        return 1
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        os.closerange(3, 5)
        while True:
            time.sleep(1)
    os.setpgid(child, child)
    os.tcsetpgrp(4, child)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say(f"ready {child}")
    while not stop:
        time.sleep(0.05)
    err = None
    with open("/proc/self/stat") as f:
        tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
    sid = struct.unpack("i", fcntl.ioctl(4, TIOCGSID, bytes(4)))[0]
    if os.fstat(3).st_rdev != os.makedev(5, 1) or os.fstat(4).st_rdev != os.makedev(4, 5):
        err = "the fds are on other devices"
    elif tty_nr != os.makedev(4, 5):
        err = f"controlling terminal {tty_nr:#x}, not 4:5"
    elif sid != os.getsid(0):
        err = f"the VT is session {sid}'s"
    elif os.tcgetpgrp(4) != child:
        err = f"foreground group {os.tcgetpgrp(4)}, not {child}"
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    say("FAIL: " + err if err else "PASS")
    return 1 if err else 0


if __name__ == "__main__":
    sys.exit(main())
