"""sock_kinds.py: socket kinds beyond unix, TCP and UDP (issue 12).

    python3 sock_kinds.py keep          -- kinds procsnap saves
    python3 sock_kinds.py refuse WHAT   -- one state procsnap refuses, WHAT one of
                                           raw_queue, cscov, packet_ring

Re-executes itself under ``unshare -n`` (same pid), brings lo up and lets
root make ping sockets (net.ipv4.ping_group_range "0 0"): the host's
range may forbid them.

``keep``: netlink sockets (bound to the pid, autobound in group 4,
connected to both, a NETLINK_ROUTE one in group 33), ICMP ping sockets (IPv4 unbound with SO_RCVTIMEO, IPv4 bound to
an ident, IPv6, one shut down for reading), UDP-Lite sockets (IPv4 bound
with two datagrams queued, IPv6 connected), raw IP sockets (IPv4 ICMP
bound to 127.0.0.14 with an ICMP_FILTER, IPv4 IPPROTO_RAW, IPv4 UDP with
IP_HDRINCL and IP_NODEFRAG, IPv6 ICMPv6 with an ICMPV6_FILTER, IPv6 UDP
with IPV6_HDRINCL).  On SIGTERM: every name, option and filter is what it
was, the queued datagrams are there in order, both ping sockets get an
echo reply, and the raw IPPROTO_RAW socket can still send a packet the
raw UDP socket of the same namespace sees.

``refuse``: the state is still there on SIGTERM (the refused dump left it
alone).  PASS or FAIL on SIGTERM.
"""
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

UDPLITE = 136
UDPLITE_SEND_CSCOV = 10
IP_NODEFRAG = 22
IPV6_HDRINCL = 36
SOL_RAW = 255
ICMP_FILTER = 1
SOL_ICMPV6 = 58
ICMPV6_FILTER = 1
POLLRDHUP = 0x2000


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def wait() -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)


def setup_ns() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write("0 0")


def echo(sk: socket.socket, addr: str, v6: bool) -> str | None:
    """Send an echo request on a ping socket; None if a reply comes."""
    typ = 128 if v6 else 8
    sk.sendto(struct.pack("!BBHHH", typ, 0, 0, 0, 1) + b"x" * 16, (addr, 0))
    sk.settimeout(2)
    data = sk.recv(256)
    want = 129 if v6 else 0
    if data[0] != want:
        return f"reply type {data[0]}, not {want}"
    return None


def opts(socks: list[tuple[str, socket.socket, int, int, int]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, sk, level, num, size in socks:
        out[name] = sk.getsockopt(level, num, size) if size else sk.getsockopt(level, num)
    return out


def keep() -> str | None:
    ping4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    ping4.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("qq", 1, 0))
    ping4b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    ping4b.bind(("127.0.0.1", 4321))
    ping6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
    ping_shut = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    try:
        ping_shut.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # ENOTCONN, after the bit is set
    lite = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, UDPLITE)
    lite.bind(("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, UDPLITE) as s:
        s.sendto(b"first", lite.getsockname())
        s.sendto(b"second datagram", lite.getsockname())
    lite6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, UDPLITE)
    lite6.bind(("::1", 0))
    lite6.connect(lite6.getsockname())
    raw_icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             socket.IPPROTO_ICMP)
    raw_icmp.bind(("127.0.0.14", 0))
    raw_icmp.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 1 << 13))
    raw_raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw_udp = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                            socket.IPPROTO_UDP)
    raw_udp.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    raw_udp.setsockopt(socket.IPPROTO_IP, IP_NODEFRAG, 1)
    raw6_icmp = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                              socket.IPPROTO_ICMPV6)
    flt6 = struct.pack("8I", 1 << 13, 0, 0, 0, 0, 0, 0, 0xFFFFFFFF)
    raw6_icmp.setsockopt(SOL_ICMPV6, ICMPV6_FILTER, flt6)
    raw6_udp = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             socket.IPPROTO_UDP)
    raw6_udp.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
    nl_s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)  # KOBJECT_UEVENT
    nl_s.bind((os.getpid(), 0))
    nl_b = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)
    nl_b.bind((0, 1 << 3))                                           # autobound, group 4
    nl_c = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15)
    nl_c.connect((os.getpid(), 1 << 3))
    nl_r = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)      # NETLINK_ROUTE
    nl_r.setsockopt(270, 1, 33)                                      # a group past 32
    nl_peers = [nl_s.getsockname(), nl_b.getsockname(), nl_c.getsockname(),
                nl_c.getpeername(), nl_r.getsockopt(270, 9, 8)]
    all_socks = [ping4, ping4b, ping6, ping_shut, lite, lite6, raw_icmp, raw_raw, raw_udp,
                 raw6_icmp, raw6_udp]
    checked = [
        ("ping4 rcvtimeo", ping4, socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16),
        ("raw_icmp filter", raw_icmp, SOL_RAW, ICMP_FILTER, 4),
        ("raw_raw hdrincl", raw_raw, socket.IPPROTO_IP, socket.IP_HDRINCL, 0),
        ("raw_udp hdrincl", raw_udp, socket.IPPROTO_IP, socket.IP_HDRINCL, 0),
        ("raw_udp nodefrag", raw_udp, socket.IPPROTO_IP, IP_NODEFRAG, 0),
        ("raw_icmp hdrincl", raw_icmp, socket.IPPROTO_IP, socket.IP_HDRINCL, 0),
        ("raw6_icmp filter", raw6_icmp, SOL_ICMPV6, ICMPV6_FILTER, 32),
        ("raw6_udp hdrincl", raw6_udp, socket.IPPROTO_IPV6, IPV6_HDRINCL, 0),
        ("raw6_icmp hdrincl", raw6_icmp, socket.IPPROTO_IPV6, IPV6_HDRINCL, 0),
    ]
    before = opts(checked)
    names = [(s.getsockname(), s.type, s.proto) for s in all_socks]
    peer6 = lite6.getpeername()
    wait()
    after = opts(checked)
    if after != before:
        return f"options {before} became {after}"
    now = [(s.getsockname(), s.type, s.proto) for s in all_socks]
    if now != names:
        return f"names {names} became {now}"
    nl_now = [nl_s.getsockname(), nl_b.getsockname(), nl_c.getsockname(),
              nl_c.getpeername(), nl_r.getsockopt(270, 9, 8)]
    if nl_now != nl_peers:
        return f"netlink names {nl_peers} became {nl_now}"
    # as zdtm sk-netlink: a message from the connected socket reaches the
    # bound one and the group member
    nl_c.send(struct.pack("IHHII", 16, 0x1234, 0x301, 0xabcd, 0))
    for sk in (nl_s, nl_b):
        sk.settimeout(2)
        if struct.unpack("IHHII", sk.recv(4096)[:16])[1] != 0x1234:
            return "netlink message came back wrong"
    if lite6.getpeername() != peer6:
        return f"UDP-Lite peer {peer6} became {lite6.getpeername()}"
    p = select.poll()
    p.register(ping_shut.fileno(), POLLRDHUP)
    if not any(e & POLLRDHUP for _f, e in p.poll(0)):
        return "the ping socket shut down for reading is not any more"
    p = select.poll()
    p.register(ping4.fileno(), POLLRDHUP)
    if p.poll(0):
        return "a ping socket came back shut down"
    lite.setblocking(False)
    got = [lite.recv(100), lite.recv(100)]
    if got != [b"first", b"second datagram"]:
        return f"UDP-Lite queue: {got}"
    for sk, addr, v6 in ((ping4, "127.0.0.1", False), (ping4b, "127.0.0.1", False),
                         (ping6, "::1", True)):
        err = echo(sk, addr, v6)
        if err:
            return err
    if ping4b.getsockname() != ("127.0.0.1", 4321):
        return f"bound ping socket is {ping4b.getsockname()}"
    # a hand-made IPv4/UDP packet from the IPPROTO_RAW socket reaches the
    # raw UDP socket
    while True:
        try:
            raw_udp.recv(4096)
        except BlockingIOError:
            break
    payload = b"raw-hello"
    udp = struct.pack("!HHHH", 1111, 2222, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    raw_raw.sendto(ip + udp, ("127.0.0.1", 0))
    deadline = time.time() + 2
    while time.time() < deadline:
        try:
            pkt = raw_udp.recv(4096)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if pkt.endswith(payload):
            return None
    return "the raw UDP socket saw no packet from the IPPROTO_RAW socket"


def refuse(what: str) -> str | None:
    if what == "raw_queue":
        sk = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as ping:
            echo(ping, "127.0.0.1", False)
        time.sleep(0.1)
        wait()
        n = 0
        sk.setblocking(False)
        try:
            while True:
                sk.recv(4096)
                n += 1
        except BlockingIOError:
            pass
        return None if n >= 2 else f"{n} packets queued after the refused dump, not 2"
    if what == "cscov":
        sk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, UDPLITE)
        sk.setsockopt(UDPLITE, UDPLITE_SEND_CSCOV, 20)
        wait()
        got = sk.getsockopt(UDPLITE, UDPLITE_SEND_CSCOV)
        return None if got == 20 else f"UDPLITE_SEND_CSCOV {got}"
    return f"unknown {what}"


def main() -> int:
    if os.environ.get("SOCK_KINDS_NS") != "1":
        os.environ["SOCK_KINDS_NS"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable] + sys.argv)
    setup_ns()
    mode = sys.argv[1]
    err = keep() if mode == "keep" else refuse(sys.argv[2])
    say("PASS" if err is None else "FAIL: " + err)
    return 0 if err is None else 1


if __name__ == "__main__":
    sys.exit(main())
