"""Named pipes (fd kind FIFO, fifo-data.img).

A FIFO is a pipe reached by a path: its fd gets a fifo_entry pointing at
a reg_file_entry for the path (judged by identity like any file, see
regfile.py) and, like an anonymous pipe, its buffered bytes are saved once
per inode without being consumed: we open the FIFO ourselves, read-only
and non-blocking -- that reaches the same pipe buffer -- and tee(2) it.

At restore the restorer opens the FIFO read-write first: with that end
held no open blocks, and it is where the saved bytes are written back.
Then each entry is opened by path with its own flags (a new open file
description, as the process had) and handed to the puppet; the helper end
is closed when the restore is done.  A FIFO unlinked while open is a ghost
(regfile.py, ghost.py): mknod'ed again under a temporary name, opened
through it, and the name removed when the restore is done.
"""
from __future__ import annotations

import fcntl
import os
import stat as st_mod
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fifo_pb2, pipe_data_pb2
from . import pipe, regfile
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "fifo"
FDINFO = {
    "lock": fdaudit.saved("file_lock.py: filelocks.img (with --file-locks)"),
}
TYPE = fdinfo_pb2.FIFO


def matches(fd: "FdCtx") -> bool:
    return fd.st is not None and st_mod.S_ISFIFO(fd.st.st_mode) and not fd.link.startswith("pipe:")


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None and fd.st is not None
    ctx = fd.ctx
    regf_id = ctx.new_file_id()
    flags = fd.info.flags & ~os.O_CLOEXEC
    # A FIFO unlinked while open (nlink 0) is kept as a ghost: a node made
    # again under a temporary name, opened, unlinked.  One whose name is
    # gone while other names are left stays refused (a file handle cannot
    # be opened by path here).
    ghosted = fd.st.st_nlink == 0
    ctx.files.append(regfile.describe_path(
        fd.task, fd.link, fd.st, regf_id, flags, 0, what=f"fd {fd.fd}", mnt_id=fd.info.mnt_id,
        ctx=ctx if ghosted else None,
        source=f"/proc/{fd.task.pid}/fd/{fd.fd}" if ghosted else None))
    seen = ctx.kind_state.setdefault(NAME, {})
    if fd.st.st_ino not in seen:
        seen[fd.st.st_ino] = f"/proc/{fd.task.pid}/fd/{fd.fd}"
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, fifo=fifo_pb2.fifo_entry(
        id=fid, pipe_id=fd.st.st_ino, regf_id=regf_id))


def finish(ctx: "DumpContext") -> None:
    for ino, path in ctx.kind_state.get(NAME, {}).items():
        # A reader of our own sees the same buffer; tee copies, not takes.
        src = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data, size = pipe.read_buffer(src)
        except OSError as exc:
            raise Unsupported(f"{path}: cannot read the FIFO's buffer: {exc.strerror}") from None
        finally:
            os.close(src)
        ctx.add_payload("fifo-data", pipe_data_pb2.pipe_data_entry(
            pipe_id=ino, bytes=len(data), size=size), data)


def _keeper(rctx: "RestoreContext", entry: Any, path: str) -> int:
    """The restorer's read-write end of the FIFO (filled with its bytes)."""
    keepers: dict[int, int] = rctx.kind_state.setdefault(NAME, {})
    pipe_id = entry.fifo.pipe_id
    if pipe_id in keepers:
        return keepers[pipe_id]
    try:
        fd = os.open(rctx.tree_path(path), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"{path}: cannot open the FIFO: {exc.strerror}") from None
    if not st_mod.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise RestoreError(f"{path}: is no longer a FIFO")
    rctx.own_fds.append(fd)
    keepers[pipe_id] = fd
    data = next((e for e in rctx.payload_entries("fifo-data") if e.msg.pipe_id == pipe_id), None)
    if data is not None and data.payload:
        pipe.refill(fd, data.msg.size if data.msg.HasField("size") else None, data.payload, path)
    return fd


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    reg = rctx.file_entry(entry.fifo.regf_id)
    path = regfile.node_path(rctx, reg)
    _keeper(rctx, entry, path)
    flags = reg.reg.flags & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
    try:
        # Non-blocking to open (a writer would wait for a reader otherwise);
        # the real flags are set on the description right after.
        # (the tree's name, reached from here: RestoreContext.tree_path)
        fd = os.open(rctx.tree_path(path), flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"{path}: cannot open the FIFO: {exc.strerror}") from None
    rctx.own_fds.append(fd)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_ACCMODE)
    return rt.grab_fd(os.getpid(), fd)
