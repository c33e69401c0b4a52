"""resources/sockdiag.py reads sock_diag itself (raw netlink, the kernel's
structs): each field it decodes is checked here on sockets of this process
whose state is known, in this network namespace (no root needed)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from procsnap.resources import sockdiag


def _ino(sk: socket.socket) -> int:
    return os.fstat(sk.fileno()).st_ino


def test_unix_names_icons_queues_shutdown_vfs(tmp_path: Path) -> None:
    name = b"\0procsnap-sockdiag\0%d" % os.getpid()   # abstract, a NUL inside
    lis = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lis.bind(name)
    lis.listen(8)
    waiting = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    for c in waiting:
        c.connect(name)
    path = tmp_path / "dgram.sock"
    dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dg.bind(str(path))
    a, b = socket.socketpair()
    try:
        a.send(b"x" * 100)
        b.shutdown(socket.SHUT_RD)
        show = (sockdiag.UDIAG_SHOW_NAME | sockdiag.UDIAG_SHOW_VFS | sockdiag.UDIAG_SHOW_PEER
                | sockdiag.UDIAG_SHOW_ICONS | sockdiag.UDIAG_SHOW_RQLEN)
        got = {m.ino: m for m in sockdiag.unix(show)}
        m = got[_ino(lis)]
        assert (m.type, m.state) == (socket.SOCK_STREAM, 10)          # TCP_LISTEN
        assert m.attrs[sockdiag.UNIX_DIAG_NAME] == name
        # the accept queue: the kernel's ends of our two connections
        icons = m.attrs[sockdiag.UNIX_DIAG_ICONS]
        assert len(icons) == 8 and all(i for i in memoryview(icons).cast("I"))
        rq = memoryview(m.attrs[sockdiag.UNIX_DIAG_RQLEN]).cast("I")
        assert (rq[0], rq[1]) == (2, 8)                               # queued, backlog
        m = got[_ino(dg)]
        assert m.attrs[sockdiag.UNIX_DIAG_NAME].rstrip(b"\0") == str(path).encode()
        assert memoryview(m.attrs[sockdiag.UNIX_DIAG_VFS]).cast("I")[0] == path.stat().st_ino
        ma, mb = got[_ino(a)], got[_ino(b)]
        assert memoryview(ma.attrs[sockdiag.UNIX_DIAG_PEER]).cast("I")[0] == _ino(b)
        assert memoryview(mb.attrs[sockdiag.UNIX_DIAG_RQLEN]).cast("I")[0] == 100
        assert mb.attrs[sockdiag.UNIX_DIAG_SHUTDOWN][0] == 1          # RCV_SHUTDOWN
        assert ma.attrs[sockdiag.UNIX_DIAG_SHUTDOWN][0] == 2          # the peer: SEND_SHUTDOWN
    finally:
        for s in (lis, *waiting, dg, a, b):
            s.close()


def test_inet_addresses_ports_states_queues_shutdown() -> None:
    lis = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lis.bind(("127.0.0.1", 0))
    lis.listen(4)
    cli = socket.create_connection(lis.getsockname())
    srv, _ = lis.accept()
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.bind(("::1", 0))
    u6.connect(("::1", 9))
    try:
        cli.shutdown(socket.SHUT_WR)
        srv.send(b"y" * 3000)
        port = lis.getsockname()[1]
        for _ in range(100):     # the FIN and the data arrive
            got = {m.ino: (m.family, m.proto, m) for m in sockdiag.inet()}
            if got[_ino(srv)][2].state == 8 and got[_ino(cli)][2].rqueue == 3000:
                break
            time.sleep(0.01)
        fam, proto, m = got[_ino(lis)]
        assert (fam, proto, m.state, m.src, m.sport) == (socket.AF_INET, socket.IPPROTO_TCP,
                                                         10, "127.0.0.1", port)
        fam, proto, m = got[_ino(cli)]
        assert (m.src, m.sport, m.dst, m.dport) == ("127.0.0.1", cli.getsockname()[1],
                                                    "127.0.0.1", port)
        assert (m.state, m.rqueue, m.shutdown) == (5, 3000, 2)        # FIN_WAIT2, SEND_SHUTDOWN
        assert got[_ino(srv)][2].state == 8                            # CLOSE_WAIT
        fam, proto, m = got[_ino(u6)]
        assert (fam, proto, m.state) == (socket.AF_INET6, socket.IPPROTO_UDP, 1)
        assert (m.src, m.sport, m.dst, m.dport) == ("::1", u6.getsockname()[1], "::1", 9)
    finally:
        for s in (lis, cli, srv, u6):
            s.close()
