"""signalfd (fd kind SIGNALFD, inline in files.img as file_entry.sgfd).

A signalfd holds only the set of signals it reads; the signals themselves
are pending on the task and come back with its signal state.  fdinfo
prints the set as the kernel's sigset_t in hex ("sigmask:"), bit N-1 for
signal N -- the same u64 signalfd4() takes.
"""
from __future__ import annotations

import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError
from ..images.pb import fdinfo_pb2, signalfd_pb2
from ..kernel import consts as C
from . import anonfd
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "signalfd"
FDINFO = {
    "sigmask": fdaudit.saved("signalfd_entry.sigmask"),
}
TYPE = fdinfo_pb2.SIGNALFD
SIGSET_SIZE = 8


def matches(fd: "FdCtx") -> bool:
    return anonfd.is_anon(fd, "[signalfd]", "sigmask:")


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    flags = anonfd.file_flags(fd, "signalfd")
    try:
        mask = int(fd.info.extra["sigmask"], 16)
    except (KeyError, ValueError) as exc:
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: signalfd fdinfo: "
                        f"bad or missing sigmask ({exc})") from None
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        sgfd=signalfd_pb2.signalfd_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                         sigmask=mask))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    sg = entry.sgfd
    mask = rt.inj.put(struct.pack("<Q", sg.sigmask), align=8)
    # -1: a new signalfd, not an update of an existing one.
    return rt.inj.call("signalfd4", -1, mask, SIGSET_SIZE, sg.flags & C.O_NONBLOCK)
