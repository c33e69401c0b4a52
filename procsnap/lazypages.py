"""The lazy-pages daemon (criu lazy-pages): serves the page faults of a
tree restored with ``restore --lazy-pages``, and pushes the rest.

How (as criu's uffd.c):
- It listens on ``lazy-pages.socket`` in the work directory before the
  restore starts.  The restorer connects, and for each task sends its
  (image) pid and the task's userfaultfd, on which the task's lazy VMAs
  (memory.lazy_set: private anonymous memory left empty) are registered
  for missing-page faults with the fork/remap/remove/unmap events.
- A fault is answered with UFFDIO_COPY of the page's bytes -- from the
  images' page files (mapped into the daemon, so the bytes are not
  copied through Python) or, with ``--page-server``, fetched from a page
  server with criu's PS_IOV_GET (procsnap.pagexfer; ``page-server
  --lazy-pages`` is its other end, procsnap's or criu's) -- 64 KiB around the
  fault at once; an address the images hold no bytes for (absent at the
  dump, or dropped by the program since with MADV_DONTNEED) gets the zero
  page.  Events keep the books exact: a fork gives the child's
  userfaultfd (it is served the same pages), mremap moves pages still to
  come, munmap and MADV_DONTNEED drop them.
- Once the restorer says the restore is finished, every page not faulted
  in is pushed, 4 MiB at a time, between faults; then the daemon closes
  the userfaultfds and exits 0.  The tasks end with every page.

No silent loss: a fault the daemon cannot serve (a page file unreadable,
the page server gone, the restorer gone before it finished) kills the
restored tasks; they never see a zero page where data was.  And if the
daemon itself dies (killed), a guard process it forked at start -- which
holds a copy of every userfaultfd, so faults keep waiting instead of
reading zeroes -- kills the restored tasks and their descendants.
"""
from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time
from .record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from . import pagexfer as PX
from .errors import ProcsnapError
from .kernel import consts as C
from .kernel import uffd as U
from .tasks import RestoreContext, RestoreOptions

log = logging.getLogger("procsnap.lazypages")

PAGE = C.PAGE_SIZE
FAULT_CHUNK = 64 << 10   # bytes copied around a fault
PUSH_CHUNK = 4 << 20     # bytes pushed at a time in the background
PS_TIMEOUT = 30.0        # seconds a page server may take to answer


class LazyError(ProcsnapError):
    """The daemon cannot go on; the restored tasks were killed."""


# -- the daemon's side of criu's page-server protocol (procsnap.pagexfer)

_STATUS = struct.Struct("=i")


def _pack(cmd: int, nr_pages: int = 0, vaddr: int = 0, dst: int = 0) -> bytes:
    return PX.PSI.pack(cmd, nr_pages, vaddr, dst)


def _decode_cmd(word: int) -> tuple[int, int]:
    """(command, flags)"""
    return word & PX.PS_CMD_MASK, word >> PX.PS_CMD_BITS


def _recv_exact(sk: socket.socket, n: int, into: memoryview | None = None) -> bytes:
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


def _recv_iov(sk: socket.socket) -> tuple[int, int, int, int] | None:
    """One page_server_iov (cmd word, nr_pages, vaddr, dst_id); None at a
    clean end of the stream."""
    first = sk.recv(PX.PSI.size, socket.MSG_WAITALL)
    if not first:
        return None
    if len(first) != PX.PSI.size:
        first += _recv_exact(sk, PX.PSI.size - len(first))
    return PX.PSI.unpack(first)  # type: ignore[return-value]


def _close_session(sk: socket.socket) -> int:
    """PS_IOV_CLOSE, and the server's int32 status."""
    sk.sendall(_pack(PX.PS_IOV_CLOSE))
    return int(_STATUS.unpack(_recv_exact(sk, _STATUS.size))[0])


@record
class _Task:
    pid: int                 # as the images name it
    fd: int                  # our userfaultfd
    todo: list[tuple[int, int, int]]   # (addr, size, place) still to copy, sorted
    source: int              # index into _Daemon.sources (the images' task)
    pidfd: int = -1
    faults: int = 0
    pushed: int = 0
    copied: int = 0          # bytes


@record
class _Images:
    """One task of the images: its page files mapped, its lazy pages."""
    pid: int
    files: list[str]
    runs: list[tuple[int, int, int]]   # lazy data: (addr, size, place)
    remote: bool = False
    maps: dict[int, tuple[Any, int]] = field(default_factory=dict)  # file idx -> (mmap, base)


def _lazy_data(images_dir: str, remote: bool) -> dict[int, _Images]:
    """image pid -> the pages the restorer leaves to us: every page the
    images hold (or, remote, list as on the page server) inside the VMAs
    memory.lazy_set chooses -- the restorer registers exactly those."""
    from .resources import memory
    from .restorer import _collect
    rctx = RestoreContext(os.path.abspath(images_dir), RestoreOptions(lazy_socket="-"))
    _collect(rctx, check_pids=False)
    out: dict[int, _Images] = {}
    for rt in rctx.tasks:
        if rt.zombie:
            continue
        ipid = rctx.image_pid(rt.pid)
        lazy = [(rt.mm.vmas[i].start, rt.mm.vmas[i].end)
                for i in sorted(memory.lazy_set(rctx, rt))]
        runs = memory._page_runs(rt)
        data: list[tuple[int, int, int]] = []
        for a, b in lazy:
            data += memory._clip(runs, a, b)
        if rt.lazy_only and not remote:
            a, n = rt.lazy_only[0]
            raise LazyError(f"pid {ipid}: pages at {a:#x}-{a + n:#x} are on a page server "
                            "(PE_LAZY): give --page-server --address --port")
        if remote:
            # every lazy page comes from the server (criu's remote page_read);
            # "place" is the address the server knows it by (a page moved by
            # mremap since is still asked for at its dumped address)
            only = sorted(rt.lazy_only)
            data = sorted([(a, n, a) for a, n, _ in data] + [(a, n, a) for a, n in only])
        out[ipid] = _Images(ipid, list(rt.page_files), sorted(data), remote)
    return out


def _mapped(img: _Images, idx: int) -> int:
    """Address of page file ``idx`` mapped into the daemon (private,
    never written: the page cache's pages)."""
    if idx not in img.maps:
        fd = os.open(img.files[idx], os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            m = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE,
                          prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        m.madvise(mmap.MADV_SEQUENTIAL)
        img.maps[idx] = (m, ctypes.addressof(ctypes.c_char.from_buffer(m)))
    return img.maps[idx][1]


# ------------------------------------------------------------ guard ----

def _guard(sk: socket.socket) -> None:
    """The guard (a child of the daemon): holds every userfaultfd and
    pidfd the daemon got; if the daemon goes away without saying "done",
    kills the restored tasks and their descendants.  Never returns."""
    pidfds: list[int] = []
    keep: list[int] = []
    try:
        while True:
            msg, anc, _f, _a = sk.recvmsg(16, socket.CMSG_SPACE(4 * 4))
            if msg == b"D":
                os._exit(0)
            if not msg or msg == b"K":
                break
            fds: list[int] = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += list(struct.unpack(f"{len(data) // 4}i", data[:len(data) // 4 * 4]))
            if msg == b"P":          # a pidfd, then a userfaultfd
                pidfds.append(fds[0])
                keep += fds[1:]
            else:                    # "U": a userfaultfd alone (a forked child's)
                keep += fds
    except BaseException:
        pass
    _kill_tree(pidfds)
    os._exit(0)


def _pidfd_pid(pidfd: int) -> int:
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _descendants(pid: int) -> list[str]:
    """The pids below ``pid`` (through /proc/N/task/T/children)."""
    out: list[str] = []
    todo = [str(pid)]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = f.read().split()
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(name))
    return out


def _kill_tree(pidfds: list[int]) -> None:
    """SIGKILL to the restored tasks and every descendant they forked
    since (their memory is lazy too); returns once the tasks are gone."""
    for _ in range(3):
        roots = [p for p in (_pidfd_pid(fd) for fd in pidfds) if p > 0]
        if not roots:
            break
        kids = _children_map()
        todo, seen = list(roots), set(roots)
        while todo:
            for c in kids.get(todo.pop(), []):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        for pid in seen - set(roots):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for fd in pidfds:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
        # a pidfd polls readable once its task has exited
        p = select.poll()
        for fd in pidfds:
            p.register(fd, select.POLLIN)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(p.poll(100)) < len(pidfds):
            pass


# ----------------------------------------------------------- daemon ----

class _Daemon:
    def __init__(self, images: dict[int, _Images], guard: socket.socket,
                 server: tuple[str, int] | None) -> None:
        self.images = images
        self.guard = guard
        self.tasks: dict[int, _Task] = {}     # by our uffd
        self.finished = False
        self.ps: socket.socket | None = None
        self.buf: Any = None
        if server is not None:
            # a page server that stops answering is a fault not served:
            # after PS_TIMEOUT the tree is killed, never left waiting
            self.ps = socket.create_connection(server, timeout=PS_TIMEOUT)
            self.ps.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = (ctypes.c_char * PUSH_CHUNK)()
        self.poll = select.poll()
        self._traced: dict[int, int] | None = None   # pid (any namespace) -> ours
        self.stats: dict[str, float] = {"faults": 0, "fault_bytes": 0, "pushed_bytes": 0, "zero_pages": 0,
                      "lazy_bytes": 0}
        self.t0 = time.monotonic()

    # -- the books
    def add(self, pid: int, fds: list[int], restorer: int = -1) -> None:
        if pid not in self.images:
            raise LazyError(f"the restorer sent pid {pid}, which the images do not have")
        img = self.images[pid]
        pidfd = fds[1] if len(fds) > 1 else self.pidfd_of(pid, restorer)
        t = _Task(pid, fds[0], list(img.runs), pid, pidfd)
        self.stats["lazy_bytes"] += sum(n for _, n, _ in img.runs)
        self._to_guard(b"P" if t.pidfd >= 0 else b"U",
                       [t.pidfd, t.fd] if t.pidfd >= 0 else [t.fd])
        self.tasks[t.fd] = t
        os.set_blocking(t.fd, False)
        self.poll.register(t.fd, select.POLLIN)

    def pidfd_of(self, pid: int, restorer: int) -> int:
        """A pidfd of the restored task the images call ``pid``: the
        restorer (criu's wire format) sends its userfaultfd alone, so the
        task is looked for among the ones the restorer traces (all of
        them, stopped, until the restore is finished), by its pid in any
        of its pid namespaces.  The guard needs it to kill the tree."""
        if restorer <= 0:
            raise LazyError(f"pid {pid}: cannot tell who the restorer is (SO_PEERCRED)")
        for scan in ("descendants", "all"):
            if scan == "all" or self._traced is None or pid not in self._traced:
                # the restorer's descendants first (a few reads; the whole
                # of /proc is hundreds, on the CPUs the restore runs on)
                self._traced = {}
                for name in (_descendants(restorer) if scan == "descendants"
                             else [n for n in os.listdir("/proc") if n.isdigit()]):
                    try:
                        with open(f"/proc/{name}/status") as f:
                            st = dict(ln.split(":", 1) for ln in f if ":" in ln)
                        if int(st["TracerPid"]) != restorer:
                            continue
                        for ns_pid in st["NSpid"].split():
                            self._traced.setdefault(int(ns_pid), int(name))
                    except (OSError, KeyError, ValueError):
                        continue
            real = self._traced.get(pid)
            if real is not None:
                try:
                    return os.pidfd_open(real)
                except OSError as exc:
                    raise LazyError(f"pid {pid}: pidfd_open({real}): {exc.strerror}") from None
        raise LazyError(f"pid {pid}: no task the restorer (pid {restorer}) traces has this pid")

    def _to_guard(self, what: bytes, fds: list[int]) -> None:
        try:
            if fds:
                self.guard.sendmsg([what], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             struct.pack(f"{len(fds)}i", *fds))])
            else:
                self.guard.send(what)
        except OSError:
            pass

    def drop(self, t: _Task) -> None:
        self.poll.unregister(t.fd)
        del self.tasks[t.fd]
        os.close(t.fd)
        if t.pidfd >= 0:
            os.close(t.pidfd)

    @staticmethod
    def _find(t: _Task, addr: int) -> int:
        i = bisect.bisect_right(t.todo, addr, key=lambda r: r[0]) - 1
        if i >= 0 and t.todo[i][0] <= addr < t.todo[i][0] + t.todo[i][1]:
            return i
        return -1

    @staticmethod
    def _cut(t: _Task, start: int, end: int) -> list[tuple[int, int, int]]:
        """Take [start, end) out of t.todo; returns the pieces taken."""
        out: list[tuple[int, int, int]] = []
        keep: list[tuple[int, int, int]] = []
        for a, n, p in t.todo:
            b = a + n
            if b <= start or a >= end:
                keep.append((a, n, p))
                continue
            if a < start:
                keep.append((a, start - a, p))
            if b > end:
                keep.append((end, b - end, p + end - a))
            lo, hi = max(a, start), min(b, end)
            out.append((lo, hi - lo, p + lo - a))
        t.todo = keep
        return out

    # -- copying
    def _src(self, t: _Task, addr: int, size: int, place: int) -> tuple[int, int]:
        """(our address of the bytes, how many) for ``size`` bytes at
        ``addr``: from the mapped page file, or fetched."""
        img = self.images[t.source]
        if self.ps is None:
            idx, off = place >> memory_shift(), place & ((1 << memory_shift()) - 1)
            base = _mapped(img, idx)
            if off + size > img.maps[idx][0].size():
                raise LazyError(f"{img.files[idx]}: short page file at offset {off}")
            return base + off, size
        return self._fetch(t.source, place, size)

    def _fetch(self, pid: int, addr: int, size: int) -> tuple[int, int]:
        assert self.ps is not None
        try:
            # (dst_id of a GET: the pid as is, see pagexfer)
            self.ps.sendall(_pack(PX.PS_IOV_GET, size // PAGE, addr, pid))
            head = _recv_iov(self.ps)
            if head is None:
                raise ConnectionError("the page server closed the connection")
            cmd, nr, vaddr, dst = head
            if _decode_cmd(cmd)[0] != PX.PS_IOV_ADD_F or vaddr != addr \
                    or dst != pid or nr == 0 or nr * PAGE > size:
                raise ConnectionError(f"unexpected answer {head} to PS_IOV_GET of "
                                      f"{size // PAGE} pages at {addr:#x} of pid {pid}")
            _recv_exact(self.ps, nr * PAGE, memoryview(self.buf).cast("B"))
        except OSError as exc:
            raise LazyError(f"pid {pid}: pages at {addr:#x}: page server: {exc}") from None
        return ctypes.addressof(self.buf), nr * PAGE

    def copy(self, t: _Task, pieces: list[tuple[int, int, int]], kind: str) -> bool:
        """UFFDIO_COPY the pieces; False when the task is gone.  What
        cannot be copied yet (the mm changing: EAGAIN) goes back."""
        for k, (addr, size, place) in enumerate(pieces):
            while size:
                src, n = self._src(t, addr, size, place)
                done, err = U.copy(t.fd, addr, src, n)
                done -= done % PAGE
                t.copied += done
                self.stats[kind] += done
                addr, size, place = addr + done, size - done, place + done
                if err == 0 and done == n:
                    continue
                if err:
                    self.stats[errno.errorcode.get(err, str(err))] = \
                        self.stats.get(errno.errorcode.get(err, str(err)), 0) + 1
                if err == errno.EEXIST:       # there already (a racing fault)
                    addr, size, place = addr + PAGE, size - PAGE, place + PAGE
                elif err == errno.ENOENT:     # no longer registered: unmapped
                    break
                elif err == errno.ESRCH:      # the task's memory is gone
                    return False
                elif err == errno.EAGAIN:     # mm changing: events first, then again
                    rest = [(addr, size, place)] + pieces[k + 1:]
                    t.todo = sorted(t.todo + [r for r in rest if r[1] > 0])
                    return True
                elif err:
                    raise LazyError(f"pid {t.pid}: UFFDIO_COPY at {addr:#x}: "
                                    f"{os.strerror(err)}")
        return True

    def _wake(self, t: _Task, addr: int) -> None:
        try:
            fcntl.ioctl(t.fd, U.UFFDIO_WAKE, U.RANGE.pack(addr, PAGE))
        except OSError:
            pass

    def fault(self, t: _Task, addr: int) -> bool:
        t0 = time.monotonic()
        try:
            return self._fault(t, addr)
        finally:
            # how long a faulting task waited on us (from its event read),
            # for -v: the first answer of a lazily restored tree is made of these
            took = time.monotonic() - t0
            self.stats["fault_time"] = self.stats.get("fault_time", 0.0) + took
            self.stats["fault_max"] = max(self.stats.get("fault_max", 0.0), took)
            if not self.finished:
                self.stats["faults_before_finished"] = \
                    self.stats.get("faults_before_finished", 0) + 1

    def _fault(self, t: _Task, addr: int) -> bool:
        page = addr & ~(PAGE - 1)
        self.stats["faults"] += 1
        i = self._find(t, page)
        if i < 0:
            # no bytes to come here: absent at the dump, dropped by the
            # program, or copied a moment ago (then EEXIST: wake it)
            _done, err = U.zeropage(t.fd, page, PAGE)
            if err == 0:
                self.stats["zero_pages"] += 1
            elif err == errno.ESRCH:
                return False
            elif err not in (errno.EEXIST, errno.ENOENT, errno.EAGAIN):
                raise LazyError(f"pid {t.pid}: UFFDIO_ZEROPAGE at {page:#x}: {os.strerror(err)}")
            self._wake(t, page)
            return True
        a0, n0, _ = t.todo[i]
        a = max(a0, page & ~(FAULT_CHUNK - 1))
        b = min(a0 + n0, a + FAULT_CHUNK)
        pieces = self._cut(t, a, b)
        ok = self.copy(t, pieces, "fault_bytes")
        self._wake(t, page)
        return ok

    # -- events
    def read_events(self, t: _Task) -> bool:
        """Handle what the task's userfaultfd says; False when it is gone."""
        while True:
            try:
                raw = os.read(t.fd, U.MSG_SIZE * 64)
            except BlockingIOError:
                return True
            except OSError as exc:
                log.debug("pid %d: uffd read: %s", t.pid, exc)
                return False
            if not raw:
                return False
            for off in range(0, len(raw) - U.MSG_SIZE + 1, U.MSG_SIZE):
                ev, a, b, c = U.parse_msg(raw[off:off + U.MSG_SIZE])
                if ev == U.UFFD_EVENT_PAGEFAULT:
                    if not self.fault(t, b):
                        return False
                elif ev == U.UFFD_EVENT_FORK:
                    child = a & 0xFFFFFFFF
                    self.add_child(t, child)
                elif ev == U.UFFD_EVENT_REMAP:
                    moved = self._cut(t, a, a + c)
                    t.todo = sorted(t.todo + [(x + b - a, n, p) for x, n, p in moved])
                elif ev in (U.UFFD_EVENT_REMOVE, U.UFFD_EVENT_UNMAP):
                    self._cut(t, a, b)
                else:
                    raise LazyError(f"pid {t.pid}: unknown userfaultfd event {ev:#x}")

    def add_child(self, parent: _Task, fd: int) -> None:
        """A restored task forked: its copy of the lazy memory misses the
        same pages (the ones present were copied by fork)."""
        t = _Task(parent.pid, fd, list(parent.todo), parent.source)
        self._to_guard(b"U", [fd])
        self.tasks[fd] = t
        os.set_blocking(fd, False)
        self.poll.register(fd, select.POLLIN)

    def push_some(self) -> None:
        """Copy one chunk of some task's pages nobody asked for yet."""
        for t in list(self.tasks.values()):
            if not t.todo:
                continue
            a, n, _ = t.todo[0]
            pieces = self._cut(t, a, a + min(n, PUSH_CHUNK))
            if not self.copy(t, pieces, "pushed_bytes"):
                self.drop(t)
            return

    def pending(self) -> bool:
        return any(t.todo for t in self.tasks.values())

    def kill_all(self) -> None:
        self._to_guard(b"K", [])
        _kill_tree([t.pidfd for t in self.tasks.values() if t.pidfd >= 0])


def memory_shift() -> int:
    from .resources import memory
    return memory._FILE_SHIFT


def _listen(path: str) -> socket.socket:
    from .restorer import _unix_address
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    addr, dfd = _unix_address(path)
    try:
        sk.bind(addr)
    finally:
        if dfd is not None:
            os.close(dfd)
    sk.listen(1)
    return sk


def run(images_dir: str, work_dir: str | None = None,
        page_server: tuple[str, int] | None = None) -> dict[str, float]:
    """Serve one lazy restore of ``images_dir`` to the end (see the module
    docstring).  Returns its statistics; raises LazyError (after killing
    the restored tasks) when a page cannot be served."""
    from .restorer import lazy_socket_path
    images = _lazy_data(images_dir, remote=page_server is not None)
    path = lazy_socket_path(work_dir or images_dir)
    listen = _listen(path)
    g_ours, g_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the guard
        try:
            listen.close()
            g_ours.close()
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _guard(g_theirs)
        finally:
            os._exit(0)
    g_theirs.close()
    d: _Daemon | None = None
    client: socket.socket | None = None
    restorer = -1
    try:
        d = _Daemon(images, g_ours, page_server)
        d.poll.register(listen.fileno(), select.POLLIN)
        while True:
            if d.finished and not d.pending():
                break
            timeout = 0 if d.finished else None
            ready = d.poll.poll(timeout)
            for fd, ev in ready:
                if fd == listen.fileno():
                    client, _ = listen.accept()
                    restorer = struct.unpack("3i", client.getsockopt(
                        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
                    d.poll.unregister(listen.fileno())
                    d.poll.register(client.fileno(), select.POLLIN)
                elif client is not None and fd == client.fileno():
                    try:
                        got = U.recv_uffd(client)
                    except (ConnectionError, OSError):
                        d.poll.unregister(client.fileno())
                        if not d.finished:
                            raise LazyError("the restorer closed the lazy-pages socket before "
                                            "the restore finished") from None
                        continue
                    if got is None:
                        d.finished = True
                        d.stats["restore_finished"] = time.monotonic() - d.t0
                    elif got[0] > 0:
                        d.add(got[0], got[1], restorer)
                elif fd in d.tasks:
                    t = d.tasks[fd]
                    if not d.read_events(t):
                        d.drop(t)
            if not ready and d.finished:
                d.push_some()
        d.stats["total"] = time.monotonic() - d.t0
        for t in list(d.tasks.values()):
            d.drop(t)
        d._to_guard(b"D", [])
        if d.ps is not None:
            try:
                _close_session(d.ps)
            except OSError:
                pass
        return d.stats
    except BaseException:
        if d is not None:
            d.kill_all()
        else:
            g_ours.send(b"K")
        raise
    finally:
        g_ours.close()
        listen.close()
        if client is not None:
            client.close()
        try:
            os.unlink(path)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def main(images_dir: str, work_dir: str | None, page_server: tuple[str, int] | None,
         verbose: bool = False) -> int:
    try:
        st = run(images_dir, work_dir, page_server)
    except ProcsnapError as exc:
        print(f"lazy-pages: {exc}", file=sys.stderr)
        return 1
    if verbose:
        print("lazy-pages: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in st.items()), file=sys.stderr)
    return 0
