"""CRIU's page server protocol (criu/page-xfer.c, CRIU 4.2), both ends.

A dump can send its memory to a page server on another host instead of
writing pagemap and pages images itself (``dump --page-server --address A
--port P``); the server (``page-server -D DIR --port P``) writes them into
its own images directory, the dump writes every other image locally.  A
page server started on an images dir with ``--lazy-pages`` serves pages
on demand instead (``PS_IOV_GET``, what a lazy-pages daemon asks).

The wire format is CRIU's, so either end may be CRIU 4.2:

- every command is a ``struct page_server_iov { u32 cmd; u64 nr_pages;
  u64 vaddr; u64 dst_id; }`` in host byte order, 32 bytes (the u32 is
  padded to 8);
- ``cmd`` is the command in its low 16 bits and pagemap flags (PE_PRESENT,
  PE_PARENT, PE_LAZY) above them (PS_IOV_ADD_F);
- ``dst_id`` names the pagemap: ``id << 8 | type``, type 1 a task's pagemap
  (id its pid as the images name it), 2 a shared memory object's (id the
  shmid); older CRIUs' type numbers are read too (decode_pm());
- a session: PS_IOV_OPEN2 dst_id (answer: one byte, 1 when the server's
  dir has a parent image of it: then the dump may send PE_PARENT holes),
  PS_IOV_ADD_F runs in address order, each followed by its
  nr_pages * 4096 bytes when PE_PRESENT, ... and at the end PS_IOV_CLOSE
  (answer: an int32 status, 0), after which the dump closes the socket.
  PS_IOV_PARENT dst_id asks only whether the parent has that image (int32).
- lazy: PS_IOV_GET nr_pages vaddr dst_id=pid; the answer is PS_IOV_ADD_F
  (PE_PRESENT) with the number of pages actually sent (fewer when the run
  ends) and the bytes; 0 pages when the server has none there (CRIU's own
  server ends the session instead).  procsnap's server answers for every
  page its images hold, lazy-marked or not (CRIU's: the PE_LAZY ones).

There is no other handshake in CRIU 4.2 (TLS is a layer below it; procsnap
refuses --tls by name).  The server writes pages images numbered from
0x10001 on, as CRIU's (up_page_ids_base()), so that its pages never
collide with those a dump writes locally when both dirs are merged.
"""
from __future__ import annotations

import bisect
import ctypes
import fcntl
import os
import struct
from .record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from . import images, logs
from .errors import DumpError, ImageError, ProcsnapError
from .images.magic import PE_LAZY, PE_PARENT, PE_PRESENT
from .images.parent import flags_of, intersect, merge
from .images.pb import pagemap_pb2
from .kernel import consts as C
from .kernel.libc import libc
from .kernel.structs import Iovec

if TYPE_CHECKING:
    import socket

# socket and json are imported by the functions that use them, and logging
# at the first message (procsnap.logs): dumper, restorer and memory import
# this module, and a dump without --page-server must not pay for them.
log = logs.Logger("procsnap.pagexfer")

PAGE = C.PAGE_SIZE
PSI = struct.Struct("=I4xQQQ")     # struct page_server_iov, x86_64 layout

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
# type numbers older CRIUs sent (criu/page-xfer.c decode_pm())
_LEGACY_PID = frozenset({10, 11, 16, 17})
_LEGACY_SHMEM = frozenset({27, 28, 29, 32, 33, 34})

SERVER_PAGES_BASE = 0x10000
# A run larger than this is refused as bad data (2^47: the user address space).
_MAX_RUN_PAGES = (1 << 47) // PAGE
_KNOWN_FLAGS = PE_PARENT | PE_LAZY | PE_PRESENT

# procsnap's own record, in a dump's local images dir, of the pages the
# page server holds for it (the pagemaps are on the server): the next
# dump's --prev-images-dir decides from it which pages may stay in the
# parent.  {"pagemap": {"PID": [[addr, n_pages], ...]}}
SENT_RECORD = "page-server-sent"

# During a dump with --page-server: the driver's PageClient in
# ctx.kind_state[CLIENT_KEY] (the memory modules send through it), and
# outside pid -> the pid the images name in ctx.kind_state[NAMES_KEY].
CLIENT_KEY = "pagexfer"
NAMES_KEY = "pagexfer.names"

# Pages are read from the frozen task into a buffer this large and sent
# from it: one process_vm_readv and one sendmsg per batch of runs.
_BUF = 16 << 20
_IOV_MAX = 1024


class PageServerError(ProcsnapError):
    """The page server's session failed: bad data from the peer, a lost
    peer, or a hole the parent images do not hold."""


def encode_cmd(cmd: int, flags: int = 0) -> int:
    return (flags << PS_CMD_BITS) | cmd


def encode_dst(kind: str, ident: int) -> int:
    typ = {"pagemap": PS_TYPE_PID, "shmem-pagemap": PS_TYPE_SHMEM}[kind]
    return (ident << PS_TYPE_BITS) | typ


def decode_dst(dst_id: int) -> tuple[str, int]:
    """(image kind, id) of a dst_id; ValueError for an unknown type."""
    typ = dst_id & PS_TYPE_MASK
    ident = dst_id >> PS_TYPE_BITS
    if typ == PS_TYPE_PID or typ in _LEGACY_PID:
        return "pagemap", ident
    if typ == PS_TYPE_SHMEM or typ in _LEGACY_SHMEM:
        return "shmem-pagemap", ident
    raise ValueError(f"unknown pagemap type {typ} in dst_id {dst_id:#x}")


def _addr_family(address: str) -> socket.AddressFamily:
    """CRIU's get_sockaddr_in(): an IPv4 or an IPv6 address, no names."""
    import socket
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, address)
            return fam
        except OSError:
            continue
    raise ValueError(f"Invalid server address {address!r}: the address must be in "
                     "IPv4 or IPv6 format")


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# ============================================================== client ====

class PageClient:
    """The dump's end: one connection for the whole dump (as CRIU's
    connect_to_page_server_to_send()), opened before the tree is frozen."""

    def __init__(self, address: str, port: int, timeout: float = 60.0) -> None:
        import socket
        self.where = f"page server {_where(address, port)}"
        try:
            fam = _addr_family(address)
        except ValueError as exc:
            raise DumpError(f"{self.where}: {exc}") from None
        self.sk = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # A server that stops reading fails the dump after this long
        # rather than keeping the tree frozen for ever.
        self.sk.settimeout(timeout)
        try:
            self.sk.connect((address, port))
        except OSError as exc:
            self.sk.close()
            raise DumpError(f"{self.where}: cannot connect: "
                            f"{exc.strerror or exc}") from None
        # Corked, with a push (NODELAY) whenever an answer is awaited: as CRIU.
        self.sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        self.dst = 0
        self.sent: dict[str, dict[int, list[tuple[int, int]]]] = {}
        # pages sent with their bytes, per kind, and left in the parent (holes)
        self.counts: dict[str, int] = {"pagemap": 0, "shmem-pagemap": 0, "parent": 0}
        self.bytes = 0
        self._buf: bytearray | None = None

    # -- framing --------------------------------------------------------
    def _fail(self, what: str, exc: BaseException | None = None) -> DumpError:
        why = f": {exc.strerror or exc}" if isinstance(exc, OSError) else \
            (f": {exc}" if exc else "")
        return DumpError(f"{self.where}: {what}{why}")

    def _send(self, bufs: list[Any]) -> None:
        """sendmsg() of a list of buffers, all of it (partial sends resumed)."""
        import socket
        views = [memoryview(b).cast("B") for b in bufs]
        try:
            while views:
                n = self.sk.sendmsg(views[:_IOV_MAX])
                self.bytes += n
                while views and n >= len(views[0]):
                    n -= len(views[0])
                    views.pop(0)
                if n:
                    views[0] = views[0][n:]
        except (OSError, socket.timeout) as exc:
            raise self._fail("lost while sending (is it still running?)", exc) from None

    def _recv(self, n: int) -> bytes:
        import socket
        self.sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            data = self.sk.recv(n, socket.MSG_WAITALL)
        except (OSError, socket.timeout) as exc:
            raise self._fail("does not answer", exc) from None
        if len(data) != n:
            raise self._fail("closed the connection (see its log)")
        return data

    # -- commands -------------------------------------------------------
    def open(self, kind: str, ident: int) -> bool:
        """PS_IOV_OPEN2: start the pagemap of (kind, ident); True when the
        server's images have a parent image of it (holes allowed)."""
        self.dst = encode_dst(kind, ident)
        self._send([PSI.pack(PS_IOV_OPEN2, 0, 0, self.dst)])
        self.sent.setdefault(kind, {})[ident] = []
        return self._recv(1) != b"\0"

    def has_parent(self, kind: str, ident: int) -> bool:
        """PS_IOV_PARENT: does the server's parent image set have it?"""
        self._send([PSI.pack(PS_IOV_PARENT, 0, 0, encode_dst(kind, ident))])
        (ans,) = struct.unpack("=i", self._recv(4))
        if ans < 0:
            raise self._fail("cannot check its parent images")
        return ans > 0

    def _note(self, addr: int, n: int, hole: bool = False) -> None:
        kind, ident = decode_dst(self.dst)
        self.counts["parent" if hole else kind] += n
        runs = self.sent[kind][ident]
        if runs and runs[-1][0] + runs[-1][1] * PAGE == addr:
            runs[-1] = (runs[-1][0], runs[-1][1] + n)
        else:
            runs.append((addr, n))

    def hole(self, addr: int, n: int) -> None:
        """Pages left in the parent image set (PE_PARENT, no bytes)."""
        self._send([PSI.pack(encode_cmd(PS_IOV_ADD_F, PE_PARENT), n, addr, self.dst)])
        self._note(addr, n, hole=True)

    def add(self, addr: int, data: Any) -> None:
        """Pages at ``addr`` with their bytes (a multiple of the page size)."""
        n = len(data) // PAGE
        self._send([PSI.pack(encode_cmd(PS_IOV_ADD_F, PE_PRESENT), n, addr, self.dst), data])
        self._note(addr, n)

    def send_fd_range(self, addr: int, fd: int, offset: int, length: int) -> None:
        """Pages whose bytes are in file ``fd`` at ``offset`` (a shared
        memory object): sendfile(), no copy through us."""
        import socket
        n = length // PAGE
        self._send([PSI.pack(encode_cmd(PS_IOV_ADD_F, PE_PRESENT), n, addr, self.dst)])
        done = 0
        try:
            while done < length:
                k = os.sendfile(self.sk.fileno(), fd, offset + done, length - done)
                if k <= 0:
                    raise DumpError(f"{self.where}: short read of the pages to send at "
                                    f"offset {offset + done:#x}")
                done += k
        except (OSError, socket.timeout) as exc:
            raise self._fail("lost while sending (is it still running?)", exc) from None
        self.bytes += length
        self._note(addr, n)

    def send_task_pages(self, pid: int, runs: list[tuple[int, int]],
                        on_progress: Callable[[int], None] | None = None,
                        flags: int = PE_PRESENT) -> None:
        """The pages of ``runs`` (address, n_pages; sorted) of frozen task
        ``pid``: read into one buffer with process_vm_readv (many runs a
        call), sent with one sendmsg of headers and bytes per buffer-full.
        Pages the task cannot read itself (PROT_NONE) come through
        /proc/PID/mem, which reads with FOLL_FORCE."""
        if self._buf is None:
            self._buf = bytearray(_BUF)
        buf = self._buf
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        view = memoryview(buf)
        done = 0
        pieces: list[tuple[int, int]] = []   # (addr, bytes) in the buffer, in order
        used = 0

        def flush() -> None:
            nonlocal used, done
            if not pieces:
                return
            self._read(pid, pieces, base, view)
            out: list[Any] = []
            off = 0
            for addr, size in pieces:
                out.append(PSI.pack(encode_cmd(PS_IOV_ADD_F, flags), size // PAGE,
                                    addr, self.dst))
                out.append(view[off:off + size])
                off += size
            self._send(out)
            for addr, size in pieces:
                self._note(addr, size // PAGE)
            done += used
            if on_progress is not None:
                on_progress(done)
            pieces.clear()
            used = 0

        for addr, n in runs:
            size = n * PAGE
            while size:
                k = min(size, _BUF - used)
                pieces.append((addr, k))
                used += k
                addr += k
                size -= k
                if used >= _BUF or len(pieces) >= _IOV_MAX // 2:
                    flush()
        flush()

    def _read(self, pid: int, pieces: list[tuple[int, int]], base: int,
              view: memoryview) -> None:
        n = len(pieces)
        local = Iovec(base, sum(s for _, s in pieces))
        remote = (Iovec * n)(*[Iovec(a, s) for a, s in pieces])
        try:
            got = libc.process_vm_readv(pid, ctypes.byref(local), 1, remote, n, 0)
        except OSError:
            got = 0
        if got == local.iov_len:
            return
        # the rest piece by piece through /proc/PID/mem (FOLL_FORCE)
        off = 0
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for addr, size in pieces:
                if off + size <= got:
                    off += size
                    continue
                skip = max(0, got - off)
                pos, want = addr + skip, size - skip
                dst = view[off + skip:off + size]
                while want:
                    k = os.preadv(mem.fileno(), [dst], pos)
                    if k <= 0:
                        raise DumpError(f"pid {pid}: short read of memory at {pos:#x}")
                    dst, pos, want = dst[k:], pos + k, want - k
                off += size

    def close(self) -> None:
        """PS_IOV_CLOSE: the server writes its images and answers 0."""
        try:
            self._send([PSI.pack(PS_IOV_CLOSE, 0, 0, 0)])
            (status,) = struct.unpack("=i", self._recv(4))
        finally:
            self.sk.close()
        if status:
            raise self._fail(f"failed to write the images (status {status})")

    def abort(self) -> None:
        """Drop the session: the server sees no PS_IOV_CLOSE and keeps no image."""
        try:
            self.sk.close()
        except OSError:
            pass


def _sent_record(images_dir: str) -> "dict[str, Any] | None":
    """The record save_sent wrote for a dump through a page server (None:
    that dump used none); a damaged one is an ImageError naming it."""
    import json
    path = os.path.join(images_dir, SENT_RECORD)
    try:
        with open(path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ImageError(path, str(exc)) from None
    return rec if isinstance(rec, dict) else {}


def save_sent(images_dir: str, client: PageClient) -> str:
    import json
    path = os.path.join(images_dir, SENT_RECORD)
    rec: dict[str, Any] = {kind: {str(i): runs for i, runs in per.items()}
                           for kind, per in client.sent.items()}
    rec["counts"] = client.counts
    with open(path, "w") as f:
        json.dump(rec, f)
    return path


def sent_counts(images_dir: str) -> dict[str, int] | None:
    """Pages a dump sent to its page server ("pagemap", "shmem-pagemap":
    with their bytes; "parent": left in the parent images), from its
    record; None when that dump used no page server."""
    rec = _sent_record(images_dir)
    if rec is None:
        return None
    return {k: int(v) for k, v in rec.get("counts", {}).items()}


def load_sent(images_dir: str, kind: str, ident: int) -> list[tuple[int, int]] | None:
    """What the page server holds of (kind, ident) for the dump whose local
    images are in ``images_dir``; None when that dump used no page server."""
    rec = _sent_record(images_dir)
    if rec is None:
        return None
    return [(int(a), int(n)) for a, n in rec.get(kind, {}).get(str(ident), [])]


# ============================================================== server ====

def _held(images_dir: str, kind: str, ident: int, depth: int = 0) -> list[tuple[int, int]]:
    """(address, n_pages) runs the image set in ``images_dir`` (and its
    parents) holds for (kind, ident), sorted and merged."""
    if depth > 64:
        raise ImageError(images_dir, "parent chain longer than 64 (a loop?)")
    try:
        entries = images.read_image(images_dir, kind, ident)[1:]
    except FileNotFoundError:
        return []
    held: list[tuple[int, int]] = []
    parent: list[tuple[int, int]] | None = None
    for e in sorted(entries, key=lambda e: e.vaddr):
        f = flags_of(e)
        runs = [(e.vaddr, e.nr_pages)]
        if not f & PE_PRESENT:
            if not f & PE_PARENT:
                continue   # lazy: not in the images
            if parent is None:
                parent = _held(os.path.join(images_dir, "parent"), kind, ident, depth + 1)
            runs = intersect(runs, parent)
        held += runs
    return merge(held)


def _covered(held: list[tuple[int, int]], addr: int, n: int) -> bool:
    return intersect([(addr, n)], held) == [(addr, n)]


@record
class _Open:
    """One pagemap being received."""
    kind: str
    ident: int
    pages_id: int
    fd: int
    parent: list[tuple[int, int]] | None      # runs the parent holds, or no parent
    entries: list[Any] = field(default_factory=list)
    end: int = 0                               # address after the last entry


class PageServer:
    """The receiving end: writes pagemap and pages images into ``images_dir``.
    ``serve()`` handles one connection, as CRIU's page server does."""

    def __init__(self, images_dir: str, *, lazy: bool = False) -> None:
        self.d = images_dir
        self.lazy = lazy
        self.next_pages = SERVER_PAGES_BASE
        self.cur: _Open | None = None
        self.created: list[str] = []
        self.pipe: tuple[int, int] | None = None
        self.pipe_size = 0
        self.received = 0
        self._lazy_maps: dict[int, list[tuple[int, int, str, int]]] = {}

    # -- receiving ------------------------------------------------------
    def _bad(self, msg: str) -> PageServerError:
        return PageServerError(f"page-server: bad data from the peer: {msg}")

    def _open(self, sk: socket.socket | None, dst: int) -> None:
        try:
            kind, ident = decode_dst(dst)
        except ValueError as exc:
            raise self._bad(str(exc)) from None
        self._finish()
        parent_dir = os.path.join(self.d, "parent")
        parent = None
        if os.path.exists(images.image_path(parent_dir, kind, ident)):
            parent = _held(parent_dir, kind, ident)
        self.next_pages += 1
        path = images.image_path(self.d, "pages", self.next_pages)
        self.created.append(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self.cur = _Open(kind, ident, self.next_pages, fd, parent)
        log.info("Opening %s %d (pages-%d.img)%s", kind, ident, self.next_pages,
                 ", with a parent" if parent is not None else "")
        if sk is not None:
            sk.sendall(b"\1" if parent is not None else b"\0")

    def _finish(self) -> None:
        """Write the open pagemap out."""
        cur, self.cur = self.cur, None
        if cur is None:
            return
        os.close(cur.fd)
        head = pagemap_pb2.pagemap_head(pages_id=cur.pages_id)
        path = images.image_path(self.d, cur.kind, cur.ident)
        self.created.append(path)
        images.write_image(self.d, cur.kind, [head] + cur.entries, cur.ident)

    def _add(self, sk: socket.socket, pi: tuple[int, int, int, int], flags: int) -> None:
        _, n, addr, dst = pi
        if self.cur is None or encode_dst(*decode_dst(dst)) != \
                encode_dst(self.cur.kind, self.cur.ident):
            self._open(None, dst)   # CRIU: "Deprecated IO w/o open"
        cur = self.cur
        assert cur is not None
        if flags & ~_KNOWN_FLAGS or not flags & (PE_PRESENT | PE_PARENT | PE_LAZY):
            raise self._bad(f"pagemap flags {flags:#x} at {addr:#x}")
        if addr % PAGE or not 0 < n <= _MAX_RUN_PAGES:
            raise self._bad(f"{n} pages at {addr:#x} (unaligned or out of range)")
        if addr < cur.end:
            raise self._bad(f"{cur.kind} {cur.ident}: pages at {addr:#x} overlap or come "
                            f"before the previous run (ending {cur.end:#x})")
        if flags & PE_PARENT and not flags & PE_PRESENT:
            if cur.parent is None:
                raise PageServerError(
                    f"page-server: {cur.kind} {cur.ident}: pages at {addr:#x} (+{n}) are said "
                    "to be in the parent image set, but this images dir has no parent "
                    "image of it (start the page server with --prev-images-dir)")
            if not _covered(cur.parent, addr, n):
                raise PageServerError(
                    f"page-server: {cur.kind} {cur.ident}: hole {addr:#x} (+{n} pages) "
                    "is not in the parent image set")
        last = cur.entries[-1] if cur.entries else None
        if last is not None and last.vaddr + last.nr_pages * PAGE == addr and \
                last.flags == flags:
            last.nr_pages += n
        else:
            cur.entries.append(pagemap_pb2.pagemap_entry(vaddr=addr, nr_pages=n, flags=flags))
        cur.end = addr + n * PAGE
        if flags & PE_PRESENT:
            self._pages_in(sk, cur.fd, n * PAGE)

    def _pages_in(self, sk: socket.socket, fd: int, length: int) -> None:
        """splice() the bytes from the socket to the pages image through a
        pipe: they never pass through Python."""
        if self.pipe is None:
            self.pipe = os.pipe2(os.O_CLOEXEC)
            try:
                fcntl.fcntl(self.pipe[1], 1031, 1 << 20)   # F_SETPIPE_SZ
            except OSError:
                pass
            self.pipe_size = fcntl.fcntl(self.pipe[1], 1032)   # F_GETPIPE_SZ
        r, w = self.pipe
        left = length
        while left:
            try:
                k = os.splice(sk.fileno(), w, min(left, self.pipe_size), flags=1)  # MOVE
            except OSError as exc:
                raise PageServerError(f"page-server: reading pages from the peer: "
                                      f"{exc.strerror}") from None
            if k == 0:
                raise PageServerError(f"page-server: the peer closed the connection in the "
                                      f"middle of a run of pages ({length - left} of "
                                      f"{length} bytes received); no image is kept")
            while k:
                m = os.splice(r, fd, k, flags=1)
                if m <= 0:
                    raise PageServerError("page-server: short write of the pages image")
                k -= m
                left -= m
        self.received += length

    # -- lazy: PS_IOV_GET -----------------------------------------------
    def _lazy_map(self, pid: int) -> list[tuple[int, int, str, int]]:
        """(address, n_pages, pages file, offset) of every page the images
        hold for ``pid`` (parents followed), sorted."""
        m = self._lazy_maps.get(pid)
        if m is None:
            m = _page_places(self.d, "pagemap", pid)
            self._lazy_maps[pid] = m
        return m

    def _get(self, sk: socket.socket, pi: tuple[int, int, int, int]) -> None:
        import socket
        _, n, addr, pid = pi
        places = self._lazy_map(pid)
        i = bisect.bisect_right(places, (addr, 1 << 63)) - 1
        got = 0
        if i >= 0 and n > 0 and addr % PAGE == 0:
            a, cnt, path, off = places[i]
            if addr < a + cnt * PAGE:
                got = min(n, (a + cnt * PAGE - addr) // PAGE)
                skip = addr - a
        hdr = PSI.pack(encode_cmd(PS_IOV_ADD_F, PE_PRESENT), got, addr, pid)
        if not got:
            sk.sendall(hdr)
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return
        sk.sendall(hdr)
        with open(path, "rb", buffering=0) as f:
            pos, left = off + skip, got * PAGE
            while left:
                k = os.sendfile(sk.fileno(), f.fileno(), pos, left)
                if k <= 0:
                    raise PageServerError(f"page-server: {path}: short read at {pos:#x}")
                pos += k
                left -= k
        sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received += got * PAGE

    # -- the session ----------------------------------------------------
    def serve(self, sk: socket.socket) -> None:
        """One session on connected socket ``sk``; raises PageServerError
        (one line) on bad data or a peer lost before PS_IOV_CLOSE, after
        removing every image it wrote."""
        ok = False
        try:
            self._serve(sk)
            ok = True
        except OSError as exc:
            raise PageServerError(f"page-server: connection to the peer: "
                                  f"{exc.strerror or exc}") from None
        finally:
            if self.pipe is not None:
                os.close(self.pipe[0])
                os.close(self.pipe[1])
                self.pipe = None
            if not ok:
                if self.cur is not None:
                    os.close(self.cur.fd)
                    self.cur = None
                for p in self.created:
                    try:
                        os.unlink(p)
                    except FileNotFoundError:
                        pass

    def _serve(self, sk: socket.socket) -> None:
        import socket
        if self.lazy:
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        else:
            sk.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        flushed = False
        while True:
            raw = sk.recv(PSI.size, socket.MSG_WAITALL)
            if not raw:
                break
            if len(raw) != PSI.size:
                raise self._bad(f"a command cut short ({len(raw)} of {PSI.size} bytes)")
            pi = PSI.unpack(raw)
            cmd = pi[0] & PS_CMD_MASK
            flags = pi[0] >> PS_CMD_BITS
            flushed = False
            if cmd == PS_IOV_OPEN:
                self._open(None, pi[3])
            elif cmd == PS_IOV_OPEN2:
                self._open(sk, pi[3])
            elif cmd == PS_IOV_PARENT:
                try:
                    kind, ident = decode_dst(pi[3])
                except ValueError as exc:
                    raise self._bad(str(exc)) from None
                has = os.path.exists(images.image_path(os.path.join(self.d, "parent"),
                                                       kind, ident))
                sk.sendall(struct.pack("=i", int(has)))
            elif cmd in (PS_IOV_ADD_F, PS_IOV_ADD, PS_IOV_HOLE):
                if self.lazy:
                    raise self._bad("pages sent to a page server that serves lazy pages")
                f = flags if cmd == PS_IOV_ADD_F else \
                    (PE_PRESENT if cmd == PS_IOV_ADD else PE_PARENT)
                self._add(sk, pi, f)
            elif pi[0] in (PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE):
                self._finish()
                sk.sendall(struct.pack("=i", 0))
                flushed = True
                break
            elif cmd == PS_IOV_GET:
                if not self.lazy:
                    raise self._bad("PS_IOV_GET to a page server receiving a dump "
                                    "(start it with --lazy-pages on an images dir)")
                self._get(sk, pi)
            else:
                raise self._bad(f"unknown command {pi[0]:#x}")
        if not self.lazy and not flushed:
            raise PageServerError("page-server: the peer went away before the end of the "
                                  "dump (no PS_IOV_CLOSE): the data were not flushed; "
                                  "no image is kept")
        if flushed:
            # as CRIU: wait for the peer to close first (no TIME_WAIT here)
            if sk.recv(1):
                raise self._bad("data after PS_IOV_CLOSE")
        log.info("Session over: %d bytes of pages", self.received)


def _page_places(images_dir: str, kind: str, ident: int, depth: int = 0
                 ) -> list[tuple[int, int, str, int]]:
    """(address, n_pages, pages file, offset) runs of the pages of (kind,
    ident) in an image set, parents followed for PE_PARENT entries."""
    if depth > 64:
        raise ImageError(images_dir, "parent chain longer than 64 (a loop?)")
    try:
        pm = images.read_image(images_dir, kind, ident)
    except FileNotFoundError:
        return []
    if not pm:
        raise ImageError(images.image_path(images_dir, kind, ident), "empty pagemap (no head)")
    pages = images.image_path(images_dir, "pages", pm[0].pages_id)
    out: list[tuple[int, int, str, int]] = []
    parent: list[tuple[int, int, str, int]] | None = None
    off = 0
    for e in pm[1:]:
        f = flags_of(e)
        if f & PE_PRESENT:
            out.append((e.vaddr, e.nr_pages, pages, off))
            off += e.nr_pages * PAGE
        elif f & PE_PARENT:
            if parent is None:
                parent = _page_places(os.path.join(images_dir, "parent"), kind, ident, depth + 1)
            lo, hi = e.vaddr, e.vaddr + e.nr_pages * PAGE
            for a, n, p, o in parent:
                b = a + n * PAGE
                s, t = max(a, lo), min(b, hi)
                if s < t:
                    out.append((s, (t - s) // PAGE, p, o + (s - a)))
    out.sort()
    return out


def listen(address: str | None, port: int) -> socket.socket:
    """CRIU's setup_tcp_server(): any address when none is given; port 0
    picks one (read it with getsockname())."""
    import socket
    fam = _addr_family(address) if address else socket.AF_INET
    sk = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sk.bind((address or "0.0.0.0", port))
        sk.listen(1)
    except OSError as exc:
        sk.close()
        raise PageServerError(f"page-server: cannot listen on "
                              f"{_where(address or '0.0.0.0', port)}: "
                              f"{exc.strerror or exc}") from None
    return sk


def accept_one(lsk: socket.socket) -> socket.socket:
    """The one connection a page server takes (CRIU's run_tcp_server())."""
    try:
        sk, peer = lsk.accept()
    except OSError as exc:
        raise PageServerError(f"page-server: accept: {exc.strerror or exc}") from None
    finally:
        lsk.close()
    log.info("Accepted connection from %s", peer)
    return sk


def prepare_dir(images_dir: str, prev_images_dir: str | None) -> None:
    """The images dir, and its ``parent`` link as CRIU makes it (the path as
    given; relative: to the images dir)."""
    try:
        os.makedirs(images_dir, exist_ok=True)
    except OSError as exc:
        raise PageServerError(f"page-server: {images_dir}: {exc.strerror}") from None
    if prev_images_dir is None:
        return
    if not os.path.isdir(os.path.join(images_dir, prev_images_dir)):
        raise PageServerError(f"page-server: {prev_images_dir}: the previous images "
                              "directory does not exist (relative paths are taken from "
                              "the images directory, as criu)")
    link = os.path.join(images_dir, "parent")
    try:
        os.unlink(link)
    except FileNotFoundError:
        pass
    os.symlink(prev_images_dir, link)


__all__ = ["PageClient", "PageServer", "PageServerError", "PSI", "accept_one",
           "decode_dst", "encode_dst", "listen", "load_sent", "prepare_dir", "save_sent",
           "PS_IOV_ADD_F", "PS_IOV_CLOSE", "PS_IOV_GET", "PS_IOV_OPEN2", "PS_IOV_PARENT"]



def run_server(images_dir: str, address: str | None, port: int, *, daemon: bool = False,
               status_fd: int | None = None, pidfile: str | None = None, lazy: bool = False,
               prev_images_dir: str | None = None) -> int:
    """criu page-server: listen, take one connection, serve it, exit.

    ``daemon`` (-d): fork once listening; the parent writes ``pidfile`` and
    returns 0 at once, the child serves with its stdio on /dev/null (as
    CRIU's cr_daemon()).  ``status_fd``: a zero byte is written there once
    the server listens (CRIU's --status-fd).  ``lazy`` (--lazy-pages):
    serve PS_IOV_GET from the images already in ``images_dir``.  Returns
    the exit status; raises PageServerError (one line) on failure."""
    prepare_dir(images_dir, prev_images_dir)
    if lazy and not any(n.startswith("pagemap-") for n in os.listdir(images_dir)):
        raise PageServerError(f"page-server --lazy-pages: {images_dir}: no pagemap image "
                              "to serve pages from")
    lsk = listen(address, port)
    log.info("Starting page server on %s", _where(address or "0.0.0.0",
                                                    lsk.getsockname()[1]))
    if daemon:
        pid = os.fork()
        if pid:
            lsk.close()
            if pidfile:
                with open(pidfile, "w") as f:
                    f.write(f"{pid}\n")
            return 0
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        status = 1
        try:
            status = _serve_one(lsk, images_dir, lazy, status_fd)
        except PageServerError as exc:
            log.error("%s", exc)
        finally:
            os._exit(status)
    elif pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    return _serve_one(lsk, images_dir, lazy, status_fd)


def _serve_one(lsk: socket.socket, images_dir: str, lazy: bool, status_fd: int | None) -> int:
    if status_fd is not None:
        try:
            os.write(status_fd, b"\0")
            os.close(status_fd)
        except OSError as exc:
            raise PageServerError(f"page-server: --status-fd {status_fd}: "
                                  f"{exc.strerror}") from None
    sk = accept_one(lsk)
    try:
        PageServer(images_dir, lazy=lazy).serve(sk)
    finally:
        sk.close()
    return 0
