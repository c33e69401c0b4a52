"""Regular files, directories and memory devices (/dev/null, /dev/zero,
/dev/urandom, ...): fd kind REG, shared with file mappings and fs roots.

What an fd refers to is decided by identity, never by its name string:

* the open object: fstat through /proc/PID/fd/N (st_dev, st_ino, nlink,
  mode, size), cross-checked with fdinfo's ino and mnt_id;
* its file system: the fstype of that mnt_id in the target's mountinfo;
* the name: a stat of the path *as the target sees it* (through
  /proc/PID/root, in its mount namespace).

readlink's " (deleted)" suffix is only a hint.  A file may really be named
"x (deleted)", and a FUSE server that answers per caller (lxcfs) makes a
live file look deleted: a lookup by anyone but the container makes the
kernel drop the cached name, and even fstat through the fd fails ENOENT
for procsnap.  On such file systems every question goes to the target
itself -- an injected fstat/newfstatat runs in the frozen task, so the
server sees the caller it expects -- and the restore opens the file from
the restored process (open_in_puppet), never from the restorer.

The decision table (CRIU's check_path_remap, minus its trust in names):

=====================================  ====================================
the path names the same (dev, ino)     plain path; restore opens it and
                                       checks mode and size
procfs, sysfs, cgroupfs, devpts, FUSE  never ghosted or remapped: plain
                                       path, or a clear error
the name now names another object      error with expected/found dev:ino
nlink == 0 (file, directory, FIFO,     ghost image (ghost.py), --ghost-limit
device node)
nlink > 0, name gone                   file handle (reg-fh-ID.img) where
                                       the fs exports them, else a CRIU
                                       link remap with --link-remap
=====================================  ====================================
"""
from __future__ import annotations

import ctypes
import os
import stat as st_mod
import struct
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..errors import DumpError, ImageError, RestoreError, Unsupported
from ..images.magic import IMG_COMMON_MAGIC
from ..images.pb import fdinfo_pb2, fh_pb2, fown_pb2, regfile_pb2, remap_file_path_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.libc import syscall
from ..procfs.parse import MountInfo, parse_mountinfo
from .. import tmpnames
from . import ghost
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "reg"
FDINFO = {
    "lock": fdaudit.saved("file_lock.py: filelocks.img (with --file-locks)"),
}
TYPE = fdinfo_pb2.REG
DELETED = " (deleted)"
MEM_MAJOR = 1  # /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom, ...
GHOST_LIMIT = 1 << 20  # CRIU's default --ghost-limit

# Objects the kernel makes up: their names are their identity, a copy of
# their contents means nothing, and a link into them is impossible.
KERNEL_FS = {"proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs", "tracefs",
             "securityfs", "configfs", "pstore", "efivarfs", "bpf", "binfmt_misc",
             "fusectl", "mqueue", "hugetlbfs"}

O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE (os.O_TMPFILE adds O_DIRECTORY)
LINKED = remap_file_path_pb2.LINKED
GHOST = remap_file_path_pb2.GHOST
PROCFS = remap_file_path_pb2.PROCFS
AT_EMPTY_PATH = 0x1000
MAX_HANDLE_SZ = 128
FH_WORDS = 16  # fh_entry keeps at least min_entries u64 words

# struct stat on x86_64 (144 bytes): dev ino nlink mode uid gid pad rdev
# size blksize blocks atime atime_ns mtime mtime_ns ctime ctime_ns
_STAT = struct.Struct("<QQQIII4xQqqqqqqqqq")


def is_opath(fd: "FdCtx") -> bool:
    """An O_PATH fd names a place in the file system, whatever is there (a
    symlink itself with O_NOFOLLOW, a FIFO, a device, a socket file): it
    is reopened by that name with the same flags, never as the kind of
    object it points at (no tty, no FIFO is opened through it)."""
    return fd.st is not None and fd.info is not None and bool(fd.info.flags & C.O_PATH)


def matches(fd: "FdCtx") -> bool:
    st = fd.st
    if st is None:
        return False
    if is_opath(fd):
        return True
    if st_mod.S_ISREG(st.st_mode) or st_mod.S_ISDIR(st.st_mode):
        return True
    return st_mod.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == MEM_MAJOR


def _ident(st: os.stat_result) -> str:
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"


# ------------------------------------------------------------ identity ----

def _stat_result(raw: bytes) -> os.stat_result:
    (dev, ino, nlink, mode, uid, gid, rdev, size, _blksize, blocks,
     at, atn, mt, mtn, ct, ctn) = _STAT.unpack(raw[:_STAT.size])
    return os.stat_result(
        (mode, ino, dev, nlink, uid, gid, size, at, mt, ct),
        {"st_atime": at + atn / 1e9, "st_mtime": mt + mtn / 1e9, "st_ctime": ct + ctn / 1e9,
         "st_atime_ns": at * 10**9 + atn, "st_mtime_ns": mt * 10**9 + mtn,
         "st_ctime_ns": ct * 10**9 + ctn, "st_blocks": blocks, "st_rdev": rdev})


def target_stat(task: "DumpTask", *, fd: int | None = None,
                path: str | None = None) -> os.stat_result:
    """stat as the frozen target itself sees it (an injected fstat or
    newfstatat): FUSE servers answer the caller, and here that is the
    target.  Raises OSError with the target's errno."""
    inj = task.need_inj()
    try:
        buf = inj.put(bytes(_STAT.size), align=8)
        if fd is not None:
            inj.call("fstat", fd, buf)
        else:
            assert path is not None
            inj.call("newfstatat", C.AT_FDCWD & (2**64 - 1), inj.put_str(path), buf, 0)
        return _stat_result(inj.read_mem(buf, _STAT.size))
    except InjectError as exc:
        raise OSError(exc.errno, os.strerror(exc.errno or 0)) from None
    finally:
        inj.reset_scratch()


# mountinfo by (mount namespace, root): what it shows depends on nothing
# else, so the tasks of a tree share one read of it (a 200-process dump read
# and parsed it 600 times).  One dump at a time: the dump starts with
# forget_mounts().
_MOUNTS: dict[tuple[int, str], list[MountInfo]] = {}


def forget_mounts() -> None:
    _MOUNTS.clear()


def mounts(task: "DumpTask") -> list[MountInfo]:
    try:
        key = (os.stat(f"/proc/{task.pid}/ns/mnt").st_ino, os.readlink(f"/proc/{task.pid}/root"))
    except OSError:
        return task.proc.mountinfo()
    found = _MOUNTS.get(key)
    if found is None:
        found = _MOUNTS[key] = task.proc.mountinfo()
    return found


def mount_of(task: "DumpTask", mnt_id: int | None, dev: int | None) -> MountInfo | None:
    for m in mounts(task):
        if mnt_id is not None and m.mnt_id == mnt_id:
            return m
    if dev is not None:
        for m in mounts(task):
            if (m.major, m.minor) == (os.major(dev), os.minor(dev)):
                return m
    return None


def per_caller(fstype: str) -> bool:
    """File systems whose answers depend on who asks (FUSE: lxcfs & co)."""
    return fstype == "fuse" or fstype.startswith("fuse.") or fstype == "fuseblk"


def fd_stat(task: "DumpTask", fd: int, mnt_id: int | None,
            ino: int | None) -> os.stat_result | None:
    """Identity of the target's fd N: our own stat where it can be trusted,
    the target's own fstat where ours fails, lies, or may differ (FUSE)."""
    try:
        st: os.stat_result | None = os.stat(f"/proc/{task.pid}/fd/{fd}")
    except OSError:
        st = None
    mnt = mount_of(task, mnt_id, None) if mnt_id is not None else None
    if st is not None and (ino is None or st.st_ino == ino) and \
            not (mnt is not None and per_caller(mnt.fstype)):
        return st
    if task.inj is None:
        return st
    try:
        return target_stat(task, fd=fd)
    except OSError:
        return st


def mapping_stat(task: "DumpTask", link: str) -> os.stat_result:
    """Identity of a mapped file (link: /proc/PID/map_files/A-B or exe)."""
    try:
        return os.stat(link)
    except OSError as exc:
        if task.inj is None:
            raise
        try:
            return target_stat(task, path=link)
        except OSError:
            raise exc from None


# ------------------------------------------------------------ dump state --

# Bookkeeping compared by identity, without a generated repr: dataclass()
# compiles __eq__ and __repr__ at import, at every start of procsnap.
@record(eq=False, repr=False)
class DumpState:
    """Per-dump bookkeeping, kept in DumpContext.kind_state["reg"]."""
    ghost_limit: int = GHOST_LIMIT
    link_remap: bool = False
    ghosts: dict[tuple[int, int], int] = field(default_factory=dict)  # (dev, ino) -> ghost id
    links: list[str] = field(default_factory=list)


def _state(ctx: "DumpContext") -> DumpState:
    st = ctx.kind_state.get(NAME)
    if st is None:
        st = ctx.kind_state[NAME] = DumpState(
            ghost_limit=getattr(ctx.opts, "ghost_limit", GHOST_LIMIT),
            link_remap=getattr(ctx.opts, "link_remap", False))
    assert isinstance(st, DumpState)
    return st


def dump_done(ctx: "DumpContext") -> None:
    """The images are complete: link remaps now belong to them."""
    st = ctx.kind_state.get(NAME)
    if isinstance(st, DumpState):
        for path in st.links:
            tmpnames.note(ctx.images_dir, "=", path)


# ---------------------------------------------------------------- dump ----

def name_prefix(task: "DumpTask") -> str:
    """Where the names readlink gives for ``task`` are found from here.

    readlink of /proc/PID/fd/N (cwd, root) prints the path from *our*
    root, and the restore opens names before the puppet chroots: in our
    own mount namespace a name is looked up as it is, also for a
    chrooted task (whose cwd may even lie outside its root).  A task in
    another mount namespace gets names from that namespace's root,
    reached through /proc/P/root of a task of it that is not chrooted
    (DumpContext.set_fs_views decides it for the whole tree)."""
    if task.fs_prefix is None:
        try:
            same = os.stat(f"/proc/{task.pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino
        except OSError:
            same = False
        task.fs_prefix = "" if same else f"/proc/{task.pid}/root"
    return task.fs_prefix


def _name_stat(task: "DumpTask", name: str, ask_target: bool,
               follow: bool = True) -> os.stat_result | None:
    try:
        if ask_target:
            return target_stat(task, path=name)
        where = name_prefix(task) + name
        return os.stat(where) if follow else os.lstat(where)
    except OSError:
        return None


def resolve_name(task: "DumpTask", link: str, real: os.stat_result,
                 fstype: str = "?") -> tuple[str, bool, os.stat_result | None]:
    """(name, True, None) if ``link`` or ``link`` less " (deleted)" names
    ``real`` as the target sees it; else (the original name, False, what
    that name is now or None if nothing).  A symlink (an O_PATH fd on
    one) is the link itself, not what it points to."""
    ask = per_caller(fstype) and task.inj is not None and not st_mod.S_ISLNK(real.st_mode)
    follow = not st_mod.S_ISLNK(real.st_mode)
    candidates = [link]
    if link.endswith(DELETED):
        candidates.append(link[: -len(DELETED)])
    found: dict[str, os.stat_result | None] = {}
    for name in candidates:
        st = _name_stat(task, name, ask, follow)
        if st is not None and (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino):
            return name, True, None
        found[name] = st
    orig = candidates[-1]
    return orig, False, found[orig]


def _dead_pid_dir(name: str, mount_point: str, prefix: str = "") -> int | None:
    """N if ``name`` is <proc mount>/N (N a pid no process has now), else
    None.  ``prefix``: where the task's names are found from here
    (name_prefix): its /proc may show another pid namespace than ours."""
    rel = os.path.relpath(name, mount_point)
    if not rel.isdigit() or os.path.exists(prefix + os.path.join(mount_point, rel)):
        return None
    return int(rel)


def _own_mntns(pid: int) -> bool:
    """Does the task live in a mount namespace unlike the dumper's (one the
    dump saves)?  Only then does a file entry name its mount, as criu's:
    criu's restore looks a mnt_id up among the mounts it restores, and
    with none restored it cannot place a ghost file's link (ENOENT)."""
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return False


def describe_path(task: "DumpTask", link: str, real: os.stat_result, fid: int, flags: int,
                  pos: int, what: str, mnt_id: int | None = None, *,
                  ctx: "DumpContext | None" = None, source: str | None = None,
                  ghost_only: bool = False) -> Any:
    """A files.img entry (type REG) for an object the task holds.

    ``source`` is a magic link procsnap can open the object by
    (/proc/PID/fd/N, map_files, exe); with ``ctx`` too, unlinked files are
    kept (ghost, handle, link remap) instead of refused; ``ghost_only``
    (cwd and root, restored by name with chdir/chroot) keeps deleted ones
    only.
    """
    mnt = mount_of(task, mnt_id, real.st_dev)
    fstype = mnt.fstype if mnt is not None else "?"
    pid = task.pid
    name, same, now = resolve_name(task, link, real, fstype)

    def entry(path: str) -> Any:
        reg = regfile_pb2.reg_file_entry(
            id=fid, flags=flags, pos=pos, name=path, mode=real.st_mode,
            fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0))
        # CRIU skips the size check for O_WRONLY|O_APPEND (log files grow).
        if st_mod.S_ISREG(real.st_mode) and not (
                flags & os.O_ACCMODE == os.O_WRONLY and flags & os.O_APPEND):
            reg.size = real.st_size
        if mnt_id is not None and _own_mntns(pid):
            reg.mnt_id = mnt_id
        return fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=fid, reg=reg)

    if same:
        return entry(name)
    if fstype == "proc" and ctx is not None and what == "cwd" and mnt is not None:
        dead = _dead_pid_dir(name, mnt.mount_point, name_prefix(task))
        if dead is not None:
            # tree2: a cwd in the /proc directory of a process that is gone
            # (zdtm unhashed_proc): as CRIU's REMAP_TYPE_PROCFS, remap_id is
            # the pid; the restore makes a helper of that pid for the chdir
            # (fs.restore) and lets it die, which unhashes the directory again.
            ctx.add_shared("remap-fpath", remap_file_path_pb2.remap_file_path_entry(
                orig_id=fid, remap_id=dead, remap_type=PROCFS))
            return entry(name)
    if fstype in KERNEL_FS or per_caller(fstype):
        state = "now names another object" if now is not None else "is gone"
        raise DumpError(f"pid {pid}: {what}: {link} on {fstype}: the name {state}, and files "
                        f"on {fstype} are only ever reopened by name (never ghosted or "
                        "link-remapped)")
    # A deleted file (nlink 0) is a ghost even when its old name now names
    # another file (unlinked, then created again under that name): the
    # ghost is made under a name of its own, the new file is left alone.
    if now is not None and real.st_nlink != 0:
        raise DumpError(f"pid {pid}: {what}: {name} now names another file: "
                        f"expected {_ident(real)}, found {_ident(now)} (renamed or replaced "
                        "after it was opened)")
    if not name.startswith("/"):
        raise Unsupported(f"pid {pid}: {what}: {link}: not a path procsnap can reopen")
    if ctx is None or source is None or (ghost_only and real.st_nlink != 0):
        raise Unsupported(f"pid {pid}: {what}: {link} is unlinked (nlink {real.st_nlink}); "
                          "an unlinked file here is not supported yet")
    if real.st_nlink == 0:
        if not (st_mod.S_ISREG(real.st_mode) or st_mod.S_ISDIR(real.st_mode)
                or st_mod.S_ISFIFO(real.st_mode) or st_mod.S_ISCHR(real.st_mode)
                or st_mod.S_ISBLK(real.st_mode) or st_mod.S_ISLNK(real.st_mode)):
            raise Unsupported(f"pid {pid}: {what}: {link}: a deleted file of mode "
                              f"{real.st_mode:o} cannot be saved")
        _dump_ghost(ctx, task, name, real, fid, source, what)
        return entry(name)
    if mnt is not None and _dump_handle(ctx, fid, name, source, mnt):
        return entry(name)
    _dump_link_remap(ctx, task, name, real, fid, source, what)
    return entry(name)


def _dump_ghost(ctx: "DumpContext", task: "DumpTask", name: str, real: os.stat_result,
                fid: int, source: str, what: str) -> None:
    state = _state(ctx)
    key = (real.st_dev, real.st_ino)
    gid = state.ghosts.get(key)
    if gid is None:
        cost = ghost.stored_size(source, real)
        if cost > state.ghost_limit:
            raise DumpError(f"pid {task.pid}: {what}: {name} is deleted and its contents "
                            f"({cost} bytes of data, size {real.st_size}) would be saved as a "
                            f"ghost file, over the limit of {state.ghost_limit} bytes: "
                            "raise it with --ghost-limit")
        gid = len(state.ghosts) + 1
        ctx.created.append(images.image_path(ctx.images_dir, "ghost-file", gid))
        ghost.dump(ctx.images_dir, gid, source, real)
        state.ghosts[key] = gid
    ctx.add_shared("remap-fpath", remap_file_path_pb2.remap_file_path_entry(
        orig_id=fid, remap_id=gid, remap_type=GHOST))


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint32), ("handle_type", ctypes.c_int32),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def _dump_handle(ctx: "DumpContext", fid: int, name: str, source: str, mnt: MountInfo) -> bool:
    """Record a file handle for a file whose name is gone but which has
    other links; False where the file system does not export handles."""
    fh = _FileHandle(handle_bytes=MAX_HANDLE_SZ)
    mount_id = ctypes.c_int(0)
    empty = ctypes.c_char_p(b"")
    try:
        pfd = os.open(source, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        syscall(C.NR["name_to_handle_at"], pfd, ctypes.cast(empty, ctypes.c_void_p).value or 0,
                ctypes.addressof(fh), ctypes.addressof(mount_id), AT_EMPTY_PATH)
    except OSError:
        return False  # EOPNOTSUPP, EOVERFLOW, ...: not exportable
    finally:
        os.close(pfd)
    raw = bytes(fh.f_handle[: fh.handle_bytes]).ljust(FH_WORDS * 8, b"\0")
    words = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
    msg = fh_pb2.fh_entry(bytes=fh.handle_bytes, type=fh.handle_type, handle=words,
                          path=mnt.mount_point, mnt_id=mnt.mnt_id)
    path = fh_image(ctx.images_dir, fid)
    ctx.created.append(path)
    _write_fh(path, msg)
    return True


# reg-fh-ID.img is procsnap's own image (CRIU keeps no handles for open
# files), so it is not in the CRIU kind table that crit must decode; it is
# framed the same way: common magic, its magic, one size-prefixed fh_entry.
FH_MAGIC = 0x5A163442
_U32x3 = struct.Struct("<III")


def fh_image(images_dir: str, fid: int) -> str:
    return os.path.join(images_dir, f"reg-fh-{fid:x}.img")


def _write_fh(path: str, msg: Any) -> None:
    data = msg.SerializeToString()
    tmp = f"{path}.part"
    with open(tmp, "wb") as f:
        f.write(_U32x3.pack(IMG_COMMON_MAGIC, FH_MAGIC, len(data)) + data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _read_fh(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ImageError(path, f"cannot read: {exc.strerror}") from None
    if len(raw) < _U32x3.size:
        raise ImageError(path, "truncated file handle image")
    common, magic, size = _U32x3.unpack_from(raw)
    if (common, magic) != (IMG_COMMON_MAGIC, FH_MAGIC) or len(raw) != _U32x3.size + size:
        raise ImageError(path, "not a procsnap file handle image (bad magic or size)")
    msg = fh_pb2.fh_entry()
    try:
        msg.ParseFromString(raw[_U32x3.size:])
    except Exception as exc:  # protobuf's DecodeError
        raise ImageError(path, f"damaged fh_entry: {exc}") from None
    if msg.bytes > MAX_HANDLE_SZ or msg.bytes > len(msg.handle) * 8:
        raise ImageError(path, f"file handle of {msg.bytes} bytes does not fit")
    return msg


def _our_path(task: "DumpTask", path: str) -> str:
    """``path`` of the target as procsnap can reach it, also after the
    target is gone (the journal and cleanup need that): the path itself
    when we share its mount namespace (names are ours then, see
    name_prefix), else through its root."""
    return name_prefix(task) + path


def _dump_link_remap(ctx: "DumpContext", task: "DumpTask", name: str, real: os.stat_result,
                     fid: int, source: str, what: str) -> None:
    state = _state(ctx)
    if not state.link_remap:
        raise DumpError(f"pid {task.pid}: {what}: {name} was unlinked but has other names "
                        f"(nlink {real.st_nlink}) and its file system gives no file handles: "
                        "a link remap is needed; allow it with --link-remap")
    lid = ctx.new_file_id()
    # CRIU's name: beside the original, "link_remap.<id of its file entry>".
    link = os.path.join(os.path.dirname(name), f"link_remap.{lid}")
    outside = _our_path(task, link)
    tmpnames.note(ctx.images_dir, "+", outside)
    ctx.created.append(outside)
    # linkat(AT_EMPTY_PATH) on an O_PATH open of the magic link, as CRIU
    # does: following the magic link by name reaches overlayfs's backing
    # file on the upper layer, and linking that into the overlay is EXDEV.
    empty = ctypes.c_char_p(b"")
    dst = ctypes.c_char_p(outside.encode("utf-8", "surrogateescape"))
    try:
        pfd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        try:
            syscall(C.NR["linkat"], pfd, ctypes.cast(empty, ctypes.c_void_p).value or 0,
                    C.AT_FDCWD, ctypes.cast(dst, ctypes.c_void_p).value or 0, AT_EMPTY_PATH)
        finally:
            os.close(pfd)
    except OSError as exc:
        raise DumpError(f"pid {task.pid}: {what}: cannot link {name} back as {link}: "
                        f"{os.strerror(exc.errno or 0)}") from None
    state.links.append(outside)
    reg = regfile_pb2.reg_file_entry(
        id=lid, flags=0, pos=0, name=link,
        fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0))
    ctx.files.append(fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=lid, reg=reg))
    ctx.add_shared("remap-fpath", remap_file_path_pb2.remap_file_path_entry(
        orig_id=fid, remap_id=lid, remap_type=LINKED))


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.st is not None and fd.info is not None
    flags = fd.info.flags & ~os.O_CLOEXEC
    pos = fd.info.pos
    return describe_path(fd.task, fd.link, fd.st, fid, flags, pos, what=f"fd {fd.fd}",
                         mnt_id=fd.info.mnt_id, ctx=fd.ctx,
                         source=f"/proc/{fd.task.pid}/fd/{fd.fd}")


# ------------------------------------------------------------- restore ----

@record(eq=False, repr=False)
class RestoreState:
    """Per-restore bookkeeping, kept in RestoreContext.kind_state["reg"]."""
    remaps: dict[int, Any] = field(default_factory=dict)   # orig file id -> remap entry
    # ghost id -> (path as the tree sees it, the same as procsnap reaches
    # it (RestoreContext.tree_path), is_dir)
    ghosts: dict[int, tuple[str, str, bool]] = field(default_factory=dict)
    parents: list[str] = field(default_factory=list)  # deleted directories made for ghosts (ours)
    links: set[str] = field(default_factory=set)  # link remaps used (as procsnap reaches them)
    handles: set[int] | None = None  # file ids with a reg-fh image (listed once)


def _rstate(rctx: "RestoreContext") -> RestoreState:
    st = rctx.kind_state.get(NAME)
    if st is None:
        st = RestoreState()
        path = images.image_path(rctx.images_dir, "remap-fpath", None)
        if os.path.exists(path):
            for r in images.read_image(rctx.images_dir, "remap-fpath"):
                st.remaps[r.orig_id] = r
        rctx.kind_state[NAME] = st
    assert isinstance(st, RestoreState)
    return st


def reopened_by_name(rctx: "RestoreContext", entry: Any) -> bool:
    """Whether the restore opens this REG entry by its saved name -- not
    through a ghost or link remap, nor a file handle -- so that the kernel
    shows that name for its fds and mappings (procsnap.verify compares it)."""
    st = _rstate(rctx)
    if entry.id in st.remaps:
        return False
    if st.handles is None:
        # one listing, not a stat per file (10,000 fds on 10,000 files)
        st.handles = {int(n[7:-4], 16) for n in os.listdir(rctx.images_dir)
                      if n.startswith("reg-fh-") and n.endswith(".img")}
    return entry.id not in st.handles


def restore_path(rctx: "RestoreContext", entry: Any) -> str:
    name = entry.reg.name
    if not name.startswith("/"):
        name = "/" + name
    return name


def _ghost_path(rctx: "RestoreContext", name: str, gid: int) -> str:
    """Where ghost ``gid`` is made again (once), under a temporary name that
    restore_done() removes."""
    state = _rstate(rctx)
    made = state.ghosts.get(gid)
    if made is None:
        # A directory comes back under its own name when that is free, as
        # CRIU does: a deleted cwd then reads "DIR (deleted)" exactly as
        # before.  Anything else gets CRIU's NAME.cr.ID.ghost.
        # Names are the tree's: made through tree_path, opened by the
        # puppet as they are.
        if st_mod.S_ISDIR(ghost.entry(rctx.images_dir, gid).mode) \
                and not os.path.lexists(rctx.tree_path(name)):
            path = name
        else:
            path = ghost.path_for(name, gid)
        _make_parents(rctx, state, os.path.dirname(path))
        ours = rctx.tree_path(path)
        _journal(rctx, "+", ours)
        try:
            is_dir = ghost.create(rctx.images_dir, gid, ours, shown=path)
        except BaseException:
            tmpnames.remove(None, ours)
            raise
        made = state.ghosts[gid] = (path, ours, is_dir)
    return made[0]


def _journal(rctx: "RestoreContext", state: str, path: str) -> None:
    try:
        tmpnames.note(rctx.images_dir, state, path)
    except OSError:
        pass  # a read-only images dir: no journal, the name is still removed


def _make_parents(rctx: "RestoreContext", state: "RestoreState", parent: str) -> None:
    """Make the directories a ghost needs that were deleted too (a file or
    directory open under a removed directory), as temporary names that
    restore_done() removes after the ghost, deepest first."""
    missing = []
    while parent not in ("", "/") and not os.path.lexists(rctx.tree_path(parent)):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for d in reversed(missing):
        ours = rctx.tree_path(d)
        _journal(rctx, "+", ours)
        try:
            os.mkdir(ours, 0o700)
        except OSError as exc:
            tmpnames.remove(None, ours, is_dir=True)
            raise RestoreError(f"{d}: cannot make the deleted directory a ghost needs again: "
                               f"{exc.strerror}") from None
        state.parents.append(ours)


def dead_pid(rctx: "RestoreContext", fid: int) -> int | None:
    """The pid of the gone process whose /proc directory file ``fid`` is
    (a PROCFS remap), or None."""
    remap = _rstate(rctx).remaps.get(fid)
    return remap.remap_id if remap is not None and remap.remap_type == PROCFS else None


def node_path(rctx: "RestoreContext", entry: Any) -> str:
    """The path the restorer opens a REG entry's node by (fifo.py): its
    name, or its ghost made again."""
    remap = _rstate(rctx).remaps.get(entry.id)
    if remap is not None and remap.remap_type == GHOST:
        return _ghost_path(rctx, restore_path(rctx, entry), remap.remap_id)
    return restore_path(rctx, entry)


def open_entry(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, flags: int,
               check: bool = True) -> int:
    """Open the file of a REG entry inside the puppet, through its remap
    (ghost, link, handle) if it has one; checks mode and size."""
    state = _rstate(rctx)
    remap = state.remaps.get(entry.id)
    name = restore_path(rctx, entry)
    chk = entry if check else None
    # open_in_puppet runs it on the new fd, before the scratch area is reused
    after = (lambda fd: check_opened(rctx, rt, fd, entry)) if check else None
    if remap is None:
        fh = fh_image(rctx.images_dir, entry.id)
        if os.path.exists(fh):
            return _open_by_handle(rctx, rt, entry, fh, flags, chk)
        return rt.open_in_puppet(name, flags, check=after)
    if remap.remap_type == LINKED:
        link = restore_path(rctx, rctx.file_entry(remap.remap_id))
        fd = rt.open_in_puppet(link, flags, check=after)
        state.links.add(rctx.tree_path(link))
        return fd
    if remap.remap_type == GHOST:
        gpath = _ghost_path(rctx, name, remap.remap_id)
        if flags & O_TMPFILE_BIT:
            return _open_tmpfile(rctx, rt, gpath, remap.remap_id, flags, after)
        return rt.open_in_puppet(gpath, flags, check=after)
    raise ImageError(images.image_path(rctx.images_dir, "remap-fpath", None),
                     f"file id {entry.id}: remap type {remap.remap_type} is not supported")


def _open_tmpfile(rctx: "RestoreContext", rt: "RestoreTask", gpath: str, gid: int, flags: int,
                  after: Any) -> int:
    """An O_TMPFILE file (never named): made again with O_TMPFILE in the
    ghost's directory and filled from the ghost, inside the puppet, so
    its open flags are what they were (fcntl(F_GETFL) shows O_TMPFILE, and
    no fcntl can set it afterwards).  Contents are copied with
    copy_file_range (holes become zeros on file systems that cannot keep
    them in a copy); owner, mode and times are set last."""
    inj = rt.inj
    gfe = ghost.entry(rctx.images_dir, gid)
    try:
        fd = inj.call("openat", C.AT_FDCWD & (2**64 - 1), inj.put_str(os.path.dirname(gpath)),
                      flags | (C.O_CLOEXEC if rt.open_cloexec else 0), 0o600)
        src = inj.call("openat", C.AT_FDCWD & (2**64 - 1), inj.put_str(gpath),
                       os.O_RDONLY | C.O_CLOEXEC, 0)
        try:
            while inj.call("copy_file_range", src, 0, fd, 0, 1 << 30, 0) > 0:
                pass
        finally:
            inj.call("close", src)
        inj.call("lseek", fd, 0, os.SEEK_SET)
        inj.call("fchown", fd, gfe.uid, gfe.gid)
        inj.call("fchmod", fd, st_mod.S_IMODE(gfe.mode))
        if gfe.HasField("atim") and gfe.HasField("mtim"):
            times = inj.put(struct.pack("<qqqq", gfe.atim.tv_sec, gfe.atim.tv_usec * 1000,
                                        gfe.mtim.tv_sec, gfe.mtim.tv_usec * 1000), align=8)
            inj.call("utimensat", fd, 0, times, 0)
    except InjectError as exc:
        raise RestoreError(f"{gpath}: cannot make the O_TMPFILE file again for pid {rt.pid}: "
                           f"{os.strerror(exc.errno or 0)}") from None
    if after is not None:
        after(fd)
    inj.reset_scratch()
    return fd


def _open_by_handle(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, img: str,
                    flags: int, chk: Any) -> int:
    fh = _read_fh(img)
    raw = b"".join(w.to_bytes(8, "little") for w in fh.handle)[: fh.bytes]
    name = restore_path(rctx, entry)
    inj = rt.inj
    # not O_PATH: open_by_handle_at wants a real open fd on the mount (EBADF)
    mfd = rt.open_in_puppet(fh.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        addr = inj.put(struct.pack("<Ii", fh.bytes, fh.type) + raw, align=8)
        fd = inj.call("open_by_handle_at", mfd, addr, flags)
    except InjectError as exc:
        raise RestoreError(f"{name}: cannot reopen the unlinked file by its handle on "
                           f"{fh.path}: {os.strerror(exc.errno or 0)}") from None
    finally:
        inj.call("close", mfd)
    if chk is not None:
        check_opened(rctx, rt, fd, chk)
    inj.reset_scratch()
    return fd


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    reg = entry.reg
    flags = reg.flags & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
    if st_mod.S_ISCHR(reg.mode or 0):
        # a console or VT (tty.py) must not become a controlling terminal
        # by being opened (O_NOCTTY is not kept in the file's flags)
        flags |= os.O_NOCTTY
    fd = open_entry(rctx, rt, entry, flags)
    if reg.pos and not st_mod.S_ISCHR(reg.mode or 0):
        if _on_fuse(rt, fd):
            # lxcfs & co. build their answer on a read at offset 0 and serve
            # later reads from it: a file only sought past 0 reads EOF.  One
            # byte read at 0 by the owner makes the answer (a fresh one: its
            # numbers are today's, as any reader of a live file sees them).
            inj = rt.inj
            inj.call("pread64", fd, inj.put(bytes(8), align=8), 1, 0)
            inj.reset_scratch()
        rt.inj.call("lseek", fd, reg.pos, os.SEEK_SET)
    return fd


def restore_done(rctx: "RestoreContext", ok: bool) -> None:
    """Remove the ghosts (always: they are our temporary names) and, once
    the restore succeeded, the link remaps the dump made (on failure they
    stay: the images need them for another try)."""
    st = rctx.kind_state.get(NAME)
    if not isinstance(st, RestoreState):
        return
    for _, ours, is_dir in st.ghosts.values():
        tmpnames.remove(rctx.images_dir, ours, is_dir=is_dir)
    st.ghosts.clear()
    for path in reversed(st.parents):
        try:
            tmpnames.remove(rctx.images_dir, path, is_dir=True)
        except OSError:
            pass  # something else was put in it meanwhile: leave it (journaled)
    st.parents.clear()
    if ok:
        for path in sorted(st.links):
            tmpnames.remove(rctx.images_dir, path)
        st.links.clear()


def _fstype(rt: "RestoreTask", fd: int) -> str | None:
    """The file system type of the puppet's fd: fdinfo's mnt_id and the
    puppet's mountinfo say so without asking the filesystem itself."""
    with open(f"/proc/{rt.pid}/fdinfo/{fd}") as f:
        mnt_id = next((int(line.split()[1]) for line in f if line.startswith("mnt_id:")), None)
    mounts = rt._mounts
    if mounts is None or mnt_id not in mounts:
        with open(f"/proc/{rt.pid}/mountinfo") as f:
            mounts = rt._mounts = {m.mnt_id: m.fstype for m in parse_mountinfo(f.read())}
    if mnt_id is not None and mnt_id not in mounts:
        # opened by procsnap for a puppet in a new user namespace
        # (RestoreTask.open_in_puppet): a mount of procsnap's namespace
        with open("/proc/self/mountinfo") as f:
            mine = {m.mnt_id: m.fstype for m in parse_mountinfo(f.read())}
        return mine.get(mnt_id, "fuse")
    return None if mnt_id is None else mounts.get(mnt_id, "fuse")


def _on_fuse(rt: "RestoreTask", fd: int) -> bool:
    """Is the puppet's fd on a FUSE mount (or one we cannot tell)?"""
    fstype = _fstype(rt, fd)
    return fstype is None or per_caller(fstype)


# File systems whose files are views generated at each open (lxcfs's /proc
# and /sys): a size is the length of the text of the moment (lxcfs's
# /proc/stat grows a digit with the host's load), not the file's identity.
GENERATED_FS = ("fuse.lxcfs",)


def check_opened(rctx: "RestoreContext", rt: "RestoreTask", fd: int, entry: Any) -> None:
    """Refuse a file that changed since the dump (type/mode, and size if
    it was not open for writing)."""
    reg = entry.reg
    if not reg.HasField("mode") or rctx.opts.skip_file_check:
        return
    fstype = _fstype(rt, fd)
    if fstype is not None and not per_caller(fstype):
        # From outside through the puppet's fd: a plain stat, no injected
        # call (a tenth of the cost, and it adds up over 10,000 fds).
        now = os.stat(f"/proc/{rt.pid}/fd/{fd}")
    else:
        # A FUSE server may answer each caller differently: ask as the owner.
        buf = rt.inj.put(bytes(_STAT.size), align=8)
        rt.inj.call("fstat", fd, buf)
        now = _stat_result(rt.inj.read_mem(buf, _STAT.size))
    name = restore_path(rctx, entry)
    if now.st_mode != reg.mode:
        raise RestoreError(f"{name}: mode changed since the dump ({reg.mode:o} -> "
                           f"{now.st_mode:o}); use --skip-file-check to restore anyway")
    writable = reg.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    if st_mod.S_ISREG(now.st_mode) and reg.HasField("size") and not writable \
            and now.st_size != reg.size and fstype not in GENERATED_FS:
        raise RestoreError(f"{name}: size changed since the dump ({reg.size} -> "
                           f"{now.st_size} bytes); use --skip-file-check to restore anyway")
