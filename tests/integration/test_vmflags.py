"""Mappings come back as they were (issue 17): smaps VmFlags (madvise
flags, mlock, MAP_NORESERVE/GROWSDOWN/DROPPABLE, VM_ACCOUNT), the access
mode of mapped files (map_files link modes), VMA boundaries line for line,
and pages shared copy-on-write between a parent and its child.  Checked
from outside (/proc/PID/maps, smaps, map_files, pagemap, Pss) and from
inside (the vmflags target checks itself on SIGTERM).

What cannot be restored is refused with one line, and the target runs on.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import (
    TargetFactory,
    assert_one_line_error,
    finish,
    is_untouched,
    proc_exists,
    run_procsnap,
    wait_for,
)
from integration.test_tree import adopt_tree, dump_tree, restore_tree, start_argv

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _smaps(pid: int) -> list[tuple[str, tuple[str, ...]]]:
    """(maps line, sorted VmFlags) of every VMA, [vsyscall] aside.

    Raw lines: no merging of neighbours, so a VMA split or merged
    differently shows.  'sd' (soft-dirty) is tracking state, not kept."""
    out: list[tuple[str, tuple[str, ...]]] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if "-" in key and " " in line and not key.isalpha():
                out.append((" ".join(line.split()), ()))
            elif key == "VmFlags":
                flags = tuple(sorted(set(line.split()[1:]) - {"sd"}))
                out[-1] = (out[-1][0], flags)
    return [e for e in out if not e[0].endswith("[vsyscall]")]


def _map_files(pid: int) -> dict[str, int]:
    d = f"/proc/{pid}/map_files"
    return {n: os.lstat(f"{d}/{n}").st_mode for n in os.listdir(d)}


def _pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise AssertionError("no Pss in smaps_rollup")


def _view(pid: int) -> dict[str, object]:
    return {"smaps": _smaps(pid), "map_files": _map_files(pid)}


def _diff(before: dict, after: dict) -> str:
    lines = []
    for k in before:
        if before[k] != after[k]:
            b, a = before[k], after[k]
            if isinstance(b, list):
                lines += [f"  - {x}" for x in b if x not in a][:10]
                lines += [f"  + {x}" for x in a if x not in b][:10]
            else:
                lines += [f"  {k}: {n} {oct(b.get(n, 0))} -> {oct(a.get(n, 0))}"
                          for n in sorted(set(b) | set(a)) if b.get(n) != a.get(n)][:10]
    return "\n".join(lines)


def test_vmflags_modes_boundaries_and_cow(targets: TargetFactory, tmp_path: Path) -> None:
    t = targets.start("vmflags", str(targets.workdir / "vmflags.file"))
    parent, child = (int(x) for x in t.wait_line(r"^ready ").split()[1:3])
    assert parent == t.pid
    adopt_tree(targets, t)
    before = {p: _view(p) for p in (parent, child)}
    flags = {f for _, fl in before[parent]["smaps"] for f in fl}  # type: ignore[union-attr]
    for f in ("hg", "nh", "dc", "dd", "wf", "sr", "rr", "lo", "nr", "gd"):
        assert f in flags, f"the target did not set up {f!r}: {sorted(flags)}"
    pss = _pss_kib(parent) + _pss_kib(child)
    pids = dump_tree(t.pid, tmp_path / "images")
    restore_tree(targets, t, tmp_path / "images", pids)
    for p in (parent, child):
        after = _view(p)
        # MAP_DROPPABLE memory comes back empty: Rss differs, flags do not.
        assert after == before[p], f"pid {p} changed across dump/restore:\n" + \
            _diff(before[p], after)
    pss_after = _pss_kib(parent) + _pss_kib(child)
    assert pss_after <= pss * 1.05, f"tree Pss grew from {pss} to {pss_after} KiB"
    finish(t)


_MLOCK_ONFAULT = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
int main(int argc, char **argv)
{
	char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(p, 1, 8192);
	if (argv[1][0] == 'o' ? mlock2(p, 8192, MLOCK_ONFAULT) : syscall(462, p, 8192, 0))
		return 2;
	printf("ready %p\n", p);
	fflush(stdout);
	for (;;)
		pause();
}
"""


@pytest.mark.parametrize("how,flag", [("onfault", "lf"), ("mseal", "sl")])
def test_unrestorable_vmflag_is_refused(targets: TargetFactory, tmp_path: Path,
                                        how: str, flag: str) -> None:
    src = tmp_path / "lockseal.c"
    src.write_text(_MLOCK_ONFAULT)
    exe = tmp_path / "lockseal"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    t = start_argv(targets, [str(exe), how], f"lockseal-{how}")
    wait_for(lambda: t.out.exists() and "ready" in t.out.read_text(), 10, "lockseal to start")
    addr = int(t.out.read_text().split()[1], 16)
    before = _view(t.pid)
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {t.pid}")
    assert f"{addr:#x}" in line and f"VmFlags '{flag}'" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert _view(t.pid) == before
    assert proc_exists(t.pid)


def test_vmflags_table_knows_this_kernel() -> None:
    """Every mnemonic this kernel prints for our own mappings is classified."""
    from procsnap.resources.memory import VMFLAGS
    seen = {f for _, fl in _smaps(os.getpid()) for f in fl}
    assert seen <= set(VMFLAGS), sorted(seen - set(VMFLAGS))
