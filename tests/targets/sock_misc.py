"""TCP and UDP sockets with options and queued datagrams.

    sock_misc.py PORTFILE

* a TCP listener on 127.0.0.1 (SO_REUSEADDR, SO_KEEPALIVE, SO_RCVBUF
  65536, SO_SNDBUF 32768, SO_RCVTIMEO 2.5 s, TCP_KEEPIDLE 77; TCP_NODELAY
  is set but not checked: CRIU's image keeps it for established
  connections only);
* an IPv6 TCP listener on ::1 with IPV6_V6ONLY;
* a UDP socket on 127.0.0.1 with 3 queued datagrams, and a UDP socket
  connected to it (which sent them);
* an unbound TCP socket;
* an IPv6 UDP socket bound to ::1 with one queued datagram.
The ports are written to PORTFILE as "tcp tcp6 udp udp6".

On SIGTERM it checks the options, the queued datagrams, that the
connected UDP socket still reaches its peer and that the listener still
accepts (from itself); PASS or FAIL.
"""
import os
import signal
import socket
import struct
import sys
import time


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def main() -> int:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # not kept (see above)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("qq", 2, 500000))
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(7)
    tcp6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    tcp6.bind(("::1", 0))
    tcp6.listen(3)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    cudp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cudp.connect(udp.getsockname())
    for i in range(3):
        cudp.send(f"udp {i}".encode())
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b"six", udp6.getsockname())
    unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opts = {
        "reuseaddr": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
        "keepalive": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "keepidle": tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "rcvbuf": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "sndbuf": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "rcvtimeo": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16),
        "v6only": tcp6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
        "udp_rcvbuf": udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "names": (tcp.getsockname(), tcp6.getsockname()[:2], udp.getsockname(),
                  cudp.getpeername(), udp6.getsockname()[:2]),
    }
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{tcp.getsockname()[1]} {tcp6.getsockname()[1]} {udp.getsockname()[1]} "
                f"{udp6.getsockname()[1]}\n")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)
    err = None
    now = {
        "reuseaddr": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
        "keepalive": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "keepidle": tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "rcvbuf": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "sndbuf": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "rcvtimeo": tcp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16),
        "v6only": tcp6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
        "udp_rcvbuf": udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "names": (tcp.getsockname(), tcp6.getsockname()[:2], udp.getsockname(),
                  cudp.getpeername(), udp6.getsockname()[:2]),
    }
    for k in opts:
        if opts[k] != now[k]:
            err = err or f"{k}: {opts[k]!r} before, {now[k]!r} after"
    udp.setblocking(False)
    for i in range(3):
        try:
            got = udp.recv(64)
        except BlockingIOError:
            got = b"<empty>"
        if got != f"udp {i}".encode():
            err = err or f"udp datagram {i}: {got!r}"
    udp6.settimeout(2)
    try:
        got = udp6.recv(64)
    except OSError as exc:
        got = repr(exc).encode()
    if got != b"six":
        err = err or f"udp6 datagram: {got!r}"
    cudp.send(b"again")
    udp.settimeout(2)
    try:
        got = udp.recv(64)
    except OSError as exc:
        got = repr(exc).encode()
    if got != b"again":
        err = err or f"connected udp after restore: {got!r}"
    c = socket.create_connection(tcp.getsockname(), timeout=5)
    conn, _ = tcp.accept()
    c.sendall(b"ping")
    if conn.recv(4) != b"ping":
        err = err or "the listener's connection does not carry data"
    if unbound.getsockname() != ("0.0.0.0", 0):
        err = err or f"unbound socket is bound to {unbound.getsockname()}"
    say("PASS" if err is None else "FAIL: " + err)
    return 0 if err is None else 1


if __name__ == "__main__":
    sys.exit(main())
