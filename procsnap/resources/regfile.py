"""Regular files, directories and memory devices (/dev/null, /dev/zero,
/dev/urandom, ...): fd kind REG, shared with file mappings and fs roots.

A file is judged by identity -- (st_dev, st_ino) of the open file -- and
the path is accepted only if it names that same object *as the target
sees it* (through /proc/PID/root).  readlink's " (deleted)" suffix is only
a hint: a live file may be reported so (a FUSE server that answers per
caller, as lxcfs does) and a file may really be named "x (deleted)".
"""
from __future__ import annotations

import os
import stat as st_mod
import struct
from typing import TYPE_CHECKING, Any

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fown_pb2, regfile_pb2

if TYPE_CHECKING:
    from ..dump import DumpTask
    from ..restore import RestoreContext, RestoreTask
    from .files import FdCtx

NAME = "reg"
TYPE = fdinfo_pb2.REG
DELETED = " (deleted)"
MEM_MAJOR = 1  # /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom, ...


def matches(fd: "FdCtx") -> bool:
    st = fd.st
    if st is None:
        return False
    if st_mod.S_ISREG(st.st_mode) or st_mod.S_ISDIR(st.st_mode):
        return True
    return st_mod.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == MEM_MAJOR


def _ident(st: os.stat_result) -> str:
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"


def resolve_name(task: "DumpTask", link: str, real: os.stat_result, what: str) -> str:
    """The path that names ``real`` for the task, or an error saying why not."""
    root = f"/proc/{task.pid}/root"
    candidates = [link]
    if link.endswith(DELETED):
        candidates.append(link[: -len(DELETED)])
    found = None
    for name in candidates:
        try:
            st = os.stat(root + name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (real.st_dev, real.st_ino):
            return name
        found = found or (name, st)
    if real.st_nlink == 0:
        raise Unsupported(f"pid {task.pid}: {what}: {link} is deleted (nlink 0); "
                          "deleted files are not supported yet")
    if found is None and link.endswith(DELETED):
        raise Unsupported(f"pid {task.pid}: {what}: {link} was unlinked but has other names "
                          f"(nlink {real.st_nlink}); this is not supported yet")
    if found is None:
        raise DumpError(f"pid {task.pid}: {what}: {link} no longer exists "
                        f"(the open file is {_ident(real)})")
    raise DumpError(f"pid {task.pid}: {what}: {found[0]} now names another file: "
                    f"expected {_ident(real)}, found {_ident(found[1])}")


def describe_path(task: "DumpTask", link: str, real: os.stat_result, fid: int, flags: int,
                  pos: int, what: str, mnt_id: int | None = None) -> Any:
    """A files.img entry (type REG) for an object the task holds."""
    name = resolve_name(task, link, real, what)
    reg = regfile_pb2.reg_file_entry(
        id=fid, flags=flags, pos=pos, name=name, size=real.st_size, mode=real.st_mode,
        fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0))
    if mnt_id is not None:
        reg.mnt_id = mnt_id
    return fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=fid, reg=reg)


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.st is not None and fd.info is not None
    flags = fd.info.flags & ~os.O_CLOEXEC
    pos = fd.info.pos
    return describe_path(fd.task, fd.link, fd.st, fid, flags, pos,
                         what=f"fd {fd.fd}", mnt_id=fd.info.mnt_id)


def restore_path(rctx: "RestoreContext", entry: Any) -> str:
    name = entry.reg.name
    if not name.startswith("/"):
        name = "/" + name
    return name


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    reg = entry.reg
    flags = reg.flags & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
    fd = rt.open_in_puppet(restore_path(rctx, entry), flags, check=entry)
    if reg.pos and not st_mod.S_ISCHR(reg.mode or 0):
        rt.inj.call("lseek", fd, reg.pos, os.SEEK_SET)
    return fd


_STAT = struct.Struct("<QQQIII4xQqqq")  # dev ino nlink mode uid gid rdev size blksize blocks


def check_opened(rctx: "RestoreContext", rt: "RestoreTask", fd: int, entry: Any) -> None:
    """Refuse a file that changed since the dump (type/mode, and size if read-only)."""
    reg = entry.reg
    if not reg.HasField("mode") or rctx.opts.skip_file_check:
        return
    buf = rt.inj.put(bytes(144), align=8)
    rt.inj.call("fstat", fd, buf)
    dev, ino, nlink, mode, uid, gid, rdev, size, _, _ = _STAT.unpack(rt.inj.read_mem(buf, _STAT.size))
    name = restore_path(rctx, entry)
    if mode != reg.mode:
        raise RestoreError(f"{name}: mode changed since the dump ({reg.mode:o} -> {mode:o}); "
                           "use --skip-file-check to restore anyway")
    writable = reg.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    if st_mod.S_ISREG(mode) and reg.HasField("size") and not writable and size != reg.size:
        raise RestoreError(f"{name}: size changed since the dump ({reg.size} -> {size} bytes); "
                           "use --skip-file-check to restore anyway")
