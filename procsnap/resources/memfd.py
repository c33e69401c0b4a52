"""memfd files (fd kind MEMFD, memfd.img) and their mappings.

A memfd is an inode on the kernel's internal shmem mount with no name
anywhere (readlink says "/memfd:NAME (deleted)").  Its size need not be
whole pages: the last page is saved whole, bytes past the end included
(a shared mapping may have written there), and restored so.  One memfd_inode_entry
per inode holds its name, owner, size and seals; its bytes go where shared
anonymous memory's go (pagemap-shmem-ID.img, see shmem.py), read through a
pidfd_getfd copy of the fd, or through map_files for a memfd that is only
mapped.  Each open file description gets a memfd_file_entry of its own
(flags, position), so fds that share a description still do (files.py).

At restore the restorer creates the memfd, fills it, and hands a new open
file description per entry to the puppets (reopening /proc/self/fd/N makes
one); mappings map the same inode, so processes share its pages again.
Seals are applied last, once every mapping exists: F_SEAL_WRITE would
forbid the writable shared mappings that F_SEAL_FUTURE_WRITE still allows.

A MFD_HUGETLB memfd lives on the kernel's internal hugetlbfs mount, not the
shmem one: its memfd_inode_entry carries hugetlb_flag (MFD_HUGETLB and the
page size, as CRIU writes it), its huge pages are read with pread and put
back through a mapping (hugetlbfs has no write(2)).  Its contents exist
nowhere else, so --ghost-limit (meant for deleted files on disk) does not
apply, as in CRIU.

Shared anonymous memory held as a file (opened through map_files) is a
memfd named /dev/zero, and so is a MAP_PRIVATE mapping of it (zdtm
shmemfd-priv, as CRIU dumps it): mapped privately from the same object,
its untouched pages keep following the object, and the pages it wrote
itself are its own (saved in its pagemap, as for any private file
mapping).  The object's MAP_SHARED mappings are VMA_ANON_SHARED
(shmem.py), mapped at restore from this same memfd (object_fd()).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import stat as st_mod
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fown_pb2, memfd_pb2
from ..kernel import consts as C
from ..kernel.libc import fs_magic, syscall
from . import shmem
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "memfd"
FDINFO = {
    "lock": fdaudit.saved("file_lock.py: filelocks.img (with --file-locks)"),
}
TYPE = fdinfo_pb2.MEMFD
PREFIX = "/memfd:"
# The other shmem file with no name: MAP_SHARED|MAP_ANONYMOUS memory opened
# through /proc/PID/map_files (zdtm shmemfd).  CRIU saves it as a memfd
# named "/dev/zero"; we recreate it the same way it was made, so readlink
# still says "/dev/zero (deleted)".
ZERO = "/dev/zero"
DELETED = " (deleted)"
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
MFD_CLOEXEC = 1
MFD_ALLOW_SEALING = 2


def matches(fd: "FdCtx") -> bool:
    st = fd.st
    if not ((fd.link.startswith(PREFIX) or fd.link == ZERO + DELETED)
            and st is not None and st_mod.S_ISREG(st.st_mode)):
        return False
    if (os.major(st.st_dev), os.minor(st.st_dev)) == (0, 1):
        return True
    # MFD_HUGETLB: the internal hugetlbfs mount (its device number varies)
    return fd.link.startswith(PREFIX) and _hugetlb_page(f"/proc/{fd.task.pid}/fd/{fd.fd}") > 0


def _hugetlb_page(path: str) -> int:
    """The huge page size of a file on hugetlbfs, 0 for any other file."""
    try:
        if fs_magic(path) != C.HUGETLBFS_MAGIC:
            return 0
    except OSError:
        return 0
    return os.stat(path).st_blksize  # hugetlbfs reports its page size there


def _name(where: str, link: str) -> str:
    name = link[: -len(DELETED)] if link.endswith(DELETED) else link
    if not name.startswith(PREFIX):
        return name  # ZERO: shared anonymous memory opened as a file
    if name[len(PREFIX):] == ZERO:
        # CRIU's image names both the same way; restored, it would read
        # "/dev/zero (deleted)".
        raise Unsupported(f"{where}: memfd named {ZERO!r}: its image would be taken "
                          "for shared anonymous memory opened through map_files")
    return name[len(PREFIX):]


def _inodes(ctx: "DumpContext") -> dict[int, Any]:
    return ctx.kind_state.setdefault(NAME, {})


def _note_inode(ctx: "DumpContext", pid: int, link: str, source: str, where: str) -> int:
    """Record an inode once (name, owner, size, seals, contents)."""
    st = os.stat(source)
    inodes = _inodes(ctx)
    if st.st_ino in inodes:
        return st.st_ino
    shmem.claim_id(ctx, st.st_ino, st.st_dev, where)
    huge = _hugetlb_page(source)
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            seals = fcntl.fcntl(fd, F_GET_SEALS)
        except OSError:
            seals = 0  # not created with MFD_ALLOW_SEALING: F_SEAL_SEAL is implied
        if huge:
            shmem.save_hugetlb(ctx, st.st_ino, fd, st.st_size, huge, pid)
        else:
            shmem.save_object(ctx, st.st_ino, fd, st.st_size, pid)
    finally:
        os.close(fd)
    inodes[st.st_ino] = memfd_pb2.memfd_inode_entry(
        name=_name(where, link), uid=st.st_uid, gid=st.st_gid, size=st.st_size, shmid=st.st_ino,
        seals=seals, inode_id=st.st_ino, mode=st.st_mode)
    if huge:
        # MFD_HUGETLB with the page size bits of mmap (MFD_HUGE_SHIFT is 26 too)
        inodes[st.st_ino].hugetlb_flag = C.MFD_HUGETLB | (shmem.hugetlb_flags(huge) \
            & ~C.MAP_HUGETLB)
    ctx.add_shared("memfd", inodes[st.st_ino])
    return st.st_ino


def _copy_fd(pid: int, fd: int) -> str:
    """A path that opens the task's memfd (its /proc fd link works for memfds)."""
    return f"/proc/{pid}/fd/{fd}"


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    ino = _note_inode(fd.ctx, fd.task.pid, fd.link, _copy_fd(fd.task.pid, fd.fd),
                      f"pid {fd.task.pid}: fd {fd.fd}")
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, memfd=memfd_pb2.memfd_file_entry(
        id=fid, flags=fd.info.flags & ~os.O_CLOEXEC, pos=fd.info.pos, inode_id=ino,
        fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)))


def is_memfd_mapping(path: str) -> bool:
    return path.startswith(PREFIX)


def mapping_file_id(ctx: "DumpContext", task: "DumpTask", m: Any, shared: bool) -> int:
    """files.img id of a memfd file entry standing for a mapping's file."""
    source = f"/proc/{task.pid}/map_files/{m.start:x}-{m.end:x}"
    ino = _note_inode(ctx, task.pid, m.path, source,
                      f"pid {task.pid}: mapping {m.start:#x}-{m.end:#x}")
    return inode_file_id(ctx, ino, os.O_RDWR if shared and "w" in m.perms else os.O_RDONLY)


def zero_inodes(ctx: "DumpContext") -> set[int]:
    """The shared anonymous memory objects (inode numbers) saved as memfds
    named /dev/zero: a task holds them as a file."""
    return {ino for ino, e in _inodes(ctx).items() if e.name == ZERO}


def inode_file_id(ctx: "DumpContext", ino: int, flags: int) -> int:
    """files.img id of a memfd file entry on noted inode ``ino`` for
    mappings (one per inode and access mode)."""
    cache = ctx.kind_state.setdefault("memfd-map-ids", {})
    key = (ino, flags)
    if key not in cache:
        fid = ctx.new_file_id()
        ctx.files.append(fdinfo_pb2.file_entry(type=TYPE, id=fid, memfd=memfd_pb2.memfd_file_entry(
            id=fid, flags=flags, pos=0, inode_id=ino,
            fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0))))
        cache[key] = fid
    return cache[key]


# ------------------------------------------------------------- restore ----

def _made(rctx: "RestoreContext") -> dict[int, int]:
    """inode id -> the restorer's fd of the recreated memfd."""
    made = rctx.kind_state.get(NAME)
    if made is None:
        made = {}
        rctx.kind_state[NAME] = made
        path = images.image_path(rctx.images_dir, "memfd", None)
        entries = images.read_image(rctx.images_dir, "memfd") if os.path.exists(path) else []
        rctx.kind_state["memfd-inodes"] = {e.inode_id: e for e in entries}
    return made


def _inode_fd(rctx: "RestoreContext", inode_id: int) -> int:
    made = _made(rctx)
    if inode_id in made:
        return made[inode_id]
    inode = rctx.kind_state["memfd-inodes"].get(inode_id)
    if inode is None:
        raise RestoreError(f"{images.image_path(rctx.images_dir, 'memfd', None)}: "
                           f"no memfd inode {inode_id}")
    huge = inode.hugetlb_flag if inode.HasField("hugetlb_flag") else 0
    fd = _zero_file(inode.size) if inode.name == ZERO else os.memfd_create(
        inode.name, MFD_CLOEXEC | MFD_ALLOW_SEALING | huge)
    rctx.own_fds.append(fd)
    os.ftruncate(fd, inode.size)
    shmem.load_object(rctx, inode.shmid, fd, mapped=bool(huge & C.MFD_HUGETLB))
    _cut_to_size(fd, inode.size)
    os.fchown(fd, inode.uid, inode.gid)
    if inode.HasField("mode"):
        os.fchmod(fd, st_mod.S_IMODE(inode.mode))
    made[inode_id] = fd
    return fd


def object_fd(rctx: "RestoreContext", shmid: int) -> int | None:
    """The restorer's fd of shared anonymous memory object ``shmid`` when the
    images hold it as a memfd named /dev/zero too (a process had it open
    through map_files, or mapped it privately): its MAP_SHARED mappings
    must map this same file.  None when they do not."""
    _made(rctx)
    for inode in rctx.kind_state["memfd-inodes"].values():
        if inode.name == ZERO and inode.shmid == shmid:
            return _inode_fd(rctx, inode.inode_id)
    return None


def names_zero(rctx: "RestoreContext", file_id: int) -> bool:
    """Whether memfd file ``file_id`` is shared anonymous memory (the inode
    CRIU and procsnap name /dev/zero)."""
    entry = rctx.file_entry(file_id)
    _made(rctx)
    inode = rctx.kind_state["memfd-inodes"].get(entry.memfd.inode_id)
    return inode is not None and inode.name == ZERO


def _zero_file(size: int) -> int:
    """A shmem file made as the kernel makes one for MAP_SHARED|MAP_ANONYMOUS
    memory, opened through map_files, the mapping then dropped."""
    length = max(size + (-size % shmem.PAGE), shmem.PAGE)
    addr = syscall(C.NR["mmap"], 0, length, C.PROT_READ | C.PROT_WRITE,
                   C.MAP_SHARED | C.MAP_ANONYMOUS, -1, 0)
    try:
        return os.open(f"/proc/self/map_files/{addr:x}-{addr + length:x}",
                       os.O_RDWR | os.O_CLOEXEC)
    finally:
        syscall(C.NR["munmap"], addr, length)


def _cut_to_size(fd: int, size: int) -> None:
    """Back to ``size`` after whole pages were written in.  Shrinking
    zeroes the last page past the end, where a mapping may have left bytes
    (the dump saved them): those are put back through a mapping."""
    if os.fstat(fd).st_size <= size:
        return
    part = size % shmem.PAGE
    tail = os.pread(fd, shmem.PAGE - part, size) if part else b""
    os.ftruncate(fd, size)
    if tail.strip(b"\0"):
        base = size - part
        addr = syscall(C.NR["mmap"], 0, shmem.PAGE, C.PROT_READ | C.PROT_WRITE,
                       C.MAP_SHARED, fd, base)
        try:
            ctypes.memmove(addr + part, tail, len(tail))
        finally:
            syscall(C.NR["munmap"], addr, shmem.PAGE)


def _reopen(rctx: "RestoreContext", inode_id: int, flags: int, pos: int,
            first_ok: bool = True) -> int:
    base = _inode_fd(rctx, inode_id)
    given = rctx.kind_state.setdefault("memfd-given", set())
    inode = rctx.kind_state["memfd-inodes"][inode_id]
    if (first_ok and inode_id not in given and inode.name != ZERO
            and flags & os.O_ACCMODE == os.O_RDWR):
        # The description memfd_create() made is not counted as a writer
        # of the inode (no open(2) took write access), so the program can
        # execveat() its memfd; a reopen through /proc would be counted
        # and make that fail with ETXTBSY.  The first read-write entry gets
        # it, as the one the program created.
        given.add(inode_id)
        fcntl.fcntl(base, fcntl.F_SETFL, flags & ~os.O_ACCMODE)
        os.lseek(base, pos, os.SEEK_SET)
        return base
    fd = os.open(f"/proc/self/fd/{base}", (flags & ~os.O_CREAT) | os.O_CLOEXEC)
    rctx.own_fds.append(fd)
    if pos:
        os.lseek(fd, pos, os.SEEK_SET)
    return fd


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    m = entry.memfd
    return rt.grab_fd(os.getpid(), _reopen(rctx, m.inode_id, m.flags, m.pos))


def open_for_mapping(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, mode: int) -> int:
    return rt.grab_fd(os.getpid(), _reopen(rctx, entry.memfd.inode_id, mode, 0, first_ok=False))


def seal_all(rctx: "RestoreContext") -> None:
    """Apply every memfd's seals, now that all mappings exist."""
    for inode_id, fd in _made(rctx).items():
        seals = rctx.kind_state["memfd-inodes"][inode_id].seals
        # A file made without sealing (or the /dev/zero kind) has
        # F_SEAL_SEAL already: add only what is missing.
        seals &= ~fcntl.fcntl(fd, F_GET_SEALS)
        if seals:
            try:
                fcntl.fcntl(fd, F_ADD_SEALS, seals)
            except OSError as exc:
                raise RestoreError(f"memfd inode {inode_id}: cannot apply seals {seals:#x}: "
                                   f"{exc.strerror}") from None


__all__ = ["dump", "open_fd", "matches", "syscall", "Unsupported"]
