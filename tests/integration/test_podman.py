"""Podman exports and imports a container checkpoint with procsnap as criu.

Podman (runtime runc) runs ``criu`` from PATH for its version check and
runc runs it for the checkpoint and the restore (``criu swrk FD``, criu's
RPC): a directory holding procsnap's ``criu`` is put first on PATH.  The
image is made by ``podman import`` of a busybox-static root file system
tarball (nothing is pulled); storage is vfs under private --root/--runroot
directories; the container has no network (``--network none``: runc still
gives it a network namespace of its own, with a loopback) and its process
is a counter appending to a bind-mounted host file.  Its stdout and stderr
are pipes to conmon, handed back by runc at restore as --inherit-fd.

Debian's podman, runc and busybox-static must be installed (the test
installs nothing).  Every container and image is removed at teardown, with
the cgroups Podman made.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from containers import (COUNTER, busybox, criu_dir, make_rootfs, make_tarball, numbers,
                        remove_cgroups, run)
from helpers import check_continuity, proc_exists, reap, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

IMAGE = "localhost/procsnap-busybox:test"
CGROUP_PARENT = "libpod_parent"


class Podman:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.out = base / "out"
        self.env = dict(os.environ)
        self.env["PATH"] = f"{criu_dir(base)}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.ids: set[str] = set()

    def podman(self, *args: object, check: bool = True, timeout: float = 120) -> object:
        b = self.base
        return run("podman", "--root", b / "root", "--runroot", b / "run",
                   "--tmpdir", b / "tmp", "--storage-driver", "vfs",
                   "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                   # runc by name: with crun installed too Podman picks crun
                   # (libpod.conf), which refuses this host's hybrid cgroups
                   # and, as Debian builds it, has no checkpoint at all
                   "--runtime", "runc",
                   *args, check=check, env=self.env, timeout=timeout)

    def inspect(self, name: str) -> dict:
        res = self.podman("container", "inspect", name, check=False)
        if res.returncode != 0:  # type: ignore[attr-defined]
            return {}
        info = json.loads(res.stdout)[0]  # type: ignore[attr-defined]
        self.ids.add(info["Id"])
        return dict(info)

    def state(self, name: str) -> str:
        return str(self.inspect(name).get("State", {}).get("Status", "absent"))

    def pid(self, name: str) -> int:
        return int(self.inspect(name)["State"]["Pid"])

    def numbers(self) -> list[int]:
        return numbers(self.out / "counter.log")

    def exec(self, name: str, script: str) -> str:
        return str(self.podman("exec", name, "/bin/sh", "-c", script,  # type: ignore[attr-defined]
                               timeout=60).stdout)


@pytest.fixture
def pm(tmp_path: Path) -> Iterator[Podman]:
    missing = [t for t in ("podman", "runc", "conmon") if shutil.which(t) is None]
    if busybox() is None:
        missing.append("busybox-static")
    if missing:
        pytest.skip("not installed: " + ", ".join(missing) +
                    " (Debian: apt-get install podman runc busybox-static)")
    base = Path(f"/var/tmp/procsnap-podman-{os.getpid()}-{os.urandom(3).hex()}")
    base.mkdir(parents=True)
    parent_existed = {h: (h / CGROUP_PARENT).exists() for h in Path("/sys/fs/cgroup").iterdir()}
    p = Podman(base)
    try:
        for d in ("root", "run", "tmp", "out"):
            (base / d).mkdir()
        make_rootfs(base / "rootfs")
        make_tarball(base / "rootfs", base / "rootfs.tar.gz")
        p.podman("import", base / "rootfs.tar.gz", IMAGE)
        yield p
    finally:
        for name in sorted(p.ids):
            p.podman("rm", "--force", "--time", "0", name, check=False, timeout=60)
        p.podman("rmi", "--all", "--force", check=False, timeout=60)
        # conmon and podman's "container cleanup" exit once the container is
        # gone; as the subreaper we reap them
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reap()
            if not any(_ours(pid, base) for pid in _pids()):
                break
            time.sleep(0.1)
        for cid in p.ids:
            remove_cgroups(f"/{CGROUP_PARENT}/libpod-{cid}")
        for h, existed in parent_existed.items():
            if not existed:
                for d in (h / CGROUP_PARENT / "conmon", h / CGROUP_PARENT):
                    try:
                        d.rmdir()
                    except OSError:
                        pass
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for mp in reversed(mounts):
            if mp.startswith(str(base) + "/"):
                subprocess.run(["umount", "-l", mp], check=False)
        shutil.rmtree(base, ignore_errors=True)


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ours(pid: int, base: Path) -> bool:
    """A process (conmon, podman) working for this test's storage."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return str(base).encode() in f.read()
    except OSError:
        return False


def _run_counter(p: Podman, name: str) -> None:
    # Podman's default rlimits (nofile, nproc of 1048576) may not be
    # raised here (no CAP_SYS_RESOURCE in the bounding set)
    p.podman("run", "-d", "--name", name, "--network", "none",
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "-v", f"{p.out}:/out", IMAGE, "/bin/sh", "-c", COUNTER)
    p.inspect(name)
    wait_for(lambda: len(p.numbers()) >= 5, 20, "the container's counter")


def _checkpoint(p: Podman, name: str, export: Path) -> int:
    pid = p.pid(name)
    t0 = time.monotonic()
    res = p.podman("container", "checkpoint", "--export", export, name, check=False)
    print(f"podman checkpoint --export: {time.monotonic() - t0:.2f} s")
    assert res.returncode == 0, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    assert p.state(name) == "exited", p.state(name)
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the dumped init {pid} to go")
    return pid


def _import(p: Podman, export: Path, *extra: object) -> None:
    t0 = time.monotonic()
    res = p.podman("container", "restore", "--import", export, *extra, check=False)
    print(f"podman restore --import: {time.monotonic() - t0:.2f} s")
    assert res.returncode == 0, (res.stdout, res.stderr)  # type: ignore[attr-defined]


def test_podman_export_rm_import(pm: Podman) -> None:
    """checkpoint --export, rm, restore --import: the same container runs
    on, its counter unbroken; podman exec works in it; its loopback is up."""
    p = pm
    _run_counter(p, "c1")
    export = p.base / "c1.tar.gz"
    pid = _checkpoint(p, "c1", export)
    last = p.numbers()[-1]
    time.sleep(0.3)
    assert p.numbers()[-1] == last, "the counter runs on after the checkpoint"
    p.podman("rm", "c1")
    assert p.state("c1") == "absent"
    _import(p, export)
    assert p.state("c1") == "running", p.state("c1")
    assert p.pid("c1") == pid
    wait_for(lambda: p.numbers()[-1] >= last + 5, 10, "the counter to go on")
    check_continuity(p.numbers())
    out = p.exec("c1", "tail -n 1 /out/counter.log; ip addr show dev lo; "
                 "grep Seccomp: /proc/1/status")
    assert int(out.split()[0]) > last, out
    assert "inet 127.0.0.1/8" in out and "LOWER_UP" in out, out
    assert "Seccomp:\t2" in out, out   # Podman's seccomp profile, restored
    # the stdio pipes to the new conmon: what the init writes reaches the log
    p.exec("c1", "echo from-the-restored-init > /proc/1/fd/1")
    wait_for(lambda: "from-the-restored-init" in str(
        p.podman("logs", "c1").stdout), 10, "podman logs to show the init's stdout")  # type: ignore[attr-defined]


def test_podman_import_as_second_container(pm: Podman) -> None:
    """restore --import --name c2 while c1 runs on (the way a checkpoint
    moves to another host): two containers, both counting."""
    p = pm
    _run_counter(p, "c1")
    export = p.base / "c1.tar.gz"
    res = p.podman("container", "checkpoint", "--export", export, "--leave-running", "c1",
                   check=False)
    assert res.returncode == 0, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    assert p.state("c1") == "running"
    c1_pid = p.pid("c1")
    _import(p, export, "--name", "c2")
    assert p.state("c2") == "running", p.state("c2")
    assert p.state("c1") == "running" and p.pid("c1") == c1_pid
    c2_pid = p.pid("c2")
    assert c2_pid != c1_pid
    out = p.exec("c2", "echo $$; grep NSpid /proc/1/status")
    assert "NSpid:" in out, out
    n = len(p.numbers())
    # both counters write the one file now
    wait_for(lambda: len(p.numbers()) >= n + 20, 10, "two counters")


def test_podman_terminal_export_import(pm: Podman) -> None:
    """A container with a terminal (podman run -t: conmon holds the pty
    master, the pts is in the container's devpts): checkpoint --export,
    rm, restore --import.  runc asks for orphan_pts_master, procsnap makes
    a new pty in the container's new devpts and sends the master to runc,
    which hands it to the new conmon: the counter goes on, the init's fds
    0-2 and controlling terminal are the new pts, and what the init
    prints on its terminal after the restore reaches podman logs."""
    p = pm
    script = ("i=0; while :; do i=$((i+1)); echo $i >> /out/counter.log; "
              "case $i in *0) echo tick $i;; esac; sleep 0.05; done")
    p.podman("run", "-d", "-t", "--name", "c1", "--network", "none",
             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096",
             "-v", f"{p.out}:/out", IMAGE, "/bin/sh", "-c", script)
    wait_for(lambda: len(p.numbers()) >= 5, 20, "the container's counter")
    export = p.base / "c1.tar.gz"
    pid = _checkpoint(p, "c1", export)
    last = p.numbers()[-1]
    p.podman("rm", "c1")
    _import(p, export)
    assert p.state("c1") == "running" and p.pid("c1") == pid
    wait_for(lambda: p.numbers()[-1] >= last + 5, 10, "the counter to go on")
    check_continuity(p.numbers())
    pts = {os.stat(f"/proc/{pid}/fd/{n}").st_rdev for n in (0, 1, 2)}
    with open(f"/proc/{pid}/stat") as f:
        tty_nr = int(f.read().rsplit(")", 1)[1].split()[4])
    assert len(pts) == 1 and tty_nr in pts, (pts, tty_nr)
    after = (last // 10 + 2) * 10

    def logged() -> bool:
        out = str(p.podman("logs", "c1").stdout)  # type: ignore[attr-defined]
        return any(w.strip() == f"tick {after}" for w in out.replace("\r", "\n").split("\n"))
    wait_for(logged, 15, f"podman logs to show 'tick {after}', printed after the restore")


def test_podman_pre_checkpoint_then_with_previous(pm: Podman) -> None:
    """checkpoint --pre-checkpoint (Podman asks criu's FEATURE_CHECK
    mem_track, runc runs a PRE_DUMP), then checkpoint --with-previous (the
    dump links the pre-dump as its parent) and restore: the counter goes
    on without a gap."""
    p = pm
    _run_counter(p, "c1")
    pid = p.pid("c1")
    res = p.podman("container", "checkpoint", "--pre-checkpoint", "c1", check=False)
    assert res.returncode == 0, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    assert p.state("c1") == "running", p.state("c1")
    before = p.numbers()[-1]
    wait_for(lambda: p.numbers()[-1] >= before + 3, 10, "the counter after the pre-checkpoint")
    res = p.podman("container", "checkpoint", "--with-previous", "c1", check=False)
    assert res.returncode == 0, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    assert p.state("c1") == "exited", p.state("c1")
    wait_for(lambda: (reap(), not proc_exists(pid))[1], 10, f"the dumped init {pid} to go")
    parents = [d for d in (p.base / "root").rglob("checkpoint/parent")]
    assert parents and os.readlink(parents[0]) == "../pre-checkpoint", parents
    last = p.numbers()[-1]
    res = p.podman("container", "restore", "c1", check=False)
    assert res.returncode == 0, (res.stdout, res.stderr)  # type: ignore[attr-defined]
    assert p.state("c1") == "running" and p.pid("c1") == pid
    wait_for(lambda: p.numbers()[-1] >= last + 5, 10, "the counter to go on")
    check_continuity(p.numbers())
