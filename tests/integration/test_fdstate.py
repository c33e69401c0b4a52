"""State held by open file descriptions and fd tables: file locks (POSIX,
flock, OFD), leases, SIGIO owners (F_SETOWN_EX, F_SETSIG, O_ASYNC), the
status flags of two descriptions of one pipe end, and fd tables shared
with CLONE_FILES.

Each is restored exactly -- checked from inside the target (tests/targets/
fdstate.py tries its locks from other descriptions and a child) and from
outside (this process tries the locks and must be refused) -- or refused
at dump with one line naming pid and fd, the tree running on.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_one_line_error,
    check_ok,
    describe,
    is_untouched,
    read_numbers,
    run_procsnap,
    wait_gone,
    wait_numbers,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]


def _refused_here(call) -> bool:
    try:
        call()
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES)
    return False


def _locks_held(d: Path) -> list[str]:
    """Try, from this process, every lock the target holds; what was granted."""
    granted = []
    fd = os.open(d / "posix", os.O_RDWR)
    try:
        if not _refused_here(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)):
            granted.append("POSIX write lock on 0-9")
        if not _refused_here(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20)):
            granted.append("POSIX lock on 20-29")
    finally:
        os.close(fd)
    fd = os.open(d / "flock", os.O_RDWR)
    try:
        if not _refused_here(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)):
            granted.append("flock")
    finally:
        os.close(fd)
    return granted


def _one_line(res, *names: str) -> str:
    """One line on stderr naming every one of ``names``."""
    line = assert_one_line_error(res, names[0])
    for n in names:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def _start(targets: TargetFactory, d: Path, *args: str) -> Target:
    d.mkdir(exist_ok=True)
    return targets.start("fdstate.py", str(d), *args)


def test_locks_lease_owner_and_pipe_flags_restored(targets: TargetFactory, images_dir: Path,
                                                   tmp_path: Path) -> None:
    d = tmp_path / "files"
    t = _start(targets, d)
    assert _locks_held(d) == [], "the target did not take its locks"
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--file-locks")
    check_ok(res)
    assert wait_gone(t.pid, 10), describe(res)
    # Nobody holds them now: the test could take them (and lets go again).
    assert len(_locks_held(d)) == 3
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    assert t.alive()
    assert _locks_held(d) == [], "a lock was not restored"
    with open(f"/proc/{t.pid}/fdinfo/6") as f:
        assert "LEASE  ACTIVE    READ" in f.read()
    line = t.verdict()
    assert line == "PASS", t.output()


def test_lock_refused_without_file_locks(targets: TargetFactory, images_dir: Path,
                                         tmp_path: Path) -> None:
    d = tmp_path / "files"
    t = _start(targets, d)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = _one_line(res, f"pid {t.pid}", "fd 3", "POSIX", "--file-locks")
    assert "write lock on bytes 0-9" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert _locks_held(d) == [], "a refused dump lost a lock"
    assert t.verdict() == "PASS", t.output()


def test_sigio_owner_outside_tree_refused(targets: TargetFactory, images_dir: Path,
                                          tmp_path: Path) -> None:
    t = _start(targets, tmp_path / "files", "foreign-owner")
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir, "--file-locks")
    line = _one_line(res, f"pid {t.pid}", "fd 7", "owner", str(os.getpid()))
    assert "outside" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert t.verdict() == "PASS", t.output()
