"""What the runc and Podman tests share: a busybox-static root file system,
a directory holding ``criu`` (a wrapper that runs ``python3 -m
procsnap.criu`` from this checkout), the container's counter, and a clean-up
of the cgroups a runtime left behind.

Nothing is pulled from a registry: the root file system is /bin/busybox
and its applet links; runc gets it as an OCI bundle (``runc spec``), Podman
as an image made by ``podman import`` of its tarball.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from helpers import REPO_ROOT, read_numbers

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
