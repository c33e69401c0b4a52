"""Address space: mm fields, VMAs and page contents (mm-PID.img,
pagemap-PID.img, pages-N.img).

Dump: every VMA is recorded as CRIU does (vma_entry with status bits); of
private memory only pages that exist are saved -- present or swapped, and
in private file mappings only the process's own copies (pagemap bit 61
clear), since untouched file pages come back from the file itself.

Restore, inside the puppet: drop every mapping it inherited from the
restorer (except our trampoline page), install the mm fields and exe file
with one PR_SET_MM_MAP (the old executable must be unmapped first, or the
kernel answers EBUSY), map each VMA at its address writable, let the
puppet pread its own pages from pages-N.img (the bytes never pass through
Python), then set the final protections and put the vDSO back where it was.
"""
from __future__ import annotations

import bisect
import errno
import functools
import logging
import os
import resource
import stat as st_mod
import struct
from typing import TYPE_CHECKING, Any

from .. import elf, images, progress
from ..errors import RestoreError, Unsupported
from ..images.pb import mm_pb2, pagemap_pb2, vma_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.structs import PrctlMmMap
from ..procfs.pagemap import PagemapReader
from ..procfs.parse import MapEntry, parse_maps
from . import memfd, regfile, shmem

if TYPE_CHECKING:
    from ..dumper import DumpContext, DumpTask
    from ..restorer import RestoreContext, RestoreTask

log = logging.getLogger("procsnap.memory")

NAME = "memory"
PAGE = C.PAGE_SIZE

# vma_entry.status bits (criu/include/vma.h)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_VVAR = 1 << 12
VMA_AREA_MEMFD = 1 << 14

# pagemap_entry.flags
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2

SPECIAL = {"[vdso]": VMA_AREA_VDSO, "[vvar]": VMA_AREA_VVAR,
           "[vvar_vclock]": VMA_AREA_VVAR, "[vsyscall]": VMA_AREA_VSYSCALL}

_COPY_CHUNK = 8 << 20
# One injected preadv/pwritev moves at most this much: big enough that the
# ~25 us per call is noise (0.4 ms per GiB), small enough that the progress
# bar moves and a short write is retried in small pieces.
_BATCH_BYTES = 64 << 20
# iovecs per call: the kernel's UIO_MAXIOV; 16 KiB of the scratch area.
_IOV_MAX = 1024



# ---------------------------------------------------------------- dump ----

def _vma_status(task: "DumpTask", m: MapEntry) -> tuple[int, int]:
    """(status, mmap flags) of one VMA, refusing what we cannot restore."""
    if m.path in SPECIAL:
        status = SPECIAL[m.path]
        if m.path != "[vsyscall]":
            status |= VMA_AREA_REGULAR
        return status, C.MAP_PRIVATE | C.MAP_ANONYMOUS
    is_file = m.path.startswith("/") and m.ino != 0
    if shmem.is_anon_shared(m):
        return VMA_AREA_REGULAR | VMA_ANON_SHARED, C.MAP_SHARED | C.MAP_ANONYMOUS
    if memfd.is_memfd_mapping(m.path):
        if m.shared:
            return VMA_AREA_REGULAR | VMA_AREA_MEMFD | VMA_FILE_SHARED, C.MAP_SHARED
        return VMA_AREA_REGULAR | VMA_AREA_MEMFD | VMA_FILE_PRIVATE, C.MAP_PRIVATE
    if m.shared:
        if not is_file or m.path.startswith("/SYSV"):
            # System V shm segments (shmat) and anything else shared
            # without a file we could reopen.
            raise Unsupported(f"pid {task.pid}: shared memory at {m.start:#x}-{m.end:#x} "
                              f"({m.path or 'anonymous'}) is not supported yet")
        return VMA_AREA_REGULAR | VMA_FILE_SHARED, C.MAP_SHARED
    if is_file:
        return VMA_AREA_REGULAR | VMA_FILE_PRIVATE, C.MAP_PRIVATE
    status = VMA_AREA_REGULAR | VMA_ANON_PRIVATE
    flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS
    if m.path == "[stack]":
        status |= VMA_AREA_STACK
        flags |= C.MAP_GROWSDOWN
    elif m.path == "[heap]":
        status |= VMA_AREA_HEAP
    elif m.path and not m.path.startswith("[anon:"):
        # (an [anon:NAME] label is not kept: CRIU's vma_entry has no field)
        raise Unsupported(f"pid {task.pid}: mapping at {m.start:#x}-{m.end:#x} of "
                          f"{m.path!r} (dev {m.dev_major}:{m.dev_minor}) is not supported")
    return status, flags


def _with_build_id(entry: Any, source: str) -> Any:
    """Record the ELF build-id of a mapped file (as CRIU does), so a restore
    can refuse a program or library replaced by another build since."""
    if not st_mod.S_ISREG(entry.reg.mode):
        return entry
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # A file only the target may open (per-caller FUSE): it keeps the
        # size and mode checks; say so rather than skip it in silence.
        log.debug("no build-id for %s: cannot open %s", entry.reg.name, source)
        return entry
    try:
        bid = elf.build_id(fd)
    finally:
        os.close(fd)
    if bid:
        entry.reg.build_id.extend(bid)
    return entry


def check_build_id(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, fd: int) -> None:
    """Refuse a mapped ELF file whose build-id changed since the dump."""
    if not entry.reg.build_id or rctx.opts.skip_file_check:
        return
    want = bytes(entry.reg.build_id)
    src = os.open(f"/proc/{rt.pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        got = elf.build_id(src)
    finally:
        os.close(src)
    if got != want:
        raise RestoreError(f"{regfile.restore_path(rctx, entry)}: build-id changed since the dump "
                           f"({want.hex()} -> {got.hex() if got else 'none'}); "
                           "use --skip-file-check to restore anyway")


def _mapped_file_id(ctx: "DumpContext", task: "DumpTask", m: MapEntry,
                    cache: dict[tuple[int, int], int]) -> int:
    """files.img id of the file behind a mapping, by identity, not by name."""
    # map_files/ gives the mapped file itself even when its name lies.
    link = f"/proc/{task.pid}/map_files/{m.start:x}-{m.end:x}"
    try:
        real = regfile.mapping_stat(task, link)
    except OSError as exc:
        raise Unsupported(f"pid {task.pid}: cannot look at the file mapped at "
                          f"{m.start:#x}-{m.end:#x} ({m.path}): {exc.strerror}") from None
    key = (real.st_dev, real.st_ino)
    if key in cache:
        return cache[key]
    fid = ctx.new_file_id()
    flags = os.O_RDWR if (m.shared and "w" in m.perms) else os.O_RDONLY
    entry = regfile.describe_path(task, m.path, real, fid, flags, pos=0,
                                  what=f"mapping {m.start:#x}-{m.end:#x}", ctx=ctx, source=link)
    ctx.files.append(_with_build_id(entry, link))
    cache[key] = fid
    return fid


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    inj = task.need_inj()
    stat = task.stat
    assert stat is not None
    pid = task.pid
    brk = inj.call("brk", 0)
    dumpable = inj.call("prctl", C.PR_GET_DUMPABLE, 0, 0, 0, 0)
    thp_disabled = inj.call("prctl", C.PR_GET_THP_DISABLE, 0, 0, 0, 0)

    cache: dict[tuple[int, int], int] = {}
    exe = task.proc.exe()
    exe_real = regfile.mapping_stat(task, f"/proc/{pid}/exe")
    exe_id = ctx.new_file_id()
    ctx.files.append(_with_build_id(regfile.describe_path(
        task, exe, exe_real, exe_id, os.O_RDONLY, pos=0, what="executable", ctx=ctx,
        source=f"/proc/{pid}/exe"), f"/proc/{pid}/exe"))
    cache[(exe_real.st_dev, exe_real.st_ino)] = exe_id

    mm = mm_pb2.mm_entry(
        mm_start_code=stat.startcode, mm_end_code=stat.endcode,
        mm_start_data=stat.start_data, mm_end_data=stat.end_data,
        mm_start_stack=stat.startstack, mm_start_brk=stat.start_brk, mm_brk=brk,
        mm_arg_start=stat.arg_start, mm_arg_end=stat.arg_end,
        mm_env_start=stat.env_start, mm_env_end=stat.env_end,
        exe_file_id=exe_id, mm_saved_auxv=task.proc.auxv(),
        dumpable=dumpable, thp_disabled=bool(thp_disabled))

    to_copy: list[tuple[int, int]] = []
    pagemap = PagemapReader(pid)  # one open for the whole address space
    for m in task.maps:
        status, flags = _vma_status(task, m)
        vma = vma_pb2.vma_entry(start=m.start, end=m.end, pgoff=m.pgoff, shmid=0,
                                prot=m.prot, flags=flags, status=status, fd=-1)
        if status & VMA_ANON_SHARED:
            vma.shmid = shmem.dump_vma(ctx, task, m)
        if status & VMA_AREA_MEMFD:
            vma.shmid = memfd.mapping_file_id(ctx, task, m, bool(status & VMA_FILE_SHARED))
            vma.fdflags = os.O_RDWR if (m.shared and "w" in m.perms) else os.O_RDONLY
        elif status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
            vma.shmid = _mapped_file_id(ctx, task, m, cache)
            vma.fdflags = os.O_RDWR if (m.shared and "w" in m.perms) else os.O_RDONLY
        mm.vmas.append(vma)
        if status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE) and not status & (VMA_AREA_VDSO | VMA_AREA_VVAR):
            to_copy += pagemap.runs(m.start, m.end, anon_only=bool(status & VMA_FILE_PRIVATE))
    pagemap.close()
    task.extra_images.append(("mm", pid, [mm]))
    _dump_pages(ctx, task, to_copy)


def finish(ctx: "DumpContext") -> None:
    """Objects shared between tasks are saved once every task was seen."""
    shmem.finish(ctx)


def _dump_pages(ctx: "DumpContext", task: "DumpTask", runs: list[tuple[int, int]]) -> None:
    """Write the pages of ``runs`` to pages-N.img, in order, and their pagemap.

    The frozen target writes its own pages: it opens the image and we
    inject one pwritev per batch of runs (up to _IOV_MAX runs or
    _BATCH_BYTES), so the bytes go from its memory to the page cache in
    the kernel and never pass through Python (no copy, no buffer in our
    RSS).  Pages it cannot read itself (PROT_NONE, write-only) and targets
    that cannot open the image (other credentials, fd limit, a file size
    limit) are copied by us through /proc/PID/mem, which reads with
    FOLL_FORCE.
    """
    ctx.pages_ids += 1
    pages_id = ctx.pages_ids
    entries: list[Any] = [pagemap_pb2.pagemap_head(pages_id=pages_id)]
    entries += [pagemap_pb2.pagemap_entry(vaddr=addr, nr_pages=n, flags=PE_PRESENT)
                for addr, n in runs]
    path = images.image_path(ctx.images_dir, "pages", pages_id)
    ctx.created.append(path)
    out = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        total = sum(n for _, n in runs) * PAGE
        if total:
            # Reserve the blocks up front: one extent, and ENOSPC now
            # rather than half-way through the target's writes.
            try:
                os.posix_fallocate(out, 0, total)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        copier = _PageCopier(task, path, out, total)
        try:
            copier.copy(runs)
        finally:
            copier.close()
    finally:
        os.close(out)
    task.extra_images.append(("pagemap", task.pid, entries))


class _PageCopier:
    """Moves runs of pages of a frozen task into the open pages image."""

    def __init__(self, task: "DumpTask", path: str, out: int, total: int) -> None:
        self.task = task
        self.inj = task.need_inj()
        self.out = out
        self.offset = 0           # file offset of the next byte to write
        self.batch: list[int] = []  # flat iovec (base, len, base, len, ...)
        self.batch_off = 0
        self.batch_len = 0
        self.bar = progress.Progress("dump", total)
        self._mem = -1
        self._buf: memoryview | None = None
        # Sorted bounds of the mappings the task cannot read itself.
        self._unreadable = sorted((m.start, m.end) for m in task.maps if "r" not in m.perms)
        self._unreadable_starts = [a for a, _ in self._unreadable]
        self.tfd = self._open_in_target(path) if total else -1

    def _open_in_target(self, path: str) -> int:
        """The image opened inside the target, or -1 if it cannot write it."""
        pid = self.task.pid
        try:
            # A file size limit would fail the write with EFBIG and queue a
            # SIGXFSZ for the target, which we must not leave behind.
            if resource.prlimit(pid, resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
                return -1
        except OSError:
            return -1
        inj = self.inj
        try:
            tfd = inj.call("openat", C.AT_FDCWD & (2**64 - 1), inj.put_str(path),
                           os.O_WRONLY | os.O_CLOEXEC | C.O_LARGEFILE, 0)
        except InjectError:
            return -1  # other credentials, no fd left, another mount namespace...
        finally:
            inj.reset_scratch()
        # The same path may name another file in the target's mount
        # namespace or root: only our own file will do.
        try:
            theirs = os.stat(f"/proc/{pid}/fd/{tfd}")
            ours = os.fstat(self.out)
            same = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
        except OSError:
            same = False
        if not same:
            inj.call("close", tfd, check=False)
            return -1
        return tfd

    def copy(self, runs: list[tuple[int, int]]) -> None:
        for addr, npages in runs:
            size = npages * PAGE
            if self.tfd < 0 or self._is_unreadable(addr):
                self._flush()
                self._copy_ourselves(addr, size, self.offset)
                self.offset += size
                self.batch_off = self.offset
                self.bar.update(self.offset)
                continue
            while size:
                n = min(size, _BATCH_BYTES - self.batch_len)
                self.batch += (addr, n)
                self.batch_len += n
                self.offset += n
                addr += n
                size -= n
                if self.batch_len >= _BATCH_BYTES or len(self.batch) >= 2 * _IOV_MAX:
                    self._flush()
        self._flush()
        self.bar.close()

    def _is_unreadable(self, addr: int) -> bool:
        i = bisect.bisect_right(self._unreadable_starts, addr) - 1
        return i >= 0 and addr < self._unreadable[i][1]

    def _flush(self) -> None:
        if not self.batch:
            return
        inj = self.inj
        n_iov = len(self.batch) // 2
        iov = inj.put(struct.pack(f"<{len(self.batch)}Q", *self.batch), align=8)
        try:
            done = inj.call("pwritev", self.tfd, iov, n_iov, self.batch_off, 0, check=False)
        finally:
            inj.reset_scratch()
        if done < 0:
            done = 0
        if done < self.batch_len:
            # A short write (a page that faulted after all, the disk
            # filling up): finish the batch ourselves, which reports why
            # if it fails too.
            self._copy_rest(done)
        self.batch = []
        self.batch_off += self.batch_len
        self.batch_len = 0
        self.bar.update(self.batch_off)

    def _copy_rest(self, done: int) -> None:
        off = self.batch_off
        for i in range(0, len(self.batch), 2):
            base, length = self.batch[i], self.batch[i + 1]
            skip = min(done, length)
            done -= skip
            if skip < length:
                self._copy_ourselves(base + skip, length - skip, off + skip)
            off += length

    def _copy_ourselves(self, addr: int, size: int, offset: int) -> None:
        """Copy through /proc/PID/mem and a reusable buffer (FOLL_FORCE)."""
        if self._buf is None:
            self._mem = os.open(f"/proc/{self.task.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            self._buf = memoryview(bytearray(_COPY_CHUNK))
        view = self._buf
        while size:
            n = min(size, _COPY_CHUNK)
            got = os.preadv(self._mem, [view[:n]], addr)
            if got != n:
                raise Unsupported(f"pid {self.task.pid}: short read of memory at {addr:#x} "
                                  f"({got} of {n} bytes)")
            data = view[:n]
            pos = offset
            while data:
                w = os.pwrite(self.out, data, pos)
                data = data[w:]
                pos += w
            addr += n
            offset += n
            size -= n

    def close(self) -> None:
        if self.tfd >= 0:
            self.inj.call("close", self.tfd, check=False)
            self.tfd = -1
        if self._mem >= 0:
            os.close(self._mem)
            self._mem = -1
        self.bar.close()


# ------------------------------------------------------------- restore ----

@functools.lru_cache(maxsize=1)
def _own_vdso() -> tuple[MapEntry, ...]:
    with open("/proc/self/maps") as f:
        return tuple(m for m in parse_maps(f.read())
                     if m.path in ("[vvar]", "[vvar_vclock]", "[vdso]"))


def check_vdso(rt: "RestoreTask") -> None:
    """The vDSO can only be moved, not rebuilt: sizes must match this kernel."""
    ours = _own_vdso()
    theirs = [v for v in rt.mm.vmas if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR)]
    a = [m.end - m.start for m in ours]
    b = [v.end - v.start for v in theirs]
    if a != b:
        raise RestoreError(f"{rt.image_name('mm')}: vDSO/vvar layout {b} differs from this "
                           f"kernel's {a}: images from another kernel are not supported")


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    inj = rt.inj
    mm = rt.mm
    check_vdso(rt)
    pages_fd = rt.open_in_puppet(images.image_path(rctx.images_dir, "pages", rt.pages_id),
                                 os.O_RDONLY)
    exe = rctx.file_entry(mm.exe_file_id)
    exe_fd = regfile.open_entry(rctx, rt, exe, os.O_RDONLY, check=False)
    check_build_id(rctx, rt, exe, exe_fd)

    # 1. Drop everything the puppet inherited, except the trampoline: two
    # calls whatever the layout (munmap of a range with holes is fine;
    # [vsyscall] lies above TASK_SIZE and stays).
    inj.call("munmap", 0, rt.tramp)
    inj.call("munmap", rt.tramp + rt.tramp_size, C.TASK_SIZE - rt.tramp - rt.tramp_size)

    # 2. mm fields and exe, now that the old executable is gone.
    auxv = list(mm.mm_saved_auxv)
    auxv_addr = inj.put(b"".join(x.to_bytes(8, "little") for x in auxv), align=8)
    mmap_struct = PrctlMmMap(
        start_code=mm.mm_start_code, end_code=mm.mm_end_code,
        start_data=mm.mm_start_data, end_data=mm.mm_end_data,
        start_brk=mm.mm_start_brk, brk=mm.mm_brk, start_stack=mm.mm_start_stack,
        arg_start=mm.mm_arg_start, arg_end=mm.mm_arg_end,
        env_start=mm.mm_env_start, env_end=mm.mm_env_end,
        auxv=auxv_addr, auxv_size=len(auxv) * 8, exe_fd=exe_fd)
    addr = inj.put(bytes(mmap_struct), align=8)
    inj.call("prctl", C.PR_SET_MM, C.PR_SET_MM_MAP, addr, len(bytes(mmap_struct)), 0)
    inj.call("close", exe_fd)
    inj.reset_scratch()

    # 3. Map every VMA writable (contents go in next), files by identity.
    file_fds: dict[tuple[int, int], int] = {}
    vvar_start = None
    for v in mm.vmas:
        if v.status & VMA_AREA_VSYSCALL:
            continue
        if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR):
            vvar_start = v.start if vvar_start is None else min(vvar_start, v.start)
            continue
        length = v.end - v.start
        prot = v.prot | C.PROT_READ | C.PROT_WRITE if not v.status & VMA_FILE_SHARED else v.prot
        if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
            mode = os.O_RDWR if v.fdflags & os.O_ACCMODE == os.O_RDWR else os.O_RDONLY
            key = (v.shmid, mode)
            if key not in file_fds:
                entry = rctx.file_entry(v.shmid)
                if v.status & VMA_AREA_MEMFD:
                    file_fds[key] = memfd.open_for_mapping(rctx, rt, entry, mode)
                else:
                    file_fds[key] = regfile.open_entry(rctx, rt, entry, mode)
                    check_build_id(rctx, rt, entry, file_fds[key])
            flags = (C.MAP_SHARED if v.status & VMA_FILE_SHARED else C.MAP_PRIVATE) | C.MAP_FIXED
            inj.call("mmap", v.start, length, prot, flags, file_fds[key], v.pgoff)
        elif v.status & VMA_ANON_SHARED:
            shmem.map_vma(rctx, rt, v, prot)
        else:
            flags = C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED
            if v.status & VMA_AREA_STACK:
                flags |= C.MAP_GROWSDOWN
            inj.call("mmap", v.start, length, prot, flags, -1, 0)
    for fd in file_fds.values():
        inj.call("close", fd)

    # 4. Pages: the puppet reads them itself, straight from the image
    # into place -- one preadv per batch of runs (up to _IOV_MAX runs or
    # _BATCH_BYTES), so the bytes never pass through Python and a process
    # with 10,000 small runs costs ~10 injected calls, not 10,000.
    _fill_pages(rt, pages_fd)
    inj.call("close", pages_fd)

    # 5. Final protections, anon names.
    for v in mm.vmas:
        if v.status & (VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_FILE_SHARED):
            continue
        if v.prot != C.PROT_READ | C.PROT_WRITE:
            inj.call("mprotect", v.start, v.end - v.start, v.prot)

    # 6. vDSO and vvar go back together (the vDSO finds vvar at a fixed offset).
    if vvar_start is not None:
        inj.call("arch_prctl", C.ARCH_MAP_VDSO_64, vvar_start)


def _fill_pages(rt: "RestoreTask", pages_fd: int) -> None:
    inj = rt.inj
    present = [e for e in rt.pagemap if not e.HasField("flags") or e.flags & PE_PRESENT]
    total = sum(e.nr_pages for e in present) * PAGE
    bar = progress.Progress("restore", total)
    batch: list[int] = []  # flat iovec (base, len, ...)
    batch_off = 0
    batch_len = 0

    def flush() -> None:
        nonlocal batch, batch_off, batch_len
        if not batch:
            return
        iov = inj.put(struct.pack(f"<{len(batch)}Q", *batch), align=8)
        try:
            got = inj.call("preadv", pages_fd, iov, len(batch) // 2, batch_off, 0)
        finally:
            inj.reset_scratch()
        if got != batch_len:
            raise RestoreError(f"{rt.image_name('pages')}: short read at offset "
                               f"{batch_off} ({got} of {batch_len} bytes)")
        batch = []
        batch_off += batch_len
        batch_len = 0
        bar.update(batch_off)

    # (lazy/parent pages have no bytes in this pages file: skipped above,
    # and the file offset does not move for them)
    for e in present:
        addr = e.vaddr
        size = e.nr_pages * PAGE
        while size:
            n = min(size, _BATCH_BYTES - batch_len)
            batch += (addr, n)
            batch_len += n
            addr += n
            size -= n
            if batch_len >= _BATCH_BYTES or len(batch) >= 2 * _IOV_MAX:
                flush()
    flush()
    bar.close()
