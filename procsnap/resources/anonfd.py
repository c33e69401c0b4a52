"""What the anon-inode fd kinds (eventfd, signalfd, timerfd, epoll,
inotify) share: recognising one, its file flags, a blank fown.

Each of those kinds is recognised twice over, as CRIU's is_anon_link_type
plus parse_fdinfo do: by the readlink text the kernel gives the anon inode
("anon_inode:[eventfd]") *and* by the fdinfo keys only that kind prints.
A name alone would trust a string; fdinfo is written by the kind's own
show_fdinfo.
"""
from __future__ import annotations

import os
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import Unsupported
from ..images.pb import fown_pb2
from ..kernel import consts as C

if TYPE_CHECKING:
    from ..tasks import RestoreTask
    from ..tasks import FdCtx

# Status flags these kinds can carry and we can give back (O_NONBLOCK via
# the create call or F_SETFL; O_ASYNC by fown.restore_task, in the task
# itself once the fd is in place, with the owner and signal files.py
# attaches to every kind's entry).
_KEPT = C.O_ACCMODE | C.O_NONBLOCK | C.O_LARGEFILE | os.O_CLOEXEC | os.O_ASYNC


def is_anon(fd: "FdCtx", name: str, key: str) -> bool:
    """readlink says anon_inode:NAME and fdinfo has a KEY line."""
    if fd.link != "anon_inode:" + name or fd.info is None:
        return False
    return any(line.startswith(key) for line in fd.info.lines)


def file_flags(fd: "FdCtx", what: str) -> int:
    """open(2) flags to record (no O_CLOEXEC: that is per fd, in fdinfo.img)."""
    assert fd.info is not None
    flags = fd.info.flags
    extra = flags & ~_KEPT
    if extra:
        raise Unsupported(f"pid {fd.task.pid}: fd {fd.fd}: {what} has file flags "
                          f"{extra:o} (of {flags:o}) that procsnap cannot restore yet")
    return flags & ~os.O_CLOEXEC


def no_owner() -> Any:
    return fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0)


def set_nonblock(rt: "RestoreTask", fd: int, flags: int) -> None:
    """For kinds whose create call takes no O_NONBLOCK (epoll)."""
    if flags & C.O_NONBLOCK:
        rt.inj.call("fcntl", fd, C.F_SETFL, C.O_NONBLOCK)


def put_u64(rt: "RestoreTask", value: int) -> int:
    return rt.inj.put(struct.pack("<Q", value), align=8)
