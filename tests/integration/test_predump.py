"""Pre-dump with dirty-page tracking on a kernel without soft-dirty bits
(userfaultfd write-protect in async mode + PAGEMAP_SCAN), and the restore
of a dump whose pages are spread over a chain of images.

The target (dirtier.c) keeps rewriting pages of a large buffer and maps new
memory now and then; on SIGTERM it checks every page against the
generation it last wrote there.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from helpers import (Target, TargetFactory, check_ok, crit_decode, read_maps, run_procsnap,
                     start_under, wait_gone)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4


def _stage_ms(stderr: str, stage: str) -> float:
    m = re.search(rf"[:,] {stage} (\d+\.\d) ms", stderr)
    assert m, stderr
    return float(m.group(1))


def _frozen_ms(stderr: str) -> float:
    return _stage_ms(stderr, "frozen")


def _uffds(pid: int) -> list[int]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]":
                out.append(int(fd))
        except OSError:
            pass
    return out


def _pagemap_flags(path: Path) -> list[tuple[int, int, int]]:
    entries = crit_decode(path)["entries"][1:]
    return [(int(e["vaddr"], 0) if isinstance(e["vaddr"], str) else e["vaddr"],
             e["nr_pages"], e.get("flags", PE_PRESENT)) for e in entries]


def _restore_and_check(targets: TargetFactory, t: Target, images: Path,
                       before: int = 0, asked: float = 0.0) -> None:
    """Restore; the target must go on from where it was dumped (its count
    of rewrites, in memory, not below one it printed before the dump: a
    stale copy of memory is consistent with itself) and check every page."""
    assert wait_gone(t.pid, 10)
    check_ok(run_procsnap("restore", "-D", images, "-d"))
    targets.adopt(t.pid, like=t)
    assert _uffds(t.pid) == []                       # the tracker did not come back
    assert not [m for m in read_maps(t.pid) if "uw" in str(m)]
    n = len([ln for ln in t.lines() if ln.startswith("gen ")])
    t.signal(signal.SIGUSR1)
    after = int(t.wait_line(r"^gen ", count=n + 1).split()[1])
    # at most 25 rewrites a 10 ms tick since it was asked before the dump
    elapsed = time.monotonic() - asked
    assert before <= after <= before + 2500 * elapsed + 100, (before, after, elapsed)
    assert t.verdict(timeout=60).startswith("PASS"), t.output()


def _flag_names(flags: int) -> str:
    return "|".join(n for b, n in ((1, "PARENT"), (2, "LAZY"), (4, "PRESENT")) if flags & b)


def test_two_pre_dumps_then_dump(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("dirtier", "256")
    # the reference: a plain dump of the same process (left running)
    plain = check_ok(run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "plain", "-R", "-v"))
    plain_ms = _frozen_ms(plain.stderr)
    plain_mem = _stage_ms(plain.stderr, "memory")
    assert t.alive()

    p1, p2, d = tmp_path / "p1", tmp_path / "p2", tmp_path / "d"
    res = check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p1, "-v"))
    assert t.alive() and len(_uffds(t.pid)) == 1     # tracked while it runs
    t.wait_line(r"^ready")
    res = check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p2,
                                "--prev-images-dir", "../p1", "-v"))
    assert os.readlink(p2 / "parent") == "../p1"
    asked = time.monotonic()
    t.signal(signal.SIGUSR1)
    before = int(t.wait_line(r"^gen ").split()[1])
    res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", d, "--prev-images-dir", "../p2",
                                "-v"))
    final_ms = _frozen_ms(res.stderr)
    final_mem = _stage_ms(res.stderr, "memory")
    assert os.readlink(d / "parent") == "../p2"

    # the final dump copied only what changed: most pages are in the parents
    pm = _pagemap_flags(d / f"pagemap-{t.pid}.img")
    in_parent = sum(n for _, n, f in pm if f & PE_PARENT)
    copied = sum(n for _, n, f in pm if f & PE_PRESENT)
    assert in_parent > 10 * copied, (in_parent, copied)
    # (pages copied in a lazy-able VMA carry PE_LAZY too, as criu marks them)
    assert all(f in (PE_PARENT, PE_PRESENT, PE_PRESENT | PE_LAZY) for _, _, f in pm), \
        sorted({_flag_names(f) for _, _, f in pm})
    plain_pages = os.path.getsize(tmp_path / "plain" / "pages-1.img")
    assert os.path.getsize(d / "pages-1.img") < plain_pages / 10
    # and its tree was frozen for less time than the plain dump's, the
    # memory copied under the freeze far less (the rest of the frozen
    # time is the fixed cost of any dump: on a fast disk a plain dump of
    # 256 MiB is not much more)
    assert final_ms < plain_ms, (final_ms, plain_ms)
    assert final_mem < plain_mem / 3, (final_mem, plain_mem)
    print(f"frozen {final_ms} of {plain_ms} ms; memory {final_mem} of {plain_mem} ms")

    _restore_and_check(targets, t, d, before, asked)


def test_pre_dump_of_a_tree_in_its_own_pid_namespace(targets: TargetFactory,
                                                     tmp_path: Path) -> None:
    """A pre-dump names its pagemaps as the dump after it does: by the pid
    inside the tree's pid namespace (the dump found no parent pages, or the
    restore no parent pagemap, when the pre-dump named them from outside)."""
    t = start_under(targets, ["unshare", "-fp", "setsid"], "dirtier", "32")
    p1, d = tmp_path / "p1", tmp_path / "d"
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p1))
    assert (p1 / "pagemap-1.img").exists(), sorted(os.listdir(p1))
    asked = time.monotonic()
    t.signal(signal.SIGUSR1)
    before = int(t.wait_line(r"^gen ").split()[1])
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", d, "--prev-images-dir", "../p1"))
    pm = _pagemap_flags(d / "pagemap-1.img")
    in_parent = sum(n for _, n, f in pm if f & PE_PARENT)
    assert in_parent > sum(n for _, n, f in pm if f & PE_PRESENT), pm
    _restore_and_check(targets, t, d, before, asked)


def test_dump_without_a_valid_tracker_copies_everything(targets: TargetFactory,
                                                         tmp_path: Path) -> None:
    """A pre-dump whose tracker is gone (the target closed all its fds)
    gives no in_parent pages: the dump copies them all, exactly."""
    t = targets.start("dirtier", "32")
    p1, d = tmp_path / "p1", tmp_path / "d"
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p1))
    fd, _ = json.loads((p1 / "memtrack").read_text())[str(t.pid)]
    assert _uffds(t.pid) == [fd]
    t.signal(signal.SIGUSR2)
    t.wait_line(r"^closed")
    assert _uffds(t.pid) == []
    asked = time.monotonic()
    t.signal(signal.SIGUSR1)
    before = int(t.wait_line(r"^gen ").split()[1])
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", d, "--prev-images-dir", "../p1"))
    pm = _pagemap_flags(d / f"pagemap-{t.pid}.img")
    assert pm and not [e for e in pm if e[2] & PE_PARENT]
    _restore_and_check(targets, t, d, before, asked)


def test_restore_reports_a_missing_parent(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("dirtier", "32")
    p1, d = tmp_path / "p1", tmp_path / "d"
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p1))
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", d, "--prev-images-dir", "../p1"))
    assert wait_gone(t.pid, 10)
    os.rename(p1, tmp_path / "elsewhere")
    res = run_procsnap("restore", "-D", d, "-d")
    assert res.returncode != 0
    assert "parent" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not os.path.exists(f"/proc/{t.pid}")


def test_criu_command_line_pre_dump(targets: TargetFactory, tmp_path: Path) -> None:
    """criu's spellings, as zdtm.py --pre passes them."""
    t = targets.start("dirtier", "32")
    p1, d = tmp_path / "p1", tmp_path / "d"
    check_ok(run_procsnap("criu", "pre-dump", "-t", t.pid, "-D", p1, "--track-mem",
                          "-o", "pre.log", "--pre-dump-mode", "splice"))
    assert (p1 / "stats-dump").exists()
    check_ok(run_procsnap("criu", "dump", "-t", t.pid, "-D", d, "--track-mem",
                          "--prev-images-dir", "../p1", "-o", "dump.log"))
    pm = _pagemap_flags(d / f"pagemap-{t.pid}.img")
    assert any(f & PE_PARENT for _, _, f in pm)
    st = crit_decode(d / "stats-dump")["entries"][0]["dump"]
    assert st["pages_skipped_parent"] == sum(n for _, n, f in pm if f & PE_PARENT) > 0
    assert st["frozen_time"] > 0
    _restore_and_check(targets, t, d)


def test_refused_dump_leaves_no_parent_link(targets: TargetFactory, tmp_path: Path) -> None:
    """A dump that a pre-dump action script refuses removes the ``parent``
    link it made (a failed dump leaves no name behind); the tree runs on
    with its tracker."""
    t = targets.start("dirtier", "32")
    p1, d = tmp_path / "p1", tmp_path / "d"
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p1))
    script = tmp_path / "no.sh"
    script.write_text('#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = pre-dump ] && exit 5\nexit 0\n')
    script.chmod(0o755)
    res = run_procsnap("criu", "dump", "-t", t.pid, "-D", d, "--track-mem",
                       "--prev-images-dir", "../p1", "--action-script", script)
    assert res.returncode != 0, res.stderr
    assert not os.path.lexists(d / "parent"), sorted(os.listdir(d))
    assert t.alive() and len(_uffds(t.pid)) == 1
    # and the next dump still finds its parent
    asked = time.monotonic()
    t.signal(signal.SIGUSR1)
    before = int(t.wait_line(r"^gen ").split()[1])
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", d, "--prev-images-dir", "../p1"))
    _restore_and_check(targets, t, d, before, asked)


def test_pages_the_kernel_wrote_since_the_pre_dump(targets: TargetFactory,
                                                   tmp_path: Path) -> None:
    """Pages written by a system call (readv into the buffer), not by the
    program, after a pre-dump: the tracker (user-mode-only userfaultfd,
    write-protect in async mode) counts them as written, the dump copies
    them and the restored buffer holds what was read."""
    t = targets.start("kwrites.py")
    p1, d = tmp_path / "p1", tmp_path / "d"
    check_ok(run_procsnap("pre-dump", "-t", t.pid, "-D", p1))
    t.signal(signal.SIGUSR1)
    t.wait_line(r"^written")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", d, "--prev-images-dir", "../p1"))
    pm = _pagemap_flags(d / f"pagemap-{t.pid}.img")
    # the 16 MiB read in are copied again, the untouched half stays in the parent
    copied = sum(n for _, n, f in pm if f & PE_PRESENT)
    assert any(f & PE_PARENT for _, _, f in pm)
    assert copied >= 16 * 256, copied
    assert wait_gone(t.pid, 10)
    check_ok(run_procsnap("restore", "-D", d, "-d"))
    targets.adopt(t.pid, like=t)
    assert t.verdict(timeout=60).startswith("PASS"), t.output()
