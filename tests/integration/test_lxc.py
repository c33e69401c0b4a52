"""The seed's scene: ``lxc-checkpoint`` of an LXC busybox container with
lxcfs, procsnap standing in for criu.

Debian's lxc, lxcfs and busybox-static must be installed (the test installs
nothing).  The test starts its own lxcfs on a mountpoint of its own, and
lxcfs is mounted into the container by a copy of LXC's lxcfs hook
(/usr/share/lxcfs/lxc.mount.hook) pointed at that mountpoint.  The
container (template busybox, a name and lxcpath of its own, no network,
``lxc.tty.max = 0``, /usr/lib and /usr/lib64 bound from the host) runs as
init a shell script that appends a counter to a file and holds lxcfs's
/proc/meminfo open as fd 3.  A directory with ``criu`` (a wrapper that runs
``python3 -m procsnap.criu``) is put first on PATH for lxc-checkpoint.

Three round trips of ``lxc-checkpoint -s`` then ``-r``: each time the
container is STOPPED after the dump, RUNNING after the restore, its
counter goes on with no gap or repeat, fd 3 is still on an lxcfs mount and
``lxc-attach`` works.  At the end the init reads a line from its fd 3 (it
must be meminfo's first) and ``lxc-stop`` stops it cleanly.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers import REPO_ROOT, check_continuity, proc_exists, reap, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

TOOLS = ("lxc-create", "lxc-start", "lxc-checkpoint", "lxc-attach", "lxc-stop",
         "lxc-destroy", "lxc-info", "lxcfs", "busybox")
HOOK = Path("/usr/share/lxcfs/lxc.mount.hook")

# The container's init.  fd 3 is lxcfs's meminfo; it is read (once) when the
# test creates /trigger.  lxc.signal.halt of the busybox template is SIGUSR1.
COUNTER = """\
exec 3</proc/meminfo
trap 'exit 0' USR1 PWR TERM
i=0
while :; do
  i=$((i+1))
  echo $i >> /counter.log
  if [ -e /trigger ]; then
    rm /trigger
    read -r line <&3
    echo "$line" > /meminfo.out
  fi
  sleep 0.05
done
"""


def _missing() -> list[str]:
    out = [t for t in TOOLS if shutil.which(t) is None]
    if not HOOK.exists():
        out.append(str(HOOK))
    if not os.path.exists("/dev/fuse"):
        out.append("/dev/fuse")
    return out


def _run(*args: object, env: dict[str, str] | None = None, timeout: float = 120,
         check: bool = True) -> subprocess.CompletedProcess:
    # Output to files, not pipes: lxc-checkpoint -r leaves the container's
    # monitor running, and it keeps the stdout and stderr it was given.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([str(a) for a in args], env=env, stdout=out, stderr=err,
                              timeout=timeout, stdin=subprocess.DEVNULL).returncode
        out.seek(0)
        err.seek(0)
        res = subprocess.CompletedProcess(args, code, out.read(), err.read())
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))}: exit {res.returncode}\n"
                             f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}")
    return res


class Container:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = f"psnap-{os.getpid()}-{os.urandom(3).hex()}"
        self.lxcpath = base / "lxcpath"
        self.rootfs = self.lxcpath / self.name / "rootfs"
        self.env = dict(os.environ)

    def info(self, what: str) -> str:
        return _run("lxc-info", "-n", self.name, "-P", self.lxcpath, what, "-H",
                    check=False).stdout.strip()

    def state(self) -> str:
        return self.info("-s")

    def pid(self) -> int:
        return int(self.info("-p"))

    def numbers(self) -> list[int]:
        try:
            text = (self.rootfs / "counter.log").read_text()
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split("\n")[:-1]]   # the last line may be partial

    def lxc(self, tool: str, *args: object, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        return _run(tool, "-n", self.name, "-P", self.lxcpath, *args, env=self.env,
                    timeout=timeout, check=check)


def _lxcfs_mounted(mnt: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


@pytest.fixture
def container() -> Iterator[Container]:
    missing = _missing()
    if missing:
        pytest.skip("not installed: " + ", ".join(missing) +
                    " (Debian: apt-get install lxc lxcfs busybox-static)")
    # LXC's monitor leaves an empty lxc.pivot cgroup in every hierarchy: ours
    # to remove if it was not there before.
    pivots_before = set(Path("/sys/fs/cgroup").glob("*/lxc.pivot"))
    base = Path(f"/tmp/procsnap-lxc-{os.getpid()}-{os.urandom(3).hex()}")
    base.mkdir()
    c = Container(base)
    lxcfs_mnt = base / "lxcfs"
    lxcfs_mnt.mkdir()
    lxcfs = subprocess.Popen(["lxcfs", "-f", "-p", str(base / "lxcfs.pid"), str(lxcfs_mnt)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (lxcfs_mnt / "proc" / "meminfo").exists(), 10,
                 "lxcfs to be mounted")
        hook = base / "lxcfs-hook"
        hook.write_text(HOOK.read_text().replace("/var/lib/lxcfs", str(lxcfs_mnt)))
        hook.chmod(0o755)
        (base / "base.conf").write_text("lxc.net.0.type = empty\n")
        _run("lxc-create", "-t", "busybox", "-n", c.name, "-P", c.lxcpath,
             "-f", base / "base.conf")
        conf = c.lxcpath / c.name / "config"
        lines = []
        for line in conf.read_text().splitlines():
            if line.startswith("lxc.tty.max"):
                line = "lxc.tty.max = 0"
            elif line.startswith("lxc.mount.auto"):
                line = "lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed"
            elif line.startswith(("lxc.mount.entry = /lib ", "lxc.mount.entry = /lib64 ")):
                continue  # symlinks on Debian 12: /usr/lib and /usr/lib64 are bound
            lines.append(line)
        lines += [f"lxc.hook.mount = {hook}", "lxc.init.cmd = /bin/sh /counter.sh"]
        conf.write_text("\n".join(lines) + "\n")
        (c.rootfs / "counter.sh").write_text(COUNTER)
        bindir = base / "bin"
        bindir.mkdir()
        wrapper = bindir / "criu"
        wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} "
                           "-m procsnap.criu \"$@\"\n")
        wrapper.chmod(0o755)
        c.env["PATH"] = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        c.lxc("lxc-start")
        wait_for(lambda: c.state() == "RUNNING" and len(c.numbers()) >= 5, 20,
                 "the container's counter")
        yield c
    finally:
        if (c.lxcpath / c.name).exists():
            c.lxc("lxc-stop", "-k", timeout=60, check=False)
            c.lxc("lxc-destroy", "-f", timeout=60, check=False)
        lxcfs.send_signal(signal.SIGTERM)
        try:
            lxcfs.wait(10)
        except subprocess.TimeoutExpired:
            lxcfs.kill()
            lxcfs.wait(10)
        if _lxcfs_mounted(lxcfs_mnt):
            subprocess.run(["umount", "-l", str(lxcfs_mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)
        for pivot in set(Path("/sys/fs/cgroup").glob("*/lxc.pivot")) - pivots_before:
            try:
                pivot.rmdir()
            except OSError:
                pass  # in use: not empty


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


def test_lxc_checkpoint_restore_three_times(container: Container) -> None:
    c = container
    images = c.base / "images"
    for rnd in range(3):
        shutil.rmtree(images, ignore_errors=True)
        old = c.pid()
        res = c.lxc("lxc-checkpoint", "-s", "-D", images, check=False)
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
        res = c.lxc("lxc-checkpoint", "-r", "-D", images, check=False)
        log = images / "restore.log"
        assert res.returncode == 0, (f"round {rnd}: restore: {res.stderr[-2000:]}\n"
                                     + (log.read_text()[-2000:] if log.exists() else ""))
        assert c.state() == "RUNNING", f"round {rnd}: after the restore: {c.state()}"
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
    c.lxc("lxc-stop", timeout=60)
    assert c.state() == "STOPPED"
    check_continuity(c.numbers())
