"""Everything of procsnap that touches pyroute2's sock_diag, in one place,
imported only when a dump meets a unix socket (pyroute2 takes ~150 ms to
load, most of a small dump's time; internet sockets are listed by
kernel/inetdiag.py without it).

pyroute2 0.9's unix_diag_msg decodes UNIX_DIAG_NAME as a string, losing
the leading NUL of an abstract name, and UNIX_DIAG_ICONS as a hex string;
both are taken as raw bytes here.
"""
from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink.diag import (  # type: ignore[import-untyped]
    SS_ALL,
    UDIAG_SHOW_ICONS,
    UDIAG_SHOW_NAME,
    UDIAG_SHOW_PEER,
    UDIAG_SHOW_RQLEN,
    UDIAG_SHOW_VFS,
    DiagSocket,
    MarshalDiag,
    inet_diag_msg,
    unix_diag_msg,
)

from .. import logs
from ..errors import DumpError
from ..kernel import netns

__all__ = ["SS_ALL", "UDIAG_SHOW_ICONS", "UDIAG_SHOW_NAME", "UDIAG_SHOW_PEER",
           "UDIAG_SHOW_RQLEN", "UDIAG_SHOW_VFS", "query"]

# pyroute2 logs every netlink message at DEBUG; procsnap -vv is about us.
# (pyroute2 imports logging: the command line's configuration is applied now)
logs.real().getLogger("pyroute2").setLevel(logs.WARNING)


class _unix_diag_msg(unix_diag_msg):  # type: ignore[misc]
    """pyroute2's unix_diag_msg with the name and icons kept as bytes."""

    nla_map = (
        ('UNIX_DIAG_NAME', 'cdata'),
        ('UNIX_DIAG_VFS', 'unix_diag_vfs'),
        ('UNIX_DIAG_PEER', 'uint32'),
        ('UNIX_DIAG_ICONS', 'cdata'),
        ('UNIX_DIAG_RQLEN', 'unix_diag_rqlen'),
        ('UNIX_DIAG_MEMINFO', 'hex'),
        ('UNIX_DIAG_SHUTDOWN', 'uint8'),
    )


class _Marshal(MarshalDiag):  # type: ignore[misc]
    msg_map = {socket.AF_UNIX: _unix_diag_msg, socket.AF_INET: inet_diag_msg,
               socket.AF_INET6: inet_diag_msg}


def query(fn: Any, pid: int | None = None) -> Any:
    """Run fn(DiagSocket) on a bound sock_diag socket; errors as DumpError.
    sock_diag answers for the network namespace the socket was made in:
    with ``pid``, the one of that task (made from inside it)."""
    try:
        with netns.inside(pid if pid is not None else "thread-self"):
            ds = DiagSocket()
        with ds:
            ds.set_marshal(_Marshal())
            ds.bind()
            return fn(ds)
    except OSError as exc:
        raise DumpError(f"sock_diag: {exc.strerror or exc}") from None
