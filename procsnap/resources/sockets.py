"""What every socket kind shares: finding sockets with sock_diag, a copy
of a target's socket to look at, SOL_SOCKET options (sk_opts_entry), the
shutdown encoding, and reading a receive queue without consuming it.

sock_diag is asked by sockdiag.py (raw netlink, the kernel's structs):
UNIX_DIAG_NAME is taken as raw bytes, so an abstract name keeps its
leading NUL ("\\0x" and "x" differ) and a name with NULs inside is not
cut.  TCP_INFO is read with getsockopt on our copy of the socket (tcp.py),
not from sock_diag.

A socket of a frozen task is examined through a copy of its fd taken
with pidfd_getfd: the same socket, so options, names and queues are the
task's own.  Queues are read with MSG_PEEK and SO_PEEK_OFF, which is put
back afterwards: nothing the task would read is taken away.

A classic BPF socket filter (SO_ATTACH_FILTER) is read with SO_GET_FILTER
into sk_opts.so_filter (CRIU's field) and attached again after the
socket's queue is back; SO_LOCK_FILTER goes in so_lock_filter, a field
of procsnap's own (number 128: criu keeps no lock and would drop it) and
is set after the attach.  An eBPF program (SO_ATTACH_BPF) cannot be read
back as a program: refused.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from contextlib import contextmanager
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Iterator, Sequence


from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import sk_opts_pb2, tcp_stream_pb2
from ..kernel.libc import pidfd_getfd

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from .sockdiag import InetMsg
    from ..tasks import FdCtx, RestoreContext, RestoreTask

NAME = "sockets"

# <asm-generic/socket.h>, not all in Python's socket module
SO_PASSSEC = 34
SO_PEEK_OFF = 42
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_BUF_LOCK = 72
SO_NO_CHECK = 11
SO_GET_FILTER = 26
SO_ATTACH_FILTER = 26  # the same number: set attaches, get reads
SO_LOCK_FILTER = 44
SO_DOMAIN = 39
SO_PROTOCOL = 38
SOCK_BUF_LOCK_MASK = 3  # SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK

# sk_shutdown bits as the kernel keeps them (and sk_shutdown in the image)
RCV_SHUTDOWN = 1
SEND_SHUTDOWN = 2



@record
class UnixDiag:
    ino: int
    type: int
    state: int
    name: bytes = b""          # b"" unbound; starts with NUL if abstract
    vfs: tuple[int, int] | None = None   # (dev, ino) of the socket file
    peer: int = 0
    icons: list[int] = field(default_factory=list)
    rqueue: int = 0
    wqueue: int = 0
    shutdown: int = 0


def _pid(ctx: "DumpContext") -> int:
    # Asked in the root's network namespace: every task of the tree shares
    # it (the audit refuses others), be it procsnap's or the tree's own.
    return ctx.tasks[0].pid


def unix_table(ctx: "DumpContext") -> dict[int, UnixDiag]:
    """Every unix socket of our network namespace, by inode (once a dump)."""
    state = ctx.kind_state.setdefault(NAME, {})
    if "unix" not in state:
        # imported here: only a dump that meets a socket needs it
        from . import sockdiag as sd
        show = (sd.UDIAG_SHOW_NAME | sd.UDIAG_SHOW_VFS | sd.UDIAG_SHOW_PEER
                | sd.UDIAG_SHOW_ICONS | sd.UDIAG_SHOW_RQLEN)
        table: dict[int, UnixDiag] = {}
        for m in sd.unix(show, _pid(ctx)):
            d = UnixDiag(m.ino, m.type, m.state)
            a = m.attrs
            name = a.get(sd.UNIX_DIAG_NAME)
            if name:
                # a path comes with its terminating NUL; an abstract name is
                # exactly its bytes
                d.name = name if name[:1] == b"\0" else name.split(b"\0", 1)[0]
            vfs = a.get(sd.UNIX_DIAG_VFS)
            if vfs is not None:
                vino, vdev = struct.unpack_from("=II", vfs)   # struct unix_diag_vfs
                d.vfs = (vdev, vino)
            peer = a.get(sd.UNIX_DIAG_PEER)
            d.peer = struct.unpack_from("=I", peer)[0] if peer else 0
            icons = a.get(sd.UNIX_DIAG_ICONS)
            if icons:
                d.icons = list(struct.unpack(f"={len(icons) // 4}I", icons[:len(icons) // 4 * 4]))
            rq = a.get(sd.UNIX_DIAG_RQLEN)
            if rq is not None:
                d.rqueue, d.wqueue = struct.unpack_from("=II", rq)
            sh = a.get(sd.UNIX_DIAG_SHUTDOWN)
            d.shutdown = sh[0] if sh else 0
            table[d.ino] = d
        state["unix"] = table
    table = state["unix"]
    return table  # type: ignore[no-any-return]


def inet_table(ctx: "DumpContext") -> dict[int, InetMsg]:
    """Every TCP and UDP socket (v4 and v6) of our network namespace, by inode."""
    state = ctx.kind_state.setdefault(NAME, {})
    if "inet" not in state:
        from . import sockdiag as sd
        state["inet"] = {m.ino: m for m in sd.inet(_pid(ctx))}
    return state["inet"]  # type: ignore[no-any-return]


def same_netns(pid: int, ctx: "DumpContext | None" = None) -> bool:
    """Whether the tables above describe ``pid``'s sockets: it shares the
    network namespace they are read in (the root's with ``ctx``, else
    procsnap's own)."""
    other = ctx.tasks[0].pid if ctx is not None else "self"
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/proc/{other}/ns/net").st_ino
    except FileNotFoundError:
        return False


def socket_ino(link: str) -> int:
    return int(link[len("socket:["):-1])


# ------------------------------------------------------------ copies ----

def grab(pid: int, fd: int) -> socket.socket:
    """The task's socket as a Python socket object (our own fd on it)."""
    copy = pidfd_getfd(pid, fd)
    try:
        return socket.socket(fileno=copy)
    except OSError:
        os.close(copy)
        raise


def copy_of(fd: "FdCtx") -> socket.socket:
    """A copy of the fd's socket, kept for the rest of the dump."""
    state = fd.ctx.kind_state.setdefault(NAME, {})
    if "copies" not in state:
        ctx = fd.ctx
        # registered first, so it runs last: after tcp.py left repair mode
        ctx.cleanups.append(lambda keep: close_copies(ctx))
    cache = state.setdefault("copies", {})
    key = (fd.task.pid, fd.fd)
    sk = cache.get(key)
    if sk is None:
        sk = grab(fd.task.pid, fd.fd)
        cache[key] = sk
    return sk  # type: ignore[no-any-return]


def close_copies(ctx: "DumpContext") -> None:
    for sk in ctx.kind_state.get(NAME, {}).pop("copies", {}).values():
        sk.close()


def family_of(fd: "FdCtx") -> int | None:
    """The fd's socket family, or None if it is not a socket."""
    if not fd.link.startswith("socket:["):
        return None
    cache = fd.ctx.kind_state.setdefault(NAME, {}).setdefault("family", {})
    key = (fd.task.pid, fd.fd)
    if key not in cache:
        cache[key] = copy_of(fd).getsockopt(socket.SOL_SOCKET, SO_DOMAIN)
    return cache[key]  # type: ignore[no-any-return]


def describe(fd: "FdCtx") -> str:
    return f"pid {fd.task.pid}: fd {fd.fd} ({fd.link})"


# ------------------------------------------------------------ sk_opts ----

def _timeval(sk: socket.socket, name: int) -> tuple[int, int]:
    sec, usec = struct.unpack("qq", sk.getsockopt(socket.SOL_SOCKET, name, 16))
    return sec, usec


def dump_opts(fd: "FdCtx", sk: socket.socket) -> Any:
    """SOL_SOCKET options into an sk_opts_entry (what CRIU's dump_socket_opts
    keeps, plus the buffer lock, linger, keepalive and reuseport)."""
    try:
        return _dump_opts(fd, sk)
    except OSError as exc:
        raise DumpError(f"{describe(fd)}: reading socket options: "
                        f"{exc.strerror or exc}") from None


def _dump_opts(fd: "FdCtx", sk: socket.socket) -> Any:
    g = sk.getsockopt
    sol = socket.SOL_SOCKET
    snd = _timeval(sk, socket.SO_SNDTIMEO)
    rcv = _timeval(sk, socket.SO_RCVTIMEO)
    o = sk_opts_pb2.sk_opts_entry(
        so_sndbuf=g(sol, socket.SO_SNDBUF), so_rcvbuf=g(sol, socket.SO_RCVBUF),
        so_snd_tmo_sec=snd[0], so_snd_tmo_usec=snd[1],
        so_rcv_tmo_sec=rcv[0], so_rcv_tmo_usec=rcv[1],
        reuseaddr=bool(g(sol, socket.SO_REUSEADDR)),
        so_priority=g(sol, socket.SO_PRIORITY), so_rcvlowat=g(sol, socket.SO_RCVLOWAT),
        so_mark=g(sol, socket.SO_MARK) & 0xFFFFFFFF,
        so_dontroute=bool(g(sol, socket.SO_DONTROUTE)),
        so_no_check=bool(g(sol, SO_NO_CHECK)))
    if sk.family in (socket.AF_UNIX, socket.AF_NETLINK):
        # since 6.x only unix (and netlink) sockets take these
        o.so_passcred = bool(g(sol, socket.SO_PASSCRED))
        o.so_passsec = bool(g(sol, SO_PASSSEC))
    dev = g(sol, socket.SO_BINDTODEVICE, 16).split(b"\0", 1)[0]
    if dev:
        o.so_bound_dev = dev.decode()
    prog = get_filter(sk, describe(fd))
    if prog:
        o.so_filter.extend(prog)
        if g(sol, SO_LOCK_FILTER):
            o.so_lock_filter = True
    if sk.family in (socket.AF_INET, socket.AF_INET6):
        o.so_reuseport = bool(g(sol, socket.SO_REUSEPORT))
        o.so_broadcast = bool(g(sol, socket.SO_BROADCAST))
        o.so_keepalive = bool(g(sol, socket.SO_KEEPALIVE))
        o.so_oobinline = g(sol, socket.SO_OOBINLINE)
        onoff, linger = struct.unpack("ii", g(sol, socket.SO_LINGER, 8))
        if onoff:
            o.so_linger = linger
        # the keepalive timers go to inet_sk_entry.tcp_opts (dump_tcp_opts);
        # these three fields are CRIU's deprecated copies, not written
    try:
        o.so_buf_lock = g(sol, SO_BUF_LOCK)
    except OSError:
        pass  # before 5.14: the lock cannot be read (nor set)
    return o


_libc = ctypes.CDLL(None, use_errno=True)


def get_filter(sk: socket.socket, what: str) -> list[int]:
    """The classic BPF program attached to ``sk`` (SO_ATTACH_FILTER), one
    64-bit word per instruction as CRIU's sk_opts.so_filter; [] if none.

    SO_GET_FILTER counts in instructions, not bytes: optlen in is the room
    in instructions, optlen out the program's length in instructions
    (Python's getsockopt would cut the copy to that many bytes: ctypes).
    An eBPF program (SO_ATTACH_BPF) has no classic form: EACCES, refused."""
    n = ctypes.c_uint32(0)
    if _libc.getsockopt(sk.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, None,
                        ctypes.byref(n)) < 0:
        err = ctypes.get_errno()
        if err == errno.EACCES:
            raise Unsupported(f"{what}: an eBPF socket filter (SO_ATTACH_BPF) is attached; "
                              "only classic BPF filters (SO_ATTACH_FILTER) can be read back")
        raise DumpError(f"{what}: SO_GET_FILTER: {os.strerror(err)}")
    if not n.value:
        return []
    count = n.value
    buf = ctypes.create_string_buffer(8 * count)
    if _libc.getsockopt(sk.fileno(), socket.SOL_SOCKET, SO_GET_FILTER, buf,
                        ctypes.byref(n)) < 0:
        raise DumpError(f"{what}: SO_GET_FILTER: {os.strerror(ctypes.get_errno())}")
    return list(struct.unpack(f"<{count}Q", buf.raw[:8 * count]))


def attach_filter(sk: socket.socket, prog: "Sequence[int]", locked: bool) -> None:
    """SO_ATTACH_FILTER the saved program, then SO_LOCK_FILTER if it was
    locked (after: a locked filter cannot be attached).  Raises OSError."""
    buf = ctypes.create_string_buffer(struct.pack(f"<{len(prog)}Q", *prog), 8 * len(prog))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    sk.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                  struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(buf)))
    if locked:
        sk.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)


def dump_tcp_opts(sk: socket.socket) -> Any:
    """TCP_CORK, TCP_NODELAY and the keepalive timers of any TCP socket,
    into CRIU's tcp_opts_entry (an unset field is the default, as CRIU)."""
    g = sk.getsockopt
    t = socket.IPPROTO_TCP
    toe = tcp_stream_pb2.tcp_opts_entry()
    for name, num in (("cork", socket.TCP_CORK), ("nodelay", socket.TCP_NODELAY)):
        if g(t, num):
            setattr(toe, name, True)
    for name, num in (("keepcnt", socket.TCP_KEEPCNT), ("keepidle", socket.TCP_KEEPIDLE),
                      ("keepintvl", socket.TCP_KEEPINTVL)):
        # saved always: what the kernel reports unset follows a sysctl,
        # and setting it again pins the value the task saw
        setattr(toe, name, g(t, num))
    return toe


def restore_tcp_opts(sk: socket.socket, ie: Any) -> None:
    """tcp_opts (or, in an older image, sk_opts' deprecated keepalive
    copies) onto a TCP socket of ours.  Raises OSError."""
    t = socket.IPPROTO_TCP
    s = sk.setsockopt
    if ie.HasField("tcp_opts"):
        toe = ie.tcp_opts
        if toe.cork:
            s(t, socket.TCP_CORK, 1)
        if toe.nodelay:
            s(t, socket.TCP_NODELAY, 1)
        timers = ((socket.TCP_KEEPCNT, toe, "keepcnt"), (socket.TCP_KEEPIDLE, toe, "keepidle"),
                  (socket.TCP_KEEPINTVL, toe, "keepintvl"))
    else:
        o = ie.opts
        timers = ((socket.TCP_KEEPCNT, o, "tcp_keepcnt"), (socket.TCP_KEEPIDLE, o, "tcp_keepidle"),
                  (socket.TCP_KEEPINTVL, o, "tcp_keepintvl"))
    for num, msg, name in timers:
        if msg.HasField(name) and getattr(msg, name):
            s(t, num, getattr(msg, name))


def prepare(sk: socket.socket) -> None:
    """Large buffers while queues are refilled (as CRIU's
    restore_prepare_socket); restore_opts puts the dumped ones back."""
    big = 0x7FFFFFFF // 2
    sk.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, big)
    sk.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, big)


def restore_opts(sk: socket.socket, o: Any, what: str) -> None:
    """Apply an sk_opts_entry to a socket of ours (before a puppet takes it)."""
    s = sk.setsockopt
    sol = socket.SOL_SOCKET
    try:
        # the kernel doubles what it is given, and reports the doubled value
        s(sol, SO_SNDBUFFORCE, o.so_sndbuf // 2)
        s(sol, SO_RCVBUFFORCE, o.so_rcvbuf // 2)
        if o.HasField("so_buf_lock"):
            # setting a size locked it; the lock must be what it was, or the
            # kernel would stop autotuning a buffer the program never sized
            s(sol, SO_BUF_LOCK, o.so_buf_lock & SOCK_BUF_LOCK_MASK)
        if o.HasField("so_priority"):
            s(sol, socket.SO_PRIORITY, o.so_priority)
        if o.HasField("so_rcvlowat"):
            s(sol, socket.SO_RCVLOWAT, o.so_rcvlowat)
        if o.so_mark:
            s(sol, socket.SO_MARK, o.so_mark)
        for name, on in ((socket.SO_PASSCRED, o.so_passcred), (SO_PASSSEC, o.so_passsec),
                         (socket.SO_DONTROUTE, o.so_dontroute), (SO_NO_CHECK, o.so_no_check)):
            if on:
                s(sol, name, 1)
        s(sol, socket.SO_SNDTIMEO, struct.pack("qq", o.so_snd_tmo_sec, o.so_snd_tmo_usec))
        s(sol, socket.SO_RCVTIMEO, struct.pack("qq", o.so_rcv_tmo_sec, o.so_rcv_tmo_usec))
        if o.so_bound_dev:
            s(sol, socket.SO_BINDTODEVICE, o.so_bound_dev.encode())
        if o.so_filter:
            # the callers put queued data back before this, so the filter
            # does not judge it again
            attach_filter(sk, o.so_filter, o.so_lock_filter)
        if sk.family in (socket.AF_INET, socket.AF_INET6):
            s(sol, socket.SO_REUSEADDR, int(o.reuseaddr))
            s(sol, socket.SO_REUSEPORT, int(o.so_reuseport))
            s(sol, socket.SO_BROADCAST, int(o.so_broadcast))
            s(sol, socket.SO_KEEPALIVE, int(o.so_keepalive))
            s(sol, socket.SO_OOBINLINE, int(o.so_oobinline))
            if o.HasField("so_linger"):
                s(sol, socket.SO_LINGER, struct.pack("ii", 1, o.so_linger))
        else:
            # unix sockets keep the flag too, though it means nothing to them
            s(sol, socket.SO_REUSEADDR, int(o.reuseaddr))
    except OSError as exc:
        raise RestoreError(f"{what}: cannot set socket options: {exc.strerror or exc}") from None


# ------------------------------------------------------------ shutdown ----

def shutdown_field(mask: int) -> Any:
    """Kernel sk_shutdown bits -> sk_shutdown enum (the same numbers)."""
    return mask & (RCV_SHUTDOWN | SEND_SHUTDOWN)


def apply_shutdown(sk: socket.socket, mask: int) -> None:
    how = {RCV_SHUTDOWN: socket.SHUT_RD, SEND_SHUTDOWN: socket.SHUT_WR,
           RCV_SHUTDOWN | SEND_SHUTDOWN: socket.SHUT_RDWR}.get(mask & 3)
    if how is not None:
        sk.shutdown(how)


# ------------------------------------------------------------ queues ----

MAX_PACKETS = 1 << 16


@record
class Packet:
    """One queued message (or a chunk of a byte stream) as peeked."""
    data: bytes
    fds: list[int] = field(default_factory=list)  # our copies of its files in flight
    cred_pid: int = 0           # SCM_CREDENTIALS recorded with it (0: none)
    cred_uid: int = 0
    cred_gid: int = 0
    addr: Any = None            # its sender, as recvmsg gives it (datagrams)
    # IP_PKTINFO / IPV6_PKTINFO, when the socket asks for it: (ifindex,
    # destination address as 4 or 16 bytes)
    pktinfo: tuple[int, bytes] | None = None


def sockaddr_bytes(family: int, addr: Any) -> bytes:
    """A sender's address (as Python's recvmsg gives it) as the struct
    sockaddr the kernel gave: sk_packet_entry.addr."""
    fam = struct.pack("<H", family)
    if family == socket.AF_UNIX:
        if not addr:
            return fam                     # unnamed: the family alone
        return fam + (addr if isinstance(addr, bytes) else os.fsencode(addr))
    if family == socket.AF_INET:
        return (fam + struct.pack("!H", addr[1]) + socket.inet_pton(socket.AF_INET, addr[0])
                + bytes(8))
    host = addr[0].partition("%")[0]
    return (fam + struct.pack("!HI", addr[1], addr[2]) + socket.inet_pton(socket.AF_INET6, host)
            + struct.pack("<I", addr[3]))


def sockaddr_parse(raw: bytes) -> tuple[int, Any]:
    """The family and address of sk_packet_entry.addr: a unix name as
    bytes (b"" unnamed, abstract with its leading NUL), or (ip, port) as
    4 or 16 raw bytes and a port."""
    family = struct.unpack("<H", raw[:2])[0]
    if family == socket.AF_UNIX:
        return family, raw[2:]
    if family == socket.AF_INET:
        return family, (raw[4:8], struct.unpack("!H", raw[2:4])[0])
    return family, (raw[8:24], struct.unpack("!H", raw[2:4])[0])


def _fds_of(anc: list[tuple[int, int, bytes]]) -> tuple[list[int], tuple[int, int, int]]:
    """Files (our fresh copies) and the credentials (pid, uid, gid) a
    control part carries."""
    fds: list[int] = []
    cred = (0, 0, 0)
    for level, typ, payload in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4])
        elif level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
            cred = struct.unpack("iII", payload[:12])
    return fds, cred


def _pktinfo_of(anc: list[tuple[int, int, bytes]]) -> tuple[int, bytes] | None:
    """(ifindex, destination) of an IP_PKTINFO or IPV6_PKTINFO message."""
    for level, typ, payload in anc:
        if level == socket.IPPROTO_IP and typ == 8 and len(payload) >= 12:   # in_pktinfo
            return struct.unpack("i", payload[:4])[0], payload[8:12]
        if level == socket.IPPROTO_IPV6 and typ == 50 and len(payload) >= 20:  # in6_pktinfo
            return struct.unpack("i", payload[16:20])[0], payload[:16]
    return None


def close_all(fds: list[int]) -> None:
    for x in fds:
        os.close(x)


def peek_queue(sk: socket.socket, what: str, stream: bool, eof: bool = False) -> list[Packet]:
    """The receive queue of ``sk``, unconsumed: one item per datagram (or
    chunks of a byte stream).  SO_PEEK_OFF walks the queue and is then
    put back to the task's own value.  ``eof``: the socket is shut down
    for reading, so an empty read past the queue means its end.

    Files in flight (SCM_RIGHTS) come as copies installed in us, which
    the caller owns.  SO_PASSCRED is on while peeking (and put back), so
    the credentials recorded with each message show (pid 0: none), and a
    stream read stops where they change.  A stream read carrying files
    ends with the message that carried them; only a one-byte read (the
    usual dummy byte) shows where that message began."""
    old = sk.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    unix = sk.family == socket.AF_UNIX
    passcred = sk.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) if unix else 0
    if unix:
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    out: list[Packet] = []
    flags = socket.MSG_PEEK | socket.MSG_DONTWAIT
    cspace = (socket.CMSG_SPACE(253 * 4) + socket.CMSG_SPACE(12)
              + socket.CMSG_SPACE(20))   # (IP_PKTINFO, IPV6_PKTINFO)
    offset = 0

    def peek(size: int) -> tuple[bytes, list[int], tuple[int, int, int], int, Any,
                                 tuple[int, bytes] | None]:
        sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, offset)
        data, anc, mflags, addr = sk.recvmsg(max(size, 1), cspace, flags)
        fds, cred = _fds_of(anc)
        return data, fds, cred, mflags, addr, _pktinfo_of(anc)

    try:
        for _ in range(MAX_PACKETS):
            size = 1 << 16
            if not stream:
                # MSG_TRUNC: the real length of the next datagram (no
                # control buffer: files in flight are not installed)
                try:
                    size = _trunc_len(sk, offset, flags)
                except BlockingIOError:
                    break
            try:
                data, fds, cred, mflags, addr, pktinfo = peek(size)
            except BlockingIOError:
                break
            if mflags & socket.MSG_TRUNC:
                close_all(fds)
                raise DumpError(f"{what}: a queued datagram did not fit {size} bytes")
            if stream and fds and len(data) > 1:
                # A stream peek that meets files returns them with every
                # byte before (this kernel reports them from any offset
                # before their message's end), so where their message
                # began cannot be told: refuse rather than move them.
                close_all(fds)
                raise Unsupported(f"{what}: files in flight (SCM_RIGHTS) in a stream queue "
                                  f"with other bytes in the same read ({len(data)} bytes); "
                                  "where their message starts cannot be found")
            if not data:
                close_all(fds)
                if stream or eof:
                    break
                raise Unsupported(f"{what}: a zero-length datagram is queued; not supported")
            out.append(Packet(data, fds, *cred, addr=None if stream else addr,
                              pktinfo=pktinfo))
            offset += len(data)
        else:
            raise Unsupported(f"{what}: more than {MAX_PACKETS} queued messages")
    except BaseException:
        for pk in out:
            close_all(pk.fds)
        raise
    finally:
        sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)
        if unix:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, passcred)
    return out


def _trunc_len(sk: socket.socket, offset: int, flags: int) -> int:
    """The length of the datagram at ``offset`` (MSG_TRUNC returns it)."""
    sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, offset)
    return sk.recv_into(bytearray(1), 1, flags | socket.MSG_TRUNC)


@contextmanager
def building(sk: socket.socket, what: str) -> Iterator[socket.socket]:
    """A socket being set up by the restorer: on any failure it is closed,
    and an OSError becomes one RestoreError line naming the socket."""
    try:
        yield sk
    except OSError as exc:
        sk.close()
        raise RestoreError(f"{what}: {exc.strerror or exc}") from None
    except BaseException:
        sk.close()
        raise


def hand_over(rctx: "RestoreContext", rt: "RestoreTask", sk: socket.socket, flags: int) -> int:
    """The finished socket goes to the puppet: its status flags set on the
    description, kept open by the restorer until the end (a peer may still
    connect to it), and taken by the puppet with pidfd_getfd."""
    fd = sk.detach()
    # O_ASYNC is set by the task itself (fown.restore_task): SIGIO's si_fd
    # is the fd number of whoever set it
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_ACCMODE & ~os.O_ASYNC)
    rctx.own_fds.append(fd)
    return rt.grab_fd(os.getpid(), fd)
