"""Datagrams queued with their senders' addresses (issue 13).

    dgram_senders.py

Receivers (fd numbers from 100 on, in this order), each with datagrams
queued from several senders:
  udp4     UDP bound to 127.0.0.1: from a sender still open here (bound
           to 127.0.0.1), from one closed since, from one bound to
           127.0.0.5, and a 60,000-byte one
  udp6     UDP bound to ::1: from two IPv6 senders
  dual     UDP bound to [::] with IPV6_RECVPKTINFO: from an IPv4 sender
           (v4-mapped) sent to 127.0.0.3, and from ::1
  wild4    UDP bound to 0.0.0.0 with IP_PKTINFO: sent to 127.0.0.7 and
           to 127.0.0.1
  lite     UDP-Lite bound to 127.0.0.1, from a UDP-Lite sender
  conn     UDP bound to 127.0.0.1, then connected to a peer: a datagram
           from someone else queued before the connect, and one from the
           peer
Prints "ready".  On SIGUSR1 it reads every queue with recvmsg and
checks each datagram's data, sender address and (where asked for) its
destination from IP_PKTINFO / IPV6_PKTINFO, then prints PASS or
"FAIL: ..." lines.
"""
import os
import signal
import socket
import struct
import sys
import time

UDPLITE = 136
IP_PKTINFO = 8
go = False


def on_usr1(signum, frame):
    global go
    go = True


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def pktinfo(anc) -> str | None:
    for level, typ, data in anc:
        if level == socket.IPPROTO_IP and typ == IP_PKTINFO:
            return socket.inet_ntop(socket.AF_INET, data[8:12])
        if level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
            return socket.inet_ntop(socket.AF_INET6, data[:16])
    return None


def main() -> int:
    signal.signal(signal.SIGUSR1, on_usr1)
    keep = []          # senders kept open
    expect = {}        # name -> [(data, sender, dst or None)]
    recv = {}

    def sender(fam, addr, proto=0):
        s = socket.socket(fam, socket.SOCK_DGRAM, proto)
        s.bind((addr, 0))
        return s

    udp4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp4.bind(("127.0.0.1", 0))
    a = sender(socket.AF_INET, "127.0.0.1")
    keep.append(a)
    b = sender(socket.AF_INET, "127.0.0.1")
    c = sender(socket.AF_INET, "127.0.0.5")
    big = bytes(i % 256 for i in range(60000))
    msgs = [(a, b"from a"), (b, b"from b, closed since"), (c, b"from c"), (a, big)]
    for s, data in msgs:
        s.sendto(data, udp4.getsockname())
    expect["udp4"] = [(data, s.getsockname(), None) for s, data in msgs]
    b.close()
    c.close()
    recv["udp4"] = udp4

    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.bind(("::1", 0))
    d, e = sender(socket.AF_INET6, "::1"), sender(socket.AF_INET6, "::1")
    keep.append(d)
    expect["udp6"] = []
    for s, data in ((d, b"six from d"), (e, b"six from e")):
        s.sendto(data, udp6.getsockname())
        expect["udp6"].append((data, s.getsockname(), None))
    e.close()
    recv["udp6"] = udp6

    dual = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    dual.bind(("::", 0))
    port = dual.getsockname()[1]
    f4 = sender(socket.AF_INET, "127.0.0.1")
    f4.sendto(b"four to .3", ("127.0.0.3", port))
    f6 = sender(socket.AF_INET6, "::1")
    f6.sendto(b"six to ::1", ("::1", port))
    expect["dual"] = [
        (b"four to .3", ("::ffff:127.0.0.1", f4.getsockname()[1], 0, 0), "::ffff:127.0.0.3"),
        (b"six to ::1", f6.getsockname(), "::1")]
    f4.close()
    f6.close()
    recv["dual"] = dual

    wild = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wild.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    wild.bind(("0.0.0.0", 0))
    g = sender(socket.AF_INET, "127.0.0.1")
    expect["wild4"] = []
    for to in ("127.0.0.7", "127.0.0.1"):
        g.sendto(f"to {to}".encode(), (to, wild.getsockname()[1]))
        expect["wild4"].append((f"to {to}".encode(), g.getsockname(), to))
    g.close()
    recv["wild4"] = wild

    lite = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, UDPLITE)
    lite.bind(("127.0.0.1", 0))
    h = sender(socket.AF_INET, "127.0.0.1", UDPLITE)
    h.sendto(b"lite", lite.getsockname())
    expect["lite"] = [(b"lite", h.getsockname(), None)]
    h.close()
    recv["lite"] = lite

    conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    conn.bind(("127.0.0.1", 0))
    other, peer = sender(socket.AF_INET, "127.0.0.1"), sender(socket.AF_INET, "127.0.0.1")
    keep.append(peer)
    other.sendto(b"before the connect", conn.getsockname())
    conn.connect(peer.getsockname())
    peer.sendto(b"from the peer", conn.getsockname())
    expect["conn"] = [(b"before the connect", other.getsockname(), None),
                      (b"from the peer", peer.getsockname(), None)]
    other.close()
    recv["conn"] = conn

    for n, name in enumerate(recv):   # fixed fd numbers for the test's eyes
        sk = recv[name]
        os.dup2(sk.fileno(), 100 + n)
        sk.close()
        recv[name] = socket.socket(fileno=100 + n)
    say("ready")
    while not go:
        time.sleep(0.05)

    bad = []
    for name, sk in recv.items():
        sk.setblocking(False)
        for i, (data, sender_addr, dst) in enumerate(expect[name]):
            try:
                got, anc, _flags, addr = sk.recvmsg(65536, 256)
            except BlockingIOError:
                bad.append(f"{name}: datagram {i} missing")
                break
            if got != data:
                bad.append(f"{name}: datagram {i}: {got[:40]!r}, expected {data[:40]!r}")
            if addr != sender_addr:
                bad.append(f"{name}: datagram {i} from {addr}, expected {sender_addr}")
            if dst is not None and pktinfo(anc) != dst:
                bad.append(f"{name}: datagram {i} sent to {pktinfo(anc)}, expected {dst}")
        else:
            try:
                extra = sk.recv(100)
                bad.append(f"{name}: an extra datagram {extra!r}")
            except BlockingIOError:
                pass
    conn = recv["conn"]
    keep[-1].sendto(b"again", conn.getsockname())
    conn.settimeout(2)
    try:
        if conn.recv(10) != b"again":
            bad.append("conn: not connected to its peer any more")
    except OSError as exc:
        bad.append(f"conn: after restore: {exc}")
    for line in bad:
        say("FAIL: " + line)
    if not bad:
        say("PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
