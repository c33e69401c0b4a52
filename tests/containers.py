"""What the container tests and the bench's ``container`` case share: a
busybox-static root file system, a directory holding ``criu`` (a wrapper
that runs ``python3 -m procsnap.criu`` from this checkout), the container's
counter, a clean-up of the cgroups a runtime left behind, the runc bundle
and its ``Runc`` driver (``runc_bundle``), and the LXC busybox container
with its own lxcfs (``lxc_container``).  One copy: tests/integration/
test_runc.py and test_lxc.py and bench/runner.py all build their
containers here, so the bench times the containers the tests check.

Nothing is pulled from a registry: the root file system is /bin/busybox
and its applet links; runc gets it as an OCI bundle (``runc spec``), Podman
as an image made by ``podman import`` of its tarball, LXC its busybox
template.  No pytest here (the bench imports this module).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from helpers import REPO_ROOT, read_numbers, reap, wait_for

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "echo", "sleep", "tail", "ip", "ls", "grep", "cut", "head", "ps")

# The container's process: a counter appending to a bind-mounted host file
# (/out), one line every 50 ms.  busybox's sleep forks a child each turn.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> /out/counter.log; sleep 0.05; done"


def busybox() -> str | None:
    """The static busybox (Debian's busybox-static), or None."""
    for p in (BUSYBOX, "/usr/bin/busybox"):
        if os.path.exists(p):
            out = subprocess.run(["file", "-L", p], capture_output=True, text=True).stdout \
                if shutil.which("file") else "statically"
            if "dynamically" not in out:
                return p
    return None


def make_rootfs(rootfs: Path) -> None:
    """A root file system of busybox-static and its applet links."""
    bb = busybox()
    assert bb is not None
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(bb, rootfs / "bin" / "busybox")
    for a in APPLETS:
        (rootfs / "bin" / a).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc", "out", "run"):
        (rootfs / d).mkdir(exist_ok=True)


def make_tarball(rootfs: Path, tarball: Path) -> None:
    with tarfile.open(tarball, "w:gz") as tf:
        for p in sorted(rootfs.iterdir()):
            tf.add(p, arcname=p.name)


def criu_dir(base: Path) -> Path:
    """A directory with an executable ``criu`` that runs this checkout's
    procsnap.criu (runc's --criu PATH; Podman and runc under Podman find it
    first on PATH)."""
    d = base / "criu-bin"
    d.mkdir()
    w = d / "criu"
    w.write_text(f"#!/bin/sh\nPYTHONPATH={REPO_ROOT} exec {sys.executable} "
                 "-m procsnap.criu \"$@\"\n")
    w.chmod(0o755)
    return d


def run(*args: object, timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None, cwd: Path | None = None,
        detached: bool = False) -> subprocess.CompletedProcess:
    """Run a tool with its output in files, not pipes: a container started
    by it (run -d, restore -d) keeps the stdio it was given -- ``detached``
    gives it /dev/null instead, the output then being lost."""
    argv = [str(a) for a in args]
    if detached:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout, env=env,
                              cwd=cwd).returncode
        res = subprocess.CompletedProcess(argv, code, "", "")
    else:
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                  timeout=timeout, env=env, cwd=cwd).returncode
            out.seek(0)
            err.seek(0)
            res = subprocess.CompletedProcess(argv, code, out.read(), err.read())
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {res.returncode}\n"
                             f"stdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-3000:]}")
    return res


def log_tail(*paths: Path) -> str:
    out = []
    for p in paths:
        if p.exists():
            out.append(f"--- {p}:\n" + p.read_text(errors="replace")[-3000:])
    return "\n".join(out)


def numbers(path: Path) -> list[int]:
    try:
        return read_numbers(path)
    except FileNotFoundError:
        return []


def remove_cgroups(name: str) -> None:
    """rmdir what a runtime left of a container's cgroups: a directory
    ``name`` (a container id, or a path under the hierarchy) below the
    test's own cgroup in every v1 hierarchy, and below each hierarchy's root."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(","):
                own[c.replace("name=", "")] = path
    base = Path("/sys/fs/cgroup")
    for h in base.iterdir():
        if not h.is_dir():
            continue
        for parent in {own.get(h.name, "/"), "/"}:
            d = h / parent.lstrip("/") / name.lstrip("/")
            if d.is_dir():
                # children first (a runtime's subtree), deepest first
                for sub in sorted((p for p in d.rglob("*") if p.is_dir()),
                                  key=lambda p: -len(p.parts)):
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
                try:
                    d.rmdir()
                except OSError:
                    pass


# ------------------------------------------------------------------ runc ----

class Runc:
    """runc with a private --root state directory, one bundle (the counter
    over the busybox rootfs, /out bound from ``out``) and the containers
    made from it (``id`` records each for the clean-up).  ``criu`` is what
    runc is given as --criu: procsnap's wrapper unless changed."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.bundle = base / "bundle"
        self.out = base / "out"
        self.criu = criu_dir(base) / "criu"
        self.tag = f"ps{os.getpid()}-{os.urandom(3).hex()}"
        self.ids: list[str] = []
        self.start_time = 0.0      # wall time of the last ``runc run -d``

    def id(self, name: str) -> str:
        cid = f"{self.tag}-{name}"
        self.ids.append(cid)
        return cid

    def runc(self, *args: object, check: bool = True, detached: bool = False,
             timeout: float = 120) -> subprocess.CompletedProcess:
        return run("runc", "--root", self.state, "--criu", self.criu,
                   "--log", self.base / "runc.log", *args, check=check,
                   detached=detached, timeout=timeout)

    def pid(self, cid: str) -> int:
        return int(json.loads(self.runc("state", cid).stdout)["pid"])

    def status(self, cid: str) -> str:
        res = self.runc("state", cid, check=False)
        if res.returncode != 0:
            return "absent"
        return str(json.loads(res.stdout)["status"])

    def start(self, cid: str) -> None:
        t = time.monotonic()
        res = self.runc("run", "-d", "--bundle", self.bundle, cid, detached=True, check=False)
        self.start_time = time.monotonic() - t
        assert res.returncode == 0, log_tail(self.base / "runc.log")
        wait_for(lambda: len(self.numbers()) >= 5, 20, "the container's counter")

    def numbers(self) -> list[int]:
        return numbers(self.out / "counter.log")

    def checkpoint(self, cid: str, images: Path, *extra: object) -> None:
        shutil.rmtree(images, ignore_errors=True)
        res = self.runc("checkpoint", "--image-path", images, *extra, cid, check=False)
        assert res.returncode == 0, (
            f"runc checkpoint: {res.stderr[-2000:]}\n"
            + log_tail(images / "dump.log", self.base / "runc.log"))

    def restore(self, cid: str, images: Path, *extra: object) -> None:
        res = self.runc("restore", "-d", "--image-path", images, *extra,
                        "--bundle", self.bundle, cid, detached=True, check=False)
        assert res.returncode == 0, (
            "runc restore failed\n" + log_tail(images / "restore.log", self.base / "runc.log"))

    def exec(self, cid: str, script: str) -> str:
        return str(self.runc("exec", cid, "/bin/sh", "-c", script, timeout=60).stdout)


def runc_missing() -> list[str]:
    """What the runc container needs and this machine lacks."""
    missing = [t for t in ("runc",) if shutil.which(t) is None]
    if busybox() is None:
        missing.append("busybox-static")
    return missing


@contextmanager
def runc_bundle() -> Iterator[Runc]:
    """A Runc whose bundle is ready (``runc spec``, no terminal, the counter
    as its process); at the end every container it made is deleted, its
    cgroups removed, and the directory with the state and bundle too."""
    base = Path(f"/var/tmp/procsnap-runc-{os.getpid()}-{os.urandom(3).hex()}")
    base.mkdir(parents=True)
    r = Runc(base)
    try:
        r.state.mkdir()
        r.out.mkdir()
        r.bundle.mkdir()
        make_rootfs(r.bundle / "rootfs")
        run("runc", "spec", cwd=r.bundle)
        cfg_path = r.bundle / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/sh", "-c", COUNTER]
        cfg["mounts"].append({"destination": "/out", "type": "bind", "source": str(r.out),
                              "options": ["rbind", "rw"]})
        cfg_path.write_text(json.dumps(cfg, indent=1))
        yield r
    finally:
        for cid in r.ids:
            r.runc("delete", "--force", cid, check=False, timeout=60)
            remove_cgroups(cid)
        reap()
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------- LXC ----

LXC_TOOLS = ("lxc-create", "lxc-start", "lxc-checkpoint", "lxc-attach", "lxc-stop",
             "lxc-destroy", "lxc-info", "lxcfs", "busybox")
LXCFS_HOOK = Path("/usr/share/lxcfs/lxc.mount.hook")

# test_lxc's init.  fd 3 is lxcfs's meminfo; it is read (once) when the
# test creates /trigger.  lxc.signal.halt of the busybox template is SIGUSR1.
LXC_COUNTER = """\
exec 3</proc/meminfo
exec 4</proc/stat
read -r line <&4
trap 'exit 0' USR1 PWR TERM
i=0
while :; do
  i=$((i+1))
  echo $i >> /counter.log
  if [ -e /trigger ]; then
    rm /trigger
    read -r line <&3
    echo "$line" > /meminfo.out
    read -r line <&4
    echo "$line" > /stat.out
  fi
  sleep 0.05
done
"""

# The same counter holding no lxcfs file: CRIU 4.2's restore fails on an
# lxcfs file held open whose size changed since the dump ("bad size").
LXC_PLAIN_COUNTER = """\
trap 'exit 0' USR1 PWR TERM
i=0
while :; do
  i=$((i+1))
  echo $i >> /counter.log
  sleep 0.05
done
"""


def lxc_missing() -> list[str]:
    """What the LXC container needs and this machine lacks."""
    out = [t for t in LXC_TOOLS if shutil.which(t) is None]
    if not LXCFS_HOOK.exists():
        out.append(str(LXCFS_HOOK))
    if not os.path.exists("/dev/fuse"):
        out.append("/dev/fuse")
    return out


class LxcContainer:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = f"psnap-{os.getpid()}-{os.urandom(3).hex()}"
        self.lxcpath = base / "lxcpath"
        self.rootfs = self.lxcpath / self.name / "rootfs"
        self.env = dict(os.environ)
        self.start_time = 0.0      # wall time of its lxc-start

    def info(self, what: str) -> str:
        return run("lxc-info", "-n", self.name, "-P", self.lxcpath, what, "-H",
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
        # run() puts the output in files, not pipes: lxc-checkpoint -r leaves
        # the container's monitor running, and it keeps the stdio it was given.
        return run(tool, "-n", self.name, "-P", self.lxcpath, *args, env=self.env,
                   timeout=timeout, check=check)


def lxcfs_mounted(mnt: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


@contextmanager
def lxc_container(init: str = LXC_COUNTER, symlink_binds: bool = True,
                  extra_conf: tuple[str, ...] = ()) -> Iterator[LxcContainer]:
    """A running LXC busybox container (a name and lxcpath of its own, no
    network, ``lxc.tty.max = 0``) with lxcfs, its counter going: an lxcfs
    of its own on a mountpoint of its own, mounted into the container by a
    copy of LXC's lxcfs hook pointed at that mountpoint; ``init`` is the
    script it runs as init; ``criu`` first on its PATH (c.env) is
    procsnap's wrapper.  ``symlink_binds=False`` drops the template's binds
    of /lib and /lib64 (symlinks on Debian 12, on which CRIU 4.2's restore
    fails), keeping those of /usr/lib and /usr/lib64; ``extra_conf``: more
    lines of its config (``{base}`` is the test's directory).  At the end it is
    stopped and destroyed, lxcfs stopped and unmounted, the directory and
    LXC's new lxc.pivot cgroups removed."""
    # LXC's monitor leaves an empty lxc.pivot cgroup in every hierarchy: ours
    # to remove if it was not there before.
    pivots_before = set(Path("/sys/fs/cgroup").glob("*/lxc.pivot"))
    base = Path(f"/tmp/procsnap-lxc-{os.getpid()}-{os.urandom(3).hex()}")
    base.mkdir()
    c = LxcContainer(base)
    lxcfs_mnt = base / "lxcfs"
    lxcfs_mnt.mkdir()
    lxcfs = subprocess.Popen(["lxcfs", "-f", "-p", str(base / "lxcfs.pid"), str(lxcfs_mnt)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (lxcfs_mnt / "proc" / "meminfo").exists(), 10,
                 "lxcfs to be mounted")
        hook = base / "lxcfs-hook"
        hook.write_text(LXCFS_HOOK.read_text().replace("/var/lib/lxcfs", str(lxcfs_mnt)))
        hook.chmod(0o755)
        (base / "base.conf").write_text("lxc.net.0.type = empty\n")
        run("lxc-create", "-t", "busybox", "-n", c.name, "-P", c.lxcpath,
            "-f", base / "base.conf")
        conf = c.lxcpath / c.name / "config"
        lines = []
        for line in conf.read_text().splitlines():
            if line.startswith("lxc.tty.max"):
                line = "lxc.tty.max = 0"
            elif line.startswith("lxc.mount.auto"):
                line = "lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed"
            elif not symlink_binds and line.split() in (
                    ["lxc.mount.entry", "=", "/lib", "lib", "none", "ro,bind", "0", "0"],
                    ["lxc.mount.entry", "=", "/lib64", "lib64", "none", "ro,bind", "0", "0"]):
                continue
            lines.append(line)
        lines += [f"lxc.hook.mount = {hook}", "lxc.init.cmd = /bin/sh /counter.sh"]
        lines += [line.format(base=base) for line in extra_conf]
        conf.write_text("\n".join(lines) + "\n")
        (c.rootfs / "counter.sh").write_text(init)
        bindir = criu_dir(base)
        c.env["PATH"] = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        t = time.monotonic()
        c.lxc("lxc-start")
        c.start_time = time.monotonic() - t
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
        if lxcfs_mounted(lxcfs_mnt):
            subprocess.run(["umount", "-l", str(lxcfs_mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)
        for pivot in set(Path("/sys/fs/cgroup").glob("*/lxc.pivot")) - pivots_before:
            try:
                pivot.rmdir()
            except OSError:
                pass  # in use: not empty
