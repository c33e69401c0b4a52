"""Correctness of the page copy fast paths (issue #5).

The dump lets the frozen target pwritev its own pages into pages-N.img and
the restore lets the puppet preadv them back, in batches; the slow path
(/proc/PID/mem) covers pages the target cannot read itself.  These tests
check the bytes, not the speed: each target fills its memory with known
patterns and checks itself after the restore (PASS/FAIL on SIGTERM).
No timed assertions here: speed is bench/'s business.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from helpers import (
    Target,
    TargetFactory,
    check_ok,
    exit_code,
    format_map,
    is_untouched,
    read_maps,
    run_procsnap,
    wait_exit,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

PAGE = 4096


def _maps(pid: int) -> list[str]:
    # zdtm's view: file mappings split only where the original had a
    # relro boundary may come back merged (same perms, contiguous offsets);
    # anonymous mappings with alternating protections never merge.
    return [format_map(m) for m in read_maps(pid)]


def _assert_same_maps(before: list[str], after: list[str]) -> None:
    diff = list(difflib.unified_diff(before, after, lineterm="", n=0))
    assert not diff, "maps differ after restore:\n" + "\n".join(diff[:40])


def _cycle(targets: TargetFactory, t: Target, images: Path) -> None:
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images))
    assert wait_gone(t.pid, 10), f"dump left pid {t.pid} alive"
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images, "-d"))
    ok, why = is_untouched(t.pid)
    assert ok, f"restored pid {t.pid} is stopped or traced: {why}"


def _finish(t: Target) -> None:
    line = t.verdict()
    assert line == "PASS", f"{t.name} self-check: {line}\n--- stdout ---\n{t.output()}"
    status = wait_exit(t.pid, 10)
    if status is not None:
        assert exit_code(status) == 0, f"{t.name} exited with {exit_code(status)}"


def _pages_bytes(images: Path) -> int:
    return sum(p.stat().st_size for p in images.glob("pages-*.img"))


def test_memory_patterns_survive(targets: TargetFactory, images_dir: Path) -> None:
    """256 MiB in one run, sparse pages, a hole, PROT_NONE and read-only
    data, private copies in a file mapping: byte for byte after restore."""
    t = targets.start("memcheck", "256")
    before = _maps(t.pid)
    _cycle(targets, t, images_dir)
    _assert_same_maps(before, _maps(t.pid))
    # Only pages that exist are saved: 256 MiB + every 7th of 64 MiB + the
    # small mappings, not the untouched sparse pages.
    size = _pages_bytes(images_dir)
    assert 256 << 20 < size < (256 << 20) + (12 << 20), size
    _finish(t)


def test_memory_twice(targets: TargetFactory, images_dir: Path, tmp_path: Path) -> None:
    """A restored process dumps and restores again to the same bytes."""
    t = targets.start("memcheck", "32")
    _cycle(targets, t, images_dir)
    second = tmp_path / "again"
    second.mkdir()
    _cycle(targets, t, second)
    assert _pages_bytes(second) == _pages_bytes(images_dir)
    _finish(t)


def test_ten_thousand_mappings(targets: TargetFactory, images_dir: Path) -> None:
    """10,000 separate mappings come back with identical /proc/PID/maps."""
    t = targets.start("manymaps", "10000")
    before = _maps(t.pid)
    assert len(before) >= 10000
    _cycle(targets, t, images_dir)
    _assert_same_maps(before, _maps(t.pid))
    _finish(t)


def test_unprivileged_target_is_copied_by_us(targets: TargetFactory, images_dir: Path) -> None:
    """A target that cannot open the root-owned image itself (another uid)
    falls back to the /proc/PID/mem copy, with the same bytes."""
    t = targets.start("memcheck", "16", "1001")
    _cycle(targets, t, images_dir)
    _finish(t)


def test_pages_image_is_dense(targets: TargetFactory, images_dir: Path) -> None:
    """Pages written by the target land where the pagemap says: the image
    is exactly the sum of the pagemap's runs, no gap, no tail."""
    import procsnap.images as images
    t = targets.start("memcheck", "8")
    _cycle(targets, t, images_dir)
    pm = images.read_image(str(images_dir), "pagemap", t.pid)
    want = sum(e.nr_pages for e in pm[1:]) * PAGE
    assert _pages_bytes(images_dir) == want
    assert os.path.exists(f"/proc/{t.pid}")
    _finish(t)


def _shmem_view(pid: int) -> list[str]:
    """maps lines with the object's inode left out (a restored object is a
    new inode), plus each mapping's map_files mode."""
    out = []
    for m in read_maps(pid):
        line = format_map(m)
        if m[6] == "/dev/zero (deleted)":
            line = line.replace(f" {m[5]} /dev/zero", " INO /dev/zero")
        mode = os.lstat(f"/proc/{pid}/map_files/{m[0]:x}-{m[1]:x}").st_mode \
            if m[6] == "/dev/zero (deleted)" else 0
        out.append(f"{line} {mode:o}")
    return out


def test_private_mapping_of_shared_anon(targets: TargetFactory, images_dir: Path) -> None:
    """MAP_PRIVATE of shared anonymous memory through map_files (zdtm
    shmemfd-priv), next to the object's shared mappings and the fd: saved
    as CRIU does (a private mapping of a memfd named /dev/zero, its own
    page in its pagemap), so after the restore its untouched pages still
    follow the object and its written page is still its own (the target
    checks; from outside: the same maps and map_files modes, and one
    object: every /dev/zero mapping and the fd on one inode)."""
    import procsnap.images as images
    from procsnap.resources import memory
    t = targets.start("shmem_private.py")
    before = _shmem_view(t.pid)
    assert sum("/dev/zero" in x for x in before) == 3, before
    _cycle(targets, t, images_dir)
    # written as CRIU writes them (so CRIU's restore makes one object too):
    # the two shared mappings and the private one all map the memfd
    (mm,) = images.read_image(str(images_dir), "mm", t.pid)
    kinds = sorted(v.status & (memory.VMA_AREA_MEMFD | memory.VMA_FILE_SHARED
                               | memory.VMA_FILE_PRIVATE | memory.VMA_ANON_SHARED)
                   for v in mm.vmas if v.status & (memory.VMA_AREA_MEMFD | memory.VMA_ANON_SHARED))
    assert kinds == sorted([memory.VMA_AREA_MEMFD | memory.VMA_FILE_PRIVATE]
                           + 2 * [memory.VMA_AREA_MEMFD | memory.VMA_FILE_SHARED]), kinds
    assert _shmem_view(t.pid) == before
    inodes = {m[5] for m in read_maps(t.pid) if m[6] == "/dev/zero (deleted)"}
    fds = {os.stat(f"/proc/{t.pid}/fd/{n}").st_ino for n in os.listdir(f"/proc/{t.pid}/fd")
           if os.readlink(f"/proc/{t.pid}/fd/{n}") == "/dev/zero (deleted)"}
    assert len(inodes) == 1 and fds == inodes, (inodes, fds)
    _finish(t)
