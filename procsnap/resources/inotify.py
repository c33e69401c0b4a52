"""inotify (fd kind INOTIFY, inline in files.img as file_entry.ify).

Each watch is one fdinfo line: "inotify wd:.. ino:.. sdev:.. mask:..
ignored_mask:.. fhandle-bytes:.. fhandle-type:.. f_handle:.." (all hex).
The kernel keeps no name for a watch, only the inode; the dumper opens the
inode by its file handle (open_by_handle_at on a mount of that device),
reads the name of what it opened and checks that the name leads to the
same inode *as the task sees it*.  The path goes into fh_entry.path, which
CRIU's restore also prefers to the handle.  A watch whose inode has no
such name (on a mount the task cannot see) is a dump error.

A watch on a deleted file (zdtm inotify00): the file must be held by an
fd of the tree -- it is then a ghost or link remap of the dump and comes
back as the file that fd has -- and the watch names that file
(``target_id``, a procsnap field).  At restore such an inotify fd gets
its watches late, from the restorer, once the ghost and link-remap names
are gone: added earlier, a watch on the file or its directory would
queue the events of our own temporary names (IN_CREATE, IN_DELETE,
IN_ATTRIB).  A deleted file only a mapping or another process keeps is
refused.

At restore the watches are added again in wd order with
INOTIFY_IOC_SETNEXTWD, so each gets its old wd back; a different wd is an
error (the program would not recognise its events).

Events queued on the fd and not yet read refuse the dump (CRIU drops
them without a word): the kernel offers no way to read them without
consuming them, and none to queue an event again, so they can be neither
saved nor given back.  The refusal leaves them in the queue.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fh_pb2, fsnotify_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.libc import pidfd_getfd, syscall
from ..procfs.parse import fdinfo_records
from . import anonfd
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx


NAME = "inotify"
FDINFO = {
    "inotify wd": fdaudit.saved("one inotify_wd_entry per watch"),
}
TYPE = fdinfo_pb2.INOTIFY
FH_WORDS = 16          # fh_entry.handle: at least min_entries u64 words
MAX_HANDLE_SZ = 128
# What inotify_add_watch() takes back: the events plus IN_EXCL_UNLINK and
# IN_ONESHOT.  Other bits fdinfo may show are the kernel's own.
WATCH_MASK = 0xFFF | 0x04000000 | 0x80000000
DELETED = " (deleted)"


def matches(fd: "FdCtx") -> bool:
    # An inotify fd without watches prints no "inotify" line: the readlink
    # (no brackets for inotify) is what we have then.
    return fd.link == "anon_inode:inotify" and fd.info is not None


def _kdev(sdev: int) -> tuple[int, int]:
    # fdinfo prints the kernel's internal dev_t: major << 20 | minor.
    return sdev >> 20, sdev & 0xFFFFF


def _handle_words(raw: bytes) -> list[int]:
    padded = raw.ljust(FH_WORDS * 8, b"\0")
    return list(struct.unpack(f"<{len(padded) // 8}Q", padded))


def _open_handle(mount_dir: str, htype: int, raw: bytes) -> int:
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("<Ii", buf, 0, len(raw), htype)
    ctypes.memmove(ctypes.addressof(buf) + 8, raw, len(raw))
    # Not O_PATH: open_by_handle_at() refuses an O_PATH mount fd (EBADF).
    mfd = os.open(mount_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return syscall(C.NR["open_by_handle_at"], mfd, ctypes.addressof(buf),
                       C.O_PATH | os.O_CLOEXEC)
    finally:
        os.close(mfd)


def resolve_watch(task: "DumpTask", what: str, sdev: int, ino: int, htype: int,
                  raw: bytes, deleted_ok: bool = False) -> str | None:
    """The path, as ``task`` sees it, of the inode an inotify watch is on;
    None for a deleted file when ``deleted_ok`` (the caller finds an fd of
    the tree holding it)."""
    pid = task.pid
    major, minor = _kdev(sdev)
    root = f"/proc/{pid}/root"
    tried = []
    for m in task.proc.mountinfo():
        if (m.major, m.minor) != (major, minor):
            continue
        try:
            ofd = _open_handle(root + m.mount_point, htype, raw)
        except OSError as exc:
            tried.append(f"{m.mount_point}: {exc.strerror}")
            continue
        try:
            path = os.readlink(f"/proc/self/fd/{ofd}")
            st = os.fstat(ofd)
        finally:
            os.close(ofd)
        if st.st_ino != ino:
            tried.append(f"{m.mount_point}: handle opened inode {st.st_ino}")
            continue
        if path.endswith(DELETED) and st.st_nlink == 0:
            if deleted_ok:
                return None
            # A ghost would have to be made, watched and unlinked again in
            # its directory: a watch on that directory would then find
            # IN_CREATE/IN_DELETE events in its queue that never happened.
            raise DumpError(f"pid {pid}: {what}: the watched file {path} is deleted; a watch "
                            "on a deleted file cannot be restored without queueing events "
                            "that never happened")
        try:
            seen = os.stat(root + path)
        except OSError as exc:
            tried.append(f"{path}: {exc.strerror} for the task")
            continue
        if (seen.st_dev, seen.st_ino) == (st.st_dev, st.st_ino):
            return path
        tried.append(f"{path} names another file for the task")
    why = "; ".join(tried) if tried else "no mount of that device is visible to the task"
    raise DumpError(f"pid {pid}: {what}: cannot find a path for the watched inode "
                    f"{ino} on device {major}:{minor} ({why})")


def _queued(fd: "FdCtx") -> int:
    inj = fd.task.need_inj()
    buf = inj.put(bytes(4), align=4)
    inj.call("ioctl", fd.fd, C.FIONREAD, buf)
    n: int = struct.unpack("<i", inj.read_mem(buf, 4))[0]
    inj.reset_scratch()
    return n


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    pid = fd.task.pid
    flags = anonfd.file_flags(fd, "inotify")
    queued = _queued(fd)
    if queued:
        raise Unsupported(f"pid {pid}: fd {fd.fd}: inotify: {queued} bytes of events are "
                          "queued and not yet read; they can neither be read without "
                          "consuming them nor queued again")
    watches = []
    for rec in fdinfo_records(fd.info, "inotify"):
        try:
            wd = int(rec["wd"], 16)
            what = f"fd {fd.fd}: inotify watch {wd}"
            sdev, ino = int(rec["sdev"], 16), int(rec["ino"], 16)
            nbytes, htype = int(rec["fhandle-bytes"], 16), int(rec["fhandle-type"], 16)
            raw = bytes.fromhex(rec["f_handle"])
            mask, ignored = int(rec["mask"], 16), int(rec.get("ignored_mask", "0"), 16)
        except (KeyError, ValueError) as exc:
            raise DumpError(f"pid {pid}: fd {fd.fd}: inotify fdinfo line {rec}: {exc}") from None
        if nbytes != len(raw) or nbytes > MAX_HANDLE_SZ:
            raise DumpError(f"pid {pid}: {what}: file handle of {nbytes} bytes, "
                            f"fdinfo shows {len(raw)}")
        path = resolve_watch(fd.task, what, sdev, ino, htype, raw, deleted_ok=True)
        entry = fsnotify_pb2.inotify_wd_entry(
            id=fid, i_ino=ino, mask=mask, ignored_mask=ignored, s_dev=sdev, wd=wd,
            f_handle=fh_pb2.fh_entry(bytes=nbytes, type=htype, handle=_handle_words(raw)))
        if path is not None:
            entry.f_handle.path = path
        watches.append(entry)
    watches.sort(key=lambda w: w.wd)
    fe = fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        ify=fsnotify_pb2.inotify_file_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                            wd=watches))
    for w in fe.ify.wd:   # (the entry holds copies)
        if not w.f_handle.HasField("path"):
            # deleted: finish() names the fd of the tree that holds it
            fd.ctx.kind_state.setdefault(NAME, []).append(
                (pid, f"fd {fd.fd}: inotify watch {w.wd}", w))
    return fe


def finish(ctx: "DumpContext") -> None:
    """A watch on a deleted file: the file must be held by an fd of the
    tree (it is then a ghost or a link remap of the dump, the same file
    again at restore); the watch names that file."""
    for pid, what, w in ctx.kind_state.pop(NAME, []):
        major, minor = _kdev(w.s_dev)
        holders = ctx.open_files.get((os.makedev(major, minor), w.i_ino), [])
        holder = next((h for h in holders if h[0] != os.getpid()), None)
        if holder is None:
            raise Unsupported(f"pid {pid}: {what}: the watched file (inode {w.i_ino}) is "
                              "deleted and no fd of the tree holds it (a mapping or "
                              "another process keeps it); it cannot be restored")
        w.target_id = holder[2]


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    inj = rt.inj
    ify = entry.ify
    fd = inj.call("inotify_init1", ify.flags & C.O_NONBLOCK)
    if any(w.HasField("target_id") for w in ify.wd):
        # a watch on a deleted file: on its restored inode, once the ghost
        # or link-remap names are gone, and every watch of this fd then
        # too (one in the ghost's directory would see it come and go)
        ours = pidfd_getfd(rt.pid, fd)
        rctx.own_fds.append(ours)
        rctx.after_names_gone.append(lambda: _watch_late(rctx, rt, ify, ours))
        return fd
    for w in sorted(ify.wd, key=lambda w: w.wd):
        if not w.f_handle.HasField("path"):
            raise RestoreError(f"{rt.image_name('fdinfo')}: inotify {ify.id} watch {w.wd} "
                               "has no path; restoring watches by file handle alone "
                               "is not supported yet")
        path = w.f_handle.path
        try:
            # Make the kernel hand out exactly this wd next.
            inj.call("ioctl", fd, C.INOTIFY_IOC_SETNEXTWD, w.wd)
            got = inj.call("inotify_add_watch", fd, inj.put_str(path), w.mask & WATCH_MASK)
        except InjectError as exc:
            raise RestoreError(f"pid {rt.pid}: inotify watch {w.wd} on {path}: "
                               f"{exc.strerror}") from None
        inj.reset_scratch()
        if got != w.wd:
            raise RestoreError(f"pid {rt.pid}: inotify watch on {path} came back as wd "
                               f"{got}, not {w.wd}")
    return fd


def _watch_late(rctx: "RestoreContext", rt: "RestoreTask", ify: Any, ours: int) -> None:
    """Add the watches of inotify ``ours`` (our copy of the task's fd) from
    the restorer: paths as the task sees them, deleted files through the
    fd of the task that holds them now."""
    for w in sorted(ify.wd, key=lambda w: w.wd):
        if w.HasField("target_id"):
            if w.target_id not in rctx.placed:
                raise RestoreError(f"pid {rt.pid}: inotify watch {w.wd}: the deleted file it "
                                   f"watches (file {w.target_id}) was not restored")
            owner, ofd = rctx.placed[w.target_id]
            path = f"/proc/{owner}/fd/{ofd}"
            shown = f"the deleted file held by pid {owner} fd {ofd}"
        elif w.f_handle.HasField("path"):
            path = f"/proc/{rt.pid}/root{w.f_handle.path}"
            shown = w.f_handle.path
        else:
            raise RestoreError(f"pid {rt.pid}: inotify {ify.id} watch {w.wd} has no path")
        buf = ctypes.create_string_buffer(os.fsencode(path))
        try:
            fcntl.ioctl(ours, C.INOTIFY_IOC_SETNEXTWD, w.wd)
            got = syscall(C.NR["inotify_add_watch"], ours, ctypes.addressof(buf),
                          w.mask & WATCH_MASK)
        except OSError as exc:
            raise RestoreError(f"pid {rt.pid}: inotify watch {w.wd} on {shown}: "
                               f"{exc.strerror}") from None
        if got != w.wd:
            raise RestoreError(f"pid {rt.pid}: inotify watch on {shown} came back as wd "
                               f"{got}, not {w.wd}")
