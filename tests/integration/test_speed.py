"""Durability as a choice, and the time a tree is frozen.

* By default a dump leaves its images complete in the page cache, as criu
  does: no syncfs, no write-back started by us.
* ``sync=True`` (``--sync``) starts write-back of the pages as they are
  copied (sync_file_range) and syncs the images' filesystem before the
  tree is killed; with ``leave_running`` the tree is released first.
* Every dump reports how long the tree was frozen: the API's stats
  ("frozen"), ``-v`` and criu's stats-dump (frozen_time).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import procsnap
from procsnap import images as images_mod
from procsnap.resources import memory

from helpers import (TargetFactory, check_ok, crit_decode, read_status, run_procsnap,
                     wait_gone)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


class _Recorder:
    """Records each sync of the images and what the target was doing then."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
        self.pid = pid
        self.syncs: list[tuple[str, bool]] = []   # (dir, target still held by us)
        self.writebacks: list[tuple[int, int]] = []
        real_sync, real_wb = images_mod.sync_dir, memory.start_writeback

        def sync_dir(d: str) -> None:
            self.syncs.append((d, self._held()))
            real_sync(d)

        def start_writeback(fd: int, off: int, size: int) -> None:
            self.writebacks.append((off, size))
            real_wb(fd, off, size)

        monkeypatch.setattr(images_mod, "sync_dir", sync_dir)
        monkeypatch.setattr(memory, "start_writeback", start_writeback)

    def _held(self) -> bool:
        try:
            return int(read_status(self.pid)["TracerPid"]) == os.getpid()
        except (FileNotFoundError, ProcessLookupError, KeyError):
            return False


def test_default_dump_does_not_sync(targets: TargetFactory, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    t = targets.start("memcheck", "16")
    rec = _Recorder(monkeypatch, t.pid)
    stats = procsnap.dump(t.pid, str(tmp_path / "img"))
    assert wait_gone(t.pid, 10)
    assert rec.syncs == [] and rec.writebacks == [], (rec.syncs, rec.writebacks[:3])
    assert 0 < stats["frozen"] < stats["total"]


def test_sync_writes_back_while_copying_and_syncs_before_the_kill(
        targets: TargetFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = targets.start("memcheck", "16")
    rec = _Recorder(monkeypatch, t.pid)
    img = tmp_path / "img"
    procsnap.dump(t.pid, str(img), sync=True)
    assert wait_gone(t.pid, 10)
    # once, while the tree was still held (it is killed only after)
    assert rec.syncs == [(str(img), True)], rec.syncs
    # write-back of the pages was started batch by batch, covering them all
    pages = sum(os.path.getsize(img / n) for n in os.listdir(img) if n.startswith("pages-"))
    assert rec.writebacks and sum(n for _, n in rec.writebacks) == pages


def test_sync_with_leave_running_releases_the_tree_first(
        targets: TargetFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = targets.start("memcheck", "16")
    rec = _Recorder(monkeypatch, t.pid)
    img = tmp_path / "img"
    stats = procsnap.dump(t.pid, str(img), sync=True, leave_running=True)
    assert rec.syncs == [(str(img), False)], rec.syncs   # the tree ran again already
    assert "sync" in stats and t.alive()
    assert t.verdict().startswith("PASS")


def test_frozen_time_in_verbose_output_and_criu_stats(targets: TargetFactory,
                                                      tmp_path: Path) -> None:
    t = targets.start("memcheck", "16")
    img = tmp_path / "img"
    res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", img, "-v", "--sync"))
    m = re.search(r"frozen (\d+\.\d) ms", res.stderr)
    assert m, res.stderr
    frozen_ms = float(m.group(1))
    total_ms = float(re.search(r"total (\d+\.\d) ms", res.stderr).group(1))  # type: ignore
    assert 0 < frozen_ms < total_ms
    assert wait_gone(t.pid, 10)

    t = targets.start("memcheck", "16")
    img = tmp_path / "img2"
    res = check_ok(run_procsnap("criu", "dump", "-t", t.pid, "-D", img, "--display-stats"))
    assert wait_gone(t.pid, 10)
    shown = int(re.search(r"Frozen time: (\d+) us", res.stdout).group(1))  # type: ignore
    entry = crit_decode(img / "stats-dump")["entries"][0]["dump"]
    assert entry["frozen_time"] == shown
    # frozen: at least the freezing-free part of the memory copy, at most the whole run
    assert entry["memdump_time"] <= shown < 10_000_000
