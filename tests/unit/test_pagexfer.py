"""CRIU's page server protocol (procsnap.pagexfer): the wire layout as
criu/page-xfer.c has it, and a session between PageClient and PageServer
over loopback TCP writing real pagemap and pages images, parents included."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from procsnap import images, pagexfer
from procsnap.errors import DumpError

PAGE = 4096


def test_wire_layout() -> None:
    # struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id; }
    assert pagexfer.PSI.size == 32
    raw = pagexfer.PSI.pack(pagexfer.encode_cmd(pagexfer.PS_IOV_ADD_F, 4), 2, 0x1000, 0x105)
    assert raw[:4] == (4 << 16 | 6).to_bytes(4, "little") and raw[4:8] == b"\0" * 4
    assert pagexfer.encode_dst("pagemap", 42) == 42 << 8 | 1
    assert pagexfer.encode_dst("shmem-pagemap", 7) == 7 << 8 | 2
    assert pagexfer.decode_dst(42 << 8 | 1) == ("pagemap", 42)
    assert pagexfer.decode_dst(42 << 8 | 11) == ("pagemap", 42)        # CRIU 1.3 .. 3.0
    assert pagexfer.decode_dst(9 << 8 | 33) == ("shmem-pagemap", 9)    # CRIU 3.1, 3.2
    with pytest.raises(ValueError):
        pagexfer.decode_dst(5 << 8 | 99)


def _session(d: Path, fn, **server_kw) -> BaseException | None:  # type: ignore[no-untyped-def]
    lsk = pagexfer.listen("127.0.0.1", 0)
    port = lsk.getsockname()[1]
    err: list[BaseException] = []

    def serve() -> None:
        sk = pagexfer.accept_one(lsk)
        try:
            pagexfer.PageServer(str(d), **server_kw).serve(sk)
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            err.append(exc)
        finally:
            sk.close()
    th = threading.Thread(target=serve)
    th.start()
    c = pagexfer.PageClient("127.0.0.1", port)
    try:
        fn(c)
    finally:
        c.abort()
        th.join(10)
    return err[0] if err else None


def _pages(d: Path, pid: int) -> list[tuple[int, int, int]]:
    pm = images.read_image(str(d), "pagemap", pid)
    return [(e.vaddr, e.nr_pages, e.flags) for e in pm[1:]]


def test_session_writes_images_and_holes_need_the_parent(tmp_path: Path) -> None:
    p1, d = tmp_path / "p1", tmp_path / "d"
    p1.mkdir()
    data = bytes(range(256)) * (3 * PAGE // 256)

    def first(c: pagexfer.PageClient) -> None:
        assert c.open("pagemap", 7) is False
        c.add(0x10000, data)
        c.add(0x13000, data[:PAGE])          # adjacent: one entry
        c.close()
    assert _session(p1, first) is None
    assert _pages(p1, 7) == [(0x10000, 4, 4)]
    head = images.read_image(str(p1), "pagemap", 7)[0]
    assert head.pages_id == 0x10001
    assert (p1 / "pages-65537.img").read_bytes() == data + data[:PAGE]

    pagexfer.prepare_dir(str(d), "../p1")

    def second(c: pagexfer.PageClient) -> None:
        assert c.has_parent("pagemap", 7) is True       # PS_IOV_PARENT
        assert c.has_parent("shmem-pagemap", 7) is False
        assert c.open("pagemap", 7) is True  # the parent has it
        c.hole(0x10000, 2)
        c.add(0x12000, bytes(PAGE))
        c.hole(0x13000, 1)
        c.close()
    assert _session(d, second) is None
    assert _pages(d, 7) == [(0x10000, 2, 1), (0x12000, 1, 4), (0x13000, 1, 1)]

    def bad_hole(c: pagexfer.PageClient) -> None:
        c.open("pagemap", 7)
        c.hole(0x14000, 1)                   # past what the parent holds
        with pytest.raises(DumpError):
            c.close()
    d2 = tmp_path / "d2"
    pagexfer.prepare_dir(str(d2), "../p1")
    err = _session(d2, bad_hole)
    assert isinstance(err, pagexfer.PageServerError) and "not in the parent" in str(err)
    assert not list(d2.glob("*.img"))


def test_lazy_get(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    data = os.urandom(4 * PAGE)

    def put(c: pagexfer.PageClient) -> None:
        c.open("pagemap", 3)
        c.add(0x40000, data)
        c.close()
    assert _session(d, put) is None

    def get(c: pagexfer.PageClient) -> None:
        c.sk.sendall(pagexfer.PSI.pack(pagexfer.PS_IOV_GET, 9, 0x41000, 3))
        cmd, n, addr, pid = pagexfer.PSI.unpack(c.sk.recv(32, socket.MSG_WAITALL))
        assert (n, addr, pid) == (3, 0x41000, 3)
        assert c.sk.recv(n * PAGE, socket.MSG_WAITALL) == data[PAGE:]
    assert _session(d, get, lazy=True) is None
