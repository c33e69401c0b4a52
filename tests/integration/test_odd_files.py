"""Files whose names are gone or odd, O_PATH fds, a deleted cwd, pidfds of
reaped processes (files2).

Targets check themselves (tests/targets/odd_files.py, dead_pidfds.py);
from outside, the fd table and maps must read as before (ghost names
aside, which the restore check also leaves out) and no temporary name may
be left behind: the directory listing is the same before the dump and
after the restore.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    assert_same_view,
    check_ok,
    describe,
    outside_view,
    run_procsnap,
    wait_gone,
)
from procsnap import images, tmpnames

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

GHOST = re.compile(r"\.cr\.[0-9a-f]+\.ghost( \(deleted\))?$")
TMPFILE = re.compile(r"/#\d+( \(deleted\))$")


def unghost(view: dict) -> dict:
    """The view with ghost names as the originals (NAME.cr.ID.ghost ->
    NAME) and an O_TMPFILE's "#INO" without its inode (a new one)."""
    fds = {}
    for fd, (link, *rest) in view["fds"].items():
        link = TMPFILE.sub(r"/#\1", GHOST.sub(r"\1", link))
        fds[fd] = (link, *rest)
    return {**view, "fds": fds}


def cycle(targets: TargetFactory, t: Target, images_dir: Path) -> tuple[dict, dict]:
    before = outside_view(t.pid, volatile_fds=(1,))
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    check_ok(res)
    assert wait_gone(t.pid, 10), f"pid {t.pid} still alive after dump\n" + describe(res)
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images_dir, "-d")
    check_ok(res)
    assert t.alive(), f"restored pid {t.pid} is not running\n" + describe(res)
    return before, outside_view(t.pid, volatile_fds=(1,))


def test_odd_files_and_deleted_cwd(targets: TargetFactory, images_dir: Path,
                                   tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    t = targets.start("odd_files.py", str(d))
    listing = sorted(os.listdir(d))
    cwd_before = os.readlink(f"/proc/{t.pid}/cwd")
    before, after = cycle(targets, t, images_dir)
    assert_same_view(unghost(before), unghost(after), "odd files")
    # the ghost directory came back under its own name: cwd reads the same
    assert os.readlink(f"/proc/{t.pid}/cwd") == cwd_before
    assert os.readlink(f"/proc/{t.pid}/fd/11") == f"{d}/gone/sub (deleted)"
    assert GHOST.search(os.readlink(f"/proc/{t.pid}/fd/10")), os.readlink(f"/proc/{t.pid}/fd/10")
    assert sorted(os.listdir(d)) == listing, "a temporary name was left behind"
    # the journal names every temporary name (the odd one too) and each was removed
    states = tmpnames.states(str(images_dir))
    assert any("\n" in p for p in states), states
    assert set(states.values()) == {"-"}, states
    t.signal(15)
    line = t.verdict()
    assert line == "PASS", f"{line}\n{t.output()}"


def test_dead_pidfds(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("dead_pidfds.py")
    before, after = cycle(targets, t, images_dir)
    assert_same_view(before, after, "dead pidfds")
    dead = [e.pidfd for e in images.read_image(str(images_dir), "files") if e.HasField("pidfd")]
    assert sorted(p.nspid for p in dead) == [-1, -1, -1], dead
    for fd in (10, 11, 12):
        assert os.readlink(f"/proc/{t.pid}/fd/{fd}") == "anon_inode:[pidfd]"
    t.signal(15)
    line = t.verdict()
    assert line == "PASS", f"{line}\n{t.output()}"
