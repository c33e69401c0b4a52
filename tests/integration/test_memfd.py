"""memfds of any size: a 5-byte memfd whose shared mapping wrote past the
end of the file, a memfd with holes and a size that is not whole pages,
and shared anonymous memory opened as a file through map_files
("/dev/zero (deleted)", zdtm shmemfd) (tests/targets/memfd_odd.c checks
itself).  From outside, this
process reads sizes, contents, the data/hole layout and the bytes past the
end (through /proc/PID/mem at the mapping) before the dump and after the
restore, and they must be the same.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from helpers import (
    TargetFactory,
    assert_same_view,
    check_ok,
    describe,
    finish,
    outside_view,
    run_procsnap,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]
PG = 4096
SEEK_DATA, SEEK_HOLE = 3, 4


def _layout(fd: int, size: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError:
            break
        end = os.lseek(fd, start, SEEK_HOLE)
        out.append((start, end))
        pos = end
    return out


def _seen(pid: int, mapaddr: int) -> dict[str, object]:
    seen: dict[str, object] = {}
    for n in (3, 4, 5):
        fd = os.open(f"/proc/{pid}/fd/{n}", os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            seen[f"fd {n}"] = (size, os.pread(fd, size + 10, 0), _layout(fd, size))
        finally:
            os.close(fd)
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(mapaddr)
        seen["mapped page"] = mem.read(PG)
    return seen


def _view(pid: int) -> dict[str, object]:
    """outside_view, less the memfd's inode number (a new inode by nature)."""
    v = outside_view(pid, volatile_fds=(1,))
    v["maps"] = [m[:5] + (0,) + m[6:] if m[6].startswith("/memfd:") else m
                 for m in v["maps"]]  # type: ignore[attr-defined]
    return v


def test_memfd_odd_sizes_and_bytes_past_the_end(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("memfd_odd")
    addr = int(re.search(r"^map ([0-9a-f]+)$", t.output(), re.M).group(1), 16)  # type: ignore[union-attr]
    before = _seen(t.pid, addr)
    assert before["fd 3"] == (5, b"hello", [(0, 5)])
    assert before["fd 4"][0] == 3 * PG + 10 and before["fd 4"][2][0][0] == 2 * PG  # type: ignore[index]
    assert before["fd 5"] == (5, b"hello", [(0, 5)])
    assert os.readlink(f"/proc/{t.pid}/fd/5") == "/dev/zero (deleted)"
    assert before["mapped page"][100:112] == b"past the end"  # type: ignore[index]
    view = _view(t.pid)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    check_ok(res)
    assert wait_gone(t.pid, 10), describe(res)
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    assert _seen(t.pid, addr) == before
    assert os.readlink(f"/proc/{t.pid}/fd/5") == "/dev/zero (deleted)"
    assert_same_view(view, _view(t.pid), "across dump/restore")
    finish(t)
