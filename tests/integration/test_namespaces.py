"""Namespaces (issue 9): a tree that is the init of its own pid namespace,
with its own hostname and clocks, comes back in new namespaces of the same
shape.  (User namespaces, the last kind refused here, are saved now:
test_userns.py.)

The targets run under ``unshare -fp -u``, and once with ``--mount-proc``
(a mount namespace of its own: resources/namespaces/mnt.py, restored under
``--root /``).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    check_continuity,
    check_ok,
    crit_decode,
    finish,
    is_untouched,
    read_numbers,
    reap,
    run_procsnap,
    start_under,
    tree_pids,
    wait_for,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def start_in_ns(targets: TargetFactory, flags: list[str], *args: str) -> Target:
    """nscounter under ``unshare FLAGS``: returns the nscounter (the init of
    the new pid namespace), whose parent -- unshare -- stays outside."""
    return start_under(targets, ["unshare", *flags], "nscounter", *args)


def nspids(root: int) -> dict[int, list[int]]:
    """pid -> its NSpid line, for every task of the tree."""
    out = {}
    for pid in tree_pids(root):
        with open(f"/proc/{pid}/status") as f:
            line = next(ln for ln in f if ln.startswith("NSpid:"))
        out[pid] = [int(x) for x in line.split()[1:]]
    return out


def hostname_of(pid: int) -> str:
    # setns into its uts namespace (nsenter): reads, traces nothing
    return subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True,
                          text=True, check=True, timeout=10).stdout.strip()


def ns_link(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def dump_restore(targets: TargetFactory, t: Target, images: Path, *ropts: str) -> None:
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    check_ok(run_procsnap("restore", "-D", images, "-d", *ropts))
    targets.adopt(t.pid, like=t)
    assert t.alive(), f"pid {t.pid} did not come back"


def inside_pids(pid: int) -> list[int]:
    """The pids the task's own /proc (mounted inside its pid namespace) lists."""
    return sorted(int(d) for d in os.listdir(f"/proc/{pid}/root/proc") if d.isdigit())


@pytest.mark.parametrize("mount_proc", [False, True], ids=["no-mntns", "mount-proc"])
def test_pid_uts_namespaces(targets: TargetFactory, images_dir: Path, mount_proc: bool) -> None:
    """A tree of 3 under unshare -fp -u (and --mount-proc: its own /proc in a
    mount namespace of its own, restored under --root /)."""
    numbers = targets.workdir / "numbers"
    flags = ["-fp", "--mount-proc", "-u"] if mount_proc else ["-fp", "-u"]
    t = start_in_ns(targets, flags, str(numbers), "box-ns9", "2")
    wait_numbers(numbers, 3)
    before = nspids(t.pid)
    assert len(before) == 3 and before[t.pid][-1] == 1, before
    assert hostname_of(t.pid) == "box-ns9"
    if mount_proc:
        assert inside_pids(t.pid) == [1, 2, 3]
    dump_restore(targets, t, images_dir, *(["--root", "/"] if mount_proc else []))

    after = nspids(t.pid)
    assert after == before, f"pids at every level: before {before}, after {after}"
    if mount_proc:  # the inside view: its /proc lists the inner pids
        assert inside_pids(t.pid) == [1, 2, 3], inside_pids(t.pid)
    assert hostname_of(t.pid) == "box-ns9"
    assert hostname_of(t.pid) != os.uname().nodename
    for kind in ("pid", "uts"):  # new namespaces, not ours
        assert ns_link(t.pid, kind) != ns_link("self", kind), kind
        assert all(ns_link(p, kind) == ns_link(t.pid, kind) for p in after), kind
    assert ns_link(t.pid, "time") == ns_link("self", "time")
    uts = [f for f in os.listdir(images_dir) if f.startswith("utsns-")]
    assert len(uts) == 1, os.listdir(images_dir)
    assert crit_decode(images_dir / uts[0])["entries"][0]["nodename"] == "box-ns9"
    n = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, n + 5))
    finish(t)


def test_time_namespace_offsets(targets: TargetFactory, images_dir: Path) -> None:
    numbers = targets.workdir / "numbers"
    t = start_in_ns(targets, ["-fp", "-u", "-T", "--monotonic", "1000000",
                              "--boottime", "2000000"], str(numbers), "box-time", "1")
    wait_numbers(numbers, 3)
    with open(f"/proc/{t.pid}/timens_offsets") as f:
        assert f.read().split() == ["monotonic", "1000000", "0", "boottime", "2000000", "0"]
    dump_restore(targets, t, images_dir)

    assert ns_link(t.pid, "time") != ns_link("self", "time")
    with open(f"/proc/{t.pid}/timens_offsets") as f:
        words = f.read().split()
    mono, boot = int(words[1]), int(words[4])
    # As CRIU: the clocks go on from where the dump read them, so the
    # offsets come back smaller by the time the tree spent on disk.
    assert 1000000 - 60 <= mono <= 1000000, words
    assert 2000000 - 60 <= boot <= 2000000, words
    n = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, n + 5))
    finish(t)  # inside: no clock went back or jumped, in the init and its child


def test_cgroup_namespace_of_a_box(targets: TargetFactory, images_dir: Path) -> None:
    """unshare -fp -u -C: the box's cgroup namespace comes back, rooted
    where it was: the same cgroups from outside and from inside."""
    from procsnap.resources import cgroup
    numbers = targets.workdir / "numbers"
    t = start_in_ns(targets, ["-fp", "-u", "-C"], str(numbers), "box-cgns", "1")
    wait_numbers(numbers, 3)
    assert ns_link(t.pid, "cgroup") != ns_link("self", "cgroup")
    before = (Path(f"/proc/{t.pid}/cgroup").read_text(), cgroup.inner_view(t.pid))
    assert all(path == "/" for _, path in before[1]), before[1]
    dump_restore(targets, t, images_dir)
    assert ns_link(t.pid, "cgroup") != ns_link("self", "cgroup")
    assert (Path(f"/proc/{t.pid}/cgroup").read_text(), cgroup.inner_view(t.pid)) == before
    n = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, n + 5))
    finish(t)


def test_root_not_init_refused(targets: TargetFactory, images_dir: Path) -> None:
    """A task inside a pid namespace whose init is not dumped cannot come back
    with its pids: the namespace would need its init."""
    numbers = targets.workdir / "numbers"
    t = start_in_ns(targets, ["-fp", "-u"], str(numbers), "box-child", "1")
    child = next(p for p in tree_pids(t.pid) if p != t.pid)
    res = run_procsnap("dump", "-t", child, "-D", images_dir)
    assert_one_line_error(res, f"pid {child}: lives in a pid namespace whose init is not "
                          "in the tree")
    for pid in (t.pid, child):
        ok, why = is_untouched(pid)
        assert ok, why
    finish(t)


def test_namespace_fds(targets: TargetFactory, tmp_path: Path, images_dir: Path) -> None:
    """fds on /proc/self/ns/{net,uts} (the tree's own namespaces, made anew)
    and /proc/self/ns/ipc (procsnap's, which the tree shares): saved as
    namespace files (fd kind NS) and reopened on the namespaces the
    restored tree lives in; checked from outside (each fd's inode is the
    root's namespace now) and by the target itself."""
    numbers = tmp_path / "numbers"
    t = targets.start("nsfds.py", str(numbers))
    wait_numbers(numbers, 3)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    kinds = [e["nsf"]["ns_cflag"] for e in crit_decode(images_dir / "files.img")["entries"]
             if e.get("type") == "NS"]
    assert sorted(kinds) == sorted([0x40000000, 0x04000000, 0x08000000]), kinds
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    targets.adopt(t.pid, like=t)
    for fd, kind in ((10, "net"), (11, "uts"), (12, "ipc")):
        assert os.stat(f"/proc/{t.pid}/fd/{fd}").st_ino == \
            os.stat(f"/proc/{t.pid}/ns/{kind}").st_ino, kind
    assert os.stat(f"/proc/{t.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()


def test_namespace_fd_outside_tree_refused(targets: TargetFactory, tmp_path: Path,
                                           images_dir: Path) -> None:
    """An fd on a namespace no task of the tree lives in (procsnap's own
    network namespace, held by a task in a namespace of its own): one line
    naming the pid, the fd and the namespace; the tree runs on."""
    numbers = tmp_path / "numbers"
    t = targets.start("nsfds.py", str(numbers), "/proc/self/ns/net")
    wait_numbers(numbers, 3)
    link = os.readlink("/proc/self/ns/net")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    assert_one_line_error(res, f"pid {t.pid}: fd 13: {link}", "no task of the dumped tree")
    ok, why = is_untouched(t.pid)
    assert ok, why
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()


def _nspids(pids: list[int]) -> dict[int, str]:
    out = {}
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            out[pid] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("NSpid:"))
    return out


def _ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_nested_pid_namespace(targets: TargetFactory, tmp_path: Path, images_dir: Path) -> None:
    """A tree in procsnap's pid namespace with a pid namespace nested in it
    (unshare -fp inside the tree): the nested init comes back as pid 1 of
    a new namespace with its child as pid 2, every task with its pids at
    every level (NSpid equal before and after), unshare's pid_for_children
    pointing at the new namespace again; checked from outside and by the
    inner init itself, which counts on."""
    numbers = tmp_path / "numbers"
    t = targets.start("nestpid.py", str(numbers), wait_ready=False)
    wait_numbers(numbers, 3)
    pids = tree_pids(t.pid)
    assert len(pids) == 4, pids              # python, unshare, inner init, its child
    before = _nspids(pids)
    assert before[pids[2]].split()[1:] == ["1"] and before[pids[3]].split()[1:] == ["2"], before
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10)
    res = check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    targets.adopt(t.pid, like=t)
    assert tree_pids(t.pid) == pids, res.stderr
    assert _nspids(pids) == before
    unshare, init = pids[1], pids[2]
    assert _ns(init, "pid") != _ns(unshare, "pid")
    assert _ns(unshare, "pid_for_children") == _ns(init, "pid")
    assert _ns(pids[3], "pid") == _ns(init, "pid")
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()
    for pid in pids:   # the nested init's child is ours to reap once its init is gone
        wait_for(lambda: (reap(), not os.path.exists(f"/proc/{pid}"))[1], 10, f"pid {pid} gone")


def test_pid_for_children_without_init_refused(targets: TargetFactory, tmp_path: Path,
                                               images_dir: Path) -> None:
    """A task that unshared CLONE_NEWPID and has not forked (its next child
    would be the init of a namespace that has none yet): one line naming
    the pid; the tree runs on untraced."""
    numbers = tmp_path / "numbers"
    t = targets.start("nestpid.py", str(numbers), "nofork")
    wait_numbers(numbers, 3)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    assert_one_line_error(res, f"pid {t.pid}", "pid_for_children")
    ok, why = is_untouched(t.pid)
    assert ok, why
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()
