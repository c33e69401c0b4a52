"""Shared memory objects mapped in part, and hugetlb memory (issue 14).

The shmem_parts target maps one shared anonymous object whole in a child
and in pieces in its parent (munmap, mremap, a page mapped again at an
offset through map_files), a shared and a private MAP_HUGETLB region.
Checked from outside (smaps lines with VmFlags and KernelPageSize, hugetlb
usage, map_files modes, which mappings share an object) and from inside
(the target checks its bytes and that a write in one process is seen in
the other).  An object whose tail no mapping reaches is refused.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

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

_OBJECTS = ("/dev/zero (deleted)", "/anon_hugepage (deleted)")


def _hugepages_free() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def _view(pids: list[int]) -> dict[str, object]:
    """Every VMA of the tree as (pid index, maps line, VmFlags,
    KernelPageSize, hugetlb kB) with the inode of a shared memory object
    replaced by a label: objects are new after a restore, but what was one
    object must be one object again, and two must stay two."""
    labels: dict[int, str] = {}
    vmas = []
    modes = {}
    for k, pid in enumerate(pids):
        cur: dict[str, object] = {}
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                key, _, value = line.partition(":")
                if "-" in key and " " in line and not key.isalpha():
                    f_ = line.split()
                    if " ".join(f_[5:]) in _OBJECTS and f_[1].endswith("s"):
                        f_[4] = labels.setdefault(int(f_[4]), f"obj{len(labels)}")
                    elif " ".join(f_[5:]) in _OBJECTS:
                        # A private hugetlb mapping's own file: after fork
                        # parent and child had the same; restored, each has
                        # its own (as with CRIU).  Not shared memory.
                        f_[4] = "private"
                    cur = {"line": " ".join(f_), "hugetlb": 0}
                    vmas.append((k, cur))
                elif key == "KernelPageSize":
                    cur["kps"] = value.split()[0]
                elif key in ("Shared_Hugetlb", "Private_Hugetlb") and "-s " not in str(cur["line"]):
                    # (private hugetlb pages are restored in place; shared
                    # ones are in the object, faulted in at first touch)
                    cur["hugetlb"] = int(cur["hugetlb"]) + int(value.split()[0])  # type: ignore[call-overload]
                elif key == "VmFlags":
                    cur["flags"] = tuple(sorted(set(value.split()) - {"sd"}))
        d = f"/proc/{pid}/map_files"
        modes.update({(k, n): os.lstat(f"{d}/{n}").st_mode for n in os.listdir(d)})
    return {"vmas": [(k, tuple(sorted(v.items()))) for k, v in vmas
                     if not str(v["line"]).endswith("[vsyscall]")],
            "map_files": modes}


@pytest.fixture
def huge_pages() -> Iterator[None]:
    """Six free 2 MiB huge pages for the test: the pool is grown for it when
    needed (a fresh machine has none) and put back as it was afterwards."""
    path = "/proc/sys/vm/nr_hugepages"
    with open(path) as f:
        old = int(f.read())
    need = 6 - _hugepages_free()
    if need > 0:
        with open(path, "w") as f:
            f.write(str(old + need))
    try:
        if _hugepages_free() < 6:
            pytest.fail("cannot reserve 6 free 2 MiB huge pages (memory too fragmented?)")
        yield
    finally:
        if need > 0:
            with open(path, "w") as f:
                f.write(str(old))


def test_partial_shmem_and_hugetlb(targets: TargetFactory, tmp_path: Path,
                                   huge_pages: None) -> None:
    t = targets.start("shmem_parts")
    parent, child = (int(x) for x in t.wait_line(r"^ready ").split()[1:3])
    adopt_tree(targets, t)
    before = _view([parent, child])
    lines = [dict(v)["line"] for _, v in before["vmas"]]  # type: ignore[union-attr]
    assert sum("anon_hugepage" in str(x) for x in lines) == 4, lines
    # the parent maps A in pieces (one at offset 20 pages), the child whole
    assert any("/dev/zero" in str(x) and " 00014000 " in str(x) for x in lines), lines
    pids = dump_tree(t.pid, tmp_path / "images")
    restore_tree(targets, t, tmp_path / "images", pids)
    after = _view([parent, child])
    for key in before:
        b, a = before[key], after[key]
        assert a == b, f"{key} changed:\n" + "\n".join(
            [f"  - {x}" for x in b if x not in a] + [f"  + {x}" for x in a if x not in b])  # type: ignore[union-attr,operator]
    finish(t)


_TAIL = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include <sys/mman.h>
int main(void)
{
	char *p = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	p[0] = 1;
	munmap(p + 6 * 4096, 2 * 4096);
	printf("ready %p\n", p);
	fflush(stdout);
	for (;;)
		pause();
}
"""


def test_shmem_tail_unmapped_is_refused(targets: TargetFactory, tmp_path: Path) -> None:
    """Its size cannot be remade from the mappings: refused, runs on."""
    src = tmp_path / "tail.c"
    src.write_text(_TAIL)
    exe = tmp_path / "tail"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True)
    t = start_argv(targets, [str(exe)], "shmem-tail")
    wait_for(lambda: t.out.exists() and "ready" in t.out.read_text(), 10, "tail to start")
    addr = int(t.out.read_text().split()[1], 16)
    res = run_procsnap("dump", "-t", t.pid, "-D", tmp_path / "images")
    line = assert_one_line_error(res, f"pid {t.pid}")
    assert f"{addr:#x}" in line and "32768-byte object is mapped only up to offset 24576" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert proc_exists(t.pid)


def _huge_view(pid: int) -> dict[str, object]:
    """The memfd's maps lines (its inode is new after a restore; its device,
    hugetlbfs's internal mount, is not), KernelPageSize and VmFlags, and
    the fd's link, size, flags and mode."""
    vmas = []
    cur: list[str] = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, value = line.partition(":")
            if "-" in key and " " in line and not key.isalpha():
                f_ = line.split()
                cur = f_[:4] + f_[5:] if "/memfd:" in line else []
                if cur:
                    vmas.append(cur)
            elif cur and key in ("KernelPageSize", "VmFlags"):
                cur.append(value.strip())
    fds = {}
    for n in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{n}")
        if link.startswith("/memfd:"):
            st = os.stat(f"/proc/{pid}/fd/{n}")
            with open(f"/proc/{pid}/fdinfo/{n}") as f:
                flags = next(x for x in f if x.startswith("flags:"))
            fds[n] = (link, st.st_size, st.st_mode, st.st_dev, st.st_blksize, flags)
    return {"vmas": vmas, "fds": fds}


def test_hugetlb_memfd_over_ghost_limit(targets: TargetFactory, tmp_path: Path,
                                        huge_pages: None) -> None:
    """A MFD_HUGETLB memfd bigger than --ghost-limit (zdtm memfd02-hugetlb):
    saved whatever its size (its contents exist nowhere else; CRIU holds no
    limit against memfds), only its written huge page, and restored on
    hugetlbfs with the same page size, mappings, fd and bytes (the target
    checks the bytes, that the shared mapping is the fd's file and that the
    private mapping kept its own page and follows the file elsewhere)."""
    t = targets.start("memfd_huge.py")
    before = _huge_view(t.pid)
    # (Python's mmap keeps a dup of the fd per mapping: three fds)
    assert len(before["vmas"]) == 2 and len(before["fds"]) == 3, before  # type: ignore[arg-type]
    images = tmp_path / "images"
    res = run_procsnap("dump", "-t", t.pid, "-D", images, "--ghost-limit", "1M")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: not proc_exists(t.pid), 10, "the dumped target to go")
    # One huge page of the file (the hole is not saved), and the private
    # mapping's own copy of its first huge page (its second is the file's)
    import procsnap.images as imgs
    shm = [imgs.read_image(str(images), "shmem-pagemap", int(p.name.split("-")[-1][:-4]))
           for p in images.glob("pagemap-shmem-*.img")]
    assert [[(e.vaddr, e.nr_pages) for e in pm[1:]] for pm in shm] == [[(0, 512)]], shm
    priv = next(int(v[0].split("-")[0], 16) for v in before["vmas"] if v[1] == "rw-p")  # type: ignore[attr-defined]
    own = [(e.vaddr - priv, e.nr_pages) for e in imgs.read_image(str(images), "pagemap", t.pid)[1:]
           if priv <= e.vaddr < priv + (4 << 20)]
    assert own == [(0, 512)], own
    targets.adopt(t.pid, like=t)
    res = run_procsnap("restore", "-D", images, "-d")
    assert res.returncode == 0, res.stderr
    assert _huge_view(t.pid) == before
    finish(t)
