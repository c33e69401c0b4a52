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

import functools
import os
import stat as st_mod
from typing import TYPE_CHECKING, Any

from .. import images
from ..errors import RestoreError, Unsupported
from ..images.pb import mm_pb2, pagemap_pb2, vma_pb2
from ..kernel import consts as C
from ..kernel.structs import PrctlMmMap
from ..procfs.pagemap import vma_dump_runs
from ..procfs.parse import MapEntry, parse_maps
from . import memfd, regfile, shmem

if TYPE_CHECKING:
    from ..dump import DumpContext, DumpTask
    from ..restore import RestoreContext, RestoreTask

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
_PREAD_MAX = 1 << 30



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
    ctx.files.append(entry)
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
    ctx.files.append(regfile.describe_path(task, exe, exe_real, exe_id, os.O_RDONLY, pos=0,
                                           what="executable", ctx=ctx,
                                           source=f"/proc/{pid}/exe"))
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
            to_copy += vma_dump_runs(pid, m.start, m.end,
                                     anon_only=bool(status & VMA_FILE_PRIVATE))
    task.extra_images.append(("mm", pid, [mm]))
    _dump_pages(ctx, task, to_copy)


def finish(ctx: "DumpContext") -> None:
    """Objects shared between tasks are saved once every task was seen."""
    shmem.finish(ctx)


def _dump_pages(ctx: "DumpContext", task: "DumpTask", runs: list[tuple[int, int]]) -> None:
    ctx.pages_ids += 1
    pages_id = ctx.pages_ids
    head = pagemap_pb2.pagemap_head(pages_id=pages_id)
    entries: list[Any] = [head]
    path = images.image_path(ctx.images_dir, "pages", pages_id)
    ctx.created.append(path)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    mem = os.open(f"/proc/{task.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    buf = bytearray(_COPY_CHUNK)
    view = memoryview(buf)
    try:
        for addr, npages in runs:
            entries.append(pagemap_pb2.pagemap_entry(vaddr=addr, nr_pages=npages, flags=PE_PRESENT))
            left = npages * PAGE
            while left:
                n = min(left, _COPY_CHUNK)
                got = os.preadv(mem, [view[:n]], addr)
                if got != n:
                    raise Unsupported(f"pid {task.pid}: short read of memory at {addr:#x} "
                                      f"({got} of {n} bytes)")
                _write_all(out, view[:n])
                addr += n
                left -= n
    finally:
        os.close(mem)
        os.close(out)
    task.extra_images.append(("pagemap", task.pid, entries))


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


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

    # 4. Pages: the puppet reads them itself, one pread per run.
    offset = 0
    for e in rt.pagemap:
        size = e.nr_pages * PAGE
        if e.HasField("flags") and not e.flags & PE_PRESENT:
            continue  # lazy/parent pages have no bytes in this pages file
        done = 0
        while done < size:
            n = min(size - done, _PREAD_MAX)
            got = inj.call("pread64", pages_fd, e.vaddr + done, n, offset + done)
            if got != n:
                raise RestoreError(f"{rt.image_name('pages')}: short read at offset "
                                   f"{offset + done} ({got} of {n} bytes)")
            done += n
        offset += size
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


def file_is_regular(mode: int) -> bool:
    return st_mod.S_ISREG(mode)
