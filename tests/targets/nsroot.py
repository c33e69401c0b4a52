"""nsroot.py: a tree that lives under a root of its own, as zdtm.py's ns
flavour runs every test: pid 1 of new pid and mount namespaces, pivoted
into a directory, so that its names are not the restorer's.

    python3 nsroot.py DIR

Re-executes itself under ``unshare -fp --mount-proc -m --propagation
private setsid`` (it is then pid 1 inside, a child of unshare), makes DIR
a root file system (/usr bound from the host, the usual usrmerge symlinks,
/box for its files), pivot_root()s into it, mounts its own /proc and
execs itself again from inside.  There (all names from here on are the
tree's own, under DIR on the host) it holds:

- a deleted file (/box/ghost, open, unlinked) and an O_TMPFILE file made
  in /box, each with its contents;
- a FIFO /box/fifo opened read-write with bytes queued in it;
- a listening unix stream socket bound to /box/sock.d/sock, whose file
  was deleted; a datagram socket bound to the relative name "rel.sock" in
  /box/rel;
- its cwd in /box/gone, removed while it sits there;
- a pty pair of its own devpts instance (on its /dev/pts), with bytes
  written to the master queued for the slave, its pts bound on
  /box/console;
- a child chrooted into /box/jail (chdir there, chroot ".").

Every ~50 ms it writes the next number to /box/numbers.  Prints "ready"
once set up (stdout and stderr: DIR/box/out, DIR/box/err, stdin closed).
On SIGTERM it checks all of the above as it sees it, prints
PASS or "FAIL: ..." and exits.
"""
import ctypes
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tty

GHOST = b"the contents of a deleted file\n" * 50
TMPFILE = b"an O_TMPFILE file, never named\n" * 20
QUEUED = b"bytes queued in the FIFO"
PTY_INPUT = b"typed into the pty"
O_TMPFILE = 0o20000000 | os.O_DIRECTORY


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def setup(d: str) -> None:
    """pid 1 of the new namespaces: DIR becomes its root."""
    for sub in ("usr", "proc", "box", "old", "dev/pts"):
        os.makedirs(f"{d}/{sub}", exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        if not os.path.lexists(f"{d}/{link}"):
            os.symlink(f"usr/{link}", f"{d}/{link}")
    with open(__file__, "rb") as src, open(f"{d}/box/nsroot.py", "wb") as dst:
        dst.write(src.read())
    # stdio from inside the root (the test reads DIR/box/out, DIR/box/err):
    # the tree holds no file its own namespace cannot name
    for fd, name in ((0, "/dev/null"), (1, f"{d}/box/out"), (2, f"{d}/box/err")):
        new = os.open(name, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      0o644)
        os.dup2(new, fd)
        os.close(new)
    os.close(0)
    subprocess.run(["mount", "--bind", d, d], check=True)  # first: a bind is not recursive
    subprocess.run(["mount", "--bind", "/usr", f"{d}/usr"], check=True)
    os.chdir(d)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(155, b".", b"old") != 0:  # pivot_root
        raise OSError(ctypes.get_errno(), "pivot_root")
    os.chdir("/")
    # (no mount(8) here: it wants a /proc, and this root has none yet)
    if libc.umount2(b"/old", 2) != 0:  # MNT_DETACH
        raise OSError(ctypes.get_errno(), "umount2 /old")
    os.rmdir("/old")
    if libc.mount(b"proc", b"/proc", b"proc", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount /proc")
    # a devpts of its own, as a container's (and zdtm's ns root) has
    if libc.mount(b"devpts", b"/dev/pts", b"devpts", 0,
                  b"newinstance,ptmxmode=0666,mode=0620") != 0:
        raise OSError(ctypes.get_errno(), "mount /dev/pts")
    if not os.path.lexists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")
    os.environ["NSROOT_STAGE"] = "run"
    os.execv("/usr/bin/python3", ["/usr/bin/python3", "/box/nsroot.py"])


def child_in_jail() -> None:
    os.chdir("/box/jail")
    os.chroot(".")
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        time.sleep(1)


def run() -> int:
    for sub in ("jail", "rel", "gone", "sock.d"):
        os.makedirs(f"/box/{sub}", exist_ok=True)
    ghost = os.open("/box/ghost", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o640)
    os.write(ghost, GHOST)
    os.unlink("/box/ghost")
    tmp = os.open("/box", O_TMPFILE | os.O_RDWR, 0o600)
    os.write(tmp, TMPFILE)
    os.mkfifo("/box/fifo", 0o600)
    fifo = os.open("/box/fifo", os.O_RDWR | os.O_NONBLOCK)
    os.write(fifo, QUEUED)
    lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lis.bind("/box/sock.d/sock")
    lis.listen(4)
    os.unlink("/box/sock.d/sock")
    os.chdir("/box/rel")
    rel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rel.bind("rel.sock")
    os.chdir("/box/gone")
    os.rmdir("/box/gone")
    master, slave = os.openpty()  # through its /dev/ptmx: its own devpts
    tty.setraw(slave)
    os.write(master, PTY_INPUT)
    pty_name = os.ttyname(slave)
    # its pts bound on /box/console, as zdtm pty-console binds /dev/console
    os.close(os.open("/box/console", os.O_CREAT | os.O_RDONLY, 0o600))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(pty_name.encode(), b"/box/console", None, 4096, None) != 0:  # MS_BIND
        raise OSError(ctypes.get_errno(), "bind the pts on /box/console")
    kid = os.fork()
    if kid == 0:
        child_in_jail()
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    cfd = os.open("/box/numbers", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    while os.readlink(f"/proc/{kid}/root") != "/box/jail":
        time.sleep(0.01)
    say("ready")
    n = 0
    while not stop:
        n += 1
        os.write(cfd, f"{n}\n".encode())
        time.sleep(0.05)
    fails = []
    if os.pread(ghost, len(GHOST) + 1, 0) != GHOST:
        fails.append("the deleted file reads something else")
    # (restored as criu does: under the ghost's own name, then unlinked)
    gname = os.readlink(f"/proc/self/fd/{ghost}")
    if not (gname.startswith("/box/ghost") and gname.endswith(" (deleted)")):
        fails.append(f"the deleted file is {os.readlink(f'/proc/self/fd/{ghost}')}")
    if os.pread(tmp, len(TMPFILE) + 1, 0) != TMPFILE:
        fails.append("the O_TMPFILE file reads something else")
    if not os.readlink(f"/proc/self/fd/{tmp}").startswith("/box/#"):
        fails.append(f"the O_TMPFILE file is {os.readlink(f'/proc/self/fd/{tmp}')}")
    try:
        got = os.read(fifo, 100)
    except BlockingIOError:
        got = b""
    if got != QUEUED:
        fails.append(f"the FIFO holds {got!r}")
    if not stat.S_ISFIFO(os.stat("/box/fifo").st_mode):
        fails.append("/box/fifo is no FIFO")
    if lis.getsockname() != "/box/sock.d/sock" or \
            lis.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
        fails.append(f"the listener is {lis.getsockname()!r}, not listening on it")
    if os.path.lexists("/box/sock.d/sock"):
        fails.append("the deleted socket file is there again")
    if rel.getsockname() != "rel.sock":
        fails.append(f"the relative socket is {rel.getsockname()!r}")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.sendto(b"ping", "/box/rel/rel.sock")
        rel.settimeout(2)
        if rel.recv(10) != b"ping":
            fails.append("the relative socket received something else")
    except OSError as exc:
        fails.append(f"the relative socket cannot be reached by its file: {exc}")
    if os.ttyname(slave) != pty_name or \
            os.fstat(slave).st_dev != os.stat("/dev/pts/ptmx").st_dev:
        fails.append(f"the pty is {os.ttyname(slave)} (was {pty_name}), not of its devpts")
    a, b = os.stat("/box/console"), os.stat(pty_name)
    if (a.st_dev, a.st_ino, a.st_rdev) != (b.st_dev, b.st_ino, b.st_rdev):
        fails.append(f"/box/console is not {pty_name} bound")
    os.set_blocking(slave, False)
    try:
        got = os.read(slave, 100)
    except BlockingIOError:
        got = b""
    if got != PTY_INPUT:
        fails.append(f"the pty's slave reads {got!r}")
    if os.readlink("/proc/self/cwd") != "/box/gone (deleted)":
        fails.append(f"cwd is {os.readlink('/proc/self/cwd')!r}")
    for what, want in (("root", "/box/jail"), ("cwd", "/box/jail")):
        got_link = os.readlink(f"/proc/{kid}/{what}")
        if got_link != want:
            fails.append(f"the chrooted child's {what} is {got_link!r}")
    os.kill(kid, signal.SIGTERM)
    _, status = os.waitpid(kid, 0)
    if status != 0:
        fails.append(f"the chrooted child ended with status {status}")
    say("FAIL: " + "; ".join(fails) if fails else "PASS")
    return 1 if fails else 0


def main() -> int:
    stage = os.environ.get("NSROOT_STAGE")
    if stage is None:
        os.environ["NSROOT_STAGE"] = "setup"
        os.execvp("unshare", ["unshare", "-fp", "--mount-proc", "-m", "--propagation",
                              "private", "setsid", sys.executable, *sys.argv])
    if stage == "setup":
        setup(sys.argv[1])
        return 1
    return run()


if __name__ == "__main__":
    sys.exit(main())
