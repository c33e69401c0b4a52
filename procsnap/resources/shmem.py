"""Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, inherited across
fork): vma_entry status VMA_ANON_SHARED, contents in pagemap-shmem-ID.img
with the pages in a pages-N.img, once per object however many processes
map it.

The object is identified by the inode of its shmem file, which
/proc/PID/map_files/ shows for every mapping of it (maps prints the lying
name "/dev/zero (deleted)").  Its contents are read through that same file
with SEEK_DATA/SEEK_HOLE, so pages no process has touched cost nothing and
pages only another process faulted in are not missed.

A mapping may show only part of the object (mmap of a map_files link at an
offset, munmap or mremap of part of it: vma_entry.pgoff is the offset).  The
object is saved whole, once, whatever part each mapping shows; its size at
restore is the furthest end of any mapping of it, so the dump refuses an
object whose tail no mapping in the tree reaches (that size would be lost).

Anonymous hugetlb memory shared the same way (MAP_SHARED|MAP_ANONYMOUS|
MAP_HUGETLB, "/anon_hugepage (deleted)" on the kernel's internal hugetlbfs
mount) is such an object too, with its page size in vma_entry.flags
(MAP_HUGETLB | log2(size) << MAP_HUGE_SHIFT, as CRIU writes it).  hugetlbfs
has no SEEK_DATA and no sendfile: its huge pages are read with pread and
only those that are not all zeroes are saved (a hole reads as zeroes).

At restore the first task mapping the object creates it whole (a fresh
MAP_SHARED|MAP_ANONYMOUS mapping of the object's size, where the kernel
likes), its puppet preads the pages in, the restorer keeps the object open
through map_files and the puppet unmaps it again.  Then every mapping of
it, in every task, is an mmap of that same file at its offset, so a write
in one process is seen by the others again.
"""
from __future__ import annotations

import ctypes
import os
from ..record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images, pagexfer
from ..images import parent as parent_pages
from ..errors import RestoreError, Unsupported
from ..inject import InjectError
from ..images.pb import pagemap_pb2
from ..kernel import consts as C
from ..kernel.libc import syscall
from ..procfs.parse import MapEntry

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "shmem"
VMA_ANON_SHARED = 1 << 8  # vma_entry.status (criu/include/image.h)
PAGE = C.PAGE_SIZE
PE_PRESENT = 1 << 2
SEEK_DATA, SEEK_HOLE = 3, 4


MAP_HUGE_SHIFT = 26
# MAP_HUGETLB and the page size bits of mmap flags.
HUGE_MASK = C.MAP_HUGETLB | (0x3F << MAP_HUGE_SHIFT)


# Bookkeeping compared by identity, without a generated repr: dataclass()
# compiles __eq__ and __repr__ at import, at every start of procsnap.
@record(eq=False, repr=False)
class _Obj:
    """One System V shm segment attached in the tree."""
    shmid: int
    pid: int
    start: int
    end: int
    size: int
    extent: int = 0      # furthest end (object offset) of any mapping of it
    page_size: int = 0   # huge page size, 0 for ordinary shmem


def is_anon_shared(m: MapEntry) -> bool:
    # MAP_SHARED|MAP_ANONYMOUS shows as "/dev/zero (deleted)" on the shmem
    # mount (dev 00:01); a real mapping of /dev/zero is MAP_PRIVATE-like
    # and has the devtmpfs device.
    if m.shared and m.path == "/dev/zero (deleted)" and (m.dev_major, m.dev_minor) == (0, 1):
        return True
    return m.shared and is_anon_hugetlb(m)


def is_anon_hugetlb(m: MapEntry) -> bool:
    """MAP_ANONYMOUS|MAP_HUGETLB memory, private or shared: the kernel backs
    it with a file of its internal hugetlbfs mount named "anon_hugepage"."""
    return "ht" in m.vmflags and m.path == "/anon_hugepage (deleted)"


def hugetlb_flags(page_size: int) -> int:
    """MAP_HUGETLB with the page size, as mmap() takes it (and CRIU saves it
    in vma_entry.flags)."""
    return C.MAP_HUGETLB | ((page_size.bit_length() - 1) << MAP_HUGE_SHIFT)


def hugetlb_page_size(flags: int) -> int:
    """The huge page size ``flags`` (vma_entry.flags) ask for; 0 if none."""
    if not flags & C.MAP_HUGETLB:
        return 0
    shift = (flags >> MAP_HUGE_SHIFT) & 0x3F
    return 1 << shift if shift else 2 << 20  # the x86 default huge page size


def mapping_stat(task: "DumpTask", m: MapEntry) -> os.stat_result:
    """stat() of the file behind a mapping (its map_files link)."""
    try:
        return os.stat(f"/proc/{task.pid}/map_files/{m.start:x}-{m.end:x}")
    except OSError as exc:
        raise Unsupported(f"pid {task.pid}: shared memory at {m.start:#x}-{m.end:#x}: "
                          f"cannot look at it: {exc.strerror}") from None


def claim_id(ctx: "DumpContext", shmid: int, dev: int, where: str) -> None:
    """Objects are named by inode number (as CRIU names them), and the shmem
    and the hugetlbfs mounts number their inodes each on their own: two
    objects with one number would be restored as one."""
    ids: dict[int, int] = ctx.kind_state.setdefault("shmem-ids", {})
    if ids.setdefault(shmid, dev) != dev:
        raise Unsupported(f"{where}: shared memory object {shmid} has the inode number of "
                          "another one on another internal mount; the images name both "
                          "the same")


def dump_vma(ctx: "DumpContext", task: "DumpTask", m: MapEntry) -> tuple[int, int]:
    """Note one mapping of a shared anonymous object, whole or part of it;
    returns (shmid, huge page size or 0)."""
    st = mapping_stat(task, m)
    claim_id(ctx, st.st_ino, st.st_dev, f"pid {task.pid}: shared memory at "
             f"{m.start:#x}-{m.end:#x}")
    page_size = st.st_blksize if is_anon_hugetlb(m) else 0
    objs: dict[int, _Obj] = ctx.kind_state.setdefault(NAME, {})
    obj = objs.setdefault(st.st_ino, _Obj(st.st_ino, task.pid, m.start, m.end, st.st_size,
                                          page_size=page_size))
    obj.extent = max(obj.extent, m.pgoff + m.end - m.start)
    return st.st_ino, page_size


# Objects whose pages went to a page server (no local pagemap marks them saved).
_SENT = "shmem-sent"


def finish(ctx: "DumpContext") -> None:
    """Save each object's contents once, after every task was looked at."""
    # An object a process also holds as a file (opened through map_files:
    # memfd.py saved it as a memfd named /dev/zero, with its size) is that
    # memfd's at restore too (memory.py hands its fd to map_vma()).
    sent = ctx.kind_state.get(_SENT, set())
    objs = [o for o in ctx.kind_state.get(NAME, {}).values()
            if ("shmem-pagemap", o.shmid) not in ctx.shared_images and o.shmid not in sent]
    for obj in objs:
        # The restore makes the object as big as its mappings reach.
        if obj.extent < obj.size:
            raise Unsupported(f"pid {obj.pid}: shared memory at {obj.start:#x}-{obj.end:#x}: "
                              f"its {obj.size}-byte object is mapped only up to offset "
                              f"{obj.extent} in the dumped tree; its size would be lost")
    for obj in objs:
        src = os.open(f"/proc/{obj.pid}/map_files/{obj.start:x}-{obj.end:x}",
                      os.O_RDONLY | os.O_CLOEXEC)
        try:
            if obj.page_size:
                save_hugetlb(ctx, obj.shmid, src, obj.size, obj.page_size, obj.pid)
            else:
                save_object(ctx, obj.shmid, src, obj.size, obj.pid)
        finally:
            os.close(src)


def save_hugetlb(ctx: "DumpContext", shmid: int, src: int, size: int, hp: int,
                 pid: int) -> None:
    """Like save_object() for a hugetlbfs file (huge page size ``hp``): pread
    each huge page and keep those that are not all zeroes (no SEEK_DATA, no
    sendfile there); with --page-server they go there."""
    client = ctx.kind_state.get(pagexfer.CLIENT_KEY)
    if client is not None:
        client.open("shmem-pagemap", shmid)
        ctx.kind_state.setdefault(_SENT, set()).add(shmid)
        zero_page = bytes(hp)
        for off in range(0, size, hp):
            data = os.pread(src, hp, off)
            if len(data) != hp:
                raise Unsupported(f"pid {pid}: short read of hugetlb shared memory "
                                  f"object {shmid} at offset {off}")
            if data != zero_page:
                client.add(off, data)
        return
    ctx.pages_ids += 1
    pages_id = ctx.pages_ids
    entries: list[Any] = [pagemap_pb2.pagemap_head(pages_id=pages_id)]
    out_path = images.image_path(ctx.images_dir, "pages", pages_id)
    ctx.created.append(out_path)
    zero = bytes(hp)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for off in range(0, size, hp):
            data = os.pread(src, hp, off)
            if len(data) != hp:
                raise Unsupported(f"pid {pid}: short read of hugetlb shared memory object "
                                  f"{shmid} at offset {off}")
            if data == zero:
                continue
            last = entries[-1]
            if len(entries) > 1 and last.vaddr + last.nr_pages * PAGE == off:
                last.nr_pages += hp // PAGE
            else:
                entries.append(pagemap_pb2.pagemap_entry(vaddr=off, nr_pages=hp // PAGE,
                                                         flags=PE_PRESENT))
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
    finally:
        os.close(out)
    ctx.shared_images[("shmem-pagemap", shmid)] = entries


def save_object(ctx: "DumpContext", shmid: int, src: int, size: int, pid: int) -> None:
    """Write the populated pages of shmem file ``src`` as object ``shmid``:
    pagemap-shmem-SHMID.img (offsets in vaddr) plus a pages-N.img --
    or, with --page-server, sent there (the server writes them)."""
    client = ctx.kind_state.get(pagexfer.CLIENT_KEY)
    if client is not None:
        client.open("shmem-pagemap", shmid)
        ctx.kind_state.setdefault(_SENT, set()).add(shmid)
        for off, length in _data_ranges(src, size):
            if off + length <= size:
                client.send_fd_range(off, src, off, length)
            else:
                # the file ends inside this page (a memfd of any size)
                data = os.pread(src, size - off, off) if size > off else b""
                client.add(off, data + page_tail(src, off + len(data), length - len(data)))
        return
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


def load_object(rctx: "RestoreContext", shmid: int, dst: int, mapped: bool = False) -> None:
    """Fill shmem file ``dst`` (a memfd of the restorer) with object ``shmid``.
    ``mapped``: through a shared mapping of it, for a hugetlbfs file (no
    write(2) there; its size must already cover every page)."""
    path = images.image_path(rctx.images_dir, "shmem-pagemap", shmid)
    if not os.path.exists(path):
        return
    pm = images.read_image(rctx.images_dir, "shmem-pagemap", shmid)
    if not pm:
        raise RestoreError(f"{path}: empty pagemap (no head)")
    parent_pages.all_present(path, pm[1:])
    pages = images.image_path(rctx.images_dir, "pages", pm[0].pages_id)
    src = os.open(pages, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if mapped:
            _load_mapped(path, pages, pm[1:], src, dst)
            return
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


def _load_mapped(path: str, pages: str, entries: list[Any], src: int, dst: int) -> None:
    size = os.fstat(dst).st_size
    if not entries:
        return
    if entries[-1].vaddr + entries[-1].nr_pages * PAGE > size:
        raise RestoreError(f"{path}: entries run past the object's {size} bytes")
    addr = syscall(C.NR["mmap"], 0, size, C.PROT_READ | C.PROT_WRITE, C.MAP_SHARED, dst, 0)
    try:
        offset = 0
        for e in entries:
            n = e.nr_pages * PAGE
            got = os.preadv(src, [(ctypes.c_char * n).from_address(addr + e.vaddr)], offset)
            if got != n:
                raise RestoreError(f"{pages}: short read at offset {offset} ({got} of {n} bytes)")
            offset += n
    finally:
        syscall(C.NR["munmap"], addr, size)


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

def _object_size(rctx: "RestoreContext", shmid: int) -> int:
    """The object's size: the furthest end of any mapping of it (the dump
    refused an object whose tail no mapping reached)."""
    size = 0
    for t in rctx.tasks:
        if t.mm is None:
            continue
        for v in t.mm.vmas:
            if v.shmid == shmid and v.status & VMA_ANON_SHARED:
                size = max(size, v.pgoff + v.end - v.start)
    return size


def map_vma(rctx: "RestoreContext", rt: "RestoreTask", v: Any, prot: int,
            obj_fd: int | None = None) -> None:
    """Map one shared anonymous VMA, whole object or part of it: create the
    object the first time, then map the same file at the VMA's offset.
    ``obj_fd``: the restorer's fd of the object when it exists already (a
    process also held it as a file: memfd.py made it)."""
    inj = rt.inj
    made: dict[int, int] = rctx.kind_state.setdefault(NAME, {})
    if obj_fd is not None:
        made[v.shmid] = obj_fd
    elif v.shmid not in made:
        made[v.shmid] = _create(rctx, rt, v)
    fd = rt.open_in_puppet(f"/proc/{os.getpid()}/fd/{made[v.shmid]}", os.O_RDWR)
    # (a hugetlbfs file is mapped with its own page size: no MAP_HUGETLB)
    extra = v.flags & C.MAP_NORESERVE
    inj.call("mmap", v.start, v.end - v.start, prot, C.MAP_SHARED | C.MAP_FIXED | extra,
             fd, v.pgoff)
    inj.call("close", fd)


def _create(rctx: "RestoreContext", rt: "RestoreTask", v: Any) -> int:
    """Make object ``v.shmid`` in the puppet, fill it, and return an fd of
    ours on it (the puppet's own mapping is gone again)."""
    inj = rt.inj
    size = _object_size(rctx, v.shmid)
    flags = C.MAP_SHARED | C.MAP_ANONYMOUS | (v.flags & (C.MAP_NORESERVE | HUGE_MASK))
    try:
        addr = inj.call("mmap", 0, size, C.PROT_READ | C.PROT_WRITE, flags, -1, 0)
    except InjectError as exc:
        what = (f"{hugetlb_page_size(v.flags) >> 10} KiB hugetlb " if v.flags & C.MAP_HUGETLB
                else "")
        raise RestoreError(f"{rt.image_name('mm')}: cannot make the {size}-byte {what}shared "
                           f"memory object {v.shmid}: {os.strerror(exc.errno or 0)}") from None
    try:
        _fill(rctx, rt, v.shmid, addr, size)
        fd = os.open(f"/proc/{rt.pid}/map_files/{addr:x}-{addr + size:x}",
                     os.O_RDWR | os.O_CLOEXEC)
        rctx.own_fds.append(fd)
    finally:
        inj.call("munmap", addr, size)
    return fd


def _fill(rctx: "RestoreContext", rt: "RestoreTask", shmid: int, addr: int, size: int) -> None:
    path = images.image_path(rctx.images_dir, "shmem-pagemap", shmid)
    if not os.path.exists(path):
        return  # CRIU writes none for an object with no data
    pm = images.read_image(rctx.images_dir, "shmem-pagemap", shmid)
    if not pm:
        raise RestoreError(f"{path}: empty pagemap (no head)")
    parent_pages.all_present(path, pm[1:])
    pages = images.image_path(rctx.images_dir, "pages", pm[0].pages_id)
    inj = rt.inj
    fd = rt.open_in_puppet(pages, os.O_RDONLY)
    offset = 0
    for e in pm[1:]:
        n = e.nr_pages * PAGE
        if e.vaddr + n > size:
            raise RestoreError(f"{path}: entry at offset {e.vaddr} runs past the object")
        got = inj.call("pread64", fd, addr + e.vaddr, n, offset)
        if got != n:
            raise RestoreError(f"{pages}: short read at offset {offset} ({got} of {n} bytes)")
        offset += n
    inj.call("close", fd)
