"""IPv4/IPv6 TCP, UDP, UDP-Lite, ICMP (ping) and raw IP sockets (fd kind INETSK, inline in files.img as
file_entry.isk; UDP queues in sk-queues.img; live TCP in tcp-stream-INO.img).

Ping and raw sockets: bound address (a ping socket's ident is its port; a
raw socket's "port" is its protocol, bound by address only), peer,
ip_opts (raw: hdrincl, nodefrag, the ICMP type filter) and the receive
shutdown, which poll shows (sock_diag lists neither kind); packets waiting
in their queue are refused (they came from the kernel or the wire and
cannot be sent back).  UDP-Lite: as UDP, queue included.

This kind comes after unixsk and netlinksk in FD_KINDS and claims every other socket, so
that a socket of a family procsnap does not handle (netlink, packet, raw,
SCTP, vsock...) is refused here by name, with the pid and fd -- never
skipped.

Addresses come from the socket itself (getsockname/getpeername on a
pidfd_getfd copy): an unbound socket is in no hash table, so sock_diag
does not list it.  sock_diag gives what the socket cannot tell about
itself: a listener's backlog and how many connections wait in its accept
queue, and the shutdown bits.

States handled: TCP listening (connections waiting to be accepted are
refused, or dropped with criu's ``--skip-in-flight``), TCP closed
(created, maybe bound), TCP connections with ``--tcp-established`` in
ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING (tcp.py,
TCP_REPAIR and the FIN replay) and SYN_SENT (its SYN sent again from the
same initial sequence number), a connection that ended (CLOSE with a
peer: with --tcp-established its unread data are kept; without, it is
refused if it has any, else it comes back shut down both ways), and one
that was reset with its error still pending (with --tcp-established:
its unread data and its error, which tcp.py reads at the dump's commit
point and recreates with an injected RST; refused with --leave-running,
where reading it would clear it in the running tree); UDP bound
or connected, with the datagrams in its receive queue.  Any other state
(SYN_RECV, TIME_WAIT: never held by an fd) is refused by name.  ``dump --tcp-close`` records every
connection as closed (shut down both ways), as criu's.

Restore: the restorer makes the socket in its own process, binds it with
SO_REUSEADDR and SO_REUSEPORT on (as criu: sockets that share a port --
two SO_REUSEPORT listeners, a listener and its connections, a port whose
old connections linger in TIME_WAIT -- must all bind; the dumped values
are set once every socket is open, just before the tree runs), listens
or connects, queues UDP datagrams from a scratch socket *before*
connecting (a connected UDP socket takes datagrams from its peer only),
applies the options, and the puppet takes it with pidfd_getfd.
"""
from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, sk_inet_pb2, sk_packet_pb2
from ..kernel import netns
from . import anonfd, fdaudit, sockets, sockopts, tcp
from .tcp import TCP_STATES, unpack_addr

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "inetsk"
FDINFO: dict[str, "fdaudit.Rule"] = {}  # sockets print only the common lines
TYPE = fdinfo_pb2.INETSK

# tcp_states.h
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
LOOPBACK_IFINDEX = 1   # lo, in every network namespace (include/net/flow.h)
TCP_LISTEN = 10
IP_FREEBIND = 15
IPV6_FREEBIND = 78
IP_PKTINFO = 8
UDP_CORK = 1
SIOCOUTQ = 0x5411
POLLRDHUP = 0x2000
IPPROTO_UDPLITE = 136
IP_NODEFRAG = 22
IPV6_HDRINCL = 36
SOL_RAW = 255
ICMP_FILTER = 1
SOL_ICMPV6 = 58
ICMPV6_FILTER = 1
PROTOS: dict[tuple[int, int], str] = {(socket.SOCK_STREAM, socket.IPPROTO_TCP): "TCP",
          (socket.SOCK_DGRAM, socket.IPPROTO_UDP): "UDP",
          (socket.SOCK_DGRAM, IPPROTO_UDPLITE): "UDP-Lite",
          (socket.SOCK_DGRAM, socket.IPPROTO_ICMP): "ICMP",
          (socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6): "ICMPv6"}
# datagram kinds whose receive queue is peeked and sent back from a
# scratch socket of the same protocol (ping and raw queues cannot be
# sent back: their packets come from the kernel or the wire)
REFILLED = (socket.IPPROTO_UDP, IPPROTO_UDPLITE)


def kind_name(type_: int, proto: int) -> str | None:
    """"TCP", "UDP", "UDP-Lite", "ICMP", "ICMPv6" or "raw IP (protocol N)";
    None for a kind procsnap does not dump."""
    if type_ == socket.SOCK_RAW:
        return f"raw IP (protocol {proto})"
    return PROTOS.get((type_, proto))


def matches(fd: "FdCtx") -> bool:
    fam = sockets.family_of(fd)
    return fam is not None and fam != socket.AF_UNIX


def _family_name(fam: int) -> str:
    try:
        return socket.AddressFamily(fam).name
    except ValueError:
        return f"family {fam}"


def pack_addr(fam: int, addr: str) -> list[int]:
    """An address as CRIU's repeated uint32: the network-order bytes read
    as host (little-endian) words."""
    raw = socket.inet_pton(fam, addr)
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def _state_of(sk: socket.socket, proto: int) -> int:
    if sk.type == socket.SOCK_STREAM:
        return tcp.tcp_state(sk)
    try:
        sk.getpeername()
        return TCP_ESTABLISHED
    except OSError:
        return TCP_CLOSE


def endpoint(fam: int, addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if fam == socket.AF_INET6 else f"{addr}:{port}"


def dump(fd: "FdCtx", fid: int) -> Any:
    what = sockets.describe(fd)
    fam = sockets.family_of(fd)
    assert fam is not None
    sk = sockets.copy_of(fd)
    if fam not in (socket.AF_INET, socket.AF_INET6):
        raise Unsupported(f"{what}: an {_family_name(fam)} socket (type {sk.type}); "
                          "procsnap dumps only unix, netlink, packet and IP (TCP, UDP, "
                          "UDP-Lite, ping, raw) sockets")
    proto = sk.getsockopt(socket.SOL_SOCKET, sockets.SO_PROTOCOL)
    kind = kind_name(sk.type, proto)
    if kind is None:
        raise Unsupported(f"{what}: an {_family_name(fam)} socket of type {sk.type}, "
                          f"protocol {proto}; only TCP, UDP, UDP-Lite, ICMP (ping) and raw "
                          "IP are supported")
    if not sockets.same_netns(fd.task.pid, fd.ctx):
        raise Unsupported(f"{what}: the process is in another network namespace than "
                          "the tree's root; its sockets cannot be dumped")
    ino = sockets.socket_ino(fd.link)
    src, sport = sk.getsockname()[:2]
    state = _state_of(sk, proto)
    tcp_sk = sk.type == socket.SOCK_STREAM
    peer = tcp.peer_of(sk) if tcp_sk else None
    if peer is None and not tcp_sk and state == TCP_ESTABLISHED:
        peer = tuple(sk.getpeername()[:2])  # type: ignore[assignment]
    dst, dport = peer if peer else (("0.0.0.0" if fam == socket.AF_INET else "::"), 0)
    d = sockets.inet_table(fd.ctx).get(ino)
    label = f"{what}: {kind} {endpoint(fam, src, sport)}"
    if peer and state != TCP_LISTEN:
        label += f" -> {endpoint(fam, dst, dport)}"
    if sk.type == socket.SOCK_DGRAM and proto in REFILLED:
        _check_cork(sk, label)
    # first, before anything here touches the socket (repair mode, peeking)
    # (a closed socket that had a peer counts as connected: the kernel set
    # its MSS and the like from that connection, and they died with it)
    # a connection that was reset (CLOSE with a peer) keeps its pending
    # error (tcp.py reads it at the dump's commit point)
    reset = sockopts.audit(fd.ctx, label, sk, connected=tcp_sk
                           and state != TCP_LISTEN and peer is not None,
                           error_ok=tcp_sk and state == TCP_CLOSE and peer is not None)
    with netns.inside(fd.task.pid):  # its defaults are its namespace's sysctls
        ip_opts = _ip_opts(sk)
    ie = sk_inet_pb2.inet_sk_entry(
        id=fid, ino=ino, family=fam, type=sk.type, proto=proto, state=state,
        src_port=sport, dst_port=dport, flags=anonfd.file_flags(fd, "the socket"),
        backlog=0, src_addr=pack_addr(fam, src), dst_addr=pack_addr(fam, dst),
        fown=anonfd.no_owner(), opts=sockets.dump_opts(fd, sk), ip_opts=ip_opts,
        shutdown=sockets.shutdown_field(d.shutdown if d is not None else 0))
    if d is None and not tcp_sk:
        # sock_diag lists no ping or raw socket (nor an unbound one): poll
        # tells a receive shutdown; a send shutdown alone changes nothing a
        # datagram socket does (its sendmsg does not look) but poll's HUP
        ie.shutdown = sockets.shutdown_field(_dgram_shutdown(sk))
    if sk.type == socket.SOCK_RAW:
        ie.ip_opts.raw.CopyFrom(_raw_opts(sk, fam, proto))
    if fam == socket.AF_INET6:
        ie.v6only = bool(sk.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    if tcp_sk:
        ie.tcp_opts.CopyFrom(sockets.dump_tcp_opts(sk))
    fe = fdinfo_pb2.file_entry(type=TYPE, id=fid, isk=ie)
    if tcp_sk:
        _dump_tcp(fd, sk, fe.isk, d, label, state, peer is not None, reset)
    elif proto not in REFILLED or sk.type != socket.SOCK_DGRAM:
        # ping and raw sockets take no SO_PEEK_OFF: one peek tells whether
        # anything waits (0 bytes with the queue empty: read shut down)
        try:
            size = sk.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except BlockingIOError:
            size = b""
        if size:
            raise Unsupported(f"{label}: packets wait in its receive queue; "
                              f"a {kind} socket's queue cannot be put back")
    else:
        for pk in sockets.peek_queue(sk, label, stream=False):
            data = pk.data
            entry = sk_packet_pb2.sk_packet_entry(id_for=fid, length=len(data))
            if pk.addr:
                # sent again from that address (an injected datagram), as
                # recvfrom() reported it
                if fam == socket.AF_INET6 and (pk.addr[2] or pk.addr[3]):
                    # the flow label and the scope (the interface of a
                    # link-local sender) come from how it arrived
                    raise Unsupported(
                        f"{label}: a queued datagram from {_sender(pk.addr)} carries a "
                        f"flow label or scope ({pk.addr[2]}, {pk.addr[3]}) that putting it "
                        "back would lose")
                entry.addr = sockets.sockaddr_bytes(fam, pk.addr)
            if pk.pktinfo is not None:
                # the task reads where each datagram went (IP_PKTINFO)
                ifindex, to_addr = pk.pktinfo
                if ifindex != LOOPBACK_IFINDEX:
                    raise Unsupported(
                        f"{label}: a queued datagram from {_sender(pk.addr)} came in on "
                        f"interface {ifindex}, which IP_PKTINFO reports; put back, it would "
                        "come in on lo")
                entry.dst = to_addr
            fd.ctx.add_payload("sk-queues", entry, data)
    if not fe.isk.shutdown:
        # criu writes the field only when set: its restore of a TCP socket
        # calls shutdown() for any value present, NONE included (EINVAL)
        fe.isk.ClearField("shutdown")
    return fe


def _dump_tcp(fd: "FdCtx", sk: socket.socket, ie: Any, d: Any, label: str, state: int,
              has_peer: bool, reset: bool = False) -> None:
    opts = fd.ctx.opts
    name = TCP_STATES.get(state, str(state))
    if state == TCP_LISTEN:
        if d is None:
            raise Unsupported(f"{label}: listening socket not reported by sock_diag")
        ie.backlog = d.wqueue
        if d.rqueue and not opts.skip_in_flight:
            raise Unsupported(f"{label}: {d.rqueue} connection(s) wait in its accept "
                              "queue; they cannot be restored (dump with --skip-in-flight "
                              "to drop them, as criu)")
        # --skip-in-flight: criu's meaning, those connections are dropped;
        # their clients see an RST when they first send after the restore
        return
    if state == TCP_CLOSE and not has_peer:
        return  # created, maybe bound: a new socket bound alike
    if state not in tcp.CONN_STATES:
        raise Unsupported(f"{label}: TCP state {name}; not supported")
    inq = tcp._ioctl_int(sk, tcp.SIOCINQ)
    if opts.tcp_close:
        # criu's dump --tcp-close: the connection is not dumped and comes
        # back closed: recorded as such (CLOSE, shut down both ways), no
        # repair mode, no lock; its queued data goes with it, knowingly
        ie.state = TCP_CLOSE
        ie.shutdown = sockets.shutdown_field(sockets.RCV_SHUTDOWN | sockets.SEND_SHUTDOWN)
        return
    if reset and not opts.tcp_established:
        raise Unsupported(f"{label}: a reset TCP connection (an error is pending"
                          + (f", {inq} unread byte(s)" if inq else "") + "); dump with "
                          "--tcp-established to keep it (or with --tcp-close to have it "
                          "come back closed, without its error)")
    if reset and opts.leave_running:
        raise Unsupported(f"{label}: a reset TCP connection: its pending error can be read "
                          "only by clearing it (SO_ERROR), so it cannot be saved while the "
                          "tree runs on (--leave-running)")
    if state == TCP_CLOSE and not opts.tcp_established:
        # a connection that ended (FINs exchanged or reset) but is still
        # open: with nothing left to read it comes back as closed
        if inq:
            raise Unsupported(f"{label}: a closed TCP connection with {inq} unread "
                              "byte(s); dump with --tcp-established to keep them")
        ie.shutdown = sockets.shutdown_field(sockets.RCV_SHUTDOWN | sockets.SEND_SHUTDOWN)
        return
    if not opts.tcp_established:
        what = ("an established TCP connection" if state == TCP_ESTABLISHED
                else f"a TCP connection in state {name}")
        raise Unsupported(f"{label} is {what}; dump with --tcp-established to keep it "
                          "(or with --tcp-close to have it come back closed)")
    if not sockets.same_netns(fd.task.pid) and not fd.ctx.netns_locked:
        # per-connection rules in procsnap's own namespace never see the
        # packets of a connection in the tree's: the namespace must be
        # locked as a whole (dumper, tcp.lock_netns)
        raise Unsupported(f"{label} is a TCP connection in the tree's own network namespace, "
                          "which could not be locked (nft missing?); dump with --tcp-close "
                          "to have it come back closed")
    tcp.dump_established(fd, sk, ie, label, reset=reset)


def _sender(addr: Any) -> str:
    if not addr:
        return "an unknown sender"
    return endpoint(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, addr[0], addr[1])


def _dgram_shutdown(sk: socket.socket) -> int:
    """sk_shutdown of a datagram socket, as far as poll shows it
    (datagram_poll: RDHUP with RCV_SHUTDOWN, HUP with both)."""
    p = select.poll()
    p.register(sk.fileno(), select.POLLIN | POLLRDHUP)
    ev = 0
    for _fd, e in p.poll(0):
        ev |= e
    if ev & select.POLLHUP:
        return sockets.RCV_SHUTDOWN | sockets.SEND_SHUTDOWN
    return sockets.RCV_SHUTDOWN if ev & POLLRDHUP else 0


def _dgram_apply_shutdown(sk: socket.socket, mask: int) -> None:
    # shutdown(2) of a datagram socket that is not connected answers
    # ENOTCONN, after it has set the bits (inet_shutdown)
    try:
        sockets.apply_shutdown(sk, mask)
    except OSError:
        pass


def _raw_opts(sk: socket.socket, fam: int, proto: int) -> Any:
    """CRIU's ip_opts_raw_entry: the header-include flag, IPv4's
    no-defrag flag, and the ICMP type filter of an ICMP raw socket."""
    g = sk.getsockopt
    r = sk_inet_pb2.ip_opts_raw_entry()
    if fam == socket.AF_INET6:
        if g(socket.IPPROTO_IPV6, IPV6_HDRINCL):
            r.hdrincl = True
        if proto == socket.IPPROTO_ICMPV6:
            r.icmpv_filter.extend(struct.unpack("8I", g(SOL_ICMPV6, ICMPV6_FILTER, 32)))
    else:
        if g(socket.IPPROTO_IP, socket.IP_HDRINCL):
            r.hdrincl = True
        if g(socket.IPPROTO_IP, IP_NODEFRAG):
            r.nodefrag = True
        if proto == socket.IPPROTO_ICMP:
            r.icmpv_filter.extend(struct.unpack("I", g(SOL_RAW, ICMP_FILTER, 4)))
    return r


def _restore_raw_opts(sk: socket.socket, ie: Any) -> None:
    r = ie.ip_opts.raw
    if ie.family == socket.AF_INET6:
        sk.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, int(r.hdrincl))
        if r.icmpv_filter and ie.proto == socket.IPPROTO_ICMPV6:
            sk.setsockopt(SOL_ICMPV6, ICMPV6_FILTER, struct.pack("8I", *r.icmpv_filter))
        return
    # IPPROTO_RAW sockets have the flag from birth: set either way
    sk.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, int(r.hdrincl))
    if r.nodefrag:
        sk.setsockopt(socket.IPPROTO_IP, IP_NODEFRAG, 1)
    if r.icmpv_filter and ie.proto == socket.IPPROTO_ICMP:
        sk.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", r.icmpv_filter[0]))


def _check_cork(sk: socket.socket, label: str) -> None:
    """A corked UDP socket holds the datagram it is building in its send
    queue, where nothing can read it out (CRIU refuses it too)."""
    if sk.getsockopt(socket.IPPROTO_UDP, UDP_CORK):
        pending = struct.unpack("i", fcntl.ioctl(sk.fileno(), SIOCOUTQ, b"\0" * 4))[0]
        held = f" with a datagram held back ({pending} bytes of send buffer)" if pending else ""
        raise Unsupported(f"{label}: UDP_CORK is on{held}; a corked UDP socket cannot be "
                          "dumped (its pending data cannot be saved)")


def freebind_opt(family: int, type_: int) -> tuple[int, int]:
    """Where the freebind flag is read and set: an IPv6 raw socket does
    not answer at SOL_IP (ipv6_getsockopt passes SOL_IP on to UDP's code
    for every type but raw); IPV6_FREEBIND is the same flag."""
    if family == socket.AF_INET6 and type_ == socket.SOCK_RAW:
        return socket.IPPROTO_IPV6, IPV6_FREEBIND
    return socket.IPPROTO_IP, IP_FREEBIND


def _ip_opts(sk: socket.socket) -> Any:
    """CRIU's ip_opts_entry: freebind, pktinfo, and tos/ttl of IPv4
    (an unset field is the default, as CRIU writes them)."""
    g = sk.getsockopt
    o = sk_inet_pb2.ip_opts_entry(freebind=bool(g(*freebind_opt(sk.family, sk.type))))
    if sk.family == socket.AF_INET6:
        if g(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO):
            o.pktinfo = True
    else:
        if g(socket.IPPROTO_IP, IP_PKTINFO):
            o.pktinfo = True
        tos = g(socket.IPPROTO_IP, socket.IP_TOS)
        if tos:
            o.tos = tos
        # what a socket reports unset follows net.ipv4.ip_default_ttl, and
        # a fresh socket reports the same: saved only if it differs
        ttl = g(socket.IPPROTO_IP, socket.IP_TTL)
        with socket.socket(sk.family, sk.type, sk.proto) as fresh:
            if ttl != fresh.getsockopt(socket.IPPROTO_IP, socket.IP_TTL):
                o.ttl = ttl
    return o


def _bind_freely(sk: socket.socket, ie: Any, addr: tuple[str, int]) -> None:
    """Bind with IP_FREEBIND on for the call, then back to the dumped value
    (as criu does for IPv6): an address the task bound with freebind and
    then turned it off (zdtm sk-freebind-false), or one the host no longer
    has up (an IPv6 address still tentative), binds again; the flag ends as
    the task left it."""
    where = freebind_opt(ie.family, ie.type)
    sk.setsockopt(*where, 1)
    sk.bind(addr)
    keep = ie.HasField("ip_opts") and ie.ip_opts.freebind
    sk.setsockopt(*where, 1 if keep else 0)


def _restore_ip_opts(sk: socket.socket, ie: Any) -> None:
    if not ie.HasField("ip_opts"):
        return
    o = ie.ip_opts
    if o.freebind:
        sk.setsockopt(*freebind_opt(ie.family, ie.type), 1)
    if ie.family == socket.AF_INET6:
        if o.pktinfo:
            sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        return
    if o.pktinfo:
        sk.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    if o.HasField("tos"):
        sk.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, o.tos)
    if o.HasField("ttl"):
        sk.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, o.ttl)


def finish(ctx: "DumpContext") -> None:
    tcp.finish(ctx)  # tcp-stream images of the live connections


# ------------------------------------------------------------- restore ----

def _queues(rctx: "RestoreContext") -> dict[int, list[Any]]:
    """Per socket id, its queued datagrams: sk_packet_entry and payload."""
    st = rctx.kind_state.get(NAME)
    if st is None:
        ids = {f.id for f in rctx.files.values() if f.type == TYPE}
        st = {}
        for e in rctx.payload_entries("sk-queues"):
            if e.msg.id_for in ids:
                st.setdefault(e.msg.id_for, []).append(e)
        rctx.kind_state[NAME] = st
    return st  # type: ignore[no-any-return]


def label(ie: Any) -> str:
    fam = ie.family
    kind = kind_name(ie.type, ie.proto) or f"proto {ie.proto}"
    text = f"{kind} socket {ie.ino} {endpoint(fam, unpack_addr(fam, ie.src_addr), ie.src_port)}"
    if ie.state == TCP_ESTABLISHED:
        text += f" -> {endpoint(fam, unpack_addr(fam, ie.dst_addr), ie.dst_port)}"
    return text


def _unspecified(words: Any) -> bool:
    """An image's address (its 32-bit words) is 0.0.0.0 or ::, as
    ipaddress's is_unspecified says of it (::ffff:0.0.0.0 is not), without
    importing ipaddress into every restore of a socket."""
    return not any(words)


def _fill_udp(sk: socket.socket, ie: Any, msgs: list[Any]) -> None:
    """Queue the datagrams on our bound UDP socket: each from its sender's
    address (injected through a raw socket, as if it came from there), or,
    in images without the address, from a scratch socket."""
    fam = ie.family
    addr = unpack_addr(fam, ie.src_addr)
    if _unspecified(ie.src_addr):
        addr = "127.0.0.1" if fam == socket.AF_INET else "::1"
    scratch = None
    try:
        for e in msgs:
            if e.msg.HasField("addr"):
                _inject_udp(ie, e.msg.addr, e.msg.dst if e.msg.HasField("dst") else None,
                            e.payload)
                continue
            if scratch is None:
                scratch = socket.socket(fam, socket.SOCK_DGRAM, ie.proto)
                sockets.prepare(scratch)
                # marked as the restore's own traffic: a tree's network namespace
                # is locked until it runs (tcp.lock_netns) and drops all else
                scratch.setsockopt(socket.SOL_SOCKET, tcp.SO_MARK, tcp.SOCCR_MARK)
            scratch.sendto(e.payload, (addr, ie.src_port))
    finally:
        if scratch is not None:
            scratch.close()
    # Loopback delivery is synchronous, but check: a short queue would
    # lose data silently.
    got = sockets.peek_queue(sk, label(ie), stream=False)
    if len(got) != len(msgs):
        raise RestoreError(f"{label(ie)}: {len(msgs)} datagrams sent back, {len(got)} queued")
    for pk, e in zip(got, msgs):
        if e.msg.HasField("addr") and sockets.sockaddr_bytes(fam, pk.addr) != e.msg.addr:
            raise RestoreError(f"{label(ie)}: a datagram put back arrived from {pk.addr}, "
                               "not from its sender")


_MAPPED = bytes(10) + b"\xff\xff"


def _inject_udp(ie: Any, sender: bytes, dst: bytes | None, data: bytes) -> None:
    """One datagram to our socket from ``sender`` (a struct sockaddr),
    crafted whole (IP and UDP headers) and sent through a raw socket to
    ``dst`` (the address it was sent to, else the socket's own)."""
    sfam, (src, sport) = sockets.sockaddr_parse(sender)
    if dst is None:
        ours = unpack_addr(ie.family, ie.src_addr)
        if _unspecified(ie.src_addr):
            v4 = ie.family == socket.AF_INET or src[:12] == _MAPPED
            ours = "127.0.0.1" if v4 else "::1"
            dst = socket.inet_pton(socket.AF_INET, ours) if v4 else \
                socket.inet_pton(socket.AF_INET6, ours)
        else:
            dst = socket.inet_pton(ie.family, ours)
    if len(src) == 16 and src[:12] == _MAPPED:
        src = src[12:]          # an IPv4 sender of an IPv6 socket: IPv4 on the wire
    if len(dst) == 16 and dst[:12] == _MAPPED:
        dst = dst[12:]
    fam = socket.AF_INET if len(src) == 4 else socket.AF_INET6
    if len(dst) != len(src):
        raise RestoreError(f"{label(ie)}: a queued datagram from "
                           f"{socket.inet_ntop(fam, src)} cannot be sent to "
                           f"{socket.inet_ntop(socket.AF_INET if len(dst) == 4 else socket.AF_INET6, dst)}")
    length = 8 + len(data)
    # UDP-Lite: the coverage (0: all) where UDP has its length
    udph = struct.pack("!HHHH", sport, ie.src_port, 0 if ie.proto == IPPROTO_UDPLITE else length, 0)
    if fam == socket.AF_INET:
        pseudo = src + dst + struct.pack("!BBH", 0, ie.proto, length)
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, ie.proto, 0,
                          src, dst)
    else:
        pseudo = src + dst + struct.pack("!IxxxB", length, ie.proto)
        iph = struct.pack("!IHBB16s16s", 6 << 28, length, ie.proto, 64, src, dst)
    csum = tcp._csum(pseudo + udph + data) or 0xFFFF
    udph = udph[:6] + struct.pack("!H", csum)
    raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)   # IPPROTO_RAW: header ours
    try:
        raw.setsockopt(socket.SOL_SOCKET, tcp.SO_MARK, tcp.SOCCR_MARK)
        raw.sendto(iph + udph + data, (socket.inet_ntop(fam, dst), 0))
    except OSError as exc:
        raise RestoreError(f"{label(ie)}: cannot put back a datagram from "
                           f"{socket.inet_ntop(fam, src)}:{sport}: {exc.strerror or exc}") from None
    finally:
        raw.close()


def _is_connection(ie: Any) -> bool:
    """A TCP socket that had a peer: live (restored in repair mode) or
    ended (CLOSE with a peer)."""
    return bool(ie.type == socket.SOCK_STREAM and ie.state != TCP_LISTEN and ie.dst_port)


def _restore_connection(rctx: "RestoreContext", sk: socket.socket, ie: Any,
                        what: str) -> None:
    streamed = os.path.exists(images.image_path(rctx.images_dir, "tcp-stream", ie.ino))
    if streamed and not rctx.opts.tcp_close:
        tcp.restore_established(rctx, sk, ie, what)
        if ie.shutdown & sockets.RCV_SHUTDOWN and ie.state in (
                TCP_ESTABLISHED, tcp.FIN_WAIT1, tcp.FIN_WAIT2):
            # the task's own shutdown(SHUT_RD): only a flag, nothing sent
            sk.shutdown(socket.SHUT_RD)
        return
    if not streamed and ie.state != TCP_CLOSE and not rctx.opts.tcp_close:
        # an image without its stream: restore_established names it
        tcp.restore_established(rctx, sk, ie, what)
    if streamed:
        # criu's restore --tcp-close: its network lock goes once the tree runs
        tcp.closed_instead(rctx)
    # closed: by criu's --tcp-close (at dump or restore), or a connection
    # that had ended: shut down both ways, reads give EOF, writes EPIPE
    try:
        sk.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # ENOTCONN, after the shutdown bits were set


def _reuse_later(rctx: "RestoreContext", sk: socket.socket, ie: Any) -> None:
    """Put SO_REUSEADDR/SO_REUSEPORT back to the dumped values once every
    socket is open (criu's post_open_inet_sk), and until then keep both on."""
    st = rctx.kind_state.setdefault(NAME + ".reuse", {"fds": []})
    if not st["fds"]:
        def put_back() -> None:
            for fd, addr, port in st["fds"]:
                s = socket.socket(fileno=fd)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, addr)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, port)
                except OSError as exc:
                    raise RestoreError(f"TCP/UDP socket: cannot set SO_REUSEADDR/"
                                       f"SO_REUSEPORT: {exc.strerror}") from None
                finally:
                    s.detach()
        rctx.before_detach.append(put_back)
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    st["fds"].append((sk.fileno(), int(ie.opts.reuseaddr), int(ie.opts.so_reuseport)))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    ie = entry.isk
    what = label(ie)
    if kind_name(ie.type, ie.proto) is None or ie.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
        raise RestoreError(f"{what}: family {ie.family} type {ie.type} is not supported")
    sk = socket.socket(ie.family, ie.type, ie.proto)
    with sockets.building(sk, what):
        if ie.family == socket.AF_INET6 and ie.type != socket.SOCK_RAW:
            # a raw socket has its protocol as port from birth, and the
            # kernel takes V6ONLY only before a port: it keeps the default
            sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(ie.v6only))
        _restore_ip_opts(sk, ie)
        raw = ie.type == socket.SOCK_RAW
        if raw and ie.HasField("ip_opts") and ie.ip_opts.HasField("raw"):
            _restore_raw_opts(sk, ie)
        if _is_connection(ie):
            _restore_connection(rctx, sk, ie, what)
        else:
            src = unpack_addr(ie.family, ie.src_addr)
            # a raw socket's "port" is its protocol: bound by address only
            port = 0 if raw else ie.src_port
            if port or not _unspecified(ie.src_addr):
                # as criu: every socket binds with SO_REUSEADDR and
                # SO_REUSEPORT on, so that sockets sharing a port (two
                # listeners with SO_REUSEPORT, a listener and a closed
                # socket) all get theirs back; the dumped values are set
                # once every socket is open (reuse_later)
                sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                _bind_freely(sk, ie, (src, port))
            if ie.state == TCP_LISTEN:
                sk.listen(ie.backlog)
            elif ie.type != socket.SOCK_STREAM:
                msgs = _queues(rctx).get(ie.id, [])
                if msgs:
                    _fill_udp(sk, ie, msgs)
                if ie.state == TCP_ESTABLISHED:
                    sk.connect((unpack_addr(ie.family, ie.dst_addr), ie.dst_port))
            if ie.type != socket.SOCK_STREAM and ie.shutdown:
                _dgram_apply_shutdown(sk, ie.shutdown)
        sockets.restore_opts(sk, ie.opts, what)
        if ie.type == socket.SOCK_STREAM:
            sockets.restore_tcp_opts(sk, ie)
        if not _is_connection(ie) and not raw and (ie.src_port or ie.state == TCP_LISTEN):
            _reuse_later(rctx, sk, ie)
    return sockets.hand_over(rctx, rt, sk, ie.flags)
