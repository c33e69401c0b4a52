"""Queued datagrams keep their senders' addresses (issue 13): UDP and
UDP-Lite, IPv4, IPv6 and v4-mapped, to wildcard-bound sockets that read
each datagram's destination (IP_PKTINFO), and before a connect()
(target tests/targets/dgram_senders.py, which checks every datagram's
data, sender and destination itself).  The images carry the sender in
sk_packet_entry.addr, CRIU's reserved number 3.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from helpers import TargetFactory, check_ok, describe, run_procsnap, wait_gone
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
