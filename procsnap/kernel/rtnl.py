"""The links of the calling thread's network namespace, from one RTM_GETLINK
dump over a raw NETLINK_ROUTE socket; its policy routing rules (RTM_GETRULE),
raw, for a restore to tell whether the saved ones are there already.

Only what resources/namespaces/net.py saves of a link is decoded.  pyroute2
would do it too, but it takes 0.1-0.15 s to import, which was most of the
dump of an LXC container's network namespace (it is still used to make
links at restore).  The socket is made at the call: a caller that entered a
namespace (kernel/netns.py) gets that namespace's links.
"""
from __future__ import annotations

import os
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any
from ..record import record

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWRULE, RTM_GETRULE = 32, 34
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF          # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_LINKINFO, IFLA_LINK_NETNSID = 18, 37
IFLA_INFO_KIND = 1

_NLMSGHDR = struct.Struct("=IHHII")     # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")          # len, type


@record
class Link:
    """A network link as RTM_GETLINK reports it."""
    index: int
    flags: int                  # ifi_flags (32 bits: IFF_LOWER_UP included)
    name: str
    mtu: int
    address: bytes | None       # IFLA_ADDRESS
    link: int                   # IFLA_LINK (a veth's peer ifindex), 0 if none
    master: int                 # IFLA_MASTER, 0 if none
    kind: str | None            # IFLA_LINKINFO's IFLA_INFO_KIND
    link_netnsid: int | None    # IFLA_LINK_NETNSID: the peer is in another namespace


def attrs(data: bytes, off: int, end: int) -> dict[int, bytes]:
    """The netlink attributes in data[off:end], by type (flags masked)."""
    out = {}
    while off + _RTATTR.size <= end:
        ln, typ = _RTATTR.unpack_from(data, off)
        if ln < _RTATTR.size:
            break
        out[typ & NLA_TYPE_MASK] = data[off + _RTATTR.size:off + ln]
        off += (ln + 3) & ~3
    return out


def _u32(attrs: dict[int, bytes], key: int) -> int:
    v = attrs.get(key)
    return struct.unpack("=I", v[:4])[0] if v is not None and len(v) >= 4 else 0


def _str(v: bytes) -> str:
    return v.split(b"\0", 1)[0].decode(errors="surrogateescape")


def _link(data: bytes, off: int, end: int) -> Link:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, off)
    a = attrs(data, off + _IFINFOMSG.size, end)
    kind = None
    if IFLA_LINKINFO in a:
        info = a[IFLA_LINKINFO]
        k = attrs(info, 0, len(info)).get(IFLA_INFO_KIND)
        kind = _str(k) if k is not None else None
    nsid = a.get(IFLA_LINK_NETNSID)
    return Link(index=index, flags=flags, name=_str(a.get(IFLA_IFNAME, b"")),
                mtu=_u32(a, IFLA_MTU), address=a.get(IFLA_ADDRESS), link=_u32(a, IFLA_LINK),
                master=_u32(a, IFLA_MASTER), kind=kind,
                link_netnsid=struct.unpack("=i", nsid[:4])[0] if nsid and len(nsid) >= 4
                else None)


def dump_on(s: Any, msg_type: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    """One NLM_F_DUMP request on the netlink socket ``s`` (route, sock_diag:
    any family): every answer as (nlmsg_type, the message after its
    nlmsghdr); an NLMSG_ERROR is an OSError naming ``what``."""
    s.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type,
                          NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
    out: list[tuple[int, bytes]] = []
    while True:
        data = s.recv(1 << 16)
        if not data:
            raise OSError(f"{what}: the netlink socket closed before NLMSG_DONE")
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            ln, typ, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
            if ln < _NLMSGHDR.size:
                raise OSError(f"{what}: a message of length {ln}")
            if typ == NLMSG_DONE:
                return out
            if typ == NLMSG_ERROR:
                err = struct.unpack_from("=i", data, off + _NLMSGHDR.size)[0]
                if err:
                    raise OSError(-err, f"{what}: {os.strerror(-err)}")
            else:
                out.append((typ, data[off + _NLMSGHDR.size:off + ln]))
            off += (ln + 3) & ~3


def _dump(msg_type: int, body: bytes, what: str) -> list[tuple[int, bytes]]:
    """dump_on a new NETLINK_ROUTE socket."""
    import socket  # here: its enums are ~3 % of procsnap's start-up, for netns trees only
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_ROUTE) as s:
        s.bind((0, 0))
        return dump_on(s, msg_type, body, what)


def links() -> list[Link]:
    """Every link of the calling thread's network namespace, by RTM_GETLINK."""
    body = _IFINFOMSG.pack(0, 0, 0, 0, 0)   # AF_UNSPEC
    return [_link(msg, 0, len(msg)) for typ, msg in _dump(RTM_GETLINK, body, "RTM_GETLINK")
            if typ == RTM_NEWLINK]


def rules(family: int) -> list[bytes]:
    """The policy routing rules of one address family of the calling
    thread's network namespace, by RTM_GETRULE: each message as the kernel
    sends it after its nlmsghdr (struct fib_rule_hdr and attributes, what
    ``ip rule save`` writes after the header), in the kernel's order."""
    body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)  # struct fib_rule_hdr
    return [msg for typ, msg in _dump(RTM_GETRULE, body, "RTM_GETRULE") if typ == RTM_NEWRULE]


RTM_NEWADDR, RTM_GETADDR = 20, 22
IFA_ADDRESS, IFA_LOCAL = 1, 2
_IFADDRMSG = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index


def addr_key(msg: bytes) -> tuple[int, int, int, bytes | None, bytes | None]:
    """What names an address to the kernel (a second RTM_NEWADDR of it is
    EEXIST): family, prefix length, ifindex, IFA_ADDRESS, IFA_LOCAL of an
    ifaddrmsg message (after its nlmsghdr)."""
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(msg, 0)
    a = attrs(msg, _IFADDRMSG.size, len(msg))
    return family, prefixlen, index, a.get(IFA_ADDRESS), a.get(IFA_LOCAL)


def addrs() -> list[bytes]:
    """Every address of the calling thread's network namespace, by
    RTM_GETADDR: each message after its nlmsghdr."""
    body = _IFADDRMSG.pack(0, 0, 0, 0, 0)   # AF_UNSPEC
    return [msg for typ, msg in _dump(RTM_GETADDR, body, "RTM_GETADDR") if typ == RTM_NEWADDR]
