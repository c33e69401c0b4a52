"""The seed's scene: ``lxc-checkpoint`` of an LXC busybox container with
lxcfs, procsnap standing in for criu.

Debian's lxc, lxcfs and busybox-static must be installed (the test installs
nothing).  The test starts its own lxcfs on a mountpoint of its own, and
lxcfs is mounted into the container by a copy of LXC's lxcfs hook
(/usr/share/lxcfs/lxc.mount.hook) pointed at that mountpoint.  The
container (template busybox, a name and lxcpath of its own, no network,
``lxc.tty.max = 0``, the template's own binds of /lib and /lib64, which
are symlinks on Debian 12) runs as
init a shell script that appends a counter to a file, holds lxcfs's
/proc/meminfo open as fd 3 and lxcfs's /proc/stat as fd 4, read past its
first line.  A directory with ``criu`` (a wrapper that runs
``python3 -m procsnap.criu``) is put first on PATH for lxc-checkpoint.

Ten round trips of ``lxc-checkpoint -s`` then ``-r``: each time the
container is STOPPED after the dump, RUNNING after the restore, its
counter goes on with no gap or repeat, fd 3 is still on an lxcfs mount and
``lxc-attach`` works; every other round lxc-checkpoint runs from a child
cgroup in every hierarchy.  Each is a scene where CRIU 4.2 fails here:
/lib binds over symlinks (``mnt-v2: Failed to move_mount``), a held lxcfs
file whose size changed (``bad size``), a non-root cgroup (``Can't link
remap``).  At the end the init reads a line from its fd 3 (meminfo's first)
and from fd 4 (stat's second), and ``lxc-stop`` stops it cleanly.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from containers import LxcContainer as Container
from containers import lxc_container, lxc_missing, run
from helpers import check_continuity, proc_exists, reap, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


@pytest.fixture
def container() -> Iterator[Container]:
    missing = lxc_missing()
    if missing:
        pytest.skip("not installed: " + ", ".join(missing) +
                    " (Debian: apt-get install lxc lxcfs busybox-static)")
    with lxc_container() as c:
        yield c


def _fd3_on_lxcfs(pid: int) -> str:
    """The mount line of init's fd 3 (must be lxcfs's /proc/meminfo)."""
    mnt_id = None
    for line in open(f"/proc/{pid}/fdinfo/3"):
        if line.startswith("mnt_id:"):
            mnt_id = line.split()[1]
    for line in open(f"/proc/{pid}/mountinfo"):
        if line.split()[0] == mnt_id:
            return line
    raise AssertionError(f"pid {pid}: fd 3's mount {mnt_id} is not in its mountinfo")


def _cgroup_dirs() -> list[Path]:
    """This process's cgroup directory in every hierarchy the host mounts
    under /sys/fs/cgroup (not those another test run mounts for a while
    elsewhere: a child made there kept that run from removing its
    hierarchy)."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, post = line.split(" - ")
            fstype, _src, opts = post.split()[:3]
            if not (pre.split()[4] + "/").startswith("/sys/fs/cgroup/"):
                continue
            if fstype == "cgroup2":
                mounts[""] = Path(pre.split()[4])
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in ("rw", "ro", "relatime") or opt.startswith("release_agent"):
                        continue
                    mounts[opt] = Path(pre.split()[4])
    dirs = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctrl in ctrls.split(",") if ctrls else [""]:
                if ctrl in mounts:
                    dirs.append(mounts[ctrl] / path.lstrip("/"))
                    break
    return dirs


@pytest.fixture
def child_cgroups() -> Iterator[list[Path]]:
    """A child of this process's cgroup in every hierarchy: CRIU's dump
    fails when lxc-checkpoint runs from a non-root cgroup."""
    made = []
    try:
        for d in _cgroup_dirs():
            child = d / f"procsnap-lxc-{os.getpid()}"
            child.mkdir()
            made.append(child)
            for knob in ("cpuset.cpus", "cpuset.mems"):   # empty in a new cpuset
                if (child / knob).exists():
                    (child / knob).write_text((d / knob).read_text())
        yield made
    finally:
        for child in reversed(made):
            for _ in range(50):
                try:
                    child.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)   # the monitor may be on its way out


def test_lxc_checkpoint_restore_ten_times(container: Container,
                                          child_cgroups: list[Path]) -> None:
    c = container
    images = c.base / "images"
    # On odd rounds lxc-checkpoint runs from a child cgroup in every hierarchy.
    enter = ('for f in "$@"; do case $f in --) shift; break;; esac; '
             'echo $$ > "$f"/cgroup.procs; shift; done; '
             f'cat /proc/$$/cgroup > {c.base}/ckpt.cgroup; exec "$@"')
    in_child = ["sh", "-c", enter, "sh", *child_cgroups, "--"]
    for rnd in range(10):
        shutil.rmtree(images, ignore_errors=True)
        old = c.pid()
        pre = in_child if rnd % 2 else []
        res = run(*pre, "lxc-checkpoint", "-n", c.name, "-P", c.lxcpath, "-s", "-D",
                   images, env=c.env, check=False)
        log = images / "dump.log"
        assert res.returncode == 0, (f"round {rnd}: dump: {res.stderr[-2000:]}\n"
                                     + (log.read_text()[-2000:] if log.exists() else ""))
        assert c.state() == "STOPPED", f"round {rnd}: after the dump: {c.state()}"
        last = c.numbers()[-1]
        time.sleep(0.3)
        assert c.numbers()[-1] == last, f"round {rnd}: the counter runs on after the dump"
        # A restored init is the child of LXC's monitor, which exits with it
        # without reaping it: the zombie comes to us, the child subreaper
        # (on a host: to pid 1).  Its pid is to be free for the restore.
        wait_for(lambda: (reap(), not proc_exists(old))[1], 10,
                 f"the dumped init {old} to be reaped")
        res = run(*pre, "lxc-checkpoint", "-n", c.name, "-P", c.lxcpath, "-r", "-D",
                   images, env=c.env, check=False)
        log = images / "restore.log"
        assert res.returncode == 0, (f"round {rnd}: restore: {res.stderr[-2000:]}\n"
                                     + (log.read_text()[-2000:] if log.exists() else ""))
        assert c.state() == "RUNNING", f"round {rnd}: after the restore: {c.state()}"
        if pre:
            seen = (c.base / "ckpt.cgroup").read_text()
            assert seen.count(f"/procsnap-lxc-{os.getpid()}\n") == len(child_cgroups), \
                f"round {rnd}: lxc-checkpoint did not run in the child cgroups: {seen}"
        wait_for(lambda: c.numbers()[-1] >= last + 5, 10, "the counter to go on")
        check_continuity(c.numbers())
        pid = c.pid()
        line = _fd3_on_lxcfs(pid)
        assert " /proc/meminfo /proc/meminfo " in line and "fuse.lxcfs" in line, line
        out = c.lxc("lxc-attach", "--", "/bin/sh", "-c", "tail -n 1 /counter.log").stdout
        assert int(out.split()[-1]) > last, out
    # The restored fd itself reads lxcfs's meminfo (from its start: it was
    # never read before).
    (c.rootfs / "trigger").write_text("")
    wait_for(lambda: (c.rootfs / "meminfo.out").exists() and
             (c.rootfs / "meminfo.out").read_text().endswith("\n"), 10, "init to read fd 3")
    assert (c.rootfs / "meminfo.out").read_text().startswith("MemTotal:"), \
        (c.rootfs / "meminfo.out").read_text()
    # fd 4, lxcfs's /proc/stat, was read past its first line before the
    # first dump; its size changed at every round (CRIU: "bad size").
    assert (c.rootfs / "stat.out").read_text().startswith("cpu0 "), \
        (c.rootfs / "stat.out").read_text()
    c.lxc("lxc-stop", timeout=60)
    assert c.state() == "STOPPED"
    check_continuity(c.numbers())


# The init of test_lxc_console_round_trips: its stdio on the container's
# /dev/console (LXC's console, a pts of the host whose master LXC's monitor
# holds), which it takes as controlling terminal (a session leader opening
# it without O_NOCTTY); a line on the console every ten counts, and a line
# read from the console (and answered) when the test creates /trigger.
LXC_CONSOLE_COUNTER = """\
exec 0<>/dev/console 1>&0 2>&0
trap 'exit 0' USR1 PWR TERM
i=0
while :; do
  i=$((i+1))
  echo $i >> /counter.log
  case $i in *0) echo "tick $i";; esac
  if [ -e /trigger ]; then rm /trigger; read -r line; echo "got: $line"; fi
  sleep 0.05
done
"""


def _console(c: Container, line: bytes) -> bytes:
    """``lxc-console`` on a pty of ours for about 3 s: what the container's
    console printed meanwhile, ``line`` typed once /trigger made init read."""
    import pty
    import select
    import subprocess
    m, s = pty.openpty()
    p = subprocess.Popen(["lxc-console", "-n", c.name, "-P", str(c.lxcpath), "-t", "0"],
                         stdin=s, stdout=s, stderr=s, env=c.env, start_new_session=True)
    os.close(s)
    got = b""
    try:
        start = time.monotonic()
        sent = False
        while time.monotonic() - start < 3 or (sent and b"got: " not in got
                                                and time.monotonic() - start < 10):
            r, _, _ = select.select([m], [], [], 0.1)
            if r:
                try:
                    got += os.read(m, 4096)
                except OSError:
                    break
            if not sent and b"tick" in got:
                (c.rootfs / "trigger").write_text("")
                time.sleep(0.2)
                os.write(m, line + b"\r")
                sent = True
        os.write(m, b"\x01q")   # lxc-console's escape: Ctrl-a q
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    finally:
        os.close(m)
    return got


def test_lxc_console_round_trips() -> None:
    """An LXC container with its default console, whose init holds it as
    stdio and controlling terminal: lxc-checkpoint passes the console as
    ``--external tty[RDEV:DEV]`` and, at restore, the new console LXC made as
    ``--inherit-fd fd[8]:tty[RDEV:DEV]``.  Three round trips: each time the
    counter goes on with no gap or repeat, init's fds 0-2 and its
    controlling terminal (stat tty_nr) are the new console pts, lxc-attach
    works, and lxc-console on a pty of ours shows init's lines going on
    and carries a typed line to init, which answers it."""
    missing = lxc_missing()
    if missing:
        pytest.skip("not installed: " + ", ".join(missing) +
                    " (Debian: apt-get install lxc lxcfs busybox-static)")
    with lxc_container(LXC_CONSOLE_COUNTER) as c:
        got = _console(c, b"before")
        assert b"got: before" in got and b"tick " in got, got[-500:]
        images = c.base / "images"
        for rnd in range(3):
            shutil.rmtree(images, ignore_errors=True)
            old = c.pid()
            console = os.stat(f"/proc/{old}/fd/0")
            with open(f"/proc/{old}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[4]) == console.st_rdev
            res = run("lxc-checkpoint", "-n", c.name, "-P", c.lxcpath, "-s", "-D", images,
                      env=c.env, check=False)
            log = images / "dump.log"
            assert res.returncode == 0, (f"round {rnd}: dump: {res.stderr[-2000:]}\n"
                                         + (log.read_text()[-2000:] if log.exists() else ""))
            assert c.state() == "STOPPED"
            last = c.numbers()[-1]
            wait_for(lambda: (reap(), not proc_exists(old))[1], 10,
                     f"the dumped init {old} to be reaped")
            res = run("lxc-checkpoint", "-n", c.name, "-P", c.lxcpath, "-r", "-D", images,
                      env=c.env, check=False)
            log = images / "restore.log"
            assert res.returncode == 0, (f"round {rnd}: restore: {res.stderr[-2000:]}\n"
                                         + (log.read_text()[-2000:] if log.exists() else ""))
            assert c.state() == "RUNNING"
            wait_for(lambda: c.numbers()[-1] >= last + 5, 10, "the counter to go on")
            check_continuity(c.numbers())
            pid = c.pid()
            mon = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            new = {os.stat(f"/proc/{mon}/fd/{f}").st_rdev for f in os.listdir(f"/proc/{mon}/fd")
                   if os.readlink(f"/proc/{mon}/fd/{f}").startswith("/dev/pts/")}
            fds = {os.stat(f"/proc/{pid}/fd/{n}").st_rdev for n in (0, 1, 2)}
            assert len(fds) == 1 and fds <= new, (fds, new)   # the monitor's new console
            with open(f"/proc/{pid}/stat") as f:
                assert int(f.read().rsplit(")", 1)[1].split()[4]) in fds
            out = c.lxc("lxc-attach", "--", "/bin/sh", "-c", "tail -n 1 /counter.log").stdout
            assert int(out.split()[-1]) > last, out
            got = _console(c, f"round {rnd}".encode())
            ticks = [int(w.split()[1]) for w in got.decode(errors="replace").split("\n")
                     if w.startswith("tick ") and w.split()[1].strip().isdigit()]
            assert ticks and ticks[-1] > last, got[-500:]
            assert f"got: round {rnd}".encode() in got, got[-500:]
        c.lxc("lxc-stop", timeout=60)
        assert c.state() == "STOPPED"
        check_continuity(c.numbers())
