"""Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, inherited across
fork): vma_entry status VMA_ANON_SHARED, contents in pagemap-shmem-ID.img
with the pages in a pages-N.img, once per object however many processes
map it.

The object is identified by the inode of its shmem file, which
/proc/PID/map_files/ shows for every mapping of it (maps prints the lying
name "/dev/zero (deleted)").  Its contents are read through that same file
with SEEK_DATA/SEEK_HOLE, so pages no process has touched cost nothing and
pages only another process faulted in are not missed.

At restore the first task mapping the object creates it (a fresh
MAP_SHARED|MAP_ANONYMOUS mapping) and its puppet preads the pages in; every
later task opens /proc/<first>/map_files/<range> -- the same shmem file --
and maps that, so a write in one process is seen by the others again.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import images
from ..errors import RestoreError, Unsupported
from ..images.pb import pagemap_pb2
from ..kernel import consts as C
from ..kernel.libc import syscall
from ..procfs.parse import MapEntry

if TYPE_CHECKING:
    from ..dumper import DumpContext, DumpTask
    from ..restorer import RestoreContext, RestoreTask

NAME = "shmem"
PAGE = C.PAGE_SIZE
PE_PRESENT = 1 << 2
SEEK_DATA, SEEK_HOLE = 3, 4


@dataclass
class _Obj:
    shmid: int
    pid: int
    start: int
    end: int
    size: int


def is_anon_shared(m: MapEntry) -> bool:
    # MAP_SHARED|MAP_ANONYMOUS shows as "/dev/zero (deleted)" on the shmem
    # mount (dev 00:01); a real mapping of /dev/zero is MAP_PRIVATE-like
    # and has the devtmpfs device.
    return m.shared and m.path == "/dev/zero (deleted)" and (m.dev_major, m.dev_minor) == (0, 1)


def dump_vma(ctx: "DumpContext", task: "DumpTask", m: MapEntry) -> int:
    """Note one mapping of a shared anonymous object; returns its shmid."""
    path = f"/proc/{task.pid}/map_files/{m.start:x}-{m.end:x}"
    try:
        st = os.stat(path)
    except OSError as exc:
        raise Unsupported(f"pid {task.pid}: shared memory at {m.start:#x}-{m.end:#x}: "
                          f"cannot look at it: {exc.strerror}") from None
    if m.pgoff != 0 or st.st_size != m.end - m.start:
        raise Unsupported(f"pid {task.pid}: shared memory at {m.start:#x}-{m.end:#x} maps "
                          f"part of a {st.st_size}-byte object (offset {m.pgoff}); "
                          "partial mappings are not supported yet")
    objs: dict[int, _Obj] = ctx.kind_state.setdefault(NAME, {})
    objs.setdefault(st.st_ino, _Obj(st.st_ino, task.pid, m.start, m.end, st.st_size))
    return st.st_ino


def finish(ctx: "DumpContext") -> None:
    """Save each object's contents once, after every task was looked at."""
    for obj in ctx.kind_state.get(NAME, {}).values():
        src = os.open(f"/proc/{obj.pid}/map_files/{obj.start:x}-{obj.end:x}",
                      os.O_RDONLY | os.O_CLOEXEC)
        try:
            save_object(ctx, obj.shmid, src, obj.size, obj.pid)
        finally:
            os.close(src)


def save_object(ctx: "DumpContext", shmid: int, src: int, size: int, pid: int) -> None:
    """Write the populated pages of shmem file ``src`` as object ``shmid``:
    pagemap-shmem-SHMID.img (offsets in vaddr) plus a pages-N.img."""
    ctx.pages_ids += 1
    pages_id = ctx.pages_ids
    entries: list[Any] = [pagemap_pb2.pagemap_head(pages_id=pages_id)]
    out_path = images.image_path(ctx.images_dir, "pages", pages_id)
    ctx.created.append(out_path)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for off, length in _data_ranges(src, size):
            entries.append(pagemap_pb2.pagemap_entry(vaddr=off, nr_pages=length // PAGE,
                                                     flags=PE_PRESENT))
            done = 0
            while done < length:
                n = os.sendfile(out, src, off + done, length - done)
                if n <= 0 and off + done >= size:
                    # The file ends inside this page (a memfd of any
                    # size): read() stops at the end, its mappings do not.
                    os.write(out, page_tail(src, off + done, length - done))
                    break
                if n <= 0:
                    raise Unsupported(f"pid {pid}: short read of shared memory object "
                                      f"{shmid} at offset {off + done}")
                done += n
    finally:
        os.close(out)
    ctx.shared_images[("shmem-pagemap", shmid)] = entries


def page_tail(fd: int, pos: int, n: int) -> bytes:
    """``n`` bytes of shmem file ``fd`` from ``pos`` to the end of its page,
    past the end of the file: what a mapping of the page shows there."""
    base = pos - pos % PAGE
    addr = syscall(C.NR["mmap"], 0, PAGE, C.PROT_READ, C.MAP_SHARED, fd, base)
    try:
        return ctypes.string_at(addr + pos - base, n)
    finally:
        syscall(C.NR["munmap"], addr, PAGE)


def load_object(rctx: "RestoreContext", shmid: int, dst: int) -> None:
    """Fill shmem file ``dst`` (a memfd of the restorer) with object ``shmid``."""
    path = images.image_path(rctx.images_dir, "shmem-pagemap", shmid)
    if not os.path.exists(path):
        return
    pm = images.read_image(rctx.images_dir, "shmem-pagemap", shmid)
    if not pm:
        raise RestoreError(f"{path}: empty pagemap (no head)")
    pages = images.image_path(rctx.images_dir, "pages", pm[0].pages_id)
    src = os.open(pages, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = 0
        for e in pm[1:]:
            size = e.nr_pages * PAGE
            os.lseek(dst, e.vaddr, os.SEEK_SET)
            done = 0
            while done < size:
                n = os.sendfile(dst, src, offset + done, size - done)
                if n <= 0:
                    raise RestoreError(f"{pages}: short read at offset {offset + done}")
                done += n
            offset += size
    finally:
        os.close(src)


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """Page-aligned (offset, length) of the populated parts of a shmem file."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, SEEK_DATA)
        except OSError as exc:
            if exc.errno == 6:  # ENXIO: no data after pos
                break
            raise
        end = min(os.lseek(fd, start, SEEK_HOLE), size)
        start -= start % PAGE
        end = (end + PAGE - 1) // PAGE * PAGE
        out.append((start, end - start))
        pos = end
    return out


# ------------------------------------------------------------- restore ----

def map_vma(rctx: "RestoreContext", rt: "RestoreTask", v: Any, prot: int) -> None:
    """Map one shared anonymous VMA: create the object, or join it."""
    inj = rt.inj
    made: dict[int, tuple[int, int, int]] = rctx.kind_state.setdefault(NAME, {})
    length = v.end - v.start
    if v.shmid not in made:
        inj.call("mmap", v.start, length, prot | C.PROT_READ | C.PROT_WRITE,
                 C.MAP_SHARED | C.MAP_ANONYMOUS | C.MAP_FIXED, -1, 0)
        _fill(rctx, rt, v)
        made[v.shmid] = (rt.pid, v.start, v.end)
        return
    pid, start, end = made[v.shmid]
    fd = rt.open_in_puppet(f"/proc/{pid}/map_files/{start:x}-{end:x}", os.O_RDWR)
    inj.call("mmap", v.start, length, prot | C.PROT_READ | C.PROT_WRITE,
             C.MAP_SHARED | C.MAP_FIXED, fd, 0)
    inj.call("close", fd)


def _fill(rctx: "RestoreContext", rt: "RestoreTask", v: Any) -> None:
    path = images.image_path(rctx.images_dir, "shmem-pagemap", v.shmid)
    if not os.path.exists(path):
        return  # CRIU writes none for an object with no data
    pm = images.read_image(rctx.images_dir, "shmem-pagemap", v.shmid)
    if not pm:
        raise RestoreError(f"{path}: empty pagemap (no head)")
    pages = images.image_path(rctx.images_dir, "pages", pm[0].pages_id)
    inj = rt.inj
    fd = rt.open_in_puppet(pages, os.O_RDONLY)
    offset = 0
    for e in pm[1:]:
        size = e.nr_pages * PAGE
        if e.vaddr + size > v.end - v.start:
            raise RestoreError(f"{path}: entry at offset {e.vaddr} runs past the object")
        got = inj.call("pread64", fd, v.start + e.vaddr, size, offset)
        if got != size:
            raise RestoreError(f"{pages}: short read at offset {offset} ({got} of {size} bytes)")
        offset += size
    inj.call("close", fd)
