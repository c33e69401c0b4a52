"""Netlink sockets (fd kind NETLINKSK, inline in files.img as
file_entry.nlsk, CRIU's netlink_sk_entry).

Saved: the protocol (CRIU's image has no type: it makes SOCK_RAW, and so
does this module; a SOCK_DGRAM netlink socket is refused by name rather
than changed into one), the bound
port id (an autobound one too: it is bound to the same number again),
every multicast group (NETLINK_LIST_MEMBERSHIPS: all of them, not only
the first 32 that getsockname shows), the connected peer (port id and
group), SOL_SOCKET options (sk_opts) and the open flags.

Refused: messages waiting in the receive queue (CRIU keeps none either;
they cannot be sent back from the kernel's side), and SOL_NETLINK flags
that differ from a fresh socket's (sockopts.py, kind "netlink").
Everything is read from a pidfd_getfd copy of the socket.
"""
from __future__ import annotations

import socket
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, sk_netlink_pb2
from . import anonfd, fdaudit, sockets, sockopts

if TYPE_CHECKING:
    from ..tasks import FdCtx, RestoreContext, RestoreTask

NAME = "netlinksk"
FDINFO: dict[str, "fdaudit.Rule"] = {}  # sockets print only the common lines
TYPE = fdinfo_pb2.NETLINKSK

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_LIST_MEMBERSHIPS = 9
NETLINK_UNCONNECTED, NETLINK_CONNECTED = 0, 1


def matches(fd: "FdCtx") -> bool:
    return sockets.family_of(fd) == socket.AF_NETLINK


def groups_of(sk: socket.socket) -> list[int]:
    """The membership bitmap as 32-bit words (all groups, not only 1-32)."""
    raw = sk.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 1024)
    words = list(struct.unpack(f"{len(raw) // 4}I", raw))
    while words and not words[-1]:
        words.pop()
    return words


def dump(fd: "FdCtx", fid: int) -> Any:
    what = sockets.describe(fd)
    sk = sockets.copy_of(fd)
    proto = sk.getsockopt(socket.SOL_SOCKET, sockets.SO_PROTOCOL)
    label = f"{what}: netlink protocol {proto}"
    if sk.type != socket.SOCK_RAW:
        raise Unsupported(f"{label}: a netlink socket of type {sk.type}; only SOCK_RAW "
                          "netlink sockets are supported (as criu)")
    if not sockets.same_netns(fd.task.pid, fd.ctx):
        raise Unsupported(f"{label}: the process is in another network namespace than "
                          "the tree's root; its sockets cannot be dumped")
    sockopts.audit(fd.ctx, label, sk, connected=False)
    try:
        waiting = sk.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_TRUNC)
    except BlockingIOError:
        waiting = b""
    if waiting:
        raise Unsupported(f"{label}: messages wait in its receive queue; a netlink "
                          "socket's queue cannot be put back")
    portid, _groups = sk.getsockname()
    dst_portid, dst_group = sk.getpeername()
    connected = bool(dst_portid or dst_group)
    ne = sk_netlink_pb2.netlink_sk_entry(
        id=fid, ino=sockets.socket_ino(fd.link), protocol=proto,
        state=NETLINK_CONNECTED if connected else NETLINK_UNCONNECTED,
        flags=anonfd.file_flags(fd, "the socket"), portid=portid, groups=groups_of(sk),
        dst_portid=dst_portid, dst_group=dst_group, fown=anonfd.no_owner(),
        opts=sockets.dump_opts(fd, sk))
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, nlsk=ne)


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    ne = entry.nlsk
    what = f"netlink socket {ne.ino} (protocol {ne.protocol}, port id {ne.portid})"
    try:
        sk = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ne.protocol)
    except OSError as exc:
        raise RestoreError(f"{what}: {exc.strerror or exc}") from None
    with sockets.building(sk, what):
        first = ne.groups[0] if ne.groups else 0
        if ne.portid or first:
            # the same port id, an autobound one too (nothing else holds it
            # in a namespace the tree left)
            sk.bind((ne.portid, first))
        for word, bits in enumerate(ne.groups):
            if word == 0:
                continue
            for bit in range(32):
                if bits & (1 << bit):
                    sk.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, word * 32 + bit + 1)
        if ne.state == NETLINK_CONNECTED:
            sk.connect((ne.dst_portid, ne.dst_group))
        sockets.restore_opts(sk, ne.opts, what)
    return sockets.hand_over(rctx, rt, sk, ne.flags)
