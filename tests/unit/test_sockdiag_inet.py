"""resources/sockdiag.py's inet table against sockets this test makes: a listener with
connections waiting in its accept queue, a v4-mapped IPv6 connection with
each direction shut down on one side, unread data, a bound UDP socket."""
from __future__ import annotations

import socket
import time
from typing import Any, NamedTuple

from procsnap.resources import sockdiag

TCP_LISTEN, TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_CLOSE_WAIT, TCP_CLOSE = 10, 1, 5, 8, 7


class _Sock(NamedTuple):
    family: int
    protocol: int
    m: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.m, name)


def _table() -> dict[int, _Sock]:
    return {m.ino: _Sock(m.family, m.proto, m) for m in sockdiag.inet()}


def _ino(sk: socket.socket) -> int:
    import os
    return os.fstat(sk.fileno()).st_ino


def test_inet_sockets_as_the_kernel_reports_them() -> None:
    lis = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lis.bind(("127.0.0.1", 0))
    lis.listen(7)
    waiting = [socket.create_connection(lis.getsockname()) for _ in range(2)]
    srv6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv6.bind(("::", 0))
    srv6.listen(1)
    cli = socket.create_connection(("127.0.0.1", srv6.getsockname()[1]))
    acc, _ = srv6.accept()
    cli.shutdown(socket.SHUT_WR)
    acc.sendall(b"x" * 1234)
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::1", 0))
    try:
        time.sleep(0.05)    # loopback: the FIN and the data are there by now
        t = _table()
        listener = t[_ino(lis)]
        assert (listener.family, listener.protocol, listener.state) == \
            (socket.AF_INET, socket.IPPROTO_TCP, TCP_LISTEN)
        assert (listener.src, listener.sport) == lis.getsockname()
        # a listener's rqueue is its accept queue, wqueue its backlog
        assert (listener.rqueue, listener.wqueue) == (2, 7)
        c = t[_ino(cli)]
        assert (c.family, c.state, c.src, c.dst, c.dport) == \
            (socket.AF_INET, TCP_FIN_WAIT2, "127.0.0.1", "127.0.0.1", srv6.getsockname()[1])
        assert c.sport == cli.getsockname()[1]
        assert c.rqueue == 1234 and c.shutdown == 2      # SEND_SHUTDOWN
        a = t[_ino(acc)]
        assert (a.family, a.state, a.src, a.dst) == \
            (socket.AF_INET6, TCP_CLOSE_WAIT, "::ffff:127.0.0.1", "::ffff:127.0.0.1")
        assert a.shutdown == 1                             # RCV_SHUTDOWN: the peer's FIN
        u = t[_ino(udp)]
        assert (u.family, u.protocol, u.state, u.src, u.sport) == \
            (socket.AF_INET6, socket.IPPROTO_UDP, TCP_CLOSE, "::1", udp.getsockname()[1])
    finally:
        for s in [lis, *waiting, srv6, cli, acc, udp]:
            s.close()
