"""Moving the calling thread into another task's network namespace and back.

setns(CLONE_NEWNET) acts on the calling thread only, and everything that
answers "for the current network namespace" follows that thread: sockets
created by it (netlink, sock_diag, TCP/UDP/unix) belong to the namespace
it was in when they were created, /proc/sys/net opened by it shows that
namespace's sysctls, and a child it forks (``ip``, ``nft``) starts in it.
Note that /proc/self/net and /proc/self/ns/net follow the thread group
leader: use /proc/thread-self for this thread's view.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Iterator

from . import consts as C
from .libc import syscall


def ns_path(pid: int | str) -> str:
    return f"/proc/{pid}/ns/net"


def same(pid: int | str) -> bool:
    """True when ``pid`` lives in this thread's network namespace."""
    return os.stat(ns_path(pid)).st_ino == os.stat("/proc/thread-self/ns/net").st_ino


def enter(pid: int | str) -> int | None:
    """Move this thread into ``pid``'s network namespace; returns an fd of
    the one it left (for ``leave``), or None if it was there already."""
    if same(pid):
        return None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(ns_path(pid), os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscall(C.NR["setns"], target, C.CLONE_NEWNET)
        finally:
            os.close(target)
    except BaseException:
        os.close(own)
        raise
    return own


def leave(own: int | None) -> None:
    """Back into the namespace ``enter`` left (and its fd closed)."""
    if own is None:
        return
    try:
        syscall(C.NR["setns"], own, C.CLONE_NEWNET)
    finally:
        os.close(own)


SIOCGSKNS = 0x894C  # ioctl on a socket: an fd of the net namespace it lives in


def of_socket(fd: int) -> int:
    """An fd (to close) of the network namespace socket ``fd`` belongs to."""
    import fcntl
    return fcntl.ioctl(fd, SIOCGSKNS)


@contextmanager
def inside_fd(nsfd: int) -> Iterator[None]:
    """This thread in the network namespace ``nsfd`` names, for the body."""
    if os.fstat(nsfd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscall(C.NR["setns"], nsfd, C.CLONE_NEWNET)
        yield
    finally:
        leave(own)


@contextmanager
def inside(pid: int | str) -> Iterator[None]:
    """This thread in ``pid``'s network namespace for the ``with`` body."""
    own = enter(pid)
    try:
        yield
    finally:
        leave(own)


__all__ = ["ns_path", "same", "enter", "leave", "inside", "inside_fd", "of_socket"]
