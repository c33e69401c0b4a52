"""nsall.py: a counter that is the init of a box of every namespace kind
procsnap saves, with state in each (run it under ``unshare --fork --pid
--mount-proc --mount --uts --ipc --net --cgroup --time``).

    python3 nsall.py FILE MNTDIR

Sets up, as pid 1 inside: hostname "nsall-box"; a tmpfs on MNTDIR with a
file "data" in it; a System V shared memory segment (attached, a pattern
in it), a semaphore set of 3 (values 5, 6, 7) and a message queue with 5
messages; lo up with 10.88.0.1/32; two children (pids 2 and 3 inside)
that sleep.  It remembers its time offsets (at SIGTERM each must be
smaller by less than 60 s: the clocks inside go on from the dump, as
CRIU restores a time namespace; CLOCK_MONOTONIC never goes back) and
/proc/self/cgroup.  Prints "ready", then every ~50 ms writes the next
number to FILE.  On SIGTERM it checks every one of these (the queue by
receiving its 5 messages in order) and prints PASS or "FAIL: ..." and
exits.
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
IPC_PRIVATE, IPC_CREAT, IPC_NOWAIT = 0, 0o1000, 0o4000
SETVAL, GETVAL = 16, 12
PATTERN = bytes(range(256)) * 16


class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def check(cond: bool, what: str) -> None:
    if not cond:
        say(f"FAIL: {what}")
        sys.exit(1)


def _offsets() -> dict[str, int]:
    with open("/proc/self/timens_offsets") as f:
        return {ln.split()[0]: int(ln.split()[1]) * 10**9 + int(ln.split()[2]) for ln in f}


def main() -> int:
    out, mnt = sys.argv[1], sys.argv[2]
    check(os.getpid() == 1, f"not pid 1 but {os.getpid()}")
    os.setsid()   # a session of its own: the tree is whole without --shell-job
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            while True:
                time.sleep(1)
        kids.append(pid)
    check(kids == [2, 3], f"children {kids}")
    socket.sethostname("nsall-box")
    import foreign_mounts
    foreign_mounts.drop()  # other test runs' mounts, copied with the host's table
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "nsall", mnt], check=True)
    with open(os.path.join(mnt, "data"), "w") as f:
        f.write("kept in tmpfs\n")
    shm = libc.shmget(IPC_PRIVATE, len(PATTERN), IPC_CREAT | 0o600)
    addr = libc.shmat(shm, None, 0)
    ctypes.memmove(addr, PATTERN, len(PATTERN))
    sem = libc.semget(IPC_PRIVATE, 3, IPC_CREAT | 0o600)
    for i, v in enumerate((5, 6, 7)):
        libc.semctl(sem, i, SETVAL, v)
    msq = libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
    for i in range(5):
        m = Msg(i + 1, f"message {i}".encode())
        check(libc.msgsnd(msq, ctypes.byref(m), 64, 0) == 0, "msgsnd")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.88.0.1/32", "dev", "lo"], check=True)
    offsets = _offsets()
    cgroup = open("/proc/self/cgroup").read()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    say("ready")
    n = 0
    last_mono = time.monotonic()
    with open(out, "a") as f:
        while not stop:
            n += 1
            f.write(f"{n}\n")
            f.flush()
            last_mono = time.monotonic()
            time.sleep(0.05)
    check(os.getpid() == 1, "pid changed")
    check(socket.gethostname() == "nsall-box", f"hostname {socket.gethostname()}")
    check(open(os.path.join(mnt, "data")).read() == "kept in tmpfs\n", "tmpfs file")
    check(ctypes.string_at(addr, len(PATTERN)) == PATTERN, "shm contents")
    vals = [libc.semctl(sem, i, GETVAL) for i in range(3)]
    check(vals == [5, 6, 7], f"semaphores {vals}")
    for i in range(5):
        m = Msg()
        got = libc.msgrcv(msq, ctypes.byref(m), 64, 0, IPC_NOWAIT)
        check(got >= 0 and m.mtype == i + 1 and m.mtext == f"message {i}".encode(),
              f"message {i}: {got} {m.mtype} {m.mtext!r}")
    addrs = subprocess.run(["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True,
                           text=True).stdout
    check("10.88.0.1/32" in addrs, f"lo addresses {addrs!r}")
    now = _offsets()
    for clock, off in offsets.items():
        # the clocks go on from the dump (CRIU's timens): the offset shrank
        # by the time the tree was away
        check(0 <= off - now[clock] < 60 * 10**9, f"time offsets {offsets} -> {now}")
    check(time.monotonic() >= last_mono, "CLOCK_MONOTONIC went back")
    check(open("/proc/self/cgroup").read() == cgroup, "cgroup")
    for k in kids:
        os.kill(k, 0)
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
