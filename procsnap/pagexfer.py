"""criu's page-server wire protocol (criu/page-xfer.c), the parts
procsnap speaks.

Every message starts with a ``struct page_server_iov`` -- u32 cmd, (pad),
u64 nr_pages, u64 vaddr, u64 dst_id: 32 bytes in the host's byte order
(criu sends the C struct as is).  ``cmd`` holds the command in its low 16
bits and pagemap flags (PE_*) above; ``dst_id`` is ``id << 8 | type``
(type 1: a task, id its pid as the images name it; 2: shared memory).

Lazy restore (criu lazy-pages --page-server): the daemon sends PS_IOV_GET
(nr_pages, vaddr, dst_id) and the page server answers PS_IOV_ADD_F with
PE_PRESENT, the same nr_pages (or fewer), vaddr and dst_id, then the
bytes; a page it does not have ends the connection.  Here dst_id is the
task's pid alone, not encoded with a type (criu's request_remote_pages()
sends the page_read's img_id, and page_server_get_pages() looks it up with
pstree_item_by_virt() as is).  PS_IOV_CLOSE (or
FORCE_CLOSE) is answered with an int32 status 0 and ends the session.
"""
from __future__ import annotations

import socket
import struct

PS_IOV_ADD = 1
PS_IOV_HOLE = 2
PS_IOV_OPEN = 3
PS_IOV_OPEN2 = 4
PS_IOV_PARENT = 5
PS_IOV_ADD_F = 6
PS_IOV_GET = 7
PS_IOV_CLOSE = 0x1023
PS_IOV_FORCE_CLOSE = 0x1024

PS_CMD_BITS = 16
PS_CMD_MASK = (1 << PS_CMD_BITS) - 1
PS_TYPE_BITS = 8
PS_TYPE_MASK = (1 << PS_TYPE_BITS) - 1
PS_TYPE_PID = 1
PS_TYPE_SHMEM = 2

PE_PRESENT = 1 << 2   # pagemap_entry flags (images/pagemap.proto)

IOV = struct.Struct("=I4xQQQ")   # struct page_server_iov
STATUS = struct.Struct("=i")


def encode_cmd(cmd: int, flags: int = 0) -> int:
    return flags << PS_CMD_BITS | cmd


def decode_cmd(word: int) -> tuple[int, int]:
    """(command, flags)"""
    return word & PS_CMD_MASK, word >> PS_CMD_BITS


def dst_id(pid: int, kind: int = PS_TYPE_PID) -> int:
    return pid << PS_TYPE_BITS | kind


def split_dst_id(value: int) -> tuple[int, int]:
    """(kind, id)"""
    return value & PS_TYPE_MASK, value >> PS_TYPE_BITS


def pack(cmd: int, nr_pages: int = 0, vaddr: int = 0, dst: int = 0) -> bytes:
    return IOV.pack(cmd, nr_pages, vaddr, dst)


def recv_exact(sk: socket.socket, n: int, into: memoryview | None = None) -> bytes:
    """n bytes from sk (into ``into`` when given); ConnectionError at EOF."""
    if into is None:
        buf = bytearray(n)
        view = memoryview(buf)
    else:
        view = into[:n]
    got = 0
    while got < n:
        k = sk.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError(f"the page server closed the connection ({got} of {n} bytes)")
        got += k
    return bytes(view) if into is None else b""


def recv_iov(sk: socket.socket) -> tuple[int, int, int, int] | None:
    """One page_server_iov: (cmd word, nr_pages, vaddr, dst_id); None at a
    clean end of the stream."""
    first = sk.recv(IOV.size, socket.MSG_WAITALL)
    if not first:
        return None
    if len(first) != IOV.size:
        first += recv_exact(sk, IOV.size - len(first))
    return IOV.unpack(first)  # type: ignore[return-value]


def close_session(sk: socket.socket) -> int:
    """PS_IOV_CLOSE, and the server's int32 status."""
    sk.sendall(pack(PS_IOV_CLOSE))
    return int(STATUS.unpack(recv_exact(sk, STATUS.size))[0])
