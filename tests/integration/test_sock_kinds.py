"""Socket kinds of issue 12 beyond unix, TCP and UDP: ICMP (ping),
UDP-Lite and raw IP sockets come back with their names, options, filters
and queues; what cannot come back is refused by name and the tree runs
on.  Target: ``tests/targets/sock_kinds.py`` (in a network namespace of
its own, so ping sockets are allowed and raw sockets see only its own
traffic)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from procsnap import images
from procsnap.images.pb import fdinfo_pb2
from helpers import (
    TargetFactory,
    assert_one_line_error,
    check_ok,
    finish,
    is_untouched,
    run_procsnap,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def test_ping_udplite_raw_come_back(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("sock_kinds.py", "keep")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, timeout=120))
    assert wait_gone(t.pid, 10)
    isks = [f.isk for f in images.read_image(str(images_dir), "files")
            if f.type == fdinfo_pb2.INETSK]
    kinds = sorted((i.family, i.type, i.proto) for i in isks)
    assert (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) in kinds, kinds
    assert (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) in kinds, kinds
    raw_icmp = [i for i in isks if i.type == socket.SOCK_RAW and i.proto == socket.IPPROTO_ICMP]
    assert list(raw_icmp[0].ip_opts.raw.icmpv_filter) == [1 << 13], raw_icmp
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    assert t.alive()
    finish(t)


@pytest.mark.parametrize("what,words", [
    ("raw_queue", ("raw IP (protocol 1)", "packets wait in its receive queue")),
    ("cscov", ("UDP-Lite", "UDPLITE_SEND_CSCOV is 20", "not the default 0")),
])
def test_unrestorable_kind_state_refused(targets: TargetFactory, images_dir: Path, what: str,
                                         words: tuple[str, ...]) -> None:
    t = targets.start("sock_kinds.py", "refuse", what)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd ")
    for w in words:
        assert w in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert not list(images_dir.iterdir())
    finish(t)
