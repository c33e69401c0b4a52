"""Megabytes of TCP queue through procsnap's own queue code, in this
process, on a socket in repair mode (no peer: nothing is transmitted in
repair mode): the dump side peeks the queues straight into the
tcp-stream image (tcp._save, tcp._write_stream: the receive queue a
window at a time with SO_PEEK_OFF, the send queue whole); the restore
side puts them back from the image file itself (sendfile(2) into the
receive queue, a read-only mapping for the send queue), and falls back to
send() where sendfile is refused, also halfway.  Every byte is compared.

The whole dump and restore of connections with queued data is checked by
test_tcp_states.py, test_tcp_reset.py and zdtm's socket-tcpbuf* tests.
"""
from __future__ import annotations

import errno
import os
import socket
import types
from pathlib import Path
from typing import Any, Iterator

import pytest

from procsnap import images
from procsnap.errors import DumpError, RestoreError
from procsnap.images.pb import tcp_stream_pb2
from procsnap.resources import tcp
from procsnap.resources.sockets import SO_PEEK_OFF

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

INQ = (3 << 20) + 4321        # not a multiple of a page: the tails matter
OUTQ = (2 << 20) - 777


@pytest.fixture
def repair_socket() -> Iterator[socket.socket]:
    """A "connected" socket in repair mode with empty queues, big buffers."""
    sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for opt in (33, 32):        # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        sk.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
    sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR, tcp.TCP_REPAIR_ON)
    sk.bind(("127.0.0.1", 0))
    for queue, seq in ((tcp.TCP_RECV_QUEUE, 1000), (tcp.TCP_SEND_QUEUE, 50000)):
        sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR_QUEUE, queue)
        sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_QUEUE_SEQ, seq)
    sk.connect(("127.0.0.1", 9))     # repair mode: no handshake, nothing sent
    yield sk
    sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR, tcp.TCP_REPAIR_ON)
    sk.close()                       # closed in repair mode: silently


def _write_image(d: Path, payload: bytes) -> tuple[str, Any]:
    tse = tcp_stream_pb2.tcp_stream_entry(inq_len=INQ, inq_seq=0, outq_len=OUTQ, outq_seq=0,
                                          opt_mask=0, snd_wscale=0, mss_clamp=1460)
    with images.ImageWriter(str(d), "tcp-stream", 5) as w:
        w.write(tse)
        w.write_raw(payload)
    return images.image_path(str(d), "tcp-stream", 5), tse


def _peek(sk: socket.socket, queue: int, n: int) -> bytes:
    sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR_QUEUE, queue)
    data = sk.recv(n + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR_QUEUE, tcp.TCP_NO_QUEUE)
    return data


def _restore_queues(d: Path, sk: socket.socket) -> None:
    """What tcp.restore_established does with the queues."""
    path = images.image_path(str(d), "tcp-stream", 5)
    (entry,) = images.read_entries(str(d), "tcp-stream", 5, tails=False)
    assert entry.payload == b"" and entry.tail_len == INQ + OUTQ
    src = tcp._ImageQueues(path, entry.tail_offset, INQ, OUTQ)
    try:
        sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR_QUEUE, tcp.TCP_RECV_QUEUE)
        src.to_receive_queue(sk, "test")
        tcp._check_queue(sk, tcp.SIOCINQ, INQ, "test", "receive")
        sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR_QUEUE, tcp.TCP_SEND_QUEUE)
        tcp._send_all(sk, src.outq(0, OUTQ), "test")
        tcp._check_queue(sk, tcp.SIOCOUTQ, OUTQ, "test", "send")
    finally:
        src.close()
    sk.setsockopt(socket.IPPROTO_TCP, tcp.TCP_REPAIR_QUEUE, tcp.TCP_NO_QUEUE)


@pytest.mark.parametrize("how", ["sendfile", "send-mmap", "sendfile-refused-halfway", "send-no-mmap"])
def test_queues_restored_from_the_image(tmp_path: Path, repair_socket: socket.socket,
                                        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    payload = os.urandom(INQ + OUTQ)
    _write_image(tmp_path, payload)
    calls = []
    if how.startswith("send-"):
        monkeypatch.setattr(tcp, "_SENDFILE_INTO_REPAIR", False)
    if how == "send-no-mmap":
        def no_mmap(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENODEV, "no mmap here")
        monkeypatch.setattr(tcp.mmap, "mmap", no_mmap)
    elif how == "sendfile-refused-halfway":
        real = os.sendfile

        def twice_then_refuse(out: int, in_: int, offset: int, count: int) -> int:
            calls.append(offset)
            if len(calls) > 2:
                raise OSError(errno.EINVAL, "refused")
            return real(out, in_, offset, min(count, 100001))
        monkeypatch.setattr(os, "sendfile", twice_then_refuse)
    if not how.startswith("send-") and not tcp._SENDFILE_INTO_REPAIR:
        pytest.skip("this kernel takes no sendfile into a repair queue (before 6.5)")
    _restore_queues(tmp_path, repair_socket)
    if how == "sendfile-refused-halfway":
        assert len(calls) == 3
    assert _peek(repair_socket, tcp.TCP_RECV_QUEUE, INQ) == payload[:INQ]
    assert _peek(repair_socket, tcp.TCP_SEND_QUEUE, OUTQ) == payload[INQ:]
    # and the check says so when the kernel holds other than what was put back
    with pytest.raises(RestoreError, match="receive queue holds"):
        tcp._check_queue(repair_socket, tcp.SIOCINQ, INQ + 1, "test", "receive")


@pytest.mark.parametrize("how", ["windows", "window-of-the-queue-size", "no-peek-off",
                                 "no-file-mmap"])
def test_queues_dumped_into_the_image(tmp_path: Path, repair_socket: socket.socket,
                                      monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The dump side on the queues the restore side made: the image holds
    the entry, then the receive queue, then the send queue, byte for byte;
    the receive queue peeked a window at a time with SO_PEEK_OFF (also a
    queue of exactly one window, which ends with a peek that must find
    nothing), or in one peek where the kernel's TCP takes no SO_PEEK_OFF;
    the socket's own SO_PEEK_OFF is put back."""
    payload = os.urandom(INQ + OUTQ)
    src = tmp_path / "src"
    src.mkdir()
    _write_image(src, payload)
    _restore_queues(src, repair_socket)
    if how == "window-of-the-queue-size":
        monkeypatch.setattr(tcp, "_WINDOW_BYTES", INQ)
    mapped = []
    real_mmap = tcp.mmap.mmap

    def file_mmap(fileno: int, *args: Any, **kwargs: Any) -> Any:
        if fileno != -1:
            # the send queue's place in the image (else a buffer of ours)
            mapped.append(fileno)
            if how == "no-file-mmap":
                raise OSError(errno.ENODEV, "no mmap here")
        return real_mmap(fileno, *args, **kwargs)
    monkeypatch.setattr(tcp.mmap, "mmap", file_mmap)
    refused = []
    if how == "no-peek-off":
        real_setsockopt = socket.socket.setsockopt

        class NoPeekOff(socket.socket):
            def setsockopt(self, level: int, opt: int, *args: Any) -> None:
                if level == socket.SOL_SOCKET and opt == SO_PEEK_OFF:
                    refused.append(args)
                    raise OSError(errno.EOPNOTSUPP, "no SO_PEEK_OFF on TCP")
                real_setsockopt(self, level, opt, *args)
        sk: socket.socket = NoPeekOff(fileno=os.dup(repair_socket.fileno()))
    else:
        sk = repair_socket
        sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 7)   # the task's own
    tse = tcp._save(sk, "test", tcp.ESTABLISHED)
    assert (tse.inq_len, tse.outq_len) == (INQ, OUTQ)
    assert (tse.inq_seq, tse.outq_seq) == (1000 + INQ, 50000 + OUTQ)
    ctx = types.SimpleNamespace(images_dir=str(tmp_path), created=[], stats={})
    tcp._write_stream(ctx, 6, tse, sk, "test")   # type: ignore[arg-type]
    (entry,) = images.read_entries(str(tmp_path), "tcp-stream", 6)
    assert entry.msg.inq_len == INQ and entry.payload == payload
    assert ctx.created == [images.image_path(str(tmp_path), "tcp-stream", 6)]
    assert ctx.stats[tcp.STAGE] > 0
    assert len(mapped) == 1
    if how == "no-peek-off":
        assert refused
        sk.close()       # our dup; the fixture closes its own
    else:
        assert sk.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF) == 7


@pytest.mark.parametrize("inq_len", [INQ - 1, INQ + 1])
@pytest.mark.parametrize("window", [256 << 10, INQ])
def test_dump_refuses_a_queue_of_another_length(tmp_path: Path, repair_socket: socket.socket,
                                                monkeypatch: pytest.MonkeyPatch,
                                                inq_len: int, window: int) -> None:
    """A queue longer or shorter than counted fails the dump by name."""
    payload = os.urandom(INQ + OUTQ)
    src = tmp_path / "src"
    src.mkdir()
    _write_image(src, payload)
    _restore_queues(src, repair_socket)
    monkeypatch.setattr(tcp, "_WINDOW_BYTES", window)
    tse = tcp._save(repair_socket, "test", tcp.ESTABLISHED)
    tse.inq_len = inq_len
    ctx = types.SimpleNamespace(images_dir=str(tmp_path), created=[], stats={})
    with pytest.raises(DumpError, match=f"test: receive queue gave {INQ if inq_len < INQ else INQ} "
                                        f"bytes, expected {inq_len}"):
        tcp._write_stream(ctx, 6, tse, repair_socket, "test")   # type: ignore[arg-type]
    assert not os.path.exists(images.image_path(str(tmp_path), "tcp-stream", 6))
