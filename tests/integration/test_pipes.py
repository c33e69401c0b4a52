"""Pipes whose other end nobody holds (closed everywhere) against pipes
whose other end a process outside the tree holds.

The first kind is restored with that end closed again: the target
(tests/targets/pipe_widowed.c) reads the bytes left and then EOF on one,
gets EPIPE writing into the other, and sees FIONREAD and the pipe size
kept.  From outside, this process looks at the restored ends through
pidfd_getfd copies: poll says POLLHUP (no writer anywhere) and POLLERR (no
reader anywhere), as before the dump.  The second kind is refused at dump
with one line, and the tree runs on.
"""
from __future__ import annotations

import ctypes
import os
import re
import select
from pathlib import Path

import pytest

from helpers import (
    TargetFactory,
    assert_one_line_error,
    assert_same_view,
    check_ok,
    crit_decode_all,
    describe,
    finish,
    is_untouched,
    outside_view,
    run_procsnap,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _revents(pid: int, fd: int) -> int:
    """poll revents of the target's fd, looked at through our own copy (the
    same open file description, so no pipe count changes)."""
    pidfd = os.pidfd_open(pid)
    try:
        mine = _getfd(pidfd, fd)
    finally:
        os.close(pidfd)
    try:
        p = select.poll()
        p.register(mine, 0)
        r = p.poll(0)
        return r[0][1] if r else 0
    finally:
        os.close(mine)


def _getfd(pidfd: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    if got < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int(got)


def _widowed(pid: int) -> tuple[int, int]:
    return _revents(pid, 3) & select.POLLHUP, _revents(pid, 4) & select.POLLERR


def test_pipe_ends_nobody_holds_are_closed_again(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("pipe_widowed")
    assert _widowed(t.pid) == (select.POLLHUP, select.POLLERR)
    before = outside_view(t.pid, volatile_fds=(1,))
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    check_ok(res)
    assert wait_gone(t.pid, 10), describe(res)

    decoded = crit_decode_all(images_dir)
    data = {e["pipe_id"]: e for e in decoded["pipes-data.img"]["entries"]}
    assert sorted((e["bytes"], e.get("size")) for e in data.values()) == [
        (4, 65536), (100, 8192)], data
    ends = [f["pipe"] for f in decoded["files.img"]["entries"] if f["type"] == "PIPE"]
    assert len(ends) == 2, ends  # only the ends the tree held

    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    assert t.alive()
    # the other ends are closed before the tree runs, not later
    assert _widowed(t.pid) == (select.POLLHUP, select.POLLERR), "an end came back open"
    assert_same_view(before, outside_view(t.pid, volatile_fds=(1,)), "across dump/restore")
    n = len(re.findall(r"^tick", t.output(), re.M))
    t.wait_line(r"^tick", 5, count=n + 2)
    finish(t)  # EOF after "tail", EPIPE, FIONREAD 100, size 8192


def test_pipe_end_held_outside_is_refused(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("pipe_widowed")
    # this process (outside the tree) takes a write end of the target's fd 3
    w = os.open(f"/proc/{t.pid}/fd/3", os.O_WRONLY)
    try:
        assert _widowed(t.pid)[0] == 0
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 3: pipe:[")
        assert "write end is held outside the dumped tree" in line, line
        assert list(images_dir.iterdir()) == [], "a refused dump left images behind"
        ok, why = is_untouched(t.pid)
        assert ok, f"pid {t.pid} left stopped or traced: {why}"
        n = len(re.findall(r"^tick", t.output(), re.M))
        t.wait_line(r"^tick", 5, count=n + 2)
    finally:
        os.close(w)
    finish(t)  # the pipe is as it was (nothing written, nothing read)
