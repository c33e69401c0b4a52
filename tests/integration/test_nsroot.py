"""A tree under a root of its own (zdtm.py's ns flavour): pid 1 of new pid
and mount namespaces, pivoted into a directory, so the names it holds --
a deleted file, an O_TMPFILE file, a FIFO, unix sockets bound to a deleted
and to a relative name, a removed cwd, a chrooted child, a pty of its own
devpts -- are not procsnap's names.  Dumped, and restored with --root DIR:
procsnap makes ghosts, opens FIFOs and binds sockets under the tree's root
(never under its own /), makes the pty pair in the tree's devpts (with
the mount tree, when its pts is bound elsewhere), and
looks a chrooted task's names up from the namespace's root.  And a tree
in a pid namespace of its own whose tasks share an fd table (CLONE_FILES):
the table holds one pidfd of the restorer, closed once.  And helper tasks
(a process group whose leader is gone, a cwd in /proc/N of a dead
process) made in the tree's own pid namespace with their pid there.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    check_continuity,
    check_ok,
    children_of,
    describe,
    kill_when,
    proc_cmdline,
    procsnap_cmd,
    read_numbers,
    read_status,
    reap,
    run_procsnap,
    start_under,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

TARGET = "nsroot.py"


def _ours_left() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split(" ")[4] for ln in f]
    return [m for m in mounts if m.startswith("/tmp/.procsnap-mnt.")] + \
        [n for n in os.listdir("/tmp") if n.startswith(".procsnap-mnt.")]


def _dumped(targets: TargetFactory, tmp_path: Path, images_dir: Path) -> tuple[Target, Path]:
    """nsroot.py under DIR, dumped: (its target, DIR)."""
    assert not os.path.lexists("/box"), "the test's names must not exist in our root"
    d = tmp_path / "root"
    d.mkdir()
    outer = targets.start(TARGET, str(d), wait_ready=False)
    wait_for(lambda: len(children_of(outer.pid)) == 1, 10, "unshare to fork the target")
    (inner,) = children_of(outer.pid)
    # its stdout and stderr are files inside its root (see the target)
    t = Target(name=TARGET, pid=inner, argv=outer.argv, workdir=outer.workdir,
               out=d / "box" / "out", err=d / "box" / "err", cmdline=proc_cmdline(inner) or [])
    targets.targets.append(t)  # killed and reaped by the fixture
    t.wait_ready()
    assert read_status(inner)["NSpid"].split()[-1] == "1"
    numbers = d / "box" / "numbers"
    wait_numbers(numbers, 3)
    check_ok(run_procsnap("dump", "-t", inner, "-D", images_dir,
                          "--external", "mnt[/usr]:usr"))
    assert wait_gone(inner, 10), f"dump left pid {inner} alive"
    reap()
    assert any(n.startswith("ghost-file-") for n in os.listdir(images_dir))
    return t, d


def test_tree_under_its_own_root(targets: TargetFactory, tmp_path: Path,
                                 images_dir: Path) -> None:
    t, d = _dumped(targets, tmp_path, images_dir)
    res = check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--root", d,
                                "--ext-mount-map", "usr:/usr"))
    targets.adopt(t.pid, like=t)
    assert t.alive(), describe(res)
    assert not os.path.lexists("/box"), "procsnap made the tree's names in its own root"
    assert sorted(os.listdir(d / "box")) == ["console", "err", "fifo", "jail", "nsroot.py",
                                             "numbers", "out", "rel", "sock.d"], \
        "ghost names left"
    assert os.listdir(d / "box" / "sock.d") == []
    assert _ours_left() == []
    numbers = d / "box" / "numbers"
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()


def test_restore_killed_while_ghosts_exist(targets: TargetFactory, tmp_path: Path,
                                          images_dir: Path) -> None:
    """SIGKILL to a restore under --root while the ghosts it made exist in
    the tree's root: ``procsnap cleanup`` removes them.  procsnap reaches
    the tree's names through /proc/ITS PID/fd/N, which names nothing once
    it is dead: the journal holds the names from our root instead."""
    t, d = _dumped(targets, tmp_path, images_dir)
    box = d / "box"
    before = sorted(os.listdir(box))

    def ghosts() -> list[str]:
        return [n for n in os.listdir(box) if n.endswith(".ghost") or n == "gone"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    restorer = subprocess.Popen(procsnap_cmd("restore", "-D", str(images_dir), "-d", "--root",
                                             str(d), "--ext-mount-map", "usr:/usr"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, close_fds=True, env=env)
    kill_when(restorer, lambda: bool(ghosts()), "the restore to make the ghosts",
              interval=0.001)
    wait_for(lambda: not [p for p in children_of(os.getpid()) if p != restorer.pid], 10,
             "the puppets to die with the restorer")
    reap()
    assert ghosts(), "no ghost was left to clean up"
    res = check_ok(run_procsnap("cleanup", images_dir))
    assert ".ghost" in res.stdout, describe(res)
    assert sorted(os.listdir(box)) == before, "ghosts left after cleanup"


def test_fd_table_shared_in_a_pid_namespace(targets: TargetFactory, images_dir: Path) -> None:
    """clone(CLONE_FILES) under a pid namespace (zdtm fdt_shared, fd01 in
    -f ns): the puppets of one table reach the restorer through one pidfd
    in it; the child closed it a second time ('close(7) in the task: Bad
    file descriptor')."""
    numbers = targets.workdir / "numbers"
    t = start_under(targets, ["unshare", "-fp", "setsid"], "fdt_shared", str(numbers))
    wait_numbers(numbers, 3)
    (child,) = children_of(t.pid)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(312, t.pid, child, 2, 0, 0) == 0  # KCMP_FILES
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    reap()
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    targets.adopt(t.pid, like=t)
    targets.adopt(child)
    assert read_status(t.pid)["NSpid"].split()[-1] == "1"
    assert libc.syscall(312, t.pid, child, 2, 0, 0) == 0, "the fd table is no longer shared"
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()


def _cycle(targets: TargetFactory, t: Target, images: Path, *restore_opts: str) -> None:
    # a copy of the host's mounts (unshare -m): any a parallel test mounts
    # meanwhile (lxcfs, /run/netns) is external, found in ours
    auto = ("--ext-mount-map", "auto") if "--root" in restore_opts else ()
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images, *auto))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    reap()
    check_ok(run_procsnap("restore", "-D", images, "-d", *restore_opts, *auto))
    targets.adopt(t.pid, like=t)
    assert read_status(t.pid)["NSpid"].split()[-1] == "1"


def test_group_of_a_reaped_leader_in_a_pid_namespace(targets: TargetFactory,
                                                     images_dir: Path) -> None:
    """zdtm zombie01 under -f ns: the group's leader is gone; its helper is
    made with the leader's pid inside the namespace (the member's NSpgid),
    a free one outside.  It was refused at dump."""
    t = start_under(targets, ["unshare", "-fp", "setsid"], "reaped_leader")
    t.wait_line(r"^tree ")  # (its pids inside: the target checks them itself)
    _cycle(targets, t, images_dir)
    assert t.verdict() == "PASS", t.output()


def test_cwd_in_the_proc_dir_of_a_dead_process_in_a_pid_namespace(
        targets: TargetFactory, images_dir: Path) -> None:
    """zdtm unhashed_proc under -f ns: the cwd is /proc/N of the tree's own
    /proc, N a pid inside; the helper for the chdir gets N there."""
    t = start_under(targets, ["unshare", "-fp", "--mount-proc", "-m", "--propagation",
                              "private", "setsid"], "proc_cwd")
    dead = int(t.wait_line(r"^dead ").split()[1])
    _cycle(targets, t, images_dir, "--root", "/")
    assert os.readlink(f"/proc/{t.pid}/cwd") == f"/proc/{dead} (deleted)"
    assert t.verdict() == "PASS", t.output()
