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


def test_private_mapping_of_shared_anon_refused(targets: TargetFactory, tmp_path: Path) -> None:
    """MAP_PRIVATE of shared anonymous memory through map_files (zdtm
    shmemfd-priv): restored, its unwritten pages would stop following the
    object, so the dump is refused in one line and the tree runs on."""
    from helpers import assert_one_line_error, finish
    t = targets.start("shmem_private.py")
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    assert_one_line_error(res, f"pid {t.pid}", "privately")
    ok, why = is_untouched(t.pid)
    assert ok, why
    finish(t)
