"""The socket option audit table against the running kernel: every
option number getsockopt answers for a unix, TCP or UDP socket (v4 and
v6) is classified, so a new kernel option fails here, not silently."""
from __future__ import annotations

import errno
import socket
import threading

import pytest

from procsnap.kernel import consts as C
from procsnap.kernel.libc import syscall
from procsnap.resources import sockopts

KINDS = {
    "unix": [(socket.AF_UNIX, socket.SOCK_STREAM, 0), (socket.AF_UNIX, socket.SOCK_DGRAM, 0),
             (socket.AF_UNIX, socket.SOCK_SEQPACKET, 0)],
    "tcp4": [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)],
    "tcp6": [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)],
    "udp4": [(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)],
    "udp6": [(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)],
    "netlink": [(socket.AF_NETLINK, socket.SOCK_RAW, 0), (socket.AF_NETLINK, socket.SOCK_RAW, 15)],
    "packet": [(socket.AF_PACKET, socket.SOCK_RAW, 0),
               (socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)),
               (socket.AF_PACKET, 10, socket.htons(0x0003))],  # SOCK_PACKET
    "udplite4": [(socket.AF_INET, socket.SOCK_DGRAM, 136)],
    "udplite6": [(socket.AF_INET6, socket.SOCK_DGRAM, 136)],
    "icmp4": [(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)],
    "icmp6": [(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)],
    # raw: one with a filter of its own (ICMP), one without, IPPROTO_RAW
    "raw4": [(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
             (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP),
             (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP),
             (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)],
    "raw6": [(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
             (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP),
             (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)],
}


def _make(spec: tuple[int, int, int]) -> socket.socket:
    """A socket of ``spec``; ping sockets are made in a network namespace
    of their own, where net.ipv4.ping_group_range lets root have them
    (the host's may not), from a thread that alone enters it."""
    if spec[2] not in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) \
            or spec[1] != socket.SOCK_DGRAM:
        return socket.socket(*spec)
    out: list[object] = []

    def make() -> None:
        try:
            syscall(C.NR["unshare"], C.CLONE_NEWNET)
            with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
                f.write("0 0")
            out.append(socket.socket(*spec))
        except OSError as exc:
            out.append(exc)
    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(out[0], OSError):
        raise out[0]
    assert isinstance(out[0], socket.socket)
    return out[0]
ALL_LEVELS = list(sockopts.LEVELS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_readable_option_is_classified(kind: str) -> None:
    known = sockopts.entries(kind)
    missing = []
    for spec in KINDS[kind]:
        with _make(spec) as sk:
            assert sockopts.kind_of(sk) == kind
            for level in ALL_LEVELS:
                for num in sockopts.PROBE_RANGE:
                    if (level, num) in known or (level, num) in sockopts.NEVER_READ:
                        continue
                    v = sockopts.read(sk, level, num)
                    if isinstance(v, int) and v in (errno.ENOPROTOOPT, errno.EOPNOTSUPP,
                                                    errno.EINVAL):
                        continue
                    missing.append(f"{sockopts.LEVELS[level]} {num}: {v!r}")
    assert not missing, f"{kind}: options the audit table does not classify: {missing}"


def test_table_is_consistent() -> None:
    seen: dict[tuple[str, int, int], str] = {}
    for o in sockopts.TABLE:
        assert o.how in (sockopts.SAVED, sockopts.REFUSED, sockopts.IRRELEVANT,
                         sockopts.INEXACT), o
        if o.how in (sockopts.IRRELEVANT, sockopts.INEXACT):
            assert o.note, f"{o.name}: a reason is needed"
        if o.how == sockopts.SAVED:
            assert o.note, f"{o.name}: name the image field"
        for k in o.kinds:
            key = (k, o.level, o.num)
            assert key not in seen, f"{o.name} twice for {k}"
            seen[key] = o.name
        # every level an entry speaks of is one its kinds are probed at
        for k in o.kinds:
            assert o.level in sockopts.KIND_LEVELS[k], (o.name, k)


def test_every_level_of_a_kind_is_probed() -> None:
    for kind, specs in KINDS.items():
        with _make(specs[0]) as sk:
            for level in ALL_LEVELS:
                if level in sockopts.KIND_LEVELS[kind]:
                    continue
                answered = [n for n in range(0, 256)
                            if not isinstance(sockopts.read(sk, level, n), int)]
                assert not answered, (kind, sockopts.LEVELS[level], answered)
