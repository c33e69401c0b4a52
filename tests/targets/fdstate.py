"""fdstate.py DIR [foreign-owner]: state held by open file descriptions, checked from inside.

Holds, in DIR:
  fd 3  "posix"  a POSIX write lock on bytes 0-9 and a read lock on 20-29
  fd 4  "flock"  an exclusive flock
  fd 5  "ofd"    an OFD write lock on bytes 100-EOF
  fd 6  "lease"  (opened read-only) a read lease
  fd 7/8         a pipe; the read end 7 has SIGIO owner = this process,
                 F_SETSIG SIGUSR2 and O_ASYNC
  fd 9           the same read end opened again through /proc/self/fd/7
                 with O_NONBLOCK (its own open file description: 7 stays
                 blocking)
  fd 10/11       a unix socketpair; 10 has SIGIO owner = this process,
                 F_SETSIG SIGUSR2 and O_ASYNC (as nginx's master--worker
                 channels)
  fd 12          an inotify instance with O_ASYNC (an anon-inode kind
                 with a fasync: eventfd, epoll, timerfd have none, and
                 the kernel keeps O_ASYNC only where ->fasync sets it)
With "foreign-owner" the SIGIO owner of fd 7 is our parent (outside any
tree dumped from us) instead.  Prints "ready".  On SIGTERM checks every one of them -- other descriptions
and a child process try the locks and must fail -- and prints PASS or
"FAIL: ..." (one line per failure), then exits.
"""
import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
import time

F_OFD_GETLK, F_OFD_SETLK = 36, 37
F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX = 15, 16
F_OWNER_PID = 1
F_SETLEASE, F_GETLEASE = 1024, 1025
FLOCK = struct.Struct("<hh4xqqi4x")

sigio = 0
stop = False


def on_usr2(signum, frame):
    global sigio
    sigio += 1


def on_term(signum, frame):
    global stop
    stop = True


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def place(fd: int, want: int) -> None:
    if fd != want:
        os.dup2(fd, want)
        os.close(fd)


def ofd(fd: int, typ: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, F_OFD_SETLK, FLOCK.pack(typ, 0, start, length, 0))


OWNER = 0  # the SIGIO owner set on fd 7: ourselves, or (foreign-owner) our parent


def setup(d: str) -> None:
    place(os.open(f"{d}/posix", os.O_RDWR | os.O_CREAT, 0o644), 3)
    fcntl.lockf(3, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
    fcntl.lockf(3, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 20)
    place(os.open(f"{d}/flock", os.O_RDWR | os.O_CREAT, 0o644), 4)
    fcntl.flock(4, fcntl.LOCK_EX | fcntl.LOCK_NB)
    place(os.open(f"{d}/ofd", os.O_RDWR | os.O_CREAT, 0o644), 5)
    ofd(5, fcntl.F_WRLCK, 100, 0)
    os.close(os.open(f"{d}/lease", os.O_WRONLY | os.O_CREAT, 0o644))
    place(os.open(f"{d}/lease", os.O_RDONLY), 6)
    fcntl.fcntl(6, F_SETLEASE, fcntl.F_RDLCK)
    r, w = os.pipe()
    place(r, 7)
    place(w, 8)
    signal.signal(signal.SIGUSR2, on_usr2)
    fcntl.fcntl(7, F_SETOWN_EX, struct.pack("<ii", F_OWNER_PID, OWNER))
    fcntl.fcntl(7, F_SETSIG, signal.SIGUSR2)
    if OWNER == os.getpid():  # (no SIGIO for a foreign owner, not even at exit)
        fcntl.fcntl(7, fcntl.F_SETFL, fcntl.fcntl(7, fcntl.F_GETFL) | os.O_ASYNC)
    place(os.open("/proc/self/fd/7", os.O_RDONLY | os.O_NONBLOCK), 9)
    a, b = socket.socketpair()
    place(a.detach(), 10)
    place(b.detach(), 11)
    fcntl.fcntl(10, F_SETOWN_EX, struct.pack("<ii", F_OWNER_PID, os.getpid()))
    fcntl.fcntl(10, F_SETSIG, signal.SIGUSR2)
    fcntl.fcntl(10, fcntl.F_SETFL, fcntl.fcntl(10, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)
    place(ctypes.CDLL(None, use_errno=True).inotify_init1(0), 12)
    fcntl.fcntl(12, fcntl.F_SETFL, fcntl.fcntl(12, fcntl.F_GETFL) | os.O_ASYNC)


def refused(what: str, call) -> str | None:
    try:
        call()
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        return f"{what}: {exc}"
    return f"{what}: was granted, the lock is gone"


def check_posix_from_child(d: str) -> list[str]:
    """POSIX locks are per process: only another process can test them."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rd)
        fd = os.open(f"{d}/posix", os.O_RDWR)
        bad = [refused("another process's write lock on 0-9",
                       lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)),
               refused("another process's write lock on 20-29",
                       lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20))]
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 10, 20)  # read-read: compatible
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 12)   # free bytes
        except OSError as exc:
            bad.append(f"a lock that should be free was refused: {exc}")
        got = FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK,
                                       FLOCK.pack(fcntl.F_WRLCK, 0, 0, 1, 0)))
        if got[4] != os.getppid():
            bad.append(f"F_GETLK names pid {got[4]}, not {os.getppid()}")
        os.write(wr, "\n".join(b for b in bad if b).encode())
        os._exit(0)
    os.close(wr)
    out = b""
    while True:
        chunk = os.read(rd, 4096)
        if not chunk:
            break
        out += chunk
    os.close(rd)
    os.waitpid(pid, 0)
    return [line for line in out.decode().splitlines() if line]


def check(d: str) -> list[str]:
    bad = check_posix_from_child(d)
    other = os.open(f"{d}/flock", os.O_RDWR)
    bad.append(refused("flock from another description",
                       lambda: fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)))
    os.close(other)
    other = os.open(f"{d}/ofd", os.O_RDWR)
    bad.append(refused("OFD lock on 100+ from another description",
                       lambda: ofd(other, fcntl.F_WRLCK, 200, 1)))
    try:
        ofd(other, fcntl.F_WRLCK, 50, 10)
    except OSError as exc:
        bad.append(f"OFD lock on free bytes 50-59 refused: {exc}")
    os.close(other)
    lease = fcntl.fcntl(6, F_GETLEASE)
    if lease != fcntl.F_RDLCK:
        bad.append(f"lease type {lease}, expected F_RDLCK")
    typ, owner = struct.unpack("<ii", fcntl.fcntl(7, F_GETOWN_EX, bytes(8)))
    if (typ, owner) != (F_OWNER_PID, OWNER):
        bad.append(f"SIGIO owner ({typ}, {owner}), expected ({F_OWNER_PID}, {OWNER})")
    if fcntl.fcntl(7, F_GETSIG) != signal.SIGUSR2:
        bad.append(f"F_GETSIG {fcntl.fcntl(7, F_GETSIG)}, expected SIGUSR2")
    fl7, fl9 = fcntl.fcntl(7, fcntl.F_GETFL), fcntl.fcntl(9, fcntl.F_GETFL)
    if not fl7 & os.O_ASYNC and OWNER == os.getpid():
        bad.append("O_ASYNC lost on fd 7")
    if fl7 & os.O_NONBLOCK:
        bad.append("fd 7 became O_NONBLOCK (flags of fd 9 leaked onto it)")
    if not fl9 & os.O_NONBLOCK:
        bad.append("fd 9 lost O_NONBLOCK")
    if OWNER == os.getpid():  # (a foreign owner must not get our signal)
        before = sigio
        os.write(8, b"x")
        deadline = time.monotonic() + 2
        while sigio == before and time.monotonic() < deadline:
            time.sleep(0.01)
        if sigio == before:
            bad.append("no SIGUSR2 when data arrived on the O_ASYNC pipe")
        os.read(9, 1)
    typ, owner = struct.unpack("<ii", fcntl.fcntl(10, F_GETOWN_EX, bytes(8)))
    if (typ, owner) != (F_OWNER_PID, os.getpid()):
        bad.append(f"socket fd 10: SIGIO owner ({typ}, {owner}), expected ({F_OWNER_PID}, "
                   f"{os.getpid()})")
    if fcntl.fcntl(10, F_GETSIG) != signal.SIGUSR2:
        bad.append(f"socket fd 10: F_GETSIG {fcntl.fcntl(10, F_GETSIG)}, expected SIGUSR2")
    if fcntl.fcntl(10, fcntl.F_GETFL) & (os.O_ASYNC | os.O_NONBLOCK) != os.O_ASYNC | os.O_NONBLOCK:
        bad.append(f"socket fd 10: flags {fcntl.fcntl(10, fcntl.F_GETFL):o} lost O_ASYNC or O_NONBLOCK")
    before = sigio
    os.write(11, b"y")
    deadline = time.monotonic() + 2
    while sigio == before and time.monotonic() < deadline:
        time.sleep(0.01)
    if sigio == before:
        bad.append("no SIGUSR2 when data arrived on the O_ASYNC socket")
    os.read(10, 1)
    if not fcntl.fcntl(12, fcntl.F_GETFL) & os.O_ASYNC:
        bad.append("inotify fd 12 lost O_ASYNC")
    return [b for b in bad if b]


def main() -> int:
    global OWNER
    d = sys.argv[1]
    OWNER = os.getppid() if sys.argv[2:] == ["foreign-owner"] else os.getpid()
    setup(d)
    signal.signal(signal.SIGTERM, on_term)
    say("ready")
    while not stop:
        time.sleep(0.05)
    bad = check(d)
    for line in bad:
        say("FAIL: " + line)
    if not bad:
        say("PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
