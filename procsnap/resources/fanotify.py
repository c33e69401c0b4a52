"""fanotify groups (fd kind FANOTIFY, inline in files.img as file_entry.ffy).

fdinfo shows the group and each mark (fs/notify/fdinfo.c):

    fanotify flags:F event-flags:E          fanotify_init()'s two arguments
    fanotify ino:I sdev:D mflags:M mask:K ignored_mask:G fhandle-bytes:..
            fhandle-type:.. f_handle:..     a mark on an inode
    fanotify mnt_id:N mflags:M mask:K ignored_mask:G
                                            a mark on a mount
    fanotify sdev:D mflags:.. mask:.. ...   a mark on a filesystem

As CRIU: an inode mark is found by its file handle and written with the
path the task sees it under (inotify.resolve_watch, which checks the
name leads to the same inode); a mount mark with the mount point of that
mnt_id in the task's mountinfo, checked to be that mount (not covered by
another).  Restore: fanotify_init with the dumped flags, then per mark
fanotify_mark(FAN_MARK_ADD | mflags, mask) and, for the ignore mask, a
second call with FAN_MARK_IGNORED_MASK (FAN_MARK_IGNORE when the mark was
made with it).

Refused, by name: events queued and not read (they can be neither read
without consuming them nor queued again; CRIU drops them with a warning);
a group of a permission class (FAN_CLASS_CONTENT/PRE_CONTENT) with a
permission event in a mask (a request read and not yet answered holds a
process of the tree, and is invisible); filesystem marks; a mark on a
deleted file or on a mount the task cannot name.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fh_pb2, fsnotify_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..procfs.parse import fdinfo_records
from . import anonfd, fdaudit, inotify

if TYPE_CHECKING:
    from ..tasks import FdCtx, RestoreContext, RestoreTask

NAME = "fanotify"
FDINFO = {
    "fanotify flags": fdaudit.saved("faflags and evflags of fanotify_file_entry "
                                    "(fanotify_init's arguments)"),
    "fanotify ino": fdaudit.saved("a fanotify_mark_entry of type INODE, with the path the "
                                  "task sees the inode under"),
    "fanotify mnt_id": fdaudit.saved("a fanotify_mark_entry of type MOUNT, with the mount "
                                     "point as the task sees it"),
    "fanotify sdev": fdaudit.refused(lambda v: True, "a filesystem mark (FAN_MARK_FILESYSTEM); "
                                     "not supported", "never"),
}
TYPE = fdinfo_pb2.FANOTIFY

FAN_CLASS_MASK = 0x0C              # FAN_CLASS_CONTENT | FAN_CLASS_PRE_CONTENT
FAN_PERM_EVENTS = 0x00070000 | 0x00080000 | 0x00100000  # *_PERM, FAN_PRE_ACCESS and on
FAN_MARK_ADD = 0x01
FAN_MARK_MOUNT = 0x10
FAN_MARK_IGNORED_MASK = 0x20
FAN_MARK_IGNORE = 0x400
AT_FDCWD = -100


def matches(fd: "FdCtx") -> bool:
    return fd.link == "anon_inode:[fanotify]" and fd.info is not None


def _mount_path(fd: "FdCtx", mnt_id: int, what: str) -> str:
    """The mount point of ``mnt_id`` as the task sees it, checked to reach
    that mount (another mount on top would take the mark instead)."""
    pid = fd.task.pid
    m = next((m for m in fd.task.proc.mountinfo() if m.mnt_id == mnt_id), None)
    if m is None:
        raise Unsupported(f"pid {pid}: fd {fd.fd}: {what}: mount {mnt_id} is not in the "
                          "task's mount namespace; it cannot be named at restore")
    try:
        h = os.open(f"/proc/{pid}/root{m.mount_point}", os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise Unsupported(f"pid {pid}: fd {fd.fd}: {what}: mount point {m.mount_point}: "
                          f"{exc.strerror}") from None
    try:
        with open(f"/proc/self/fdinfo/{h}") as f:
            got = next((int(line.split()[1]) for line in f if line.startswith("mnt_id:")), -1)
    finally:
        os.close(h)
    if got != mnt_id:
        raise Unsupported(f"pid {pid}: fd {fd.fd}: {what}: mount point {m.mount_point} of "
                          f"mount {mnt_id} is covered by another mount; it cannot be "
                          "named at restore")
    return m.mount_point


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    pid = fd.task.pid
    flags = anonfd.file_flags(fd, "fanotify")
    queued = inotify._queued(fd)   # FIONREAD, as inotify's
    if queued:
        raise Unsupported(f"pid {pid}: fd {fd.fd}: fanotify: {queued} bytes of events are "
                          "queued and not yet read; they can neither be read without "
                          "consuming them nor queued again")
    head = fdinfo_records(fd.info, "fanotify flags")
    if len(head) != 1:
        raise DumpError(f"pid {pid}: fd {fd.fd}: fanotify fdinfo without one flags line")
    faflags, evflags = int(head[0]["flags"], 16), int(head[0]["event-flags"], 16)
    marks = []
    for rec in fdinfo_records(fd.info, "fanotify"):
        if "flags" in rec and "event-flags" in rec:
            continue
        try:
            mflags, mask = int(rec["mflags"], 16), int(rec["mask"], 16)
            ignored = int(rec.get("ignored_mask", "0"), 16)
            if "mnt_id" in rec:
                mnt_id = int(rec["mnt_id"], 16)
                what = f"fanotify mark on mount {mnt_id}"
                me = fsnotify_pb2.fanotify_mount_mark_entry(
                    mnt_id=mnt_id, path=_mount_path(fd, mnt_id, what))
                marks.append(fsnotify_pb2.fanotify_mark_entry(
                    id=fid, type=fsnotify_pb2.MOUNT, mflags=mflags, mask=mask,
                    ignored_mask=ignored, s_dev=0, me=me))
            elif "ino" in rec:
                ino, sdev = int(rec["ino"], 16), int(rec["sdev"], 16)
                nbytes, htype = int(rec["fhandle-bytes"], 16), int(rec["fhandle-type"], 16)
                raw = bytes.fromhex(rec["f_handle"])
                what = f"fd {fd.fd}: fanotify mark on inode {ino}"
                path = inotify.resolve_watch(fd.task, what, sdev, ino, htype, raw)
                marks.append(fsnotify_pb2.fanotify_mark_entry(
                    id=fid, type=fsnotify_pb2.INODE, mflags=mflags, mask=mask,
                    ignored_mask=ignored, s_dev=sdev,
                    ie=fsnotify_pb2.fanotify_inode_mark_entry(
                        i_ino=ino, f_handle=fh_pb2.fh_entry(
                            bytes=nbytes, type=htype, handle=inotify._handle_words(raw),
                            path=path))))
            else:
                raise Unsupported(f"pid {pid}: fd {fd.fd}: a fanotify mark of a kind procsnap "
                                  f"does not know ({' '.join(sorted(rec))}); not supported")
        except (KeyError, ValueError) as exc:
            raise DumpError(f"pid {pid}: fd {fd.fd}: fanotify fdinfo line {rec}: {exc}") from None
        if faflags & FAN_CLASS_MASK and (mask | ignored) & FAN_PERM_EVENTS:
            raise Unsupported(f"pid {pid}: fd {fd.fd}: fanotify group of a permission class "
                              f"with permission events in a mark (mask {mask:#x}): a request "
                              "read and not yet answered cannot be seen; not supported")
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        ffy=fsnotify_pb2.fanotify_file_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                             faflags=faflags, evflags=evflags, mark=marks))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    inj = rt.inj
    ffy = entry.ffy
    try:
        fd = inj.call("fanotify_init", ffy.faflags, ffy.evflags)
    except InjectError as exc:
        raise RestoreError(f"pid {rt.pid}: fanotify_init({ffy.faflags:#x}, "
                           f"{ffy.evflags:#x}): {exc.strerror}") from None
    # the group's FAN_NONBLOCK was the file's at init; fcntl may have changed it since
    if (ffy.flags ^ ffy.faflags) & C.O_NONBLOCK and not ffy.flags & C.O_NONBLOCK:
        inj.call("fcntl", fd, C.F_SETFL, 0)
    else:
        anonfd.set_nonblock(rt, fd, ffy.flags)
    # fdinfo lists a group's marks newest first (each new one goes to the
    # head of its list): added oldest first, they come back in that order
    for m in reversed(ffy.mark):
        if m.type == fsnotify_pb2.MOUNT:
            path, kind = m.me.path, FAN_MARK_MOUNT
        else:
            if not m.ie.f_handle.HasField("path"):
                raise RestoreError(f"pid {rt.pid}: fanotify mark on inode {m.ie.i_ino} has no "
                                   "path; restoring marks by file handle alone is not "
                                   "supported")
            path, kind = m.ie.f_handle.path, 0
        flags = FAN_MARK_ADD | kind | (m.mflags & ~FAN_MARK_IGNORE)
        try:
            if m.mask:
                inj.call("fanotify_mark", fd, flags, m.mask, AT_FDCWD, inj.put_str(path))
            if m.ignored_mask:
                how = FAN_MARK_IGNORE if m.mflags & FAN_MARK_IGNORE else FAN_MARK_IGNORED_MASK
                inj.call("fanotify_mark", fd, flags | how, m.ignored_mask, AT_FDCWD,
                         inj.put_str(path))
        except InjectError as exc:
            raise RestoreError(f"pid {rt.pid}: fanotify mark on {path} (mask {m.mask:#x}, "
                               f"ignored {m.ignored_mask:#x}): {exc.strerror}") from None
        inj.reset_scratch()
    return fd
