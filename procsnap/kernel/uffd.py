"""userfaultfd(2): the ioctls and messages procsnap uses (linux/userfaultfd.h).

Two users: memtrack (write-protect in async mode, dirty tracking between
a pre-dump and the dump) and lazy restore (missing-page faults of the
restored tree served by the lazy-pages daemon, as criu's uffd.c).

Also the lazy-pages socket of criu (criu/uffd.c): the restorer connects
to ``lazy-pages.socket`` in the work directory and sends, per task, the
task's pid as a native int, then the task's userfaultfd with SCM_RIGHTS
(one dummy byte); a zombie is sent as -pid with no fd; at the end the
32-bit word LAZY_PAGES_RESTORE_FINISHED.  procsnap's restorer sends a
pidfd of the task beside the userfaultfd in the same message (the daemon
kills the tree through it when it cannot serve a fault; criu's daemon
reads the first fd only).
"""
from __future__ import annotations

import _socket   # not socket.py: its enum tables cost ~3 ms of a lazy restore
import array
import ctypes
import errno
import os
import struct

from .libc import syscall

UFFD_API = 0xAA

# userfaultfd(2) flag: the context handles faults taken in user mode only.
# Any task may make one (no CAP_SYS_PTRACE, whatever
# vm.unprivileged_userfaultfd says); write-protect tracking in async mode
# never hands a fault to the context, so it loses nothing by it.
UFFD_USER_MODE_ONLY = 1

# uffdio_api.features
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_WP_ASYNC = 1 << 15
# What lazy restore needs (criu's NEED_UFFD_API_FEATURES): without these
# events a fork, mremap, madvise(DONTNEED) or munmap of a restored task
# would silently lose pages still to come, or get image bytes where the
# program dropped its own.
LAZY_FEATURES = (UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP
                 | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0

# uffd_msg.event
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16
MSG_SIZE = 32  # struct uffd_msg

API = struct.Struct("<3Q")          # struct uffdio_api
REGISTER = struct.Struct("<4Q")     # struct uffdio_register
RANGE = struct.Struct("<2Q")        # struct uffdio_range
WRITEPROTECT = struct.Struct("<3Q")  # struct uffdio_writeprotect


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (UFFD_API << 8) | nr


def _ior(nr: int, size: int) -> int:
    return (2 << 30) | (size << 16) | (UFFD_API << 8) | nr


UFFDIO_API = _iowr(0x3F, API.size)
UFFDIO_REGISTER = _iowr(0x00, REGISTER.size)
UFFDIO_UNREGISTER = _ior(0x01, RANGE.size)
UFFDIO_WAKE = _ior(0x02, RANGE.size)
UFFDIO_COPY = _iowr(0x03, 40)
UFFDIO_ZEROPAGE = _iowr(0x04, 32)
UFFDIO_WRITEPROTECT = _iowr(0x06, WRITEPROTECT.size)

_NR_IOCTL = 16


class UffdioCopy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64),
                ("len", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("copy", ctypes.c_int64)]


class UffdioZeropage(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


def copy(fd: int, dst: int, src: int, length: int) -> tuple[int, int]:
    """UFFDIO_COPY ``length`` bytes from our address ``src`` to ``dst`` in
    the uffd's mm, waking the faulting threads.  Returns (bytes copied,
    errno): a partial copy stops at a page already there (EEXIST), at a
    range no longer registered (ENOENT) or a gone mm (ESRCH)."""
    arg = UffdioCopy(dst, src, length, 0, 0)
    try:
        syscall(_NR_IOCTL, fd, UFFDIO_COPY, ctypes.addressof(arg))
    except OSError as exc:
        return max(arg.copy, 0), exc.errno or errno.EIO
    return arg.copy, 0


def zeropage(fd: int, start: int, length: int) -> tuple[int, int]:
    """UFFDIO_ZEROPAGE: map the zero page (pages absent at the dump)."""
    arg = UffdioZeropage(start, length, 0, 0)
    try:
        syscall(_NR_IOCTL, fd, UFFDIO_ZEROPAGE, ctypes.addressof(arg))
    except OSError as exc:
        return max(arg.zeropage, 0), exc.errno or errno.EIO
    return arg.zeropage, 0


def api(fd: int, features: int) -> int:
    """UFFDIO_API asking for ``features``; returns the features granted."""
    import fcntl
    buf = bytearray(API.pack(UFFD_API, features, 0))
    fcntl.ioctl(fd, UFFDIO_API, buf, True)
    return API.unpack(buf)[1]  # type: ignore[no-any-return]


def register(fd: int, start: int, length: int, mode: int) -> None:
    import fcntl
    buf = bytearray(REGISTER.pack(start, length, mode, 0))
    fcntl.ioctl(fd, UFFDIO_REGISTER, buf, True)


def parse_msg(raw: bytes) -> tuple[int, int, int, int]:
    """(event, a, b, c) of one struct uffd_msg: PAGEFAULT (flags, address,
    ptid), FORK (ufd, -, -), REMAP (from, to, len), REMOVE/UNMAP (start,
    end, -)."""
    event = raw[0]
    a, b, c = struct.unpack_from("<QQQ", raw, 8)
    return event, a, b, c


# ------------------------------------------------- criu's lazy socket ----

LAZY_PAGES_SOCK_NAME = "lazy-pages.socket"
LAZY_PAGES_RESTORE_FINISHED = 0x52535446  # "ReSTore Finished"


def send_uffd(sk: _socket.socket, pid: int, fds: list[int]) -> None:
    """Hand one task's userfaultfd to the daemon (criu's send_uffd())."""
    sk.sendall(struct.pack("i", pid))
    if pid < 0:
        return  # a zombie: no memory
    sk.sendmsg([b"\0"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))])


def recv_uffd(sk: _socket.socket) -> tuple[int, list[int]] | None:
    """The daemon's side: (pid, fds), or None for restore-finished.
    Raises ConnectionError at EOF."""
    head = _recv_exact(sk, 4)
    (pid,) = struct.unpack("i", head)
    if pid & 0xFFFFFFFF == LAZY_PAGES_RESTORE_FINISHED:
        return None
    if pid < 0:
        return pid, []
    fds = array.array("i")
    msg, anc, _flags, _ = sk.recvmsg(1, _socket.CMSG_SPACE(4 * 4))
    if not msg:
        raise ConnectionError("the restorer closed the lazy-pages socket")
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % 4])
    return pid, list(fds)


def _recv_exact(sk: _socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = sk.recv(n - len(buf))
        if not got:
            raise ConnectionError("the restorer closed the lazy-pages socket")
        buf += got
    return buf


def userfaultfd(flags: int = os.O_CLOEXEC | os.O_NONBLOCK) -> int:
    return syscall(323, flags)
