"""mntns.py: a counter in a mount namespace of its own, as a container has.

    python3 mntns.py DIR FILE [overlay] [pidns] [shmem]

Re-executes itself under ``unshare -m --propagation private`` (same pid;
with "pidns", ``unshare -fp --mount-proc -m --propagation private setsid``:
it then runs as pid 1 of its own pid namespace, a child of unshare),
then detaches what other test runs had mounted on the host at that
moment (foreign_mounts.drop), then builds in its namespace: a tmpfs on DIR/t (mode 750) holding "file"
and, under DIR/t/under, a file hidden by a second tmpfs mounted there; the
tmpfs made shared and bound again on DIR/b (one peer group); DIR/src (a
directory of the root file system) bound read-only on DIR/rb; a /proc of
its own; with "overlay", an overlayfs on DIR/ov (lower DIR/lower, a mount
from outside the tree); with "shmem", 64 KiB of shared anonymous memory
holding a pattern.  It keeps an fd open on DIR/t/file.

Every ~50 ms it writes the next number to FILE and checks that the fd
still reads what it wrote.  Prints "ready" once set up.  On SIGTERM it
compares its mountinfo (normalized: ids, devices and peer group numbers
renumbered in order) and the tmpfs files with what they were at start, and
prints PASS or "FAIL: ..." and exits.
"""
import mmap
import os
import signal
import subprocess
import sys
import time

TEXT = b"hello tmpfs\n"
HIDDEN = b"under a mount\n"


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def normalized(text: str) -> list[str]:
    """mountinfo without what a restore renumbers: mount ids (parents are
    named by mountpoint), devices, peer group numbers (in order)."""
    lines = [ln.split(" ") for ln in text.splitlines()]
    where = {f[0]: f[4] for f in lines}
    groups: dict[str, str] = {}
    out = []
    for f in lines:
        sep = f.index("-", 6)
        tags = []
        for t in f[6:sep]:
            k, _, v = t.partition(":")
            if k in ("shared", "master"):
                v = groups.setdefault(v, str(len(groups) + 1))
            tags.append(f"{k}:{v}" if v else k)
        out.append(" ".join([where.get(f[1], "^"), f[3], f[4], f[5], *tags, "-", *f[sep + 1:]]))
    return out


def main() -> int:
    d, out = sys.argv[1], sys.argv[2]
    extra = sys.argv[3:]
    if os.environ.get("MNTNS_INSIDE") != "1":
        os.environ["MNTNS_INSIDE"] = "1"
        pidns = ["-fp", "--mount-proc"] if "pidns" in extra else []
        os.execvp("unshare", ["unshare", *pidns, "-m", "--propagation", "private",
                              *(["setsid"] if pidns else []), sys.executable, *sys.argv])
    import foreign_mounts
    foreign_mounts.drop()  # other test runs' mounts, copied with the host's table
    for sub in ("t", "b", "src", "rb", "ov", "lower", "upper", "work"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    with open(f"{d}/src/plain", "w") as f:
        f.write("root fs\n")
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=750", "mntns-test", f"{d}/t")
    with open(f"{d}/t/file", "wb") as f:
        f.write(TEXT)
    os.mkdir(f"{d}/t/under")
    with open(f"{d}/t/under/hidden", "wb") as f:
        f.write(HIDDEN)
    sh("mount", "-t", "tmpfs", "-o", "size=64k", "mntns-under", f"{d}/t/under")
    sh("mount", "--make-shared", f"{d}/t")
    sh("mount", "--bind", f"{d}/t", f"{d}/b")
    sh("mount", "--bind", f"{d}/src", f"{d}/rb")
    sh("mount", "-o", "remount,bind,ro,nosuid", f"{d}/rb")
    sh("mount", "-t", "proc", "proc", "/proc")
    if "overlay" in extra:
        with open(f"{d}/lower/low", "w") as f:
            f.write("lower\n")
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work", f"{d}/ov")
    fd = os.open(f"{d}/t/file", os.O_RDONLY)
    pattern = bytes(range(256)) * 256
    shared = None
    if "shmem" in extra:
        shared = mmap.mmap(-1, len(pattern))  # MAP_SHARED | MAP_ANONYMOUS
        shared[:] = pattern
    with open("/proc/self/mountinfo") as f:
        before = normalized(f.read())
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    cfd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    say("ready")
    n = 0
    while not stop:
        n += 1
        os.write(cfd, f"{n}\n".encode())
        if os.pread(fd, 100, 0) != TEXT:
            say("FAIL: the fd on the tmpfs reads something else")
            return 1
        if shared is not None and shared[:] != pattern:
            say("FAIL: the shared anonymous memory changed")
            return 1
        time.sleep(0.05)
    with open("/proc/self/mountinfo") as f:
        after = normalized(f.read())
    if after != before:
        diff = [f"- {x}" for x in before if x not in after] + \
            [f"+ {x}" for x in after if x not in before]
        say("FAIL: mountinfo differs: " + " | ".join(diff or ["(order)"]))
        return 1
    sh("umount", f"{d}/t/under")  # what the second tmpfs hid is there again
    with open(f"{d}/t/under/hidden", "rb") as f:
        if f.read() != HIDDEN:
            say("FAIL: the file under the mount changed")
            return 1
    with open(f"{d}/b/file", "rb") as f:
        if f.read() != TEXT:
            say("FAIL: the bind of the tmpfs reads something else")
            return 1
    say("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
