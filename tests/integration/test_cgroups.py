"""Cgroup controllers' properties (--manage-cgroups MODE) and --cgroup-root.

The memory, cpu and pids controllers of this machine are v1 hierarchies
(cgroup2 holds only hugetlb): the limits are tested where the kernel has
them, memory.limit_in_bytes, cpu.shares, cpu.cfs_quota_us and pids.max in
v1, and in cgroup2 the controller it offers (memory.max and cpu.weight when
the machine's cgroup2 has them, hugetlb.*.max otherwise), with the parent's
cgroup.subtree_control that makes those files exist.  Every cgroup a test
makes is removed afterwards.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (TargetFactory, assert_one_line_error, cgroup2_enable, cgroup2_release,
                     check_ok, crit_decode, finish, mount_named_cgroup, remove_named_cgroup,
                     run_procsnap, wait_gone)

V1 = Path("/sys/fs/cgroup")
V2 = Path("/sys/fs/cgroup/unified")
TAG = f"procsnap-cgtest-{os.getpid()}"


def _rmtree(d: Path) -> None:
    """Remove a cgroup and those below it; a task of ours still in one (a
    failed test's, not yet killed) goes back to the hierarchy's root first."""
    if not d.is_dir():
        return
    for sub in sorted(d.glob("**/"), key=lambda p: -len(p.parts)):
        for pid in (sub / "cgroup.procs").read_text().split():
            try:
                (d.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # gone meanwhile
        sub.rmdir()


def _cg(pid: int) -> dict[str, str]:
    return {line.split(":")[1]: line.split(":", 2)[2]
            for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}


@pytest.fixture
def v1groups() -> Iterator[dict[str, Path]]:
    """This test's directories in the memory, cpu and pids v1 hierarchies."""
    dirs = {c: V1 / c / TAG for c in ("memory", "cpu", "pids")}
    for c in dirs:
        if not (V1 / c / "cgroup.procs").exists():
            pytest.skip(f"no v1 {c} hierarchy at {V1 / c}")
    yield dirs
    for c, d in dirs.items():
        _rmtree(d)
        _rmtree(V1 / c / (TAG + "-moved"))


def _put_v1(pid: int, dirs: dict[str, Path], shares: str = "512") -> None:
    for d in dirs.values():
        d.mkdir()
    (dirs["memory"] / "memory.limit_in_bytes").write_text(str(256 << 20))
    (dirs["cpu"] / "cpu.shares").write_text(shares)
    (dirs["cpu"] / "cpu.cfs_quota_us").write_text("50000")
    (dirs["pids"] / "pids.max").write_text("77")
    for d in dirs.values():
        (d / "cgroup.procs").write_text(str(pid))


def _v1_values(dirs: dict[str, Path]) -> tuple[str, ...]:
    return ((dirs["memory"] / "memory.limit_in_bytes").read_text().strip(),
            (dirs["cpu"] / "cpu.shares").read_text().strip(),
            (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip(),
            (dirs["pids"] / "pids.max").read_text().strip())


def _dump(targets: TargetFactory, t, images: Path, *opts: str) -> None:
    images.mkdir()
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images, *opts))
    assert wait_gone(t.pid, 10)
    targets.adopt(t.pid, like=t)


def test_v1_limits_come_back(targets: TargetFactory, tmp_path: Path, v1groups) -> None:
    """memory, cpu and pids limits of a task's v1 cgroups, dumped with
    --manage-cgroups=full, the groups removed: the restore makes them with
    their limits and the task is in them."""
    t = targets.start("pythreads.py")
    _put_v1(t.pid, v1groups)
    want = _v1_values(v1groups)
    assert want == (str(256 << 20), "512", "50000", "77")
    _dump(targets, t, tmp_path / "images", "--manage-cgroups=full")
    # CRIU's own decoder reads the properties where criu writes them
    img = crit_decode(tmp_path / "images" / "cgroup.img")["entries"][0]
    cpu = next(c for c in img["controllers"] if "cpu" in c["cnames"])
    top = next(d for d in cpu["dirs"] if d["dir_name"] == TAG)
    assert {p["name"]: p["value"] for p in top["properties"]}["cpu.shares"] == "512"
    for d in v1groups.values():
        d.rmdir()
    check_ok(run_procsnap("restore", "-D", tmp_path / "images", "-d", "--manage-cgroups=full"))
    assert _v1_values(v1groups) == want
    cg = _cg(t.pid)
    assert all(cg[c] == f"/{TAG}" for c in v1groups), cg
    finish(t)


def test_v1_modes_on_an_existing_cgroup(targets: TargetFactory, tmp_path: Path,
                                        v1groups) -> None:
    """The cgroups exist at restore with other limits: soft leaves them,
    strict refuses (one line naming the cgroup), full writes the saved ones."""
    t = targets.start("pythreads.py")
    _put_v1(t.pid, v1groups)
    want = _v1_values(v1groups)
    images = tmp_path / "images"
    _dump(targets, t, images)
    (v1groups["cpu"] / "cpu.shares").write_text("300")
    (v1groups["pids"] / "pids.max").write_text("max")
    res = run_procsnap("restore", "-D", images, "-d", "--manage-cgroups=strict")
    assert_one_line_error(res, f"{TAG} exists", "--manage-cgroups=strict")
    check_ok(run_procsnap("restore", "-D", images, "-d", "--manage-cgroups=soft"))
    assert _v1_values(v1groups)[1:] == ("300", "50000", "max")
    finish(t)
    t = targets.start("pythreads.py")
    (v1groups["cpu"] / "cpu.shares").write_text("512")
    for d in v1groups.values():
        (d / "cgroup.procs").write_text(str(t.pid))
    images = tmp_path / "images2"
    _dump(targets, t, images)
    (v1groups["cpu"] / "cpu.shares").write_text("300")
    (v1groups["memory"] / "memory.limit_in_bytes").write_text(str(512 << 20))
    check_ok(run_procsnap("restore", "-D", images, "-d", "--manage-cgroups=full"))
    assert _v1_values(v1groups)[:2] == (want[0], "512")
    finish(t)


def test_cgroup_root_moves_the_tree(targets: TargetFactory, tmp_path: Path, v1groups) -> None:
    """--cgroup-root cpu:/NEW moves the cpu cgroup (with its limits) and
    only it; a cgroup-root for no controller moves every other hierarchy."""
    t = targets.start("pythreads.py")
    _put_v1(t.pid, v1groups)
    want = _v1_values(v1groups)
    _dump(targets, t, tmp_path / "images")
    for d in v1groups.values():
        d.rmdir()
    moved = f"/{TAG}-moved"
    check_ok(run_procsnap("restore", "-D", tmp_path / "images", "-d",
                          "--cgroup-root", f"cpu:{moved}"))
    cg = _cg(t.pid)
    assert cg["cpu"] == moved and cg["memory"] == cg["pids"] == f"/{TAG}", cg
    assert (V1 / "cpu" / moved.lstrip("/") / "cpu.shares").read_text().strip() == want[1]
    assert not v1groups["cpu"].exists()
    finish(t)


@pytest.fixture
def v2group() -> Iterator[tuple[Path, list[tuple[str, str]]]]:
    """A cgroup2 parent with the controllers it can have enabled for its
    children, and the (file, value) limits a child is given."""
    have = (V2 / "cgroup.controllers").read_text().split()
    wanted = [c for c in ("memory", "cpu") if c in have] or [c for c in have if c == "hugetlb"]
    if not wanted:
        pytest.skip("the cgroup2 hierarchy has no memory, cpu or hugetlb controller")
    cgroup2_enable(V2, wanted)  # taken back by the last run at the same time that uses it
    limits = []
    if "memory" in wanted:
        limits.append(("memory.max", str(128 << 20)))
    if "cpu" in wanted:
        limits.append(("cpu.weight", "42"))
    if "hugetlb" in wanted:
        limits.append(("hugetlb.2MB.max", str(6 << 20)))
    parent = V2 / TAG
    try:
        yield parent, limits
    finally:
        _rmtree(parent)
        _rmtree(V2 / (TAG + "-moved"))
        cgroup2_release(V2)


_RUN = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
import helpers
helpers.cgroup2_enable(Path(sys.argv[1]), [sys.argv[2]])
print("in", flush=True)
sys.stdin.readline()
helpers.cgroup2_release(Path(sys.argv[1]))
print("out", flush=True)
"""


def test_cgroup2_controllers_shared_by_runs_at_the_same_time() -> None:
    """Two test runs enable the same controller in cgroup2's root: the first
    to finish leaves it enabled for the other, the last one restores what
    was there before both; a run killed before its teardown is undone by
    the next run.  (Concurrent runs left +hugetlb behind, or took it away
    from a run still using it.)"""
    import signal
    import subprocess
    import sys
    ctl = V2 / "cgroup.subtree_control"
    before = ctl.read_text().split()
    free = [c for c in (V2 / "cgroup.controllers").read_text().split() if c not in before]
    if not free:
        pytest.skip("every controller of the cgroup2 root is enabled already")
    c = free[-1]
    tests_dir = str(Path(__file__).resolve().parent.parent)
    runs: list[subprocess.Popen] = []

    def run() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", _RUN, str(V2), c, tests_dir], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        runs.append(p)
        assert p.stdout is not None and p.stdout.readline() == "in\n"
        return p

    def leave(p: subprocess.Popen) -> None:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline() == "out\n"
        assert p.wait(10) == 0

    try:
        a, b = run(), run()
        assert c in ctl.read_text().split()
        leave(a)
        assert c in ctl.read_text().split(), "taken away from a run still using it"
        leave(b)
        assert ctl.read_text().split() == before, "not restored by the last run"
        killed = run()
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        assert c in ctl.read_text().split()
        d = run()
        leave(d)
        assert ctl.read_text().split() == before, "a killed run's controller stays"
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_cgroup2_limits_and_root(targets: TargetFactory, tmp_path: Path, v2group) -> None:
    """A task in PARENT/g of cgroup2 with limits (PARENT enables their
    controllers), dumped with --manage-cgroups=full --cgroup-root /PARENT
    (so PARENT's cgroup.subtree_control is saved), everything removed:
    restored with its limits, and moved with --cgroup-root."""
    parent, limits = v2group
    for moved in (False, True):
        t = targets.start("pythreads.py")
        g = parent / "g"
        g.mkdir(parents=True)
        (parent / "cgroup.subtree_control").write_text(
            " ".join("+" + f.split(".")[0] for f, _ in limits))
        for f, v in limits:
            (g / f).write_text(v)
        (g / "cgroup.procs").write_text(str(t.pid))
        images = tmp_path / f"images{int(moved)}"
        _dump(targets, t, images, "--manage-cgroups=full", "--cgroup-root", f"/{TAG}")
        _rmtree(parent)
        new = V2 / (TAG + "-moved") if moved else parent
        more = ["--cgroup-root", f"cgroup2:/{new.name}"] if moved else []
        check_ok(run_procsnap("restore", "-D", images, "-d", "--manage-cgroups=full", *more))
        assert _cg(t.pid)[""] == f"/{new.name}/g"
        for f, v in limits:
            assert (new / "g" / f).read_text().split()[0] == v, f
        finish(t)
        _rmtree(new)


def test_missing_cgroup_with_props_mode_is_an_error(targets: TargetFactory, tmp_path: Path,
                                                    v1groups) -> None:
    """--manage-cgroups=props requires the cgroups to exist: one line
    naming the missing one."""
    t = targets.start("pythreads.py")
    _put_v1(t.pid, v1groups)
    _dump(targets, t, tmp_path / "images")
    for d in v1groups.values():
        d.rmdir()
    res = run_procsnap("restore", "-D", tmp_path / "images", "-d", "--manage-cgroups=props")
    assert_one_line_error(res, f"/{TAG} does not exist", "--manage-cgroups=props")


# this run's own named hierarchy: a concurrent run uses its own
CGNAME = f"procsnapns{os.getpid()}"


@pytest.fixture
def cgns_groups(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A cgroup2 group and a named v1 hierarchy (mounted on a temporary
    dir), both removed afterwards."""
    mnt = tmp_path / "cg"
    mnt.mkdir()
    mount_named_cgroup(mnt, CGNAME)
    v2 = V2 / TAG
    try:
        yield v2, mnt
    finally:
        _rmtree(v2)
        _rmtree(V2 / (TAG + "-moved"))
        remove_named_cgroup(mnt, CGNAME)


def test_cgroup_namespace(targets: TargetFactory, tmp_path: Path, cgns_groups) -> None:
    """A task that unshared its cgroup namespace in a cgroup2 group and a
    v1 cgroup, then moved below: the groups removed, restored (and moved
    with --cgroup-root): it sees the same /proc/self/cgroup inside, and the
    namespace's roots are where they were (or moved)."""
    v2, mnt = cgns_groups
    for moved in (False, True):
        (mnt / TAG).mkdir()
        v2.mkdir()
        t = targets.start("cgns.py", str(v2), str(mnt), f"/{TAG}")
        outer = _cg(t.pid)
        assert outer[""] == f"/{TAG}/inner" and outer[f"name={CGNAME}"] == f"/{TAG}/inner"
        images = tmp_path / f"images{int(moved)}"
        _dump(targets, t, images)
        _rmtree(v2)
        (mnt / TAG / "inner").rmdir()
        (mnt / TAG).rmdir()
        more = ["--cgroup-root", f"cgroup2:/{TAG}-moved",
                "--cgroup-root", f"name={CGNAME}:/{TAG}-moved"] if moved else []
        check_ok(run_procsnap("restore", "-D", images, "-d", *more))
        top = f"/{TAG}-moved" if moved else f"/{TAG}"
        assert _cg(t.pid)[""] == f"{top}/inner" and _cg(t.pid)[f"name={CGNAME}"] == f"{top}/inner"
        assert os.stat(f"/proc/{t.pid}/ns/cgroup").st_ino != os.stat("/proc/self/ns/cgroup").st_ino
        finish(t)
        _rmtree(V2 / top.lstrip("/"))
        (mnt / top.lstrip("/") / "inner").rmdir()
        (mnt / top.lstrip("/")).rmdir()
