"""The socket option audit table against the running kernel: every
option number getsockopt answers for a unix, TCP or UDP socket (v4 and
v6) is classified, so a new kernel option fails here, not silently."""
from __future__ import annotations

import errno
import socket

import pytest

from procsnap.resources import sockopts

KINDS = {
    "unix": [(socket.AF_UNIX, socket.SOCK_STREAM, 0), (socket.AF_UNIX, socket.SOCK_DGRAM, 0),
             (socket.AF_UNIX, socket.SOCK_SEQPACKET, 0)],
    "tcp4": [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)],
    "tcp6": [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)],
    "udp4": [(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)],
    "udp6": [(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)],
}
ALL_LEVELS = list(sockopts.LEVELS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_readable_option_is_classified(kind: str) -> None:
    known = sockopts.entries(kind)
    missing = []
    for spec in KINDS[kind]:
        with socket.socket(*spec) as sk:
            assert sockopts.kind_of(sk) == kind
            for level in ALL_LEVELS:
                for num in range(0, 256):
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
        with socket.socket(*specs[0]) as sk:
            for level in ALL_LEVELS:
                if level in sockopts.KIND_LEVELS[kind]:
                    continue
                answered = [n for n in range(0, 256)
                            if not isinstance(sockopts.read(sk, level, n), int)]
                assert not answered, (kind, sockopts.LEVELS[level], answered)
