"""packet_socks.py: AF_PACKET sockets and classic BPF socket filters (issue 12).

    python3 packet_socks.py keep          -- state procsnap saves
    python3 packet_socks.py rings         -- unused RX and TX rings, mapped
    python3 packet_socks.py refuse WHAT   -- one state procsnap refuses, WHAT one of
                                             ring, queue, qdisc_bypass, vnet_hdr_sz, ebpf

Re-executes itself under ``unshare -n`` (same pid) and brings lo up, so the
packet sockets see only its own traffic.

``keep``: a SOCK_RAW socket of protocol 0 (not running) with TPACKET_V2,
PACKET_AUXDATA, promiscuous membership on lo added twice and a multicast
address membership; a SOCK_DGRAM ETH_P_IP socket bound to lo with
PACKET_RESERVE 64, ORIGDEV, LOSS, TIMESTAMP, COPY_THRESH, a CPU fanout group
and a classic filter that accepts all; a SOCK_RAW ETH_P_ARP socket with
PACKET_VNET_HDR; a SOCK_PACKET socket bound to lo; a UDP socket with a
locked classic filter that passes only 3-byte datagrams.  On SIGTERM:
every option and binding is what it was, each membership can be dropped
is there (lo promiscuous, the address in its list; the counts are
the test's and verify's, from PACKET_DIAG), the filters are the same programs,
the lock holds (detaching fails), the UDP filter still drops what it
dropped, and the ETH_P_IP socket sees an IP packet sent on lo.

``rings``: a SOCK_DGRAM ETH_P_IP socket bound to lo with TPACKET_V2 RX and
TX rings (2 frames of 2048 bytes each), both mapped shared at one place,
nothing received yet.  On SIGTERM: the mapping is where it was, on that
socket; a datagram sent on lo lands in RX frame 0 (the kernel's place
came back as the first frame), read through the old mapping.

``refuse``: the state is still there on SIGTERM (ring: a ring that has
received a frame).  PASS or FAIL on SIGTERM.
"""
import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_DROP_MEMBERSHIP = 1, 2
PACKET_RX_RING = 5
PACKET_COPY_THRESH, PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VERSION = 7, 8, 9, 10
PACKET_RESERVE, PACKET_LOSS, PACKET_VNET_HDR, PACKET_TIMESTAMP = 12, 14, 15, 17
PACKET_FANOUT, PACKET_QDISC_BYPASS, PACKET_VNET_HDR_SZ = 18, 20, 24
PACKET_MR_MULTICAST, PACKET_MR_PROMISC = 0, 1
SOCK_PACKET = 10
SO_ATTACH_FILTER = SO_GET_FILTER = 26
SO_DETACH_FILTER = 27
SO_LOCK_FILTER = 44
ETH_P_ALL, ETH_P_IP, ETH_P_ARP = 0x0003, 0x0800, 0x0806
FANOUT = 7 | (2 << 16)          # group 7, PACKET_FANOUT_CPU
MCAST = bytes.fromhex("01005e000001")

libc = ctypes.CDLL(None, use_errno=True)
_keep: list[object] = []


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())


def wait() -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    say("ready")
    while not stop:
        time.sleep(0.05)


def attach(sk: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    _keep.append(buf)
    sk.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                  struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf)))


def get_filter(sk: socket.socket) -> bytes:
    n = ctypes.c_uint32(0)
    assert libc.getsockopt(sk.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, None,
                           ctypes.byref(n)) == 0
    buf = ctypes.create_string_buffer(8 * n.value or 1)
    assert libc.getsockopt(sk.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, buf,
                           ctypes.byref(n)) == 0
    return buf.raw[:8 * n.value]


def mreq(kind: int, addr: bytes = b"") -> bytes:
    return struct.pack("iHH8s", socket.if_nametoindex("lo"), kind, len(addr), addr)


# ld len; jeq #11 (8-byte UDP header + 3), accept : drop
UDP_PROG = [(0x80, 0, 0, 0), (0x15, 0, 1, 11), (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0)]
ALL_PROG = [(0x06, 0, 0, 0xFFFF)]


def keep() -> str | None:
    a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    a.setsockopt(SOL_PACKET, PACKET_VERSION, 1)
    a.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    a.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq(PACKET_MR_PROMISC))
    a.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq(PACKET_MR_PROMISC))
    a.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq(PACKET_MR_MULTICAST, MCAST))
    b = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    b.bind(("lo", ETH_P_IP))
    for opt, val in ((PACKET_RESERVE, 64), (PACKET_ORIGDEV, 1), (PACKET_LOSS, 1),
                     (PACKET_TIMESTAMP, 1 << 6), (PACKET_COPY_THRESH, 1), (PACKET_FANOUT, FANOUT)):
        b.setsockopt(SOL_PACKET, opt, val)
    attach(b, ALL_PROG)
    c = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    c.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    d = socket.socket(socket.AF_PACKET, SOCK_PACKET, socket.htons(ETH_P_ALL))
    sa = struct.pack("H14s", socket.AF_PACKET, b"lo")
    assert libc.bind(d.fileno(), sa, len(sa)) == 0
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    attach(u, UDP_PROG)
    u.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
    before = (get_filter(b), get_filter(u))
    wait()
    want = {(a, PACKET_VERSION): 1, (a, PACKET_AUXDATA): 1, (b, PACKET_RESERVE): 64,
            (b, PACKET_ORIGDEV): 1, (b, PACKET_LOSS): 1, (b, PACKET_TIMESTAMP): 1 << 6,
            (b, PACKET_COPY_THRESH): 1, (b, PACKET_FANOUT): FANOUT, (c, PACKET_VNET_HDR): 1,
            (a, PACKET_ORIGDEV): 0, (c, PACKET_AUXDATA): 0}
    for (sk, opt), val in want.items():
        got = sk.getsockopt(SOL_PACKET, opt)
        if got != val:
            return f"fd {sk.fileno()}: SOL_PACKET {opt} is {got}, not {val}"
    if b.getsockname()[:2] != ("lo", ETH_P_IP):
        return f"b bound to {b.getsockname()}"
    if (a.type, a.proto, c.proto) != (socket.SOCK_RAW, 0, socket.htons(ETH_P_ARP)):
        return f"types/protocols {a.type} {a.proto} {c.proto}"
    if (get_filter(b), get_filter(u)) != before:
        return "a filter program changed"
    if u.getsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER) != 1:
        return "the UDP filter is not locked"
    try:
        u.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return "a locked filter could be detached"
    except OSError as exc:
        if exc.errno != errno.EPERM:
            return f"detaching a locked filter: {exc}"
    # memberships (their counts are compared from outside, PACKET_DIAG):
    # lo is promiscuous once and has the multicast address
    link = subprocess.run(["ip", "-d", "link", "show", "lo"], capture_output=True,
                          text=True).stdout
    if "promiscuity 1 " not in link:
        return f"lo is not promiscuous once: {link!r}"
    maddr = subprocess.run(["ip", "maddr", "show", "dev", "lo"], capture_output=True,
                           text=True).stdout
    if "01:00:5e:00:00:01" not in maddr:
        return f"lo lacks the multicast address: {maddr!r}"
    # the UDP filter still drops a 7-byte datagram and passes a 3-byte one;
    # the ETH_P_IP packet socket on lo sees them
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"toolong", u.getsockname())
    s.sendto(b"abc", u.getsockname())
    u.settimeout(5)
    if u.recv(64) != b"abc":
        return "the UDP filter let another datagram through"
    b.settimeout(5)
    pkt = b.recv(2048)
    if pkt[:1] != b"\x45":
        return f"the ETH_P_IP socket got {pkt[:20].hex()}"
    # Python reads a SOCK_PACKET name as a sockaddr_ll: the raw sockaddr
    name = ctypes.create_string_buffer(16)
    size = ctypes.c_uint32(16)
    assert libc.getsockname(d.fileno(), name, ctypes.byref(size)) == 0
    if name.raw[2:].split(b"\0", 1)[0] != b"lo":
        return f"the SOCK_PACKET socket is bound to {name.raw!r}"
    return None


def refuse(what: str) -> str | None:
    sk = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sk.bind(("lo", ETH_P_IP))
    if what == "ring":
        sk.setsockopt(SOL_PACKET, PACKET_VERSION, 1)
        sk.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", 4096, 1, 2048, 2))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", 9))
        time.sleep(0.2)
    elif what == "queue":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", 9))
        time.sleep(0.2)
    elif what == "qdisc_bypass":
        sk.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    elif what == "ebpf":
        # BPF_PROG_LOAD of a socket filter "r0 = 0; exit", then SO_ATTACH_BPF
        insns = struct.pack("BBhi", 0xB7, 0, 0, 0) + struct.pack("BBhi", 0x95, 0, 0, 0)
        ibuf, lic = ctypes.create_string_buffer(insns, 16), ctypes.create_string_buffer(b"GPL")
        attr = ctypes.create_string_buffer(struct.pack("IIQQ", 1, 2, ctypes.addressof(ibuf),
                                                       ctypes.addressof(lic)), 128)
        prog = libc.syscall(321, 5, attr, 128)
        if prog < 0:
            return f"bpf(BPF_PROG_LOAD): errno {ctypes.get_errno()}"
        sk.setsockopt(socket.SOL_SOCKET, 50, prog)
        os.close(prog)  # the socket holds the program; a bpf-prog fd is refused itself
    elif what == "vnet_hdr_sz":
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        raw.setsockopt(SOL_PACKET, PACKET_VNET_HDR_SZ, 12)
        _keep.append(raw)
    wait()
    if what == "qdisc_bypass" and sk.getsockopt(SOL_PACKET, PACKET_QDISC_BYPASS) != 1:
        return "qdisc bypass lost"
    if what == "ebpf" and libc.getsockopt(sk.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, None,
                                          ctypes.byref(ctypes.c_uint32(0))) == 0:
        return "the eBPF program is gone"
    if what == "queue":
        sk.settimeout(1)
        if not sk.recv(2048):
            return "the queued packet is gone"
    return None


def rings() -> str | None:
    import mmap
    sk = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sk.bind(("lo", ETH_P_IP))
    sk.setsockopt(SOL_PACKET, PACKET_VERSION, 1)   # TPACKET_V2
    req = struct.pack("IIII", 4096, 1, 2048, 2)
    sk.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
    sk.setsockopt(SOL_PACKET, 13, req)              # PACKET_TX_RING
    mm = mmap.mmap(sk.fileno(), 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    _keep.extend([sk, mm])
    wait()
    ino = os.fstat(sk.fileno()).st_ino   # (a restored socket is a new inode)
    with open("/proc/self/maps") as f:
        rows = [r.split() for r in f]
    if not any(int(r[0].split("-")[0], 16) == addr and r[4] == str(ino) for r in rows):
        return f"no mapping of socket {ino} at {addr:#x}"
    if struct.unpack_from("I", mm, 0)[0] != 0:
        return "RX frame 0 is not free before anything was sent"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", ("127.0.0.1", 9))
    deadline = time.monotonic() + 5
    while not struct.unpack_from("I", mm, 0)[0] & 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    status, length = struct.unpack_from("II", mm, 0)
    if not status & 1 or not length:
        return f"no packet in RX frame 0 (status {status:#x}, len {length})"
    return None


def main() -> int:
    if os.environ.get("PACKET_SOCKS_NS") != "1":
        os.environ["PACKET_SOCKS_NS"] = "1"
        os.execvp("unshare", ["unshare", "-n", sys.executable] + sys.argv)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    mode = sys.argv[1]
    err = keep() if mode == "keep" else rings() if mode == "rings" else refuse(sys.argv[2])
    say("PASS" if err is None else "FAIL: " + err)
    return 0 if err is None else 1


if __name__ == "__main__":
    sys.exit(main())
