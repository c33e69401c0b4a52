"""AF_PACKET sockets and classic BPF socket filters (issue 12): packet
sockets come back with their type, protocol, binding, SOL_PACKET options,
fanout group and memberships (counted), filters with their program and
lock; rings, queued packets and options criu's image has no field for
are refused by name and the tree runs on.  Target:
``tests/targets/packet_socks.py`` (in a network namespace of its own)."""
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


def test_packet_sockets_and_filters_come_back(targets: TargetFactory, images_dir: Path) -> None:
    t = targets.start("packet_socks.py", "keep")
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, timeout=120))
    assert wait_gone(t.pid, 10)
    files = images.read_image(str(images_dir), "files")
    psks = [f.psk for f in files if f.type == fdinfo_pb2.PACKETSK]
    by_type = {(p.type, socket.ntohs(p.protocol)): p for p in psks}
    assert sorted(by_type) == [(socket.SOCK_DGRAM, 0x0800), (socket.SOCK_RAW, 0),
                               (socket.SOCK_RAW, 0x0806), (10, 0x0003)], sorted(by_type)
    a = by_type[(socket.SOCK_RAW, 0)]
    assert (a.version, a.aux_data) == (1, True)
    assert sorted((m.type, bytes(m.addr)) for m in a.mclist) == [
        (0, bytes.fromhex("01005e000001")), (1, b""), (1, b"")], a.mclist
    b = by_type[(socket.SOCK_DGRAM, 0x0800)]
    lo = socket.if_nametoindex("lo")  # 1 in every namespace
    assert (b.ifindex, b.reserve, b.orig_dev, b.loss, b.timestamp, b.copy_thresh) == \
        (lo, 64, True, True, 64, 1)
    assert b.fanout == 7 | (2 << 16)
    assert list(b.opts.so_filter) == [0x0000FFFF_00000006], b.opts.so_filter
    assert by_type[(socket.SOCK_RAW, 0x0806)].vnet_hdr
    assert by_type[(10, 0x0003)].ifindex == lo
    udp = [f.isk for f in files if f.type == fdinfo_pb2.INETSK][0]
    assert len(udp.opts.so_filter) == 4 and udp.opts.so_lock_filter
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    assert t.alive()
    finish(t)


def test_packet_rings_mapped(targets: TargetFactory, images_dir: Path) -> None:
    """Unused RX and TX rings (zdtm packet_sock, packet_sock_mmap): the rings
    come back with their sizes, mapped where they were, and the kernel
    fills RX frame 0 first, as before."""
    t = targets.start("packet_socks.py", "rings")
    maps_before = [ln.split()[:2] for ln in open(f"/proc/{t.pid}/maps") if "socket:[" in ln]
    assert len(maps_before) == 1, maps_before
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images_dir, timeout=120))
    assert wait_gone(t.pid, 10)
    [p] = [f.psk for f in images.read_image(str(images_dir), "files")
           if f.type == fdinfo_pb2.PACKETSK]
    for r in (p.rx_ring, p.tx_ring):
        assert (r.block_size, r.block_nr, r.frame_size, r.frame_nr) == (4096, 1, 2048, 2), p
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images_dir, "-d", timeout=120))
    maps_after = [ln.split()[:2] for ln in open(f"/proc/{t.pid}/maps") if "socket:[" in ln]
    assert maps_after == maps_before   # address, size and protection
    finish(t)


@pytest.mark.parametrize("what,words", [
    ("ring", ("packet socket (type 2, protocol 0x0800)", "its packet ring has carried frames")),
    ("queue", ("packet socket (type 2", "packets wait in its receive queue")),
    ("qdisc_bypass", ("PACKET_QDISC_BYPASS is 1", "not the default 0")),
    ("vnet_hdr_sz", ("PACKET_VNET_HDR_SZ is 12",)),
    ("ebpf", ("an eBPF socket filter (SO_ATTACH_BPF) is attached",)),
])
def test_unrestorable_packet_state_refused(targets: TargetFactory, images_dir: Path,
                                           what: str, words: tuple[str, ...]) -> None:
    t = targets.start("packet_socks.py", "refuse", what)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd ")
    for w in words:
        assert w in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert not list(images_dir.iterdir())
    finish(t)
