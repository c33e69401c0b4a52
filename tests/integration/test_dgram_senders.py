"""Queued datagrams keep their senders' addresses (issue 13): unix
datagrams (sent again from a socket of the sender's name), and UDP and
UDP-Lite, IPv4, IPv6 and v4-mapped, to wildcard-bound sockets that read
each datagram's destination (IP_PKTINFO), and before a connect()
(target tests/targets/dgram_senders.py, which checks every datagram's
data, sender and destination itself).  The images carry the sender in
sk_packet_entry.addr, CRIU's reserved number 3.
"""
from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from helpers import (
    TargetFactory,
    assert_one_line_error,
    check_ok,
    describe,
    is_untouched,
    run_procsnap,
    wait_gone,
)
from procsnap import images

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]


def test_udp_datagrams_keep_their_senders(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("dgram_senders.py")
    res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10), describe(res)
    queued = images.read_entries(str(images_dir), "sk-queues", None)
    assert len(queued) == 13 and all(e.msg.HasField("addr") for e in queued), queued
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)") == "PASS", t.output()


def test_unix_datagrams_keep_their_senders(targets: TargetFactory, images_dir: Path,
                                           tmp_path: Path) -> None:
    """Unix datagrams from unnamed, named (alive in the tree, closed, a
    removed file) and autobound senders, to abstract and path receivers
    and a socketpair end."""
    d = tmp_path / "socks"
    d.mkdir()
    t = targets.start("unix_senders.py", str(d))
    res = check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir))
    assert wait_gone(t.pid, 10), describe(res)
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d"))
    assert sorted(p.name for p in d.iterdir()) == ["r.sock"]   # no scratch name left
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)") == "PASS", t.output()


def test_unix_datagram_from_outside_sender_refused(targets: TargetFactory, images_dir: Path,
                                                   tmp_path: Path) -> None:
    """A queued datagram from a named socket outside the tree: put back,
    it would come from another address (that name is taken)."""
    d = tmp_path / "socks"
    d.mkdir()
    t = targets.start("unix_senders.py", str(d))
    name = t.wait_line("^r ").split()[1]
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        out.bind(f"\0procsnap-test-outside-{t.pid}")
        out.sendto(b"from outside", "\0" + name)
        res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
        line = assert_one_line_error(res, f"pid {t.pid}: fd 100")
        assert f"@procsnap-test-outside-{t.pid}" in line and "outside the dumped tree" in line
        ok, why = is_untouched(t.pid)
        assert ok, why
    finally:
        out.close()
    t.signal(signal.SIGUSR1)
    assert t.wait_line("^(PASS|FAIL)").startswith("FAIL: fd 100: an extra datagram")
