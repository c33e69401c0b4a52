"""Socket options and states that issue 17 found lost or wrong.

    sock_opts.py keep DIR      -- options procsnap saves (dump with --tcp-established)
    sock_opts.py closed DIR    -- an in-tree TCP connection (restore with --tcp-close)
    sock_opts.py refuse WHAT   -- one state procsnap refuses, WHAT one of
                                  notsent_lowat, udp_cork, peek_off, pending_error

``keep``: an unconnected TCP socket with TCP_CORK and TCP_NODELAY
(zdtm sock_tcp_opts00), an in-tree TCP connection with SO_REUSEADDR on
the accepted end (zdtm socket-tcp: leaving repair mode cleared it), a
UDP socket with IP_TOS, IP_TTL and IP_PKTINFO, an IPv6 UDP socket with
IPV6_RECVPKTINFO, and a unix dgram server bound in DIR that a client
that exited connected to (zdtm socket_close_data01: connecting to it
again failed with EPERM).  ``closed``: on SIGTERM both ends of the
connection must be closed (TCP_CLOSE, EOF, EPIPE) and the listener must
accept again (zdtm socket-tcp-close0).  ``refuse``: the state is still
there on SIGTERM (the refused dump left it alone).

Every port is chosen by the kernel.  PASS or FAIL on SIGTERM.
"""
import os
import signal
import select
import socket
import sys
import time

TCP_NOTSENT_LOWAT = 25
UDP_CORK = 1
IP_PKTINFO = 8
SO_PEEK_OFF = 42


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def opts_of(socks: dict) -> dict:
    g = {}
    for name, (sk, level, opt) in socks.items():
        g[name] = sk.getsockopt(level, opt)
    return g


def keep(d: str) -> str | None:
    unconn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unconn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    unconn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    unconn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    acc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 17)
    udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    path = os.path.join(d, "dgram.sock")
    dsrv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dsrv.bind(path)
    if os.fork() == 0:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        c.connect(path)
        c.send(b"first")
        os._exit(0)
    os.wait()
    watched = {
        "unconn cork": (unconn, socket.IPPROTO_TCP, socket.TCP_CORK),
        "unconn nodelay": (unconn, socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "unconn keepcnt": (unconn, socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "accepted reuseaddr": (acc, socket.SOL_SOCKET, socket.SO_REUSEADDR),
        "client nodelay": (cli, socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "udp tos": (udp, socket.IPPROTO_IP, socket.IP_TOS),
        "udp ttl": (udp, socket.IPPROTO_IP, socket.IP_TTL),
        "udp pktinfo": (udp, socket.IPPROTO_IP, IP_PKTINFO),
        "udp6 recvpktinfo": (udp6, socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO),
    }
    before = opts_of(watched)
    wait()
    after = opts_of(watched)
    for k in before:
        if before[k] != after[k]:
            return f"{k}: {before[k]} before, {after[k]} after"
    cli.sendall(b"ping")
    acc.settimeout(5)
    if acc.recv(4) != b"ping":
        return "the connection does not carry data"
    dsrv.settimeout(5)
    if dsrv.recv(16) != b"first":
        return "the queued datagram is lost"
    c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        c.connect(path)
        c.send(b"second")
    except OSError as exc:
        return f"connecting to the dgram server again: {exc!r}"
    if dsrv.recv(16) != b"second":
        return "the second datagram is lost"
    return None


def closed_ok(sk: socket.socket, name: str) -> str | None:
    state = sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    if state != 7:
        return f"{name}: TCP state {state}, not CLOSE"
    sk.setblocking(False)
    if sk.recv(4) != b"":
        return f"{name}: recv does not give EOF"
    try:
        sk.send(b"x")
        return f"{name}: send succeeded"
    except BrokenPipeError:
        return None
    except OSError as exc:
        return f"{name}: send: {exc!r}"


def closed(d: str) -> str | None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    acc, _ = srv.accept()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    wait()
    err = closed_ok(acc, "accepted") or closed_ok(cli, "client")
    if err:
        return err
    c = socket.create_connection(srv.getsockname(), timeout=5)
    srv.settimeout(5)
    srv.accept()[0].close()
    c.close()
    return None


def refuse(what: str) -> str | None:
    held = []
    if what == "notsent_lowat":
        sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sk.bind(("127.0.0.1", 0))
        sk.listen(1)
        sk.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 12345)
        check = (sk, socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, 12345)
    elif what == "udp_cork":
        sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sk.bind(("127.0.0.1", 0))
        sk.connect(sk.getsockname())
        sk.setsockopt(socket.IPPROTO_UDP, UDP_CORK, 1)
        sk.send(b"held back")
        check = (sk, socket.IPPROTO_UDP, UDP_CORK, 1)
    elif what == "peek_off":
        sk, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        held.append(other)
        sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 3)
        check = (sk, socket.SOL_SOCKET, SO_PEEK_OFF, 3)
    elif what == "pending_error":
        # a UDP socket connected to a port nobody holds: the ICMP port
        # unreachable leaves ECONNREFUSED pending on it
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sk.connect(("127.0.0.1", port))
        # ICMP errors are rate-limited: send again until the error is there
        pl = select.poll()
        pl.register(sk, select.POLLERR)
        for _ in range(100):
            sk.send(b"x")
            if pl.poll(100):
                break
        check = (sk, socket.SOL_SOCKET, socket.SO_ERROR, 111)
    else:
        return f"unknown {what}"
    held.append(sk)
    wait()
    sk, level, opt, want = check
    got = sk.getsockopt(level, opt)
    if got != want:
        return f"{what}: {got}, not {want}, after the refused dump"
    return None


def wait() -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)


def main() -> int:
    mode, arg = sys.argv[1], sys.argv[2]
    err = {"keep": keep, "closed": closed, "refuse": refuse}[mode](arg)
    say("PASS" if err is None else "FAIL: " + err)
    return 0 if err is None else 1


if __name__ == "__main__":
    sys.exit(main())
