"""A tree in a mount namespace of its own (issue 9, mount): its mount tree
is dumped (tmpfs contents, binds, a private /proc, peer groups, per-mount
flags) and rebuilt under --root in a new namespace; mounts from outside the
tree must be named; a restore without --root is refused.

The targets mount only inside their own namespaces, which die with them;
their directories live in the test's tmp_path.  After each test the host's
mount table must be what it was.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    check_continuity,
    check_ok,
    children_of,
    describe,
    is_untouched,
    proc_cmdline,
    read_status,
    read_numbers,
    reap,
    run_procsnap,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

TARGET = "mntns.py"


def _mountinfo_inside(pid: int) -> list[str]:
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "mntns_target", Path(__file__).parent.parent / "targets" / TARGET)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with open(f"/proc/{pid}/mountinfo") as f:
        return list(mod.normalized(f.read()))


def _mounts_at(prefixes: tuple[str, ...]) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln for ln in f if ln.split(" ")[4].startswith(prefixes)]


@pytest.fixture(autouse=True)
def host_mounts_unchanged(tmp_path: Path) -> Iterator[None]:
    """Nothing of ours is mounted in the host's namespace afterwards (only
    our own paths are compared: other test runs may mount meanwhile)."""
    ours = (str(tmp_path), "/tmp/.procsnap-mnt.")
    assert _mounts_at(ours) == []
    yield
    assert _mounts_at(ours) == [], "mounts left in the host's namespace"
    left = [n for n in os.listdir("/tmp") if n.startswith(".procsnap-mnt.")]
    assert not left, f"temporary directories left in /tmp: {left}"


def _start(targets: TargetFactory, tmp_path: Path, *extra: str) -> tuple[Target, Path, Path]:
    d = tmp_path / "ns"
    d.mkdir()
    numbers = tmp_path / "numbers"
    t = targets.start(TARGET, str(d), str(numbers), *extra)
    wait_numbers(numbers, 3)
    return t, d, numbers


def _dump(t: Target, images: Path, *opts: str) -> None:
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images, *opts))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    reap()


def _restore_and_check(targets: TargetFactory, t: Target, d: Path, numbers: Path,
                       images: Path, before: list[str], *opts: str) -> None:
    res = check_ok(run_procsnap("restore", "-D", images, "-d", "--root", "/", *opts))
    targets.adopt(t.pid, like=t)
    assert t.alive(), describe(res)
    nspid = read_status(t.pid)["NSpid"].split()
    if len(nspid) > 1:
        assert nspid[-1] == "1", nspid
        assert sorted(n for n in os.listdir(f"/proc/{t.pid}/root/proc") if n.isdigit()) == \
            ["1"], "its /proc does not show its own pid namespace"
    after = _mountinfo_inside(t.pid)
    assert after == before, "mountinfo as seen inside differs:\n" + "\n".join(
        [f"- {x}" for x in before if x not in after] + [f"+ {x}" for x in after if x not in before])
    with open(f"/proc/{t.pid}/root{d}/t/file", "rb") as f:
        assert f.read() == b"hello tmpfs\n"
    assert not os.path.exists(f"{d}/t/file"), "the tmpfs file leaked into the host"
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    line = t.verdict()
    assert line == "PASS", t.output()


def test_mount_tree_restored_under_root(targets: TargetFactory, tmp_path: Path,
                                        images_dir: Path) -> None:
    """tmpfs (with a file hidden under a second tmpfs), a bind of it in the
    same peer group, a read-only bind of a root fs directory, a private
    /proc: the same tree inside after restore, and the counter counts on."""
    t, d, numbers = _start(targets, tmp_path)
    before = _mountinfo_inside(t.pid)
    assert any(" shared:" in x for x in before), before
    _dump(t, images_dir)
    names = os.listdir(images_dir)
    assert any(n.startswith("mountpoints-") for n in names), names
    assert any(n.startswith("tmpfs-dev-") and n.endswith(".tar.gz.img") for n in names), names
    _restore_and_check(targets, t, d, numbers, images_dir, before)


def test_mounts_of_another_run_are_not_the_trees(targets: TargetFactory, tmp_path: Path,
                                                images_dir: Path) -> None:
    """An overlayfs another test run has mounted on the host at the moment
    the target makes its namespace (a container's root, say) is copied
    with the host's table; the target detaches such mounts first
    (foreign_mounts.drop), else the dump refuses the overlay by name and
    the test fails for what the other run did."""
    other = tmp_path / "other-run"
    for sub in ("lower", "upper", "work", "ov"):
        (other / sub).mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={other}/lower,upperdir={other}/upper,workdir={other}/work",
                    str(other / "ov")], check=True)
    try:
        t, d, numbers = _start(targets, tmp_path)
    finally:
        subprocess.run(["umount", str(other / "ov")], check=True)
    before = _mountinfo_inside(t.pid)
    _dump(t, images_dir)
    _restore_and_check(targets, t, d, numbers, images_dir, before)


def test_mount_tree_with_pid_namespace(targets: TargetFactory, tmp_path: Path,
                                       images_dir: Path) -> None:
    """unshare -fp --mount-proc -m: pid 1 of its own pid namespace, its /proc
    mounted inside; after restore /proc is mounted by the new pid 1 (it
    shows pid 1) and the tree is the same."""
    d = tmp_path / "ns"
    d.mkdir()
    numbers = tmp_path / "numbers"
    outer = targets.start(TARGET, str(d), str(numbers), "pidns")
    wait_numbers(numbers, 3)
    (inner,) = children_of(outer.pid)
    t = Target(name=TARGET, pid=inner, argv=outer.argv, workdir=outer.workdir, out=outer.out,
               err=outer.err, cmdline=proc_cmdline(inner) or [])
    targets.targets.append(t)  # killed and reaped by the fixture
    assert read_status(inner)["NSpid"].split()[-1] == "1"
    before = _mountinfo_inside(inner)
    _dump(t, images_dir)
    _restore_and_check(targets, t, d, numbers, images_dir, before)


def test_images_on_another_mount_and_shared_memory(targets: TargetFactory, tmp_path: Path) -> None:
    """After the puppet pivots into the rebuilt tree, what it still reads
    from procsnap's side -- pages images on a mount of their own (a tmpfs
    here, as CRIU's zdtm keeps them) and a shared anonymous object procsnap
    made -- is reached although the old root and its mounts are gone from
    the puppet's namespace."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "procsnap-test-imgs", str(imgs)],
                   check=True)
    try:
        t, d, numbers = _start(targets, tmp_path, "pidns", "shmem")
        (inner,) = children_of(t.pid)
        t2 = Target(name=TARGET, pid=inner, argv=t.argv, workdir=t.workdir, out=t.out,
                    err=t.err, cmdline=proc_cmdline(inner) or [])
        targets.targets.append(t2)
        before = _mountinfo_inside(inner)
        _dump(t2, imgs)
        assert any(n.startswith("pagemap-shmem-") for n in os.listdir(imgs)), os.listdir(imgs)
        _restore_and_check(targets, t2, d, numbers, imgs, before)
    finally:
        subprocess.run(["umount", "-l", str(imgs)], check=False)


def test_external_mount_not_named_refused(targets: TargetFactory, tmp_path: Path,
                                          images_dir: Path) -> None:
    """An overlayfs mounted in the namespace is not part of the dumped tree:
    the dump names it in one line and the tree runs on."""
    t, d, numbers = _start(targets, tmp_path, "overlay")
    kids = children_of(os.getpid())
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"{d}/ov")
    assert str(t.pid) in line and "--external mnt[" in line, line
    assert children_of(os.getpid()) - kids == set()
    ok, why = is_untouched(t.pid)
    assert ok, f"a refused dump left pid {t.pid} stopped or traced: {why}"
    assert not any(n.endswith(".img") or n.endswith(".tar.gz") for n in os.listdir(images_dir))
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    assert t.verdict() == "PASS", t.output()


def test_external_mount_named_is_bound_back(targets: TargetFactory, tmp_path: Path,
                                            images_dir: Path) -> None:
    """Named at dump (--external mnt[MP]:KEY), bound at restore from the
    path given for KEY (criu's --ext-mount-map KEY:PATH)."""
    t, d, numbers = _start(targets, tmp_path, "overlay")
    before = _mountinfo_inside(t.pid)
    _dump(t, images_dir, "--external", f"mnt[{d}/ov]:ov")
    # without the key's path the restore says which key it needs
    res = run_procsnap("restore", "-D", images_dir, "-d", "--root", "/")
    assert_one_line_error(res, "mnt[ov]")
    assert wait_gone(t.pid, 5)
    stand_in = tmp_path / "stand-in"
    stand_in.mkdir()
    (stand_in / "low").write_text("lower\n")
    res = check_ok(run_procsnap("restore", "-D", images_dir, "-d", "--root", "/",
                                "--ext-mount-map", f"ov:{stand_in}"))
    targets.adopt(t.pid, like=t)
    with open(f"/proc/{t.pid}/root{d}/ov/low") as f:
        assert f.read() == "lower\n"
    after = _mountinfo_inside(t.pid)
    # the same tree, but for what the bound path is (another file system)
    assert len(after) == len(before)
    assert [x for x in after if "/ov " not in x] == [x for x in before if "/ov " not in x]
    last = read_numbers(numbers)[-1]
    check_continuity(wait_numbers(numbers, last + 3))
    line = t.verdict()
    # its tree is not the same (ov is a bind now): its own check says so
    assert line.startswith("FAIL: mountinfo differs") and "/ov" in line, t.output()


def test_restore_without_root_refused(targets: TargetFactory, tmp_path: Path,
                                      images_dir: Path) -> None:
    t, d, numbers = _start(targets, tmp_path)
    _dump(t, images_dir)
    targets.adopt(t.pid, like=t)  # should it wrongly come back
    kids = children_of(os.getpid())
    res = run_procsnap("restore", "-D", images_dir, "-d")
    assert_one_line_error(res, "--root")
    reap()
    assert wait_gone(t.pid, 5), f"a refused restore left pid {t.pid}"
    assert children_of(os.getpid()) - kids == set()
