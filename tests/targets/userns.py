"""userns.py: a counter that is the init of a box in a user namespace of
its own (run it under ``unshare -U --map-root-user -fp --mount-proc -m -u
-i``, or with other maps written from outside).

    python3 userns.py FILE HOST MNTDIR [UID GID]
    python3 userns.py --own-ns CMD...    (see own_ns)

As pid 1 inside: a session of its own, hostname HOST; with UID and GID it
takes them
(supplementary groups GID and 5 when setgroups allows, setresgid,
setresuid keeping its permitted capabilities: a task inside that is not
root); a file "data" in MNTDIR (on a tmpfs it mounts there when it has a mount
namespace, MNTDIR not "-"; "-": its working directory);
a child (pid 2 inside) that sleeps and checks itself.  It remembers its
pid, uids, gids, groups, capability sets, /proc/self/{uid_map, gid_map,
setgroups} and the owners of its files as seen inside.  Prints "ready",
then every ~50 ms writes the next number to FILE.  On SIGTERM it checks
every one of these (its child too, by its exit status) and prints PASS or
"FAIL: ..." and exits.
"""
import ctypes
import os
import signal
import socket
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_KEEPCAPS = 8


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def state() -> dict[str, object]:
    def read(p: str) -> str:
        with open(p) as f:
            return f.read()
    caps = {ln.split(":")[0]: ln.split()[1] for ln in read("/proc/self/status").splitlines()
            if ln.startswith("Cap")}
    return {"pid": os.getpid(), "ppid": os.getppid(), "uids": os.getresuid(),
            "gids": os.getresgid(), "groups": sorted(os.getgroups()), "caps": caps,
            "uid_map": read("/proc/self/uid_map"), "gid_map": read("/proc/self/gid_map"),
            "setgroups": read("/proc/self/setgroups"), "host": socket.gethostname()}


def child() -> None:
    before = state()
    while True:
        time.sleep(0.05)
        now = state()
        if now != before:
            say(f"FAIL: child: {before} -> {now}")
            os._exit(1)


stop = False


def on_term(*_: object) -> None:
    global stop
    stop = True


def main() -> int:
    out, host, mnt = sys.argv[1], sys.argv[2], sys.argv[3]
    if os.getpid() != 1:
        say(f"FAIL: not pid 1 but {os.getpid()}")
        return 1
    os.setsid()
    socket.sethostname(host)
    if mnt != "-" and libc.mount(b"box", mnt.encode(), b"tmpfs", 0, b"size=1m"):
        say(f"FAIL: mount tmpfs on {mnt}: {os.strerror(ctypes.get_errno())}")
        return 1
    if mnt == "-":
        mnt = os.getcwd()
    data = os.path.join(mnt, "data")
    with open(data, "w") as f:
        f.write("inside\n")
    if len(sys.argv) > 5:
        uid, gid = int(sys.argv[4]), int(sys.argv[5])
        home = os.path.join(mnt, "home")
        os.mkdir(home)
        os.chown(home, uid, gid)
        libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
        with open("/proc/self/setgroups") as f:
            if f.read().strip() == "allow":
                os.setgroups([gid, 5])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        with open(os.path.join(home, "mine"), "w") as f:  # created by the new ids
            f.write("mine\n")
    kid = os.fork()
    if kid == 0:
        child()
    before = state()
    files = [data] + ([os.path.join(mnt, "home", "mine")] if len(sys.argv) > 5 else [])
    owner = [(os.stat(p).st_uid, os.stat(p).st_gid) for p in files]
    signal.signal(signal.SIGTERM, on_term)
    say(f"ready {before}")
    n = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    while not stop:
        n += 1
        os.write(fd, f"{n}\n".encode())
        time.sleep(0.05)
        now = state()
        if now != before:
            say(f"FAIL: {before} -> {now}")
            return 1
    now = [(os.stat(p).st_uid, os.stat(p).st_gid) for p in files]
    if now != owner:
        say(f"FAIL: owners of {files}: {now}, were {owner}")
        return 1
    os.kill(kid, signal.SIGKILL)
    _, status = os.waitpid(kid, 0)
    if not os.WIFSIGNALED(status):
        say(f"FAIL: child ended with {status} before it was killed")
        return 1
    say("PASS")
    return 0


def own_ns(argv: list[str]) -> int:
    """``userns.py --own-ns CMD...``: a wrapper like ``unshare -U -p -u -i -m
    --mount-proc --fork`` (with $USERNS_ALL set: -C -n -T too) whose maps are written from outside (by the test, as
    newuidmap would): it makes the namespaces, waits for its uid_map and
    gid_map, becomes root inside (so CMD keeps its capabilities across
    exec) and forks CMD as pid 1 of the new pid namespace; exits with it."""
    flags = 0x10000000 | 0x20000000 | 0x04000000 | 0x08000000 | 0x00020000  # USER PID UTS IPC NS
    if os.environ.get("USERNS_ALL"):
        flags |= 0x02000000 | 0x40000000 | 0x80  # CGROUP NET TIME
    if libc.unshare(flags):
        say(f"FAIL: unshare: {os.strerror(ctypes.get_errno())}")
        return 1
    for _ in range(1000):
        with open("/proc/self/uid_map") as f, open("/proc/self/gid_map") as g:
            if f.read().strip() and g.read().strip():
                break
        time.sleep(0.01)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    kid = os.fork()
    if kid == 0:
        # as unshare --mount-proc: nothing propagates back, a /proc of its
        # own pid namespace
        MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x4000, 0x40000, 2, 4, 8
        if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) or \
                libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None):
            say(f"FAIL: mount: {os.strerror(ctypes.get_errno())}")
            os._exit(1)
        os.execvp(argv[0], argv)
    _, status = os.waitpid(kid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if sys.argv[1] == "--own-ns":
        sys.exit(own_ns(sys.argv[2:]))
    sys.exit(main())
