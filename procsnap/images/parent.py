"""Pages kept in a parent image set (CRIU's pre-dump chains), for reading.

A dump made after a pre-dump (``criu dump --prev-images-dir``) writes in
its pagemap, for pages unchanged since the parent, an entry with
``PE_PARENT`` (older CRIU: ``in_parent = true``) and no bytes: they are in
the parent set's pages file, found through the ``parent`` symlink in the
images directory, under the same pid -- or further up, if the parent says
PE_PARENT again.

``flatten`` gives the restore one pages file with every page in place: it
copies each run, from this set or from the one up the chain that holds it,
into an unlinked temporary file, and returns the pagemap with every entry
PE_PRESENT.  A page the chain does not hold, or a lazy page (on a page
server, not in any file), is an ImageError naming it.
"""
from __future__ import annotations

import bisect
import mmap
import os
import tempfile
from typing import Any

from procsnap.errors import ImageError
from procsnap.images.framing import image_path, iter_entries
from procsnap.images.magic import PE_LAZY, PE_PARENT, PE_PRESENT
from procsnap.images.pb import pagemap_pb2

PAGE_SIZE = mmap.PAGESIZE


def flags_of(e: Any) -> int:
    """An entry's flags, from the old ``in_parent`` field when it has none
    (criu/pagemap.c reads them the same way)."""
    if e.HasField("flags"):
        return int(e.flags)
    if e.HasField("in_parent") and e.in_parent:
        return PE_PARENT
    return PE_PRESENT


def needs_parent(entries: list[Any]) -> bool:
    return any(not flags_of(e) & PE_PRESENT for e in entries)


def all_present(path: str, entries: list[Any]) -> None:
    """For the readers of shared-memory pagemaps (shmem, System V), which
    take every entry's bytes from this set: an entry in the parent set, or
    lazy, is an error naming it rather than pages read from the wrong place."""
    for e in entries:
        f = flags_of(e)
        if not f & PE_PRESENT:
            raise ImageError(path, f"pages at offset {e.vaddr:#x} are "
                             f"{'in the parent image set' if f & PE_PARENT else 'lazy'} "
                             f"(flags {f:#x}); procsnap reads shared memory pages only "
                             "from the set itself")


class _Level:
    """One image set of the chain: its pagemap runs for one pid."""

    def __init__(self, images_dir: str, pid: int) -> None:
        self.dir = images_dir
        path = image_path(images_dir, "pagemap", pid)
        ents = [x.msg for x in iter_entries(path, "pagemap")]
        if not ents:
            raise ImageError(path, "empty pagemap (no head)")
        self.pages = image_path(images_dir, "pages", ents[0].pages_id)
        self.runs: list[tuple[int, int, int, int]] = []  # vaddr, end, flags, file offset
        off = 0
        for e in ents[1:]:
            f = flags_of(e)
            end = e.vaddr + e.nr_pages * PAGE_SIZE
            self.runs.append((e.vaddr, end, f, off if f & PE_PRESENT else -1))
            if f & PE_PRESENT:
                off += end - e.vaddr
        self.runs.sort()
        self.starts = [r[0] for r in self.runs]


def _parent_dir(images_dir: str) -> str:
    link = os.path.join(images_dir, "parent")
    if not os.path.isdir(link):
        raise ImageError(link, "pages are in the parent image set, but there is no "
                               "parent link (made by criu dump --prev-images-dir)")
    return os.path.realpath(link)


def _copy(src: str, off: int, dst: int, n: int) -> None:
    fd = os.open(src, os.O_RDONLY)
    try:
        while n:
            data = os.pread(fd, min(n, 1 << 20), off)
            if not data:
                raise ImageError(src, f"truncated at offset {off}")
            os.write(dst, data)
            off += len(data)
            n -= len(data)
    finally:
        os.close(fd)


def _fill(chain: list[_Level], depth: int, start: int, end: int, dst: int, pid: int) -> None:
    """Copy [start, end) of pid's memory as the set at ``depth`` holds it."""
    if depth == len(chain):
        chain.append(_Level(_parent_dir(chain[-1].dir), pid))
    lv = chain[depth]
    addr = start
    i = max(bisect.bisect_right(lv.starts, addr) - 1, 0)
    while addr < end:
        if i >= len(lv.runs) or lv.runs[i][0] > addr or lv.runs[i][1] <= addr:
            raise ImageError(image_path(lv.dir, "pagemap", pid),
                             f"page {addr:#x} is not in this image set, which a child "
                             "set says holds it")
        vaddr, rend, f, off = lv.runs[i]
        n = min(rend, end) - addr
        if f & PE_PRESENT:
            _copy(lv.pages, off + (addr - vaddr), dst, n)
        elif f & PE_PARENT:
            _fill(chain, depth + 1, addr, addr + n, dst, pid)
        else:
            raise ImageError(image_path(lv.dir, "pagemap", pid),
                             f"pages {addr:#x}-{addr + n:#x} are lazy (flags {f:#x}: on a "
                             "page server, in no file); procsnap restores no lazy pages")
        addr += n
        i += 1


def flatten(images_dir: str, pid: int, entries: list[Any]) -> tuple[list[Any], int]:
    """(pagemap entries all PE_PRESENT, an fd on an unlinked file holding
    their pages in order) for ``pid``'s pagemap ``entries`` that need the
    parent chain.  The caller closes the fd."""
    chain = [_Level(images_dir, pid)]
    fd, tmp = tempfile.mkstemp(prefix="procsnap-pages.")
    os.unlink(tmp)
    out = []
    try:
        for e in entries:
            end = e.vaddr + e.nr_pages * PAGE_SIZE
            _fill(chain, 0, e.vaddr, end, fd, pid)
            out.append(pagemap_pb2.pagemap_entry(vaddr=e.vaddr, nr_pages=e.nr_pages,
                                                 flags=PE_PRESENT))
    except BaseException:
        os.close(fd)
        raise
    return out, fd


__all__ = ["all_present", "flags_of", "flatten", "needs_parent", "PE_LAZY"]
