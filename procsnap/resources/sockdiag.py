"""sock_diag for unix and inet sockets: one SOCK_DIAG_BY_FAMILY dump per
family (and protocol) over a raw NETLINK_SOCK_DIAG socket, decoded here
from the kernel's structs (<linux/unix_diag.h>, <linux/inet_diag.h>), as
packetsk.py does for packet sockets and kernel/rtnl.py for links.

pyroute2's DiagSocket did this before: it took ~150 ms to import (more on
a loaded machine), paid inside the frozen time of every dump that meets a
socket, and ran each request through an asyncio loop (~25 ms for the five
tables of a small process).  Attributes come as raw bytes: a unix name
keeps the leading NUL of an abstract name and any NUL inside, the icons
(inodes waiting in a listener's accept queue) are the kernel's u32 array.
"""
from __future__ import annotations

import socket
import struct

from ..errors import DumpError
from ..kernel import netns, rtnl

__all__ = ["SS_ALL", "UDIAG_SHOW_ICONS", "UDIAG_SHOW_NAME", "UDIAG_SHOW_PEER",
           "UDIAG_SHOW_RQLEN", "UDIAG_SHOW_VFS", "UnixMsg", "InetMsg", "unix", "inet"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20

SS_ALL = (1 << 12) - 1          # every TCP_* state (TCP_MAX_STATES = 12)

# unix_diag_req.udiag_show and the attributes they ask for
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER = 0x01, 0x02, 0x04
UDIAG_SHOW_ICONS, UDIAG_SHOW_RQLEN = 0x08, 0x10
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS = 0, 1, 2, 3
UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN = 4, 6
INET_DIAG_SHUTDOWN = 8          # always sent (inet_diag_msg_attrs_fill)

_UNIX_REQ = struct.Struct("=BBxxIIIQ")     # family, protocol, states, ino, show, cookie
_UNIX_MSG = struct.Struct("=BBBxIQ")       # family, type, state, ino, cookie
_INET_REQ = struct.Struct("=BBBxI48x")     # family, protocol, ext, states, sockid (any)
_INET_MSG = struct.Struct("=BBBB")         # family, state, timer, retrans, then:
_INET_PORTS = struct.Struct(">HH")         # sockid: sport, dport (network order),
_INET_TAIL = struct.Struct("=IIIII")       # src[16], dst[16], if, cookie; expires,
_INET_MSG_LEN = 72                         # rqueue, wqueue, uid, inode at 52


TYPE_CHECKING = False  # typing is for mypy only: its import was ~3 ms of a dump
if TYPE_CHECKING:
    from typing import NamedTuple

    class UnixMsg(NamedTuple):
        ino: int
        type: int
        state: int
        attrs: dict[int, bytes]     # UNIX_DIAG_* -> payload

    class InetMsg(NamedTuple):
        ino: int
        family: int
        proto: int
        state: int
        src: str
        sport: int
        dst: str
        dport: int
        rqueue: int
        wqueue: int
        shutdown: int
else:
    from collections import namedtuple
    UnixMsg = namedtuple("UnixMsg", "ino type state attrs")
    InetMsg = namedtuple("InetMsg",
                         "ino family proto state src sport dst dport rqueue wqueue shutdown")


def _dump(sk: socket.socket, req: bytes) -> list[tuple[bytes, int, int]]:
    """One SOCK_DIAG_BY_FAMILY dump: (buffer, start, end) of each message's
    body."""
    return [(msg, 0, len(msg)) for _, msg in rtnl.dump_on(sk, SOCK_DIAG_BY_FAMILY, req,
                                                           "sock_diag")]


def _socket(pid: int | None) -> socket.socket:
    """A sock_diag socket; it answers for the network namespace it was made
    in: with ``pid``, that task's (made from inside it)."""
    with netns.inside(pid if pid is not None else "thread-self"):
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_SOCK_DIAG)


def unix(show: int, pid: int | None = None) -> list[UnixMsg]:
    """Every unix socket of the namespace, with the attributes ``show`` asks."""
    try:
        with _socket(pid) as sk:
            msgs = _dump(sk, _UNIX_REQ.pack(socket.AF_UNIX, 0, SS_ALL, 0, show, 0))
    except OSError as exc:
        raise DumpError(f"sock_diag: {exc.strerror or exc}") from None
    out: list[UnixMsg] = []
    for data, off, end in msgs:
        _fam, typ, state, ino, _cookie = _UNIX_MSG.unpack_from(data, off)
        out.append(UnixMsg(ino, typ, state, rtnl.attrs(data, off + _UNIX_MSG.size, end)))
    return out


def inet(pid: int | None = None) -> list[InetMsg]:
    """Every TCP and UDP socket, v4 and v6, of the namespace (pid's, else
    ours)."""
    out: list[InetMsg] = []
    try:
        with _socket(pid) as sk:
            for fam in (socket.AF_INET, socket.AF_INET6):
                alen = 4 if fam == socket.AF_INET else 16
                for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
                    for data, off, end in _dump(sk, _INET_REQ.pack(fam, proto, 0, SS_ALL)):
                        _f, state, _timer, _retrans = _INET_MSG.unpack_from(data, off)
                        sport, dport = _INET_PORTS.unpack_from(data, off + 4)
                        src = socket.inet_ntop(fam, data[off + 8:off + 8 + alen])
                        dst = socket.inet_ntop(fam, data[off + 24:off + 24 + alen])
                        _exp, rq, wq, _uid, ino = _INET_TAIL.unpack_from(data, off + 52)
                        sh = rtnl.attrs(data, off + _INET_MSG_LEN, end).get(INET_DIAG_SHUTDOWN)
                        out.append(InetMsg(ino, fam, proto, state, src, sport, dst, dport,
                                           rq, wq, sh[0] if sh else 0))
    except OSError as exc:
        raise DumpError(f"sock_diag: {exc.strerror or exc}") from None
    return out
