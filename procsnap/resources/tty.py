"""Terminals of a shell job (fd kind TTY, tty-info.img).

With --shell-job a process whose stdio is the user's terminal is dumped
with those fds marked as the job's terminal, and at restore they are
connected to the terminal of the restoring shell -- the habit of criu.
Without --shell-job a terminal fd is refused: its other end (the shell,
the terminal emulator) is outside the dump.
"""
from __future__ import annotations

import os
import stat as st_mod
from typing import TYPE_CHECKING, Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fown_pb2, tty_pb2
from ..kernel import consts as C
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "tty"
FDINFO = {
    "tty-index": fdaudit.irrelevant("a --shell-job terminal is joined to the restoring "
                                    "shell's terminal, whose index is its own"),
}
TYPE = fdinfo_pb2.TTY
PTS_MAJORS = range(136, 144)
TTY_MAJORS = (4, 5) + tuple(PTS_MAJORS)


def matches(fd: "FdCtx") -> bool:
    st = fd.st
    return st is not None and st_mod.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.st is not None and fd.info is not None
    task = fd.task
    if not fd.ctx.opts.shell_job:
        raise Unsupported(f"pid {task.pid}: fd {fd.fd}: terminal {fd.link}: "
                          "use --shell-job to dump a process attached to a terminal")
    rdev = fd.st.st_rdev
    infos = fd.ctx.shared_image("tty-info")
    info_id = next((i.id for i in infos if i.rdev == rdev), None)
    if info_id is None:
        info_id = fd.ctx.new_file_id()
        stat = task.stat
        assert stat is not None
        major = os.major(rdev)
        info = tty_pb2.tty_info_entry(
            id=info_id, type=tty_pb2.PTY if major in PTS_MAJORS else tty_pb2.VT,
            locked=False, exclusive=False, packet_mode=False,
            sid=stat.session, pgrp=max(stat.tpgid, 0), rdev=rdev)
        if major in PTS_MAJORS:
            info.pty.index = os.minor(rdev) + (major - 136) * 256
        infos.append(info)
    return fdinfo_pb2.file_entry(
        type=fdinfo_pb2.TTY, id=fid,
        tty=tty_pb2.tty_file_entry(id=fid, tty_info_id=info_id,
                                   flags=fd.info.flags & ~os.O_CLOEXEC,
                                   fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0,
                                                            pid_type=0, pid=0)))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    if rt.tty_fd is None:
        raise RestoreError(f"{rt.image_name('fdinfo')}: the process had a terminal; "
                           "restore it with --shell-job from a terminal")
    return rt.inj.call("fcntl", rt.tty_fd, C.F_DUPFD_CLOEXEC, 0)
