"""AF_PACKET sockets (fd kind PACKETSK, inline in files.img as
file_entry.psk, CRIU's packet_sock_entry).

Read from the kernel's PACKET_DIAG (sock_diag, asked from inside the
task's network namespace): type, protocol (as socket(2) takes it: network
order), the bound interface index, PACKET_VERSION, PACKET_RESERVE,
PACKET_TIMESTAMP, PACKET_COPY_THRESH, the AUXDATA/ORIGDEV/VNET_HDR/LOSS
flags, the fanout group (id and mode flags), every multicast membership
(PACKET_ADD_MEMBERSHIP: interface, type, address, and how many times it
was added -- each add is counted by the kernel, so it is added that many
times again), plus SOL_SOCKET options (sk_opts, a classic BPF filter
included: sockets.get_filter).  SOCK_PACKET sockets (the obsolete
interface) keep their protocol and the device they are bound to.

Restore, as criu's open_packet_sk: socket(AF_PACKET, type, protocol),
bind to the interface index (SOCK_PACKET: to the device's name), the
SOL_PACKET options, memberships, fanout, then sk_opts.  The interface
index is the same number in the restored network namespace (the net
namespace module keeps links' indexes; on the host it is the same host).

RX and TX rings (PACKET_RX_RING/PACKET_TX_RING, TPACKET_V1/V2) are kept
when the kernel never wrote or sent a frame of them: their memory, read
through the dumper's own mapping of the socket, is all zeros (rings are
allocated zeroed), so the kernel's place in each -- which nothing shows --
is the first frame, as in a new ring.  They are made again with the same
geometry after PACKET_VERSION/RESERVE; a task's mapping of them is mapped
again from the restored socket by memory.py (VMA_AREA_SOCKET, as criu).

Refused, one line each: a ring that has carried frames, or a TPACKET_V3
ring (block descriptors, current block, retire timer), packets waiting in the receive queue (they came from the wire
and cannot be sent back to the socket alone), a PACKET_VNET_HDR_SZ other
than the one PACKET_VNET_HDR sets, SOL_PACKET options criu's image has
no field for (sockopts.py, kind "packet"), and a socket in another
network namespace than the tree's root.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, packet_sock_pb2
from ..kernel import netns
from . import anonfd, fdaudit, sockets, sockopts

if TYPE_CHECKING:
    from ..tasks import DumpContext, FdCtx, RestoreContext, RestoreTask

NAME = "packetsk"
FDINFO: dict[str, "fdaudit.Rule"] = {}  # sockets print only the common lines
TYPE = fdinfo_pb2.PACKETSK

SOL_PACKET = 263
SOCK_PACKET = 10  # the obsolete interface (Python has no name for it)
PACKET_ADD_MEMBERSHIP = 1
PACKET_COPY_THRESH = 7
PACKET_AUXDATA = 8
PACKET_ORIGDEV = 9
PACKET_VERSION = 10
PACKET_RESERVE = 12
PACKET_LOSS = 14
PACKET_VNET_HDR = 15
PACKET_TIMESTAMP = 17
PACKET_FANOUT = 18
PACKET_VNET_HDR_SZ = 24
PACKET_RX_RING = 5
PACKET_TX_RING = 13
TPACKET_V3 = 2
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr): what PACKET_VNET_HDR sets
NO_FANOUT = 0xFFFFFFFF

# sock_diag (linux/packet_diag.h)
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
PACKET_SHOW_INFO, PACKET_SHOW_MCLIST, PACKET_SHOW_RING_CFG, PACKET_SHOW_FANOUT = 1, 2, 4, 8
PACKET_DIAG_INFO, PACKET_DIAG_MCLIST, PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING = 0, 1, 2, 3
PACKET_DIAG_FANOUT = 4
PDI_AUXDATA, PDI_ORIGDEV, PDI_VNETHDR, PDI_LOSS = 0x2, 0x4, 0x8, 0x10
MCLIST = struct.Struct("IIHH32s")   # struct packet_diag_mclist
RING = struct.Struct("7I")          # struct packet_diag_ring


@record
class PacketDiag:
    type: int
    protocol: int                   # network order, as socket(2) takes it
    info: tuple[int, ...] = ()      # index, version, reserve, copy_thresh, tstamp, flags
    mclist: list[tuple[int, int, int, bytes]] = field(default_factory=list)
    rx_ring: tuple[int, ...] | None = None
    tx_ring: tuple[int, ...] | None = None
    fanout: int = NO_FANOUT


def _parse(msg: bytes) -> tuple[int, PacketDiag]:
    _fam, typ, num, ino = struct.unpack_from("BBHI", msg, 0)
    d = PacketDiag(type=typ, protocol=socket.htons(num))
    off = 16
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("HH", msg, off)
        if alen < 4:
            break
        data = msg[off + 4:off + alen]
        atype &= 0x3FFF
        if atype == PACKET_DIAG_INFO:
            d.info = struct.unpack_from("6I", data)
        elif atype == PACKET_DIAG_MCLIST:
            for i in range(len(data) // MCLIST.size):
                index, count, mtype, malen, addr = MCLIST.unpack_from(data, i * MCLIST.size)
                d.mclist.append((index, count, mtype, addr[:malen]))
        elif atype == PACKET_DIAG_RX_RING:
            d.rx_ring = RING.unpack_from(data)
        elif atype == PACKET_DIAG_TX_RING:
            d.tx_ring = RING.unpack_from(data)
        elif atype == PACKET_DIAG_FANOUT:
            d.fanout = struct.unpack_from("I", data)[0]
        off += (alen + 3) & ~3
    return ino, d


def _query() -> dict[int, PacketDiag]:
    """Every packet socket of the calling thread's network namespace."""
    out: dict[int, PacketDiag] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        req = struct.pack("BBHII8x", socket.AF_PACKET, 0, 0, 0,
                          PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG
                          | PACKET_SHOW_FANOUT)
        nl.send(struct.pack("IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                            NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        while True:
            buf = nl.recv(1 << 16)
            off = 0
            while off + 16 <= len(buf):
                mlen, mtype = struct.unpack_from("IH", buf, off)
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("i", buf, off + 16)[0]
                    raise OSError(err, os.strerror(err))
                ino, d = _parse(buf[off + 16:off + mlen])
                out[ino] = d
                off += (mlen + 3) & ~3


def table(ctx: "DumpContext", pid: int) -> dict[int, PacketDiag]:
    """PACKET_DIAG of the tree's network namespace, once a dump."""
    cache = ctx.kind_state.setdefault("packetsk", {})
    if "table" not in cache:
        try:
            with netns.inside(pid):
                cache["table"] = _query()
        except OSError as exc:
            raise DumpError(f"packet_diag: {exc.strerror or exc}") from None
    return cache["table"]  # type: ignore[no-any-return]


def _ring_entry(ring: tuple[int, ...]) -> Any:
    """struct packet_diag_ring as criu's packet_ring (the same order)."""
    names = ("block_size", "block_nr", "frame_size", "frame_nr", "retire_tmo",
             "sizeof_priv", "features")
    return packet_sock_pb2.packet_ring(**dict(zip(names, ring)))


def ring_bytes(ring: Any) -> int:
    """Memory of one ring (its blocks), as the socket's mmap() lays it out."""
    if ring is None:
        return 0
    block_size, block_nr = ring[0], ring[1]
    return int(block_size * block_nr)


def _check_rings(sk: socket.socket, d: "PacketDiag", version: int, label: str) -> None:
    """A ring is kept only when the kernel never wrote or sent a frame of it:
    then its memory is all zeros (rings are allocated zeroed) and the
    kernel's place in it -- which nothing shows -- is the first frame, as
    in a new ring.  Read through our own mapping of the socket (RX ring
    first, then TX, as the kernel lays them out)."""
    if version == TPACKET_V3:
        raise Unsupported(f"{label}: has a TPACKET_V3 ring; its block descriptors, the "
                          "kernel's current block and the retire timer cannot be restored")
    size = ring_bytes(d.rx_ring) + ring_bytes(d.tx_ring)
    try:
        mm = mmap.mmap(sk.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except OSError as exc:
        raise DumpError(f"{label}: cannot map its rings ({size} bytes): {exc.strerror}") from None
    try:
        used = any(mm[i:i + 65536].count(0) != len(mm[i:i + 65536])
                   for i in range(0, size, 65536))
    finally:
        mm.close()
    if used:
        raise Unsupported(f"{label}: its packet ring has carried frames; the frames and the "
                          "kernel's place in the ring (which nothing shows) cannot be restored")


def matches(fd: "FdCtx") -> bool:
    return sockets.family_of(fd) == socket.AF_PACKET


def dump(fd: "FdCtx", fid: int) -> Any:
    what = sockets.describe(fd)
    sk = sockets.copy_of(fd)
    ino = sockets.socket_ino(fd.link)
    if not sockets.same_netns(fd.task.pid, fd.ctx):
        raise Unsupported(f"{what}: a packet socket in another network namespace than "
                          "the tree's root; its sockets cannot be dumped")
    d = table(fd.ctx, fd.task.pid).get(ino)
    if d is None or not d.info:
        raise DumpError(f"{what}: packet_diag does not list packet socket {ino}")
    label = f"{what}: packet socket (type {d.type}, protocol 0x{socket.ntohs(d.protocol):04x})"
    index, version, reserve, copy_thresh, tstamp, flags = d.info
    if d.rx_ring is not None or d.tx_ring is not None:
        _check_rings(sk, d, version, label)
    spkt = d.type == SOCK_PACKET
    if not spkt:
        sockopts.audit(fd.ctx, label, sk, connected=False)
        vnet = bool(flags & PDI_VNETHDR)
        try:
            sz = sk.getsockopt(SOL_PACKET, PACKET_VNET_HDR_SZ)
        except OSError:
            sz = VNET_HDR_LEN if vnet else 0  # before 6.2: only PACKET_VNET_HDR sets it
        if sz != (VNET_HDR_LEN if vnet else 0):
            raise Unsupported(f"{label}: PACKET_VNET_HDR_SZ is {sz}; criu's image keeps "
                              "only PACKET_VNET_HDR (a header of 10 bytes)")
    try:
        waiting = sk.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT | socket.MSG_TRUNC)
    except BlockingIOError:
        waiting = b""
    if waiting:
        raise Unsupported(f"{label}: packets wait in its receive queue; a packet "
                          "socket's queue cannot be put back")
    pe = packet_sock_pb2.packet_sock_entry(
        id=fid, type=d.type, protocol=d.protocol, flags=anonfd.file_flags(fd, "the socket"),
        ifindex=index, fown=anonfd.no_owner(), opts=sockets.dump_opts(fd, sk),
        version=version, reserve=reserve, aux_data=bool(flags & PDI_AUXDATA),
        orig_dev=bool(flags & PDI_ORIGDEV), vnet_hdr=bool(flags & PDI_VNETHDR),
        loss=bool(flags & PDI_LOSS), timestamp=tstamp, copy_thresh=copy_thresh)
    if d.fanout != NO_FANOUT:
        pe.fanout = d.fanout
    if d.rx_ring is not None:
        pe.rx_ring.CopyFrom(_ring_entry(d.rx_ring))
    if d.tx_ring is not None:
        pe.tx_ring.CopyFrom(_ring_entry(d.tx_ring))
    for mindex, count, mtype, addr in d.mclist:
        # the kernel counts each add of the same membership: one entry per add
        for _ in range(count):
            pe.mclist.add(index=mindex, type=mtype, addr=addr)
    return fdinfo_pb2.file_entry(type=TYPE, id=fid, psk=pe)


_libc = ctypes.CDLL(None, use_errno=True)


def _bind(sk: socket.socket, addr: bytes) -> None:
    # Python's AF_PACKET addresses name an interface: index 0 (unbound)
    # and a SOCK_PACKET device need the raw sockaddr
    if _libc.bind(sk.fileno(), addr, len(addr)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    pe = entry.psk
    what = (f"packet socket (type {pe.type}, protocol 0x{socket.ntohs(pe.protocol):04x}, "
            f"interface {pe.ifindex})")
    try:
        sk = socket.socket(socket.AF_PACKET, pe.type, pe.protocol)
    except OSError as exc:
        raise RestoreError(f"{what}: {exc.strerror or exc}") from None
    with sockets.building(sk, what):
        if pe.type == SOCK_PACKET:
            if pe.ifindex:
                # struct sockaddr: family, then the device's name (14 bytes)
                name = socket.if_indextoname(pe.ifindex).encode()
                _bind(sk, struct.pack("H14s", socket.AF_PACKET, name[:13]))
        else:
            # struct sockaddr_ll; protocol 0 keeps the socket's own
            _bind(sk, struct.pack("HHiHBB8s", socket.AF_PACKET, 0, pe.ifindex, 0, 0, 0, b""))
            s = sk.setsockopt
            s(SOL_PACKET, PACKET_VERSION, pe.version)
            s(SOL_PACKET, PACKET_RESERVE, pe.reserve)
            s(SOL_PACKET, PACKET_TIMESTAMP, pe.timestamp)
            s(SOL_PACKET, PACKET_COPY_THRESH, pe.copy_thresh)
            for on, opt in ((pe.aux_data, PACKET_AUXDATA), (pe.orig_dev, PACKET_ORIGDEV),
                            (pe.vnet_hdr, PACKET_VNET_HDR), (pe.loss, PACKET_LOSS)):
                if on:
                    s(SOL_PACKET, opt, 1)
            for m in pe.mclist:
                # struct packet_mreq_max: ifindex, type, alen, address (32 bytes)
                s(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                  struct.pack("iHH32s", m.index, m.type, len(m.addr), m.addr))
            # after PACKET_VERSION and PACKET_RESERVE, which a ring fixes
            for opt, ring in ((PACKET_RX_RING, "rx_ring"), (PACKET_TX_RING, "tx_ring")):
                if pe.HasField(ring):
                    r = getattr(pe, ring)
                    req = [r.block_size, r.block_nr, r.frame_size, r.frame_nr]
                    if pe.version == TPACKET_V3:
                        req += [r.retire_tmo, r.sizeof_priv, r.features]
                    s(SOL_PACKET, opt, struct.pack(f"{len(req)}I", *req))
            if pe.HasField("fanout") and pe.fanout != NO_FANOUT:
                s(SOL_PACKET, PACKET_FANOUT, pe.fanout)
        sockets.restore_opts(sk, pe.opts, what)
    return sockets.hand_over(rctx, rt, sk, pe.flags)


def diag_of(sk_ino: int, pid: int) -> PacketDiag | None:
    """PACKET_DIAG of one socket in ``pid``'s network namespace (verify)."""
    with netns.inside(pid):
        return _query().get(sk_ino)
