"""A session whose controlling terminal is a pts whose master is outside
the tree (the test's; LXC's console as the container's init has it).

    ext_tty.py PTS GO [CTTY]

Opens PTS read-write without O_NOCTTY (this process, a session leader
without a terminal, takes it as its controlling terminal) as fds 0, 1 and
2 (its stdout at start, kept as fd 3, gets its own lines), turns ECHO off and sets the
window size to 33x77.  A child in a process group of its own is made the
terminal's foreground group; once the file GO exists it echoes every
line it reads from the terminal as "echo: LINE" (until then what is typed
stays queued).  The leader writes "tick N" to the terminal every
0.05 s.  Prints "ready CHILD" there.  On SIGTERM: fds 0-2 are one open
file description of this session's controlling terminal (/proc/self/stat,
TIOCGSID) with the child's group in the foreground, ECHO still off and the
window size 33x77; PASS or FAIL there.
"""
import fcntl
import os
import signal
import struct
import sys
import termios
import time

TIOCGSID = 0x5429


def main() -> int:
    pts, go = sys.argv[1], sys.argv[2]
    o = os.dup(1)

    def say(text: str) -> None:
        os.write(o, (text + "\n").encode())
    if len(sys.argv) > 3:
        # CTTY: taken as the controlling terminal and closed again; PTS is
        # then only fds 0-2 (a pts at the same index of another devpts
        # instance, for the dump to tell apart); only "ready" is printed
        os.close(os.open(sys.argv[3], os.O_RDWR))
        fd = os.open(pts, os.O_RDWR | os.O_NOCTTY)
        for n in (0, 1, 2):
            os.dup2(fd, n)
        say("ready 0")
        while True:
            time.sleep(1)
    fd = os.open(pts, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(fd, n)
    if fd > 2:
        os.close(fd)
    t = termios.tcgetattr(0)
    t[3] &= ~termios.ECHO
    termios.tcsetattr(0, termios.TCSANOW, t)
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("4H", 33, 77, 0, 0))
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        os.close(o)
        while not os.path.exists(go):
            time.sleep(0.05)
        for line in sys.stdin:
            sys.stdout.write("echo: " + line)
            sys.stdout.flush()
        os._exit(0)
    os.setpgid(child, child)
    os.tcsetpgrp(0, child)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say(f"ready {child}")
    i = 0
    while not stop:
        i += 1
        os.write(1, f"tick {i}\n".encode())
        time.sleep(0.05)
    err = None
    with open("/proc/self/stat") as f:
        tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
    sid = struct.unpack("i", fcntl.ioctl(0, TIOCGSID, bytes(4)))[0]
    ws = struct.unpack("4H", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))
    ino = {os.readlink(f"/proc/self/fd/{n}") for n in (0, 1, 2)}
    fdinfo = {open(f"/proc/self/fdinfo/{n}").read().split("ino:")[1] for n in (0, 1, 2)}
    if tty_nr != os.fstat(0).st_rdev:
        err = f"controlling terminal {tty_nr:#x}, not fd 0's {os.fstat(0).st_rdev:#x}"
    elif sid != os.getsid(0):
        err = f"the terminal is session {sid}'s"
    elif os.tcgetpgrp(0) != child:
        err = f"foreground group {os.tcgetpgrp(0)}, not {child}"
    elif termios.tcgetattr(0)[3] & termios.ECHO:
        err = "ECHO is on again"
    elif ws[:2] != (33, 77):
        err = f"window size {ws[:2]}"
    elif len(ino) != 1 or len(fdinfo) != 1:
        err = f"fds 0-2 are not one terminal: {ino}"
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    say(f"FAIL: {err}" if err else "PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
