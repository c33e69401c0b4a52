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
import ctypes
import errno
import functools
import os
import resource
import stat as st_mod
import struct
from ..record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Iterable

from .. import logs
from .. import elf, images, pagexfer, progress
from ..errors import ImageError, RestoreError, Unsupported
from ..images import parent as parent_pages
from ..images.pb import mm_pb2, pagemap_pb2, vma_pb2
from ..inject import InjectError, Read
from ..kernel import consts as C
from ..kernel.libc import libc, syscall
from ..kernel.structs import Iovec, PrctlMmMap
from ..procfs.pagemap import PM_FILE, PM_PRESENT, PagemapReader
from ..procfs.parse import MapEntry, parse_maps_named
from . import aio, memfd, regfile, shmem, sysvipc

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

log = logs.Logger("procsnap.memory")

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
VMA_AREA_SOCKET = 1 << 11   # a packet socket's rings mapped (CRIU's number)
VMA_AREA_VVAR = 1 << 12
VMA_AREA_AIORING = 1 << 13
VMA_AREA_MEMFD = 1 << 14
# Not a VMA: a range of MADV_GUARD_INSTALL guard pages, after all the real
# VMAs in mm.vmas (criu/include/image.h).
VMA_AREA_GUARD = 1 << 16

# pagemap_entry.flags
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2

SPECIAL = {"[vdso]": VMA_AREA_VDSO, "[vvar]": VMA_AREA_VVAR,
           "[vvar_vclock]": VMA_AREA_VVAR, "[vsyscall]": VMA_AREA_VSYSCALL}

# One write into a pages image (the target's injected pwritev, or ours)
# moves less than 2 MiB, for the page cache's sake: ext4 gives a buffered
# write of 2 MiB or more PMD-size (2 MiB) folios, and on a guest whose free
# memory is reported to the host (virtio-balloon free page reporting, here
# of every free block of order >= 9) a fresh 2 MiB block is cold: each of
# its pages costs a host fault on first touch.  Measured here, 1 GiB into a
# new file after the same warm-up: 1 MiB writes 0.27-0.86 s, 64 MiB writes
# 2.9-7.4 s (FileHugePages +1028 MiB vs +8 MiB).  Smaller folios come from
# the free lists' small blocks, which are never reported.  criu writes
# through a pipe of at most 1 MiB (fs.pipe-max-size without
# CAP_SYS_RESOURCE), so it never pays this.  One page under 2 MiB, not
# 1 MiB: half the injected calls (~0.2 ms each, all told), and no write
# ever spans a whole aligned 2 MiB (dump of 1 GiB, memory stage: 338-379
# ms against 431-506 ms with 1 MiB).
_WRITE_BYTES = (2 << 20) - PAGE
_COPY_CHUNK = _WRITE_BYTES
# --sync: write-back is started for this much written at a time.
_WRITEBACK_BYTES = 64 << 20
# One injected preadv moves at most this much: big enough that the ~25 us
# per call is noise (0.4 ms per GiB), small enough that the progress bar
# moves.  (Reads fill the task's anonymous memory, not the page cache.)
_BATCH_BYTES = 64 << 20
# iovecs per call: the kernel's UIO_MAXIOV; 16 KiB of the scratch area.
_IOV_MAX = 1024
# Inherited pages are compared with the parent's this much at a time.
_CMP_CHUNK = 1 << 20



# ------------------------------------------------------- smaps VmFlags ----
#
# Every mnemonic /proc/PID/smaps prints in "VmFlags:" (show_smap_vma_flags()
# in fs/proc/task_mmu.c, Linux 6.18, and older ones), and what a dump does
# with it: SAVED (restored exactly; the reason says how), REFUSED (the dump
# fails naming the pid and the mapping), or IRRELEVANT (nothing a program
# can observe is lost; the reason says why).  A mnemonic that is not here
# -- a newer kernel's -- is refused, never skipped.
SAVED, REFUSED, IRRELEVANT = "saved", "refused", "irrelevant"

VMFLAGS: dict[str, tuple[str, str]] = {
    "rd": (SAVED, "PROT_READ: vma_entry.prot"),
    "wr": (SAVED, "PROT_WRITE: vma_entry.prot"),
    "ex": (SAVED, "PROT_EXEC: vma_entry.prot"),
    "sh": (SAVED, "VM_SHARED: MAP_SHARED of a file opened for writing (vma_entry.fdflags)"),
    "mr": (SAVED, "VM_MAYREAD: follows from the mapping type and the file's access mode"),
    "mw": (SAVED, "VM_MAYWRITE: follows from the mapping type and the file's access mode "
                  "(vma_entry.fdflags, read from the map_files link mode)"),
    "me": (SAVED, "VM_MAYEXEC: follows from the mapping type and the mount (noexec)"),
    "ms": (SAVED, "VM_MAYSHARE: MAP_SHARED (vma_entry.status)"),
    "gd": (SAVED, "VM_GROWSDOWN: MAP_GROWSDOWN in vma_entry.flags"),
    "lo": (SAVED, "VM_LOCKED: MAP_LOCKED in vma_entry.flags; mlock() after the pages are in"),
    "sr": (SAVED, "MADV_SEQUENTIAL in vma_entry.madv"),
    "rr": (SAVED, "MADV_RANDOM in vma_entry.madv"),
    "dc": (SAVED, "MADV_DONTFORK in vma_entry.madv"),
    "wf": (SAVED, "MADV_WIPEONFORK in vma_entry.madv"),
    "dd": (SAVED, "MADV_DONTDUMP in vma_entry.madv"),
    "hg": (SAVED, "MADV_HUGEPAGE in vma_entry.madv"),
    "nh": (SAVED, "MADV_NOHUGEPAGE in vma_entry.madv"),
    "mg": (SAVED, "MADV_MERGEABLE in vma_entry.madv"),
    "nr": (SAVED, "VM_NORESERVE: MAP_NORESERVE in vma_entry.flags"),
    "dp": (SAVED, "VM_DROPPABLE: MAP_DROPPABLE in vma_entry.flags; its pages are not "
                  "saved, as the kernel may drop them at any time (a dropped page reads 0)"),
    "ac": (SAVED, "VM_ACCOUNT: a private mapping is made writable at restore only if it "
                  "has saved pages (it was written, so it was writable and accounted), "
                  "so RELRO and read-only data stay apart as they were"),
    "sd": (IRRELEVANT, "soft-dirty is write tracking for incremental dumps "
                       "(clear_refs resets it); a new mapping starts all dirty"),
    "dw": (IRRELEVANT, "VM_DENYWRITE, only before Linux 5.15: set by the kernel on "
                       "executable file mappings, ignored in mmap flags"),
    "pf": (REFUSED, "VM_PFNMAP: a device or driver mapping (raw page frames)"),
    "io": (REFUSED, "VM_IO: a memory-mapped I/O area of a device"),
    "mm": (REFUSED, "VM_MIXEDMAP: a driver mapping (except a packet socket's rings, which "
                    "set it on every mapping: mapped again from the restored socket)"),
    "de": (REFUSED, "VM_DONTEXPAND: a driver or kernel object mapping (aio, perf, io_uring, ...)"),
    "ar": (REFUSED, "VM_ARCH_1 (VM_PAT on x86): a driver mapping with page attributes"),
    "ht": (SAVED, "VM_HUGETLB of anonymous memory (MAP_HUGETLB, private or shared) and of "
                  "a MFD_HUGETLB memfd: MAP_HUGETLB and the page size in vma_entry.flags; "
                  "a hugetlbfs file mapping or a hugetlb System V segment is refused"),
    "sf": (REFUSED, "MAP_SYNC (DAX) mappings are not supported"),
    "lf": (REFUSED, "lock-on-fault (mlock2 MLOCK_ONFAULT / mlockall MCL_ONFAULT) has no "
                    "field in the image"),
    "um": (REFUSED, "registered with userfaultfd (missing-page tracking)"),
    "uw": (REFUSED, "registered with userfaultfd (write-protect tracking)"),
    "ui": (REFUSED, "registered with userfaultfd (minor-fault tracking)"),
    "ss": (REFUSED, "a shadow stack (CET) is not supported"),
    "sl": (REFUSED, "sealed with mseal(); sealing has no field in the image"),
    "gu": (SAVED, "may hold guard regions (MADV_GUARD_INSTALL): each run of guard pages "
                  "(pagemap bit 58) is a VMA_AREA_GUARD entry after the VMAs, as CRIU writes "
                  "it, installed again at restore"),
    "nl": (REFUSED, "a non-linear mapping (remap_file_pages, before Linux 4.0)"),
    "bt": (REFUSED, "arm64 BTI guarded pages: another architecture"),
    "mt": (REFUSED, "arm64 MTE tagged memory: another architecture"),
}

# The kernel puts these on its own mappings ([vvar], [vdso], [vsyscall]),
# which a restore remakes with arch_prctl(ARCH_MAP_VDSO_64), flags included.
_SPECIAL_VMFLAGS = frozenset({"pf", "io", "de", "dd", "mm", "sl", "ar"})

# VmFlags kept in vma_entry.flags and vma_entry.madv (as CRIU's
# __parse_vmflags() in criu/proc_parse.c does).
MAP_BY_VMFLAG = {"gd": C.MAP_GROWSDOWN, "lo": C.MAP_LOCKED, "nr": C.MAP_NORESERVE,
                  "dp": C.MAP_DROPPABLE}
MADV_BY_VMFLAG = {"sr": C.MADV_SEQUENTIAL, "rr": C.MADV_RANDOM, "dc": C.MADV_DONTFORK,
                   "wf": C.MADV_WIPEONFORK, "dd": C.MADV_DONTDUMP, "hg": C.MADV_HUGEPAGE,
                   "nh": C.MADV_NOHUGEPAGE, "mg": C.MADV_MERGEABLE}
# The order madvise() applies them at restore; each is idempotent.
_MADV_ORDER = sorted(MADV_BY_VMFLAG.values())


def _where(task: "DumpTask", m: MapEntry) -> str:
    return f"pid {task.pid}: mapping {m.start:#x}-{m.end:#x} ({m.path or 'anonymous'})"


def _vmflags(task: "DumpTask", m: MapEntry) -> tuple[int, int]:
    """(mmap flags, madvise bitmap) the VmFlags of ``m`` ask for, refusing
    what cannot be restored exactly (see VMFLAGS)."""
    special = m.path in SPECIAL
    hugetlb = shmem.is_anon_hugetlb(m) or ("ht" in m.vmflags and memfd.is_memfd_mapping(m.path))
    if "ht" in m.vmflags and not hugetlb:
        raise Unsupported(f"{_where(task, m)}: VmFlags 'ht': hugetlb pages of a file (a hugetlbfs mount "
                          "or a System V segment) are not supported")
    flags = madv = 0
    for f in m.vmflags:
        if special and f in _SPECIAL_VMFLAGS:
            continue
        if (hugetlb or aio.is_ring(m)) and f == "de":
            continue  # hugetlbfs and aio set VM_DONTEXPAND on every mapping they make
        if m.path.startswith("socket:[") and f == "mm":
            continue  # packet_mmap() inserts the ring's pages: VM_MIXEDMAP every time
        kind, why = VMFLAGS.get(f, (REFUSED, "unknown to procsnap (a newer kernel?)"))
        if kind == REFUSED:
            raise Unsupported(f"{_where(task, m)}: VmFlags {f!r}: {why}")
        if special:
            continue  # remade by the kernel as it was
        flags |= MAP_BY_VMFLAG.get(f, 0)
        if f in MADV_BY_VMFLAG:
            madv |= 1 << MADV_BY_VMFLAG[f]
    if m.pkey:
        raise Unsupported(f"{_where(task, m)}: protection key {m.pkey} (pkey_mprotect) "
                          "is not supported")
    return flags, madv


def _map_files_mode(task: "DumpTask", m: MapEntry) -> int:
    """O_RDONLY or O_RDWR: the access mode of the file behind the mapping.

    The map_files link's own mode is the f_mode of vm_file (0400 read,
    0600 read-write: proc_map_files_get_link), as CRIU reads it.  A file
    opened O_RDWR and mapped read-only (shared or private) must come back
    opened O_RDWR, or VM_MAYWRITE is lost and a later mprotect(PROT_WRITE)
    of a shared mapping fails."""
    link = f"/proc/{task.pid}/map_files/{m.start:x}-{m.end:x}"
    try:
        mode = os.lstat(link).st_mode
    except OSError:
        return os.O_RDWR if (m.shared and "w" in m.perms) else os.O_RDONLY
    if m.shared and "mw" not in m.vmflags:
        # A shared mapping of a file opened read-write without VM_MAYWRITE:
        # a memfd write-sealed before it was mapped (the kernel clears the
        # flag).  Reopened read-only it gets no VM_MAYWRITE either, and the
        # seal can be applied again (F_SEAL_WRITE fails with EBUSY while a
        # writable shared mapping exists); only the link mode differs.
        return os.O_RDONLY
    return os.O_RDWR if mode & 0o200 else os.O_RDONLY


# ---------------------------------------------------------------- dump ----

def _vma_status(task: "DumpTask", m: MapEntry) -> tuple[int, int]:
    """(status, mmap flags) of one VMA, refusing what we cannot restore."""
    if m.path in SPECIAL:
        # VMA_ANON_PRIVATE as criu writes them: criu restore reads the
        # dumped vDSO's ELF from the pages of that VMA (below).
        status = SPECIAL[m.path] | VMA_ANON_PRIVATE
        if m.path != "[vsyscall]":
            status |= VMA_AREA_REGULAR
        return status, C.MAP_PRIVATE | C.MAP_ANONYMOUS
    is_file = m.path.startswith("/") and m.ino != 0
    if aio.is_ring(m):
        return VMA_AREA_AIORING, C.MAP_SHARED  # as CRIU: no VMA_AREA_REGULAR
    if m.path.startswith("socket:["):
        # a packet socket's rings (packetsk checks the rest): mapped again
        # from the restored socket, whose rings are made before memory
        return (VMA_AREA_REGULAR | VMA_AREA_SOCKET,
                C.MAP_SHARED if m.shared else C.MAP_PRIVATE)
    if shmem.is_anon_hugetlb(m) and not m.shared:
        # MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB (the page size is added by dump())
        return VMA_AREA_REGULAR | VMA_ANON_PRIVATE, C.MAP_PRIVATE | C.MAP_ANONYMOUS
    if shmem.is_anon_shared(m):
        return VMA_AREA_REGULAR | VMA_ANON_SHARED, C.MAP_SHARED | C.MAP_ANONYMOUS
    if not m.shared and m.path == "/dev/zero (deleted)" and (m.dev_major, m.dev_minor) == (0, 1):
        # MAP_PRIVATE of shared anonymous memory opened through map_files
        # (zdtm shmemfd-priv): a private mapping of the memfd named
        # /dev/zero that stands for the object (as CRIU dumps it), so the
        # pages it has not written keep following the object
        return VMA_AREA_REGULAR | VMA_AREA_MEMFD | VMA_FILE_PRIVATE, C.MAP_PRIVATE
    if memfd.is_memfd_mapping(m.path):
        if m.shared:
            return VMA_AREA_REGULAR | VMA_AREA_MEMFD | VMA_FILE_SHARED, C.MAP_SHARED
        return VMA_AREA_REGULAR | VMA_AREA_MEMFD | VMA_FILE_PRIVATE, C.MAP_PRIVATE
    if sysvipc.is_sysv(m):
        # a System V shm attachment (shmat): sysvipc saves the segment
        return VMA_AREA_REGULAR | sysvipc.VMA_AREA_SYSVIPC, C.MAP_SHARED
    if m.shared:
        if not is_file or m.path.startswith("/SYSV"):
            # anything else shared without a file we could reopen
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


# criu's AT_VECTOR_SIZE on x86_64: criu restore refuses an mm image with
# more auxv words ("Image corrupted on pid N").
CRIU_AT_VECTOR_SIZE = 44


def criu_auxv(words: list[int]) -> list[int]:
    """The auxv words to save: without the closing AT_NULL pair.

    /proc/PID/auxv ends with AT_NULL, which takes 46 words on kernel 6.18
    and criu restore allows 44.  Nothing is lost: PR_SET_MM_MAP zero-fills
    the kernel's saved_auxv past what it is given (zero pairs are AT_NULL),
    and criu itself stores the first 44 words read.  A vector still longer
    than criu's limit is kept whole (procsnap restores it; criu cannot).
    """
    if len(words) >= 2 and words[-2:] == [0, 0]:
        return words[:-2]
    return words


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
        entry.reg.build_id.extend(elf.to_words(bid))
    return entry


def check_build_id(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, fd: int) -> None:
    """Refuse a mapped ELF file whose build-id changed since the dump."""
    if not entry.reg.build_id or rctx.opts.skip_file_check:
        return
    want = list(entry.reg.build_id)
    src = os.open(f"/proc/{rt.pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        got = elf.build_id(src)
    finally:
        os.close(src)
    if not elf.matches(want, got):
        raise RestoreError(f"{regfile.restore_path(rctx, entry)}: build-id changed since the dump "
                           f"({elf.from_words(want).hex()} -> {got.hex() if got else 'none'}); "
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
    flags = _map_files_mode(task, m)
    entry = regfile.describe_path(task, m.path, real, fid, flags, pos=0,
                                  what=f"mapping {m.start:#x}-{m.end:#x}", ctx=ctx, source=link)
    ctx.files.append(_with_build_id(entry, link))
    cache[key] = fid
    return fid


# Asked of the leader by the driver, in its one batch (dumper._ask_threads)
BRK = Read("brk", 0, leader_only=True)
DUMPABLE = Read("prctl", C.PR_GET_DUMPABLE, 0, 0, 0, 0, leader_only=True)
THP_DISABLED = Read("prctl", C.PR_GET_THP_DISABLE, 0, 0, 0, 0, leader_only=True)
THREAD_READS = [BRK, DUMPABLE, THP_DISABLED]


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    inj = task.need_inj()
    stat = task.stat
    assert stat is not None
    pid = task.pid
    leader = task.threads[0]
    brk = leader.read(BRK).result
    dumpable = leader.read(DUMPABLE).result
    thp_disabled = leader.read(THP_DISABLED).result

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
        exe_file_id=exe_id, mm_saved_auxv=criu_auxv(task.proc.auxv()),
        dumpable=dumpable, thp_disabled=bool(thp_disabled))

    _check_vdso_dump(task)
    to_copy: list[tuple[int, int]] = []
    guards: list[tuple[int, int]] = []
    pagemap = PagemapReader(pid)  # one open for the whole address space
    for m in task.maps:
        status, flags = _vma_status(task, m)
        more, madv = _vmflags(task, m)
        if more & C.MAP_DROPPABLE:
            flags &= ~C.MAP_PRIVATE  # a map type of its own (as CRIU writes it)
        vma = vma_pb2.vma_entry(start=m.start, end=m.end, pgoff=m.pgoff, shmid=0,
                                prot=m.prot, flags=flags | more, status=status, fd=-1)
        if madv:
            vma.madv = madv
        if m.path == "[vvar_vclock]" and mm.vmas and mm.vmas[-1].status & VMA_AREA_VVAR \
                and mm.vmas[-1].end == m.start:
            # one VVAR VMA for [vvar] and [vvar_vclock], as criu writes it
            # (criu's restore sizes its vvar from it); check_vdso() and
            # the restore check merge them the same way
            mm.vmas[-1].end = m.end
            continue
        if status & VMA_ANON_SHARED:
            vma.shmid, huge = shmem.dump_vma(ctx, task, m)
            if huge:
                vma.flags |= shmem.hugetlb_flags(huge)
        elif shmem.is_anon_hugetlb(m):
            vma.flags |= shmem.hugetlb_flags(shmem.mapping_stat(task, m).st_blksize)
        elif status & sysvipc.VMA_AREA_SYSVIPC:
            vma.shmid = m.ino  # the segment's id (newseg() sets i_ino to it)
            vma.fdflags = os.O_RDWR if "mw" in m.vmflags else os.O_RDONLY  # SHM_RDONLY or not
        elif status & VMA_AREA_AIORING:
            mm.aios.append(aio.dump_ring(task, m))
            to_copy.append((m.start, (m.end - m.start) // PAGE))  # the whole ring
        elif status & VMA_AREA_SOCKET:
            vma.shmid = _socket_mapping(ctx, task, m, pagemap)
        if status & VMA_AREA_MEMFD:
            vma.shmid = memfd.mapping_file_id(ctx, task, m, bool(status & VMA_FILE_SHARED))
            vma.fdflags = _map_files_mode(task, m)
            if "ht" in m.vmflags:  # a MFD_HUGETLB memfd (as CRIU writes it)
                vma.flags |= shmem.hugetlb_flags(shmem.mapping_stat(task, m).st_blksize)
        elif status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
            vma.shmid = _mapped_file_id(ctx, task, m, cache)
            vma.fdflags = _map_files_mode(task, m)
        mm.vmas.append(vma)
        if "gu" in m.vmflags:
            guards += pagemap.guard_runs(m.start, m.end)
        if more & C.MAP_DROPPABLE:
            continue  # droppable pages are not kept (see VMFLAGS["dp"])
        # The vDSO's pages too (procsnap's restore maps the kernel's own;
        # criu's restore reads the dumped vDSO's symbols from them).
        if status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE) and \
                not status & (VMA_AREA_VVAR | VMA_AREA_VSYSCALL):
            to_copy += pagemap.runs(m.start, m.end, anon_only=bool(status & VMA_FILE_PRIVATE))
    pagemap.close()
    for addr, n in guards:
        mm.vmas.append(vma_pb2.vma_entry(start=addr, end=addr + n * PAGE, pgoff=0, shmid=0,
                                         prot=0, flags=0, status=VMA_AREA_GUARD, fd=-1))
    task.extra_images.append(("mm", pid, [mm]))
    to_copy, in_parent = split_by_parent(ctx, pid, to_copy)
    _dump_pages(ctx, task, to_copy, in_parent, lazy=lazy_ranges(mm, task))


def lazy_ranges(mm: Any, task: "DumpTask") -> list[tuple[int, int]]:
    """Where the dump marks pages PE_LAZY (with PE_PRESENT: the bytes are
    in the images all the same), as criu's dump does on every dump.  criu
    marks the pages of every VMA its vma_entry_can_be_lazy() accepts;
    procsnap marks those of the VMAs its own restore --lazy-pages leaves
    to the daemon (lazy_vmas(): a subset -- no stack, wipe-on-fork,
    PROT_NONE...), because criu's lazy-pages daemon pushes every marked
    page and loops on one the restorer filled or did not register: so the
    marks are what both restorers leave empty.  (criu's restore reads the
    unmarked pages of a lazy VMA before it registers it.)  mark_shared()
    takes the marks off memory a parent and child share.  Sorted (start, end)."""
    sps = []
    for th in task.threads:
        if th.regs is not None:
            sps.append(int(th.regs.rsp))
        elif th.core is not None:
            sps.append(int(th.core.thread_info.gpregs.sp))
    vmas = list(mm.vmas)
    return [(vmas[i].start, vmas[i].end) for i in sorted(_lazy_indexes(vmas, sps))]


def _mark_lazy(marked: list[tuple[int, int, int]],
               lazy: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(addr, n_pages, flags) entries, sorted, with PE_LAZY added to the
    PE_PRESENT pages inside ``lazy`` (sorted, disjoint (start, end)):
    an entry is split where a lazy range begins or ends, as criu's page
    pipe keeps lazy and other pages in separate entries."""
    if not lazy:
        return marked
    starts = [a for a, _ in lazy]
    out: list[tuple[int, int, int]] = []
    for addr, n, flags in marked:
        if not flags & PE_PRESENT:
            out.append((addr, n, flags))
            continue
        end = addr + n * PAGE
        i = max(bisect.bisect_right(starts, addr) - 1, 0)
        pos = addr
        while pos < end:
            while i < len(lazy) and lazy[i][1] <= pos:
                i += 1
            if i < len(lazy) and lazy[i][0] <= pos:
                stop, f = min(end, lazy[i][1]), flags | PE_LAZY
            else:
                stop, f = min(end, lazy[i][0]) if i < len(lazy) else end, flags
            out.append((pos, (stop - pos) // PAGE, f))
            pos = stop
    return out


# What a dump with a parent (--prev-images-dir) knows, set by the driver
# in ctx.kind_state[TRACK] (see resources/memtrack.py):
#   "parent": the parent images dir;
#   "written": {pid: (address, n_pages) runs written since the parent's
#              copy}, for the tasks whose tracking held (others: absent);
#   "registered": {pid: [(start, end)...]}: the VMAs it protected;
#   "names": {pid: the pid its images are named by} (inside a tree's own
#            pid namespace: dumper._image_names).
# pre_dump() notes in ctx.kind_state[TRACK + ".arm"] the VMAs to protect.
TRACK = "memtrack"


def split_by_parent(ctx: "DumpContext", pid: int, runs: list[tuple[int, int]]
                    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(runs to copy, runs left in the parent): a page stays in the parent
    when it was not written since the parent's copy and the parent chain
    holds it at this address."""
    track = ctx.kind_state.get(TRACK)
    if track is None or pid not in track["written"]:
        return runs, []
    # Only where our userfaultfd protects the VMA now is "not written" known
    # (PAGEMAP_SCAN skips some kinds of VMA: those are copied).
    held = parent_pages.intersect(parent_runs(track["parent"], track["names"].get(pid, pid)),
                      [(a, (b - a) // PAGE) for a, b in track["registered"].get(pid, ())])
    unwritten = _subtract(runs, track["written"][pid])
    in_parent = parent_pages.intersect(unwritten, held)
    return _subtract(runs, in_parent), in_parent


def parent_runs(parent: str, pid: int) -> list[tuple[int, int]]:
    """(address, n_pages) of the pages the images in ``parent`` (and its
    own parents) hold for task ``pid``, sorted."""
    try:
        entries = images.read_image(parent, "pagemap", pid)[1:]
    except (FileNotFoundError, ImageError):
        # a parent dumped through a page server: its pagemaps are on the
        # server; what it sent there is noted beside its local images
        return pagexfer.load_sent(parent, "pagemap", pid) or []
    out: list[tuple[int, int]] = []
    for e in sorted(entries, key=lambda e: e.vaddr):
        if e.HasField("flags") and not e.flags & (PE_PRESENT | PE_PARENT):
            continue  # lazy: not in the images
        if out and out[-1][0] + out[-1][1] * PAGE == e.vaddr:
            out[-1] = (out[-1][0], out[-1][1] + e.nr_pages)
        else:
            out.append((e.vaddr, e.nr_pages))
    return out


def _subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pages of sorted runs ``a`` not in sorted runs ``b``."""
    out: list[tuple[int, int]] = []
    j = 0
    for addr, n in a:
        pos, end = addr, addr + n * PAGE
        while j < len(b) and b[j][0] + b[j][1] * PAGE <= pos:
            j += 1
        k = j
        while pos < end and k < len(b) and b[k][0] < end:
            b0, b1 = b[k][0], b[k][0] + b[k][1] * PAGE
            if b0 > pos:
                out.append((pos, (b0 - pos) // PAGE))
            pos = max(pos, b1)
            k += 1
        if pos < end:
            out.append((pos, (end - pos) // PAGE))
    return out


def pre_dump(ctx: "DumpContext", task: "DumpTask") -> None:
    """A pre-dump's part: the task's private pages only (pagemap-PID.img,
    pages-N.img; the rest of the state is for the final dump), copied
    whole the first time and, with a parent, only those written since;
    the private anonymous VMAs are noted for the driver to protect."""
    pid = task.pid
    to_copy: list[tuple[int, int]] = []
    arm: list[tuple[int, int]] = []
    pagemap = PagemapReader(pid)
    try:
        for m in task.maps:
            status, _ = _vma_status(task, m)
            more, _ = _vmflags(task, m)
            if more & C.MAP_DROPPABLE or status & VMA_AREA_AIORING:
                continue  # not kept / small: the final dump copies them
            if status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE) and \
                    not status & (VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_VDSO):
                to_copy += pagemap.runs(m.start, m.end,
                                        anon_only=bool(status & VMA_FILE_PRIVATE))
                if not status & (VMA_FILE_PRIVATE | VMA_AREA_MEMFD):
                    arm.append((m.start, m.end))
    finally:
        pagemap.close()
    ctx.kind_state.setdefault(TRACK + ".arm", {})[pid] = arm
    to_copy, in_parent = split_by_parent(ctx, pid, to_copy)
    _dump_pages(ctx, task, to_copy, in_parent)


def _check_vdso_dump(task: "DumpTask") -> None:
    """The vDSO and vvar come back only all together, as this kernel lays
    them out (moved is fine), or not at all (a task that unmapped them,
    zdtm vdso02): a part of them cannot be remade."""
    theirs = [m.end - m.start for m in task.maps if m.path in _VDSO_NAMES]
    ours = [m.end - m.start for m in _own_vdso()]
    if theirs and theirs != ours:
        names = [m.path for m in task.maps if m.path in _VDSO_NAMES]
        raise Unsupported(f"pid {task.pid}: vDSO/vvar mappings {names} of sizes {theirs} "
                          f"differ from this kernel's {ours} (partly unmapped or resized); "
                          "they can only be restored whole")


def finish(ctx: "DumpContext") -> None:
    """Objects shared between tasks are saved once every task was seen."""
    _shared_anon_held_as_memfd(ctx)
    shmem.finish(ctx)


def _shared_anon_held_as_memfd(ctx: "DumpContext") -> None:
    """MAP_SHARED mappings of shared anonymous memory that a task of the
    tree also holds as a file (an fd opened through map_files, a private
    mapping of it: a memfd named /dev/zero) are written as CRIU writes
    every such mapping: shared mappings of that memfd
    (VMA_AREA_MEMFD|VMA_FILE_SHARED).  Then one object is one memfd for
    CRIU's restore too, which would otherwise make the shmem object and
    the memfd two objects; procsnap's restore maps both forms from the
    memfd (memfd.object_fd)."""
    ids = memfd.zero_inodes(ctx)
    if not ids:
        return
    for task in ctx.tasks:
        for kind, _, msgs in task.extra_images:
            if kind != "mm":
                continue
            for v in msgs[0].vmas:
                if v.status & VMA_ANON_SHARED and v.shmid in ids and not v.flags & C.MAP_HUGETLB:
                    v.status = (v.status & ~VMA_ANON_SHARED) | VMA_AREA_MEMFD | VMA_FILE_SHARED
                    v.flags &= ~C.MAP_ANONYMOUS
                    v.shmid = memfd.inode_file_id(ctx, v.shmid, os.O_RDWR)
                    v.fdflags = os.O_RDWR  # the kernel's shmem file of MAP_SHARED|MAP_ANONYMOUS


def _dump_pages(ctx: "DumpContext", task: "DumpTask", runs: list[tuple[int, int]],
                in_parent: list[tuple[int, int]] | None = None,
                lazy: list[tuple[int, int]] | None = None) -> None:
    """Write the pages of ``runs`` to pages-N.img, in order, and their pagemap.

    The frozen target writes its own pages: it opens the image and we
    inject one pwritev per batch of runs (up to _IOV_MAX runs or
    _WRITE_BYTES), so the bytes go from its memory to the page cache in
    the kernel and never pass through Python (no copy, no buffer in our
    RSS).  Pages it cannot read itself (PROT_NONE, write-only) and targets
    that cannot open the image (other credentials, fd limit, a file size
    limit) are copied by us through /proc/PID/mem, which reads with
    FOLL_FORCE.

    ``lazy`` (lazy_ranges()): where present pages are marked PE_LAZY too.
    """
    client = ctx.kind_state.get(PAGE_CLIENT)
    if client is not None:
        _send_pages(ctx, task, client, runs, in_parent or [], lazy or [])
        return
    ctx.pages_ids += 1
    pages_id = ctx.pages_ids
    entries: list[Any] = [pagemap_pb2.pagemap_head(pages_id=pages_id)]
    # Pages left in the parent (PE_PARENT, criu's in_parent) have no bytes
    # here; the entries stay in address order, as criu's readers want.
    marked = [(addr, n, PE_PRESENT) for addr, n in runs] + \
        [(addr, n, PE_PARENT) for addr, n in in_parent or ()]
    marked.sort()
    entries += [pagemap_pb2.pagemap_entry(vaddr=addr, nr_pages=n, flags=flags)
                for addr, n, flags in _mark_lazy(marked, lazy or [])]
    path = images.image_path(ctx.images_dir, "pages", pages_id)
    ctx.created.append(path)
    out = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        total = sum(n for _, n in runs) * PAGE
        # No posix_fallocate: on ext4 it makes unwritten extents, which
        # write-back must convert as it goes; 1 GiB --sync took 2.5-4.2 s
        # with it, 1.3-1.5 s without (criu dump; sync: 1.15-1.3 s).
        # Delayed allocation reserves the space at write(2) time, so a
        # full disk still fails the write, and the dump (_copy_rest).
        copier = _PageCopier(task, path, out, total, sync=ctx.opts.sync)
        try:
            copier.copy(runs)
        finally:
            copier.close()
    finally:
        os.close(out)
    task.extra_images.append(("pagemap", task.pid, entries))


# --page-server: the driver's pagexfer.PageClient, in ctx.kind_state[PAGE_CLIENT];
# ctx.kind_state[PAGE_NAMES]: outside pid -> the pid its images are named by.
PAGE_CLIENT = pagexfer.CLIENT_KEY
PAGE_NAMES = pagexfer.NAMES_KEY


def _send_pages(ctx: "DumpContext", task: "DumpTask", client: "pagexfer.PageClient",
                runs: list[tuple[int, int]], in_parent: list[tuple[int, int]],
                lazy: list[tuple[int, int]]) -> None:
    """The pagemap of ``task`` goes to the page server, which writes
    pagemap-PID.img and its pages-N.img (criu's open_page_server_xfer()):
    runs in address order, the bytes streamed as they are read, holes
    (PE_PARENT) only when the server's images have a parent image of it."""
    name = ctx.kind_state.get(PAGE_NAMES, {}).get(task.pid, task.pid)
    if not client.open("pagemap", name) and in_parent:
        # the server has no parent pagemap for it: its images must hold
        # every page, so the unwritten ones are copied too
        log.info("pid %d: the page server has no parent image: sending every page", task.pid)
        runs = parent_pages.merge(sorted(runs + in_parent))
        in_parent = []
    total = sum(n for _, n in runs) * PAGE
    bar = progress.Progress("dump", total)
    sent = 0

    def moved(n: int) -> None:
        bar.update(sent + n)

    present: list[tuple[int, int]] = []
    kind = PE_PRESENT   # of the pages in ``present``: PE_LAZY or not
    marked = _mark_lazy(sorted([(a, n, PE_PRESENT) for a, n in runs] +
                               [(a, n, PE_PARENT) for a, n in in_parent]), lazy)
    try:
        for addr, n, flags in marked:
            if flags & PE_PRESENT and (flags == kind or not present):
                present.append((addr, n))
                kind = flags
                continue
            client.send_task_pages(task.pid, present, moved, flags=kind)
            sent += sum(k for _, k in present) * PAGE
            present = []
            if flags & PE_PRESENT:
                present.append((addr, n))
                kind = flags
            else:
                client.hole(addr, n)
        client.send_task_pages(task.pid, present, moved, flags=kind)
    finally:
        bar.close()


def start_writeback(fd: int, offset: int, size: int) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE): queue the dirty pages of the
    range for write-back and return.  Only a hint: a filesystem that
    refuses it is synced at the end like the other images."""
    try:
        libc.sync_file_range(fd, offset, size, C.SYNC_FILE_RANGE_WRITE)
    except OSError as exc:
        log.debug("sync_file_range: %s", exc)


class _PageCopier:
    """Moves runs of pages of a frozen task into the open pages image."""

    def __init__(self, task: "DumpTask", path: str, out: int, total: int,
                 sync: bool = False) -> None:
        self.task = task
        self.sync = sync          # --sync: start write-back as the pages stream
        self.wb_off = 0           # the written range not yet queued for write-back
        self.wb_len = 0
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
                self._writeback(self.offset, size)
                self.offset += size
                self.batch_off = self.offset
                self.bar.update(self.offset)
                continue
            while size:
                n = min(size, _WRITE_BYTES - self.batch_len)
                self.batch += (addr, n)
                self.batch_len += n
                self.offset += n
                addr += n
                size -= n
                if self.batch_len >= _WRITE_BYTES or len(self.batch) >= 2 * _IOV_MAX:
                    self._flush()
        self._flush()
        self._writeback_now()
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
        self._writeback(self.batch_off, self.batch_len)
        self.batch = []
        self.batch_off += self.batch_len
        self.batch_len = 0
        self.bar.update(self.batch_off)

    def _writeback(self, offset: int, size: int) -> None:
        """With --sync, start writing these bytes to disk soon (without
        waiting), so the disk works while the next batches are copied and
        the final sync has little left to wait for.  Started every
        _WRITEBACK_BYTES, not every write: a write-back of each 1 MiB
        write made the dump slower than none at all (1 GiB --sync:
        2.5-4.2 s against 1.5-1.8 s)."""
        if not self.sync:
            return
        if self.wb_len == 0:
            self.wb_off = offset
        self.wb_len = offset + size - self.wb_off
        if self.wb_len >= _WRITEBACK_BYTES:
            self._writeback_now()

    def _writeback_now(self) -> None:
        if self.wb_len:
            start_writeback(self.out, self.wb_off, self.wb_len)
        self.wb_len = 0

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

_VDSO_NAMES = ("[vvar]", "[vvar_vclock]", "[vdso]")


@functools.lru_cache(maxsize=1)
def _own_vdso() -> tuple[MapEntry, ...]:
    with open("/proc/self/maps") as f:
        # three lines of ~160 (this interpreter's libraries): only they are parsed
        return tuple(parse_maps_named(f.read(), _VDSO_NAMES))


def _vdso_layout(parts: list[tuple[int, int, int]]) -> list[int]:
    """Sizes of (kind, start, end) special mappings, adjacent ones of a kind
    merged: criu writes [vvar] and [vvar_vclock] as one VVAR VMA, procsnap
    as two; both describe the same kernel layout."""
    out: list[tuple[int, int]] = []   # (kind, size)
    end = None
    for kind, start, stop in parts:
        if out and out[-1][0] == kind and start == end:
            out[-1] = (kind, out[-1][1] + stop - start)
        else:
            out.append((kind, stop - start))
        end = stop
    return [size for _, size in out]


def check_vdso(rt: "RestoreTask") -> None:
    """The vDSO can only be moved, not rebuilt: sizes must match this kernel."""
    ours = _own_vdso()
    theirs = [v for v in rt.mm.vmas if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR)]
    a = _vdso_layout([(SPECIAL[m.path], m.start, m.end) for m in ours])
    b = _vdso_layout([(v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR), v.start, v.end)
                      for v in theirs])
    if b and a != b:  # none at all: the task had unmapped them, and stays so
        raise RestoreError(f"{rt.image_name('mm')}: vDSO/vvar layout {b} differs from this "
                           f"kernel's {a}: images from another kernel are not supported")


def _is_premapped(v: Any) -> bool:
    """Private memory (anonymous, or a private file mapping with its own
    copies of pages) is mapped and filled by premap(), before the task
    forks its children, so that they inherit it copy-on-write."""
    return (bool(v.status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE))
            and not v.status & (VMA_AREA_MEMFD | VMA_AREA_VDSO | VMA_AREA_VVAR
                                | VMA_AREA_VSYSCALL)
            # hugetlb memory is not shared copy-on-write with children at
            # restore (nor by CRIU): mapped in restore(), with its pages.
            and not v.flags & C.MAP_HUGETLB)


def can_be_lazy(v: Any) -> bool:
    """May this VMA's pages be left to the lazy-pages daemon?  criu's
    vma_entry_can_be_lazy() (private anonymous, not locked, not hugetlb,
    not the vDSO), and what else would not come back exact through
    missing-page faults: a stack (the kernel grows it, and the task runs
    on it at once), droppable memory, wipe-on-fork memory (a child's copy
    must read zeroes, not the image), PROT_NONE.  The rest is restored
    eagerly, never dropped."""
    return (_is_premapped(v) and bool(v.status & VMA_ANON_PRIVATE)
            and not v.status & VMA_AREA_STACK
            and not v.flags & (C.MAP_LOCKED | C.MAP_GROWSDOWN | C.MAP_DROPPABLE | C.MAP_HUGETLB)
            and not (v.HasField("madv") and v.madv & (1 << C.MADV_WIPEONFORK))
            and v.prot != 0)  # PROT_NONE


def lazy_vmas(rt: "RestoreTask") -> set[int]:
    """Indexes in rt.mm.vmas of the VMAs restore --lazy-pages leaves empty
    and registers with the task's userfaultfd: can_be_lazy(), no thread's
    stack pointer inside, no guard region inside."""
    return _lazy_indexes(list(rt.mm.vmas),
                         [th.core.thread_info.gpregs.sp for th in rt.threads
                          if th.core is not None])


def _lazy_indexes(vmas: list[Any], sps: list[int]) -> set[int]:
    """lazy_vmas() from the VMAs and the threads' stack pointers (the
    dump asks it too: lazy_ranges)."""
    guards = [(v.start, v.end) for v in vmas if v.status & VMA_AREA_GUARD]
    out: set[int] = set()
    for i, v in enumerate(vmas):
        if v.status & VMA_AREA_GUARD or not can_be_lazy(v):
            continue
        if any(v.start - PAGE <= sp <= v.end for sp in sps):
            continue
        if any(a < v.end and b > v.start for a, b in guards):
            continue
        out.add(i)
    return out


def _kin_sig(v: Any) -> tuple[int, int, int, int]:
    return (v.start, v.end, v.status, v.flags)


def mark_shared(ctx: "DumpContext") -> None:
    """The dump's last word on PE_LAZY marks (lazy_ranges): none on a VMA
    a parent or child has at the same place with the same kind -- memory
    they may share copy-on-write, which the restore fills before the fork
    and never leaves to the daemon (lazy_set).  Called before the images
    are written (pages sent to a page server keep their marks)."""
    mms: dict[int, Any] = {}
    for t in ctx.tasks:
        for kind, _, msgs in t.extra_images:
            if kind == "mm":
                mms[t.pstree.pid] = msgs[0]
    root = ctx.tasks[0] if ctx.tasks else None
    # Each task's kin by a lookup, not a walk of the tree per task (200
    # tasks: 40,000 comparisons).
    children: dict[int, list[Any]] = {}
    with_mm: dict[int, Any] = {}
    for o in ctx.tasks:
        if o.pstree.pid in mms:
            children.setdefault(o.pstree.ppid, []).append(o)
            with_mm[o.pstree.pid] = o
    for t in ctx.tasks:
        mm = mms.get(t.pstree.pid)
        if mm is None:
            continue
        pagemaps = [msgs for kind, _, msgs in t.extra_images if kind == "pagemap"]
        if not any(e.flags & PE_LAZY for msgs in pagemaps for e in msgs[1:]):
            continue   # no mark to take back
        kin = [o for o in children.get(t.pstree.pid, ()) if o is not t]
        parent = with_mm.get(t.pstree.ppid) if t is not root else None
        if parent is not None and parent is not t:
            kin.append(parent)
        related = {_kin_sig(v) for o in kin for v in mms[o.pstree.pid].vmas}
        shared = [(v.start, v.end) for v in mm.vmas if _kin_sig(v) in related]
        if not shared:
            continue
        for msgs in pagemaps:
            for e in msgs[1:]:
                end = e.vaddr + e.nr_pages * PAGE
                if e.flags & PE_LAZY and any(a < end and e.vaddr < b for a, b in shared):
                    e.flags &= ~PE_LAZY


def lazy_set(rctx: "RestoreContext", rt: "RestoreTask") -> set[int]:
    """The VMAs of ``rt`` restore --lazy-pages leaves to the daemon:
    lazy_vmas(), except a VMA its parent or a child has at the same place
    with the same kind -- memory they may share copy-on-write: the parent
    fills it before forking and the child keeps it (premap), so the pages
    are shared again (zdtm cow00).  The restorer and the daemon both ask
    this, from the images alone, so they agree on every range."""
    sig = _kin_sig
    kin = [t for t in rctx.tasks
           if t is not rt and not t.zombie and t.mm is not None
           # by the pstree entries: a task's pid may change once it is made
           and (t.pstree.ppid == rt.pstree.pid
                or (rt is not rctx.tasks[0] and t.pstree.pid == rt.pstree.ppid))]
    related = {sig(v) for t in kin for v in t.mm.vmas}
    return {i for i in lazy_vmas(rt) if sig(rt.mm.vmas[i]) not in related}


# Bookkeeping compared by identity, without a generated repr: dataclass()
# compiles __eq__ and __repr__ at import, at every start of procsnap.
@record(eq=False, repr=False)
class _Premapped:
    """What premap() left mapped in one task, for its children to reuse."""
    vmas: dict[tuple[int, int], tuple[Any, ...]]   # (start, end) -> _vma_key()
    runs: "_Runs"                                   # its pages: (addr, size, offset)
    pages: list[str]                                # its page files (see _page_runs)


def _vma_key(v: Any, prot: int, ident: tuple[int, int] | None) -> tuple[Any, ...]:
    """All that must agree for a child to keep the VMA its parent mapped."""
    return (v.pgoff, prot, v.flags, v.status, v.fdflags if v.HasField("fdflags") else 0, ident)


# A page's place in a chain of images (a dump over pre-dumps): which page
# file (an index into RestoreTask.page_files: 0 its own pages-N.img, then
# its parents') and the offset there, in one int: index << _FILE_SHIFT | offset.
_FILE_SHIFT = 48


def _page_runs(rt: "RestoreTask") -> _Runs:
    """(addr, size, place) of every page the images hold for the task,
    ``place`` as above; pages left in a parent (PE_PARENT, criu's
    in_parent) are looked up through the ``parent`` links."""
    if rt.page_runs is None:
        files: list[str] = []
        ipid = rt._rctx.image_pid(rt.pid) if rt._rctx is not None else rt.pid
        lazy = rt.lazy_only if rt._rctx is not None and rt._rctx.opts.lazy_socket else None
        if lazy is not None:
            lazy.clear()
        runs = _chain_runs(os.path.dirname(rt.image_name("pages")), ipid, files,
                           rt.pages_id, rt.pagemap, 0, lazy)
        rt.page_files = files
        rt.page_runs = _Runs(runs)
    return rt.page_runs  # type: ignore[no-any-return]


def check_pages(rt: "RestoreTask") -> None:
    """Find every page of the task in its images and their parents' now,
    before anything is created: a page no image holds is one line naming
    it (the restore's reading stage calls this)."""
    _page_runs(rt)


def _chain_runs(d: str, pid: int, files: list[str], pages_id: int, entries: Any,
                depth: int, lazy: list[tuple[int, int]] | None = None
                ) -> list[tuple[int, int, int]]:
    """``lazy``: under restore --lazy-pages, where pages no image file
    holds (PE_LAZY alone: on a page server) are listed, for the daemon."""
    idx = len(files)
    files.append(images.image_path(d, "pages", pages_id))
    runs: list[tuple[int, int, int]] = []
    need: list[tuple[int, int]] = []
    off = 0
    for e in entries:
        size = e.nr_pages * PAGE
        flags = parent_pages.flags_of(e)   # older criu: the in_parent field
        if flags & PE_PRESENT:
            runs.append((e.vaddr, size, idx << _FILE_SHIFT | off))
            off += size
        elif flags & PE_PARENT:
            need.append((e.vaddr, size))
        elif lazy is not None and flags & PE_LAZY:
            lazy.append((e.vaddr, size))
        else:   # PE_LAZY alone: no bytes anywhere in the images
            raise ImageError(os.path.join(d, f"pagemap-{pid}.img"),
                             f"pages at {e.vaddr:#x}-{e.vaddr + size:#x} are lazy "
                             f"(flags {flags:#x}: on a page server or left for lazy "
                             "restore); procsnap restores only pages in image files")
    if need:
        pdir = os.path.join(d, "parent")
        if depth >= 64:
            raise ImageError(pdir, "more than 64 parent images: a loop of parent links?")
        if not os.path.isdir(pdir):
            raise ImageError(os.path.join(d, f"pagemap-{pid}.img"),
                             "pages are in the parent images, but there is no parent link "
                             f"({pdir})")
        try:
            pm = images.read_image(pdir, "pagemap", pid)
        except FileNotFoundError:
            raise ImageError(os.path.join(d, f"pagemap-{pid}.img"),
                             "pages are in the parent images, but there is no "
                             f"{pdir}/pagemap-{pid}.img") from None
        if not pm:
            raise ImageError(pdir, f"pagemap-{pid}.img: empty pagemap (no head)")
        theirs = _Runs(_chain_runs(pdir, pid, files, pm[0].pages_id, pm[1:], depth + 1))
        # (a parent's lazy pages are not looked for: "do not hold them all")
        for addr, size in need:
            got = _clip(theirs, addr, addr + size)
            if sum(n for _, n, _ in got) != size:
                raise ImageError(os.path.join(d, f"pagemap-{pid}.img"),
                                 f"pages at {addr:#x}-{addr + size:#x} are in the parent "
                                 f"images, which do not hold them all")
            runs += got
        runs.sort()
    return runs


class _PageFiles:
    """Reads page bytes by place (see _page_runs), opening files on use."""

    def __init__(self, files: list[str]) -> None:
        self.files = files
        self.fds: dict[int, int] = {}

    def pread(self, place: int, n: int) -> bytes:
        idx, off = place >> _FILE_SHIFT, place & ((1 << _FILE_SHIFT) - 1)
        if idx not in self.fds:
            self.fds[idx] = os.open(self.files[idx], os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self.fds[idx], n, off)
        if len(data) != n:
            raise RestoreError(f"{self.files[idx]}: short read at offset {off}")
        return data

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class _Runs:
    """Page runs sorted by address, with their start addresses for bisect."""

    def __init__(self, runs: list[tuple[int, int, int]]) -> None:
        self.runs = runs
        self.starts = [r[0] for r in runs]


def _clip(runs: _Runs, start: int, end: int) -> list[tuple[int, int, int]]:
    """The parts of ``runs`` inside [start, end)."""
    out = []
    i = max(bisect.bisect_right(runs.starts, start) - 1, 0)
    for k in range(i, len(runs.runs)):
        addr, size, off = runs.runs[k]
        if addr >= end:
            break
        a, b = max(addr, start), min(addr + size, end)
        if a < b:
            out.append((a, b - a, off + a - addr))
    return out


def premap(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """First half of the address space, before the task forks its children.

    Drop what the puppet inherited (except the trampoline, and what its
    parent premapped that it maps too), install the mm fields and exe,
    then map and fill private memory.  A VMA the parent premapped exactly
    as this task had it is kept: only pages that differ from the parent's
    are written, and the parent's pages this task did not have are
    dropped (MADV_DONTNEED gives zeroes, or the file's page, again), so
    what was shared copy-on-write at the dump is shared again (as CRIU's
    restore of private VMAs before forking children).
    """
    inj = rt.inj
    mm = rt.mm
    check_vdso(rt)
    done: dict[int, _Premapped] = rctx.kind_state.setdefault(NAME, {})
    parent = done.get(rt.pstree.ppid) if rt is not rctx.tasks[0] else None
    with_pages = _vmas_with_pages(rt)

    # Open each mapped file once (by its access mode), before anything is
    # unmapped: a child compares them with the files its parent mapped.
    file_fds: dict[tuple[int, int], int] = {}
    idents: dict[int, tuple[int, int] | None] = {}
    for i, v in enumerate(mm.vmas):
        if not _is_premapped(v):
            continue
        idents[i] = None
        if v.status & VMA_FILE_PRIVATE:
            fd = _open_mapped(rctx, rt, v, file_fds)
            st = os.stat(f"/proc/{rt.pid}/fd/{fd}")
            idents[i] = (st.st_dev, st.st_ino)

    prots = {i: (v.prot | C.PROT_READ | C.PROT_WRITE if i in with_pages else v.prot)
             for i, v in enumerate(mm.vmas) if i in idents}
    keys = {i: _vma_key(mm.vmas[i], prots[i], idents[i]) for i in idents}
    lazy: set[int] = set()
    if rctx.opts.lazy_socket:
        lazy = lazy_set(rctx, rt)
        _check_lazy_only(rt, lazy)
    reuse: set[int] = set()
    if parent is not None:
        for i in idents:
            v = mm.vmas[i]
            # (a VMA kept has the same place and kind as the parent's: never
            # lazy in either, see lazy_set)
            if parent.vmas.get((v.start, v.end)) == keys[i]:
                reuse.add(i)

    # 1. Drop everything else the puppet inherited ([vsyscall] lies above
    # TASK_SIZE and stays): munmap of a range with holes is fine.
    keep = sorted([(rt.tramp, rt.tramp + rt.tramp_size)]
                  + [(mm.vmas[i].start, mm.vmas[i].end) for i in reuse])
    cur = 0
    for a, b in keep:
        if a > cur:
            inj.call("munmap", cur, a - cur)
        cur = max(cur, b)
    if cur < C.TASK_SIZE:
        inj.call("munmap", cur, C.TASK_SIZE - cur)

    # 2. mm fields and exe, now that the old executable is gone (the
    # kernel says EBUSY while any mapping of it is left).  A child that
    # runs the file its parent ran keeps it: that one may still be mapped
    # by a VMA it kept.
    exe = rctx.file_entry(mm.exe_file_id)
    exe_fd = regfile.open_entry(rctx, rt, exe, os.O_RDONLY, check=False)
    check_build_id(rctx, rt, exe, exe_fd)
    new_exe = os.stat(f"/proc/{rt.pid}/fd/{exe_fd}")
    try:
        old_exe = os.stat(f"/proc/{rt.pid}/exe")
        same = (old_exe.st_dev, old_exe.st_ino) == (new_exe.st_dev, new_exe.st_ino)
    except OSError:
        same = False
    auxv = list(mm.mm_saved_auxv)
    auxv_addr = inj.put(b"".join(x.to_bytes(8, "little") for x in auxv), align=8)
    mmap_struct = PrctlMmMap(
        start_code=mm.mm_start_code, end_code=mm.mm_end_code,
        start_data=mm.mm_start_data, end_data=mm.mm_end_data,
        start_brk=mm.mm_start_brk, brk=mm.mm_brk, start_stack=mm.mm_start_stack,
        arg_start=mm.mm_arg_start, arg_end=mm.mm_arg_end,
        env_start=mm.mm_env_start, env_end=mm.mm_env_end,
        auxv=auxv_addr, auxv_size=len(auxv) * 8,
        exe_fd=(2**32 - 1) if same else exe_fd)
    addr = inj.put(bytes(mmap_struct), align=8)
    inj.call("prctl", C.PR_SET_MM, C.PR_SET_MM_MAP, addr, len(bytes(mmap_struct)), 0)
    inj.call("close", exe_fd)
    inj.reset_scratch()

    # 3. Map private memory.  A VMA with saved pages is mapped writable
    # (the pages go in next; restore() sets the final protection): it was
    # written, so it was writable once and VM_ACCOUNT is right.  One
    # without pages gets its final protection at once, so a never-writable
    # mapping does not gain VM_ACCOUNT and merge with a neighbour that has
    # it (read-only data next to RELRO).  Neighbours mapped alike (the
    # same protection and flags, and for a file the same fd at contiguous
    # offsets) take one mmap: the kernel would merge them anyway, and
    # restore()'s mprotect and madvise split them where they differ.  The
    # files are opened first, then every mmap and close runs in one batch
    # (one stop).
    maps: list[list[int]] = []   # [start, end, prot, flags, fd, pgoff]
    for i in idents:
        if i in reuse:
            continue
        v = mm.vmas[i]
        extra = v.flags & (C.MAP_GROWSDOWN | C.MAP_NORESERVE)
        if v.status & VMA_FILE_PRIVATE:
            flags = C.MAP_PRIVATE | C.MAP_FIXED | extra
            fd, off = _open_mapped(rctx, rt, v, file_fds), v.pgoff
        else:
            kind = C.MAP_DROPPABLE if v.flags & C.MAP_DROPPABLE else C.MAP_PRIVATE
            flags = kind | C.MAP_ANONYMOUS | C.MAP_FIXED | extra
            if v.status & VMA_AREA_STACK:
                flags |= C.MAP_GROWSDOWN
            fd, off = -1, 0
        last = maps[-1] if maps else None
        if last is not None and last[1] == v.start and last[2:5] == [prots[i], flags, fd] \
                and not flags & C.MAP_GROWSDOWN \
                and (fd < 0 or last[5] + last[1] - last[0] == off):
            last[1] = v.end
        else:
            maps.append([v.start, v.end, prots[i], flags, fd, off])
    calls: list[tuple[str, tuple[int, ...]]] = [
        ("mmap", (start, end - start, prot, flags, fd, off))
        for start, end, prot, flags, fd, off in maps]
    inj.run(calls + close_calls(file_fds.values()))

    # 4. Pages.  In a kept VMA, only what differs from the parent's.
    runs = _page_runs(rt)
    todo: list[tuple[int, int, int]] = []
    drop: list[tuple[int, int]] = []
    for i in sorted(idents):
        v = mm.vmas[i]
        if i in lazy:
            continue  # served by the lazy-pages daemon (memory.restore registers it)
        mine = _clip(runs, v.start, v.end)
        if i not in reuse:
            todo += mine
            continue
        assert parent is not None
        theirs = _clip(parent.runs, v.start, v.end)
        t, d = _diff_pages(rt.page_files, mine, parent.pages, theirs)
        todo += t
        drop += d
    if todo:
        _fill_pages(rt, rt.page_files, todo)
    for a, n in drop:
        inj.call("madvise", a, n, C.MADV_DONTNEED)
    rt.lazy = _merge_ranges([(mm.vmas[i].start, mm.vmas[i].end) for i in sorted(lazy)])
    done[rt.pid] = _Premapped({(mm.vmas[i].start, mm.vmas[i].end): keys[i] for i in idents},
                              runs, rt.page_files)


def close_calls(fds: Iterable[int]) -> list[tuple[str, tuple[int, ...]]]:
    """The calls that close these fds of the puppet: one close_range per
    run of consecutive numbers (every number in a run is one of ``fds``),
    not one close each -- the files a task maps are opened one after
    another, at the lowest free numbers."""
    out: list[tuple[str, tuple[int, ...]]] = []
    run: list[int] = []
    for fd in sorted(set(fds)) + [-2]:
        if run and fd == run[1] + 1:
            run[1] = fd
            continue
        if run:
            out.append(("close", (run[0],)) if run[0] == run[1] else
                       ("close_range", (run[0], run[1], 0)))
        run = [fd, fd]
    return out


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _check_lazy_only(rt: "RestoreTask", lazy: set[int]) -> None:
    """Pages the images do not hold (on a page server) can only come
    through the daemon: each must lie in a VMA left to it."""
    ranges = _Runs([(rt.mm.vmas[i].start, rt.mm.vmas[i].end - rt.mm.vmas[i].start, 0)
                    for i in sorted(lazy)])
    for addr, size in rt.lazy_only:
        if sum(n for _, n, _ in _clip(ranges, addr, addr + size)) != size:
            raise RestoreError(f"{rt.image_name('pagemap')}: pages at {addr:#x}-"
                               f"{addr + size:#x} are only on the page server (PE_LAZY), but "
                               "their mapping is not one restore --lazy-pages serves lazily "
                               "(a stack, locked, hugetlb, shared or file memory)")


def register_lazy(rt: "RestoreTask", send: Any) -> None:
    """restore --lazy-pages: make the task's userfaultfd (in the task: a
    userfaultfd belongs to its creator's mm), register the task's lazy
    VMAs for missing-page faults, and hand it to the daemon with
    ``send(fds)``; the task keeps no fd of it (a task without lazy memory
    sends one all the same, as criu's restorer).  Called last in restore(),
    once nothing more is mapped or advised, with the task stopped."""
    from ..kernel import uffd
    from ..kernel.libc import pidfd_getfd
    inj = rt.inj
    fd = inj.call("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK)
    ours = -1
    pidfd = -1
    try:
        ours = pidfd_getfd(rt.pid, fd)
        try:
            got = uffd.api(ours, uffd.LAZY_FEATURES)
        except OSError as exc:
            raise RestoreError(f"pid {rt.pid}: restore --lazy-pages: userfaultfd API with "
                               f"fork/remap/remove/unmap events refused: {exc.strerror}") from None
        if got & uffd.LAZY_FEATURES != uffd.LAZY_FEATURES:
            raise RestoreError(f"pid {rt.pid}: restore --lazy-pages: this kernel's "
                               "userfaultfd lacks fork/remap/remove/unmap events")
        for a, b in rt.lazy:
            try:
                uffd.register(ours, a, b - a, uffd.UFFDIO_REGISTER_MODE_MISSING)
            except OSError as exc:
                raise RestoreError(f"pid {rt.pid}: restore --lazy-pages: cannot register "
                                   f"{a:#x}-{b:#x} with userfaultfd: {exc.strerror}") from None
        # the userfaultfd alone, as criu's restorer sends it: criu's
        # lazy-pages daemon takes exactly one fd (procsnap's finds the
        # task's pidfd itself, lazypages._Daemon.pidfd_of)
        send([ours])
    finally:
        inj.call("close", fd, check=False)
        for x in (ours, pidfd):
            if x >= 0:
                os.close(x)


def _open_mapped(rctx: "RestoreContext", rt: "RestoreTask", v: Any,
                 fds: dict[tuple[int, int], int]) -> int:
    """An fd in the puppet on the file behind ``v``, opened with the access
    mode the original was opened with (vma_entry.fdflags); one per file
    and mode."""
    mode = os.O_RDWR if v.fdflags & os.O_ACCMODE == os.O_RDWR else os.O_RDONLY
    key = (v.shmid, mode)
    if key not in fds:
        entry = rctx.file_entry(v.shmid)
        if v.status & VMA_AREA_MEMFD:
            fds[key] = memfd.open_for_mapping(rctx, rt, entry, mode)
        else:
            fds[key] = regfile.open_entry(rctx, rt, entry, mode)
            check_build_id(rctx, rt, entry, fds[key])
    return fds[key]


def _diff_pages(mine_files: list[str], mine: list[tuple[int, int, int]],
                theirs_files: list[str], theirs: list[tuple[int, int, int]]
                ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Pages of one kept VMA: (runs to write, ranges to drop).

    ``mine``/``theirs``: (addr, size, offset) runs of this task's and its
    parent's pages inside the VMA, sorted.  A page both have with equal
    bytes is left shared; one that differs, or only this task has, is
    written; one only the parent has is dropped.

    Works run by run, not page by page: the two lists are swept together
    into stretches that are mine only, theirs only, or both, and a stretch
    both have is compared _CMP_CHUNK at a time (one pread from each file,
    one memcmp), page by page only inside a chunk that differs.  A 256 MiB
    inherited VMA costs two sequential reads of the page cache, not
    65,536 rounds of Python.
    """
    write: list[tuple[int, int, int]] = []
    drop: list[tuple[int, int]] = []
    if not mine and not theirs:
        return write, drop

    def add_write(addr: int, n: int, off: int) -> None:
        if write and write[-1][0] + write[-1][1] == addr and write[-1][2] + write[-1][1] == off:
            write[-1] = (write[-1][0], write[-1][1] + n, write[-1][2])
        else:
            write.append((addr, n, off))

    def add_drop(addr: int, n: int) -> None:
        if drop and drop[-1][0] + drop[-1][1] == addr:
            drop[-1] = (drop[-1][0], drop[-1][1] + n)
        else:
            drop.append((addr, n))

    fm = _PageFiles(mine_files)
    ft = _PageFiles(theirs_files)
    try:
        i = j = 0
        # Cursor: everything below ``pos`` is decided.
        pos = min(r[0] for r in (mine[:1] + theirs[:1]))
        while i < len(mine) or j < len(theirs):
            ma, ms, mo = mine[i] if i < len(mine) else (2**64, 0, 0)
            ta, ts, to = theirs[j] if j < len(theirs) else (2**64, 0, 0)
            pos = max(pos, min(ma, ta))
            in_m = ma <= pos < ma + ms
            in_t = ta <= pos < ta + ts
            # The stretch ends where either run starts or ends.
            stop = min(x for x in (ma + ms if in_m else ma, ta + ts if in_t else ta) if x > pos)
            n = stop - pos
            if in_m and not in_t:
                add_write(pos, n, mo + pos - ma)
            elif in_t and not in_m:
                add_drop(pos, n)
            elif in_m and in_t:
                a_off, b_off = mo + pos - ma, to + pos - ta
                for k in range(0, n, _CMP_CHUNK):
                    c = min(_CMP_CHUNK, n - k)
                    a_bytes = fm.pread(a_off + k, c)
                    b_bytes = ft.pread(b_off + k, c)
                    if a_bytes == b_bytes:
                        continue
                    for p in range(0, c, PAGE):
                        if a_bytes[p:p + PAGE] != b_bytes[p:p + PAGE]:
                            add_write(pos + k + p, PAGE, a_off + k + p)
            pos = stop
            if in_m and stop >= ma + ms:
                i += 1
            if in_t and stop >= ta + ts:
                j += 1
    finally:
        fm.close()
        ft.close()
    return write, drop


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Second half, once the task's children exist: shared and memfd
    mappings, final protections, VmFlags, the vDSO."""
    inj = rt.inj
    mm = rt.mm
    with_pages = _vmas_with_pages(rt)

    # 3. Map the rest: shared memory and memfds.
    file_fds: dict[tuple[int, int], int] = {}
    vvar_start = None
    later: list[int] = []
    for i, v in enumerate(mm.vmas):
        if v.status & (VMA_AREA_VSYSCALL | VMA_AREA_GUARD) or _is_premapped(v):
            continue
        if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR):
            vvar_start = v.start if vvar_start is None else min(vvar_start, v.start)
            continue
        length = v.end - v.start
        if v.status & VMA_FILE_SHARED or i not in with_pages:
            prot = v.prot
        else:
            prot = v.prot | C.PROT_READ | C.PROT_WRITE
        extra = v.flags & (C.MAP_GROWSDOWN | C.MAP_NORESERVE)
        if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
            flags = (C.MAP_SHARED if v.status & VMA_FILE_SHARED else C.MAP_PRIVATE) | C.MAP_FIXED
            inj.call("mmap", v.start, length, prot, flags | extra,
                     _open_mapped(rctx, rt, v, file_fds), v.pgoff)
            if i in with_pages:
                later.append(i)
        elif v.status & VMA_ANON_SHARED:
            shmem.map_vma(rctx, rt, v, prot, memfd.object_fd(rctx, v.shmid))
        elif v.status & sysvipc.VMA_AREA_SYSVIPC:
            sysvipc.map_vma(rctx, rt, v)
        elif v.status & VMA_AREA_AIORING:
            aio.restore_ring(rt, _aio_entry(rt, v), _saved_bytes(rctx, rt, v))
        elif v.status & VMA_AREA_SOCKET:
            fd = next((fe.fd for fe in rt.fdinfos if fe.id == v.shmid), None)
            if fd is None:
                raise RestoreError(f"{rt.image_name('mm')}: VMA {v.start:#x}-{v.end:#x} maps "
                                   f"socket file {v.shmid}, which the task holds no fd of")
            inj.call("mmap", v.start, length, v.prot,
                     (v.flags & (C.MAP_SHARED | C.MAP_PRIVATE)) | C.MAP_FIXED | extra,
                     fd, v.pgoff)
        elif v.status & VMA_ANON_PRIVATE and v.flags & C.MAP_HUGETLB:
            inj.call("mmap", v.start, length, prot,
                     C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED | extra
                     | (v.flags & shmem.HUGE_MASK), -1, 0)
            if i in with_pages:
                later.append(i)
        else:
            raise RestoreError(f"{rt.image_name('mm')}: VMA {v.start:#x}-{v.end:#x} has "
                               f"status {v.status:#x}, which procsnap does not restore")
    inj.run(close_calls(file_fds.values()))

    # 4. Pages of private memfd and hugetlb mappings (the rest went in at premap).
    if later:
        runs = _page_runs(rt)
        todo = [r for i in later for r in _clip(runs, mm.vmas[i].start, mm.vmas[i].end)]
        if todo:
            _fill_pages(rt, rt.page_files, todo)

    # 5. Final protections of what was mapped writable for its pages (one batch).
    inj.run([("mprotect", (v.start, v.end - v.start, v.prot)) for i, v in enumerate(mm.vmas)
             if not v.status & (VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_VVAR
                                | VMA_FILE_SHARED)
             and i in with_pages and v.prot != C.PROT_READ | C.PROT_WRITE])

    # 5b. What smaps VmFlags showed (see VMFLAGS): advice, then locks.
    # After the children were forked: MADV_DONTFORK/WIPEONFORK would
    # have kept the memory from them.
    _restore_vmflags(rt)
    if mm.thp_disabled:
        inj.call("prctl", C.PR_SET_THP_DISABLE, 1, 0, 0, 0)

    # 6. vDSO and vvar go back together (the vDSO finds vvar at a fixed offset).
    if vvar_start is not None:
        inj.call("arch_prctl", C.ARCH_MAP_VDSO_64, vvar_start)

    # 7. restore --lazy-pages: the empty lazy VMAs go to the daemon (every
    # task's userfaultfd, registered or not: criu's daemon waits for one
    # per task of the images).
    if rctx.opts.lazy_socket:
        send = rctx.kind_state.get("lazy_send")
        if send is None:
            raise RestoreError(f"pid {rt.pid}: lazy memory but no lazy-pages daemon")
        register_lazy(rt, lambda fds: send(rt, fds))


def _socket_mapping(ctx: "DumpContext", task: "DumpTask", m: MapEntry,
                    pagemap: PagemapReader) -> int:
    """The file id of the packet socket whose rings ``m`` maps.  Refused:
    another kind of socket mapped, a socket this task holds no fd of (the
    restore maps through one), and a private mapping with pages of its own
    (written, so copied: they are not the ring's any more)."""
    where = f"pid {task.pid}: mapping at {m.start:#x}-{m.end:#x} of {m.path}"
    holders = ctx.open_files.get((os.makedev(m.dev_major, m.dev_minor), m.ino), [])
    fid = next((h[2] for h in holders if h[0] == task.pid), None)
    entry = next((f for f in ctx.files if f.id == fid), None) if fid is not None else None
    if entry is None or not entry.HasField("psk"):
        raise Unsupported(f"{where}: only a packet socket's rings held by an fd of the same "
                          "task can be mapped again; not supported")
    if not m.shared:
        raw = pagemap.read(m.start, m.end)
        for i in range(0, len(raw), 8):
            e = int.from_bytes(raw[i:i + 8], "little")
            if e & PM_PRESENT and not e & PM_FILE:
                raise Unsupported(f"{where}: a private mapping of a packet ring with pages "
                                  "written (copied from the ring): not supported")
    assert fid is not None
    return int(fid)


def _aio_entry(rt: "RestoreTask", v: Any) -> Any:
    for e in rt.mm.aios:
        if e.id == v.start:
            if e.ring_len != v.end - v.start:
                break
            return e
    raise RestoreError(f"{rt.image_name('mm')}: aio ring at {v.start:#x} has no "
                       "matching aios entry")


def _saved_bytes(rctx: "RestoreContext", rt: "RestoreTask", v: Any) -> bytes:
    """The saved bytes of VMA ``v`` (small: an aio ring), zeroes where no
    page was saved."""
    out = bytearray(v.end - v.start)
    runs = _clip(_page_runs(rt), v.start, v.end)
    f = _PageFiles(rt.page_files)
    try:
        for addr, size, off in runs:
            out[addr - v.start:addr - v.start + size] = f.pread(off, size)
    finally:
        f.close()
    return bytes(out)


def _vmas_with_pages(rt: "RestoreTask") -> set[int]:
    """Indexes in rt.mm.vmas of the VMAs that have pages in the image
    (found once a task: neither changes during the restore)."""
    if rt.vmas_with_pages is not None:
        return rt.vmas_with_pages
    # (guard entries come after the VMAs, out of address order)
    starts = [v.start for v in rt.mm.vmas if not v.status & VMA_AREA_GUARD]
    out: set[int] = set()
    for e in rt.pagemap:
        if e.HasField("flags") and not e.flags & (PE_PRESENT | PE_PARENT):
            continue
        end = e.vaddr + e.nr_pages * PAGE
        i = bisect.bisect_right(starts, e.vaddr) - 1
        while 0 <= i < len(starts) and starts[i] < end:
            if rt.mm.vmas[i].end > e.vaddr:
                out.add(i)
            i += 1
    rt.vmas_with_pages = out
    return out


def _restore_vmflags(rt: "RestoreTask") -> None:
    """madvise() each saved advice over exactly the VMAs that had it (so
    the kernel splits and merges as it did), then mlock() what was locked,
    and last install the guard regions (they follow the VMAs in the image).
    All in one batch, in that order; the first failure is reported."""
    inj = rt.inj
    # Adjacent VMAs with the same advice take one madvise over them all:
    # the kernel applies it VMA by VMA and merges as it would have after
    # one call each (memcached's thread stacks: 18 calls become 3).
    advised: list[tuple[int, int, int]] = []   # (start, end, advice bits)
    for v in rt.mm.vmas:
        if v.status & (VMA_AREA_GUARD | VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_VVAR):
            continue
        if v.HasField("madv") and v.madv:
            if advised and advised[-1][1] == v.start and advised[-1][2] == v.madv:
                advised[-1] = (advised[-1][0], v.end, v.madv)
            else:
                advised.append((v.start, v.end, v.madv))
    calls: list[tuple[str, tuple[int, ...]]] = []
    whats: list[str | None] = []  # how a failure is told (None: as the call's own error)
    for start, end, madv in advised:
        for advice in _MADV_ORDER:
            if madv & (1 << advice):
                calls.append(("madvise", (start, end - start, advice)))
                whats.append(f"madvise({advice}) of {start:#x}-{end:#x}")
    # Locks after the advice of every VMA (each VMA's own before its lock).
    for v in rt.mm.vmas:
        if not v.status & (VMA_AREA_GUARD | VMA_AREA_VSYSCALL | VMA_AREA_VDSO | VMA_AREA_VVAR) \
                and v.flags & C.MAP_LOCKED:
            calls.append(("mlock", (v.start, v.end - v.start)))
            whats.append(None)
    for v in rt.mm.vmas:
        if v.status & VMA_AREA_GUARD:
            # Last: installing a guard zaps what is there (nothing was).
            calls.append(("madvise", (v.start, v.end - v.start, C.MADV_GUARD_INSTALL)))
            whats.append(f"madvise(MADV_GUARD_INSTALL) of {v.start:#x}-{v.end:#x}")
    for (name, args), what, got in zip(calls, whats, inj.batch(calls)):
        if what is not None and -4096 < got < 0:
            raise RestoreError(f"{rt.image_name('mm')}: {what} failed: {os.strerror(-got)}")
        inj.check(name, args, got)


def _fill_pages(rt: "RestoreTask", files: list[str], runs: list[tuple[int, int, int]]) -> None:
    """``runs`` (addr, size, place) from the page files ``files`` (see
    _page_runs), one file after the other."""
    by_file: dict[int, list[tuple[int, int, int]]] = {}
    mask = (1 << _FILE_SHIFT) - 1
    for addr, size, place in runs:
        by_file.setdefault(place >> _FILE_SHIFT, []).append((addr, size, place & mask))
    for idx in sorted(by_file):
        fd = rt.open_in_puppet(files[idx], os.O_RDONLY)
        try:
            _fill_from(rt, fd, files[idx], by_file[idx])
        finally:
            rt.inj.call("close", fd, check=False)


# Reading pages in is mostly the kernel allocating and zeroing fresh pages
# (~3/4 of the time; the copy from the page cache is the rest), done on the
# CPU of whoever faults them in.  So a big restore reads with two workers
# at once: the puppet (injected preadv straight into place) from the front
# of the batch list, and a thread of ours from the back (process_vm_writev
# from a read-only mapping of the image file: one copy, as the preadv).
# On two idle cores that halves the time; on a busy machine the thread
# just takes fewer batches.
_PARALLEL_MIN = 64 << 20
# A batch: small enough that the two workers end close together, big
# enough that the injected calls (~2 x 30 us a batch) stay noise.
_PAR_BATCH = 16 << 20
# Pages the puppet faults in one by one each cost an exception; one
# process_madvise(MADV_POPULATE_WRITE) over the batch's iovecs first takes
# them all in one call (Linux 6.13 lets a process give itself any advice
# this way; PIDFD_SELF is 6.15).  Off when the kernel says no.
_populate_ok = True


def _batches(runs: list[tuple[int, int, int]], limit: int
             ) -> list[tuple[int, int, list[int]]]:
    """(file offset, bytes, flat iovec [base, len, ...]) per preadv: runs
    contiguous in the file, at most ``limit`` bytes and _IOV_MAX iovecs."""
    out: list[tuple[int, int, list[int]]] = []
    batch: list[int] = []
    batch_off = batch_len = 0
    for addr, size, off in runs:
        if batch and batch_off + batch_len != off:
            out.append((batch_off, batch_len, batch))
            batch, batch_len = [], 0
        while size:
            if not batch:
                batch_off = off
            n = min(size, limit - batch_len)
            batch += (addr, n)
            batch_len += n
            addr += n
            off += n
            size -= n
            if batch_len >= limit or len(batch) >= 2 * _IOV_MAX:
                out.append((batch_off, batch_len, batch))
                batch, batch_len = [], 0
    if batch:
        out.append((batch_off, batch_len, batch))
    return out


def _fill_from(rt: "RestoreTask", pages_fd: int, path: str,
               runs: list[tuple[int, int, int]]) -> None:
    """The puppet reads its pages itself, straight from the image into
    place: one preadv per batch of runs contiguous in the file (up to
    _IOV_MAX runs or _BATCH_BYTES), so the bytes never pass through Python
    and 10,000 small runs cost ~10 injected calls, not 10,000.  A big
    restore shares the batches with a thread of ours (see _PARALLEL_MIN)."""
    global _populate_ok
    inj = rt.inj
    total = sum(n for _, n, _ in runs)
    parallel = total >= _PARALLEL_MIN and (os.cpu_count() or 1) > 1
    batches = _batches(runs, _PAR_BATCH if parallel else _BATCH_BYTES)
    bar = progress.Progress("restore", total)
    helper = _Writer(rt.pid, path, batches) if parallel and len(batches) > 1 else None
    moved = 0
    try:
        for k in _puppet_order(batches, helper):
            batch_off, batch_len, iov_words = batches[k]
            iov = inj.put(struct.pack(f"<{len(iov_words)}Q", *iov_words), align=8)
            try:
                if _populate_ok and batch_len >= 64 * PAGE:
                    r = inj.call("process_madvise", C.PIDFD_SELF_THREAD_GROUP, iov,
                                 len(iov_words) // 2, C.MADV_POPULATE_WRITE, 0, check=False)
                    if r in (-errno.EINVAL, -errno.EBADF, -errno.ENOSYS, -errno.EPERM):
                        _populate_ok = False   # an older kernel: the preadv faults them in
                got = inj.call("preadv", pages_fd, iov, len(iov_words) // 2, batch_off, 0)
            finally:
                inj.reset_scratch()
            if got != batch_len:
                raise RestoreError(f"{rt.image_name('pages')}: short read at offset "
                                   f"{batch_off} ({got} of {batch_len} bytes)")
            moved += batch_len
            bar.update(moved + (helper.moved if helper is not None else 0))
    finally:
        if helper is not None:
            helper.finish()
    bar.close()


def _puppet_order(batches: list[Any], helper: "_Writer | None") -> Any:
    """The batches the puppet reads: all of them, or those it takes from
    the front before it meets the helper."""
    if helper is None:
        yield from range(len(batches))
        return
    while (k := helper.take_front()) is not None:
        yield k


class _Writer:
    """Our half of a parallel fill: a thread that takes batches from the
    back of the list and writes them into the task with process_vm_writev
    from a read-only mapping of the page file (its pages are the page
    cache's: mapped, not copied; unmapped after each batch, so our RSS
    grows by one batch at most)."""

    def __init__(self, pid: int, path: str, batches: list[tuple[int, int, list[int]]]) -> None:
        import threading
        self.pid = pid
        self.batches = batches
        self.front = 0                 # next batch for the puppet
        self.back = len(batches)       # batches[back:] are ours
        self.moved = 0
        self.error: BaseException | None = None
        self.stop = False
        self.lock = threading.Lock()
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.path = path
        self.thread = threading.Thread(target=self._run, name="procsnap-fill", daemon=True)
        self.thread.start()

    def take_front(self) -> int | None:
        with self.lock:
            if self.front >= self.back or self.error is not None:
                return None
            self.front += 1
            return self.front - 1

    def _take_back(self) -> int | None:
        with self.lock:
            if self.stop or self.front >= self.back:
                return None
            self.back -= 1
            return self.back

    def _run(self) -> None:
        try:
            while True:
                k = self._take_back()
                if k is None:
                    return
                self._write(*self.batches[k])
        except BaseException as exc:   # handed to the main thread in finish()
            self.error = exc

    def _write(self, off: int, size: int, iov_words: list[int]) -> None:
        window = _map_file(self.fd, off, size)
        try:
            n = len(iov_words) // 2
            remote = (Iovec * n)()
            for j in range(n):
                remote[j].iov_base = iov_words[2 * j]
                remote[j].iov_len = iov_words[2 * j + 1]
            local = Iovec(window, size)
            try:
                got = libc.process_vm_writev(self.pid, ctypes.byref(local), 1, remote, n, 0)
            except OSError as exc:
                raise RestoreError(f"{self.path}: writing {size} bytes from offset {off} "
                                   f"into pid {self.pid}: {exc.strerror}") from None
            if got != size:
                raise RestoreError(f"{self.path}: short write into pid {self.pid} from "
                                   f"offset {off} ({got} of {size} bytes)")
            self.moved += size
        finally:
            _unmap(window, size)

    def finish(self) -> None:
        """Wait for the thread (told to stop if the puppet failed); raise its error."""
        with self.lock:
            self.stop = True
        self.thread.join()
        os.close(self.fd)
        if self.error is not None:
            raise self.error


def _map_file(fd: int, off: int, size: int) -> int:
    return syscall(C.NR["mmap"], 0, size, C.PROT_READ, C.MAP_SHARED | C.MAP_POPULATE, fd, off)


def _unmap(addr: int, size: int) -> None:
    syscall(C.NR["munmap"], addr, size)
