"""Pipes (fd kind PIPE, pipes-data.img).

Both ends of a pipe carry the pipe's inode number, so ends held by
different fds or processes are matched by it; which fds share one end (one
open file description) is decided by files.py with kcmp, as for any file.

The bytes still in the pipe are saved without taking them away from the
process: a copy of the read end is obtained with pidfd_getfd and tee(2)
duplicates the buffer into a pipe of our own, which we read.  At restore
the restorer makes the pipe, sizes it (F_SETPIPE_SZ), writes the bytes
back, sets each end's flags, and each puppet takes its end with
pidfd_getfd -- the same open file descriptions, shared as before.

A pipe whose other end no task of the tree holds is one of two things:
- held outside the tree (a shell's pipe to a process we do not dump, or an
  fd in flight in a unix socket message): refused, since after restore
  nobody would hold that end -- except a container's stdio: a pipe the
  root of a container (a root in a pid namespace of its own) holds as fd
  0, 1 or 2 whose other end its runtime (Podman's conmon) holds.  Runtimes record those pipes at checkpoint and hand new ones back
  at restore as criu's --inherit-fd fd[N]:pipe:[INO].  Such a pipe is
  saved marked external (pipe_entry.external), the restore takes its end
  from that fd and refuses, naming the key, when it is not given; one
  with bytes in flight is refused at dump (they would not follow);
- held by nobody (closed everywhere; zdtm's start-up pipe, `cmd | head`
  after head exited): restored as it is, the other end closed before the
  tree runs, so a reader still reads the bytes left and then EOF, and a
  writer still gets EPIPE/SIGPIPE.
The kernel counts each end's open file descriptions (pipe->readers,
pipe->writers; dup'ed fds and pidfd_getfd copies share one) and shows
whether the count is zero through poll(2): POLLHUP on a read end when no
writer is left, POLLERR on a write end when no reader is.  That answer is
the kernel's own, so it also sees ends held in other pid namespaces, by
processes we may not look at, or in SCM_RIGHTS messages in flight -- which
scanning every /proc/*/fd of the host would miss (and racily: those
processes are not frozen).  CRIU does neither: it restores the pipe and
silently closes an end held outside.
"""
from __future__ import annotations

import fcntl
import os
import select
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fown_pb2, pipe_data_pb2, pipe_pb2
from ..kernel.libc import pidfd_getfd, syscall
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "pipe"
FDINFO = {
    "lock": fdaudit.saved("file_lock.py: filelocks.img (with --file-locks)"),
}
TYPE = fdinfo_pb2.PIPE
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
NR_TEE = 276
SPLICE_F_NONBLOCK = 2


# Bookkeeping compared by identity, without a generated repr: dataclass()
# compiles __eq__ and __repr__ at import, at every start of procsnap.
@record(eq=False, repr=False)
class _Pipe:
    """One pipe of the tree and the fds holding each end."""
    ino: int
    readers: list[tuple[int, int]] = field(default_factory=list)   # (pid, fd)
    writers: list[tuple[int, int]] = field(default_factory=list)
    first: tuple[int, int, str] = (0, 0, "")                       # for messages
    entries: list[Any] = field(default_factory=list)               # its pipe_entry messages


def matches(fd: "FdCtx") -> bool:
    return fd.link.startswith("pipe:[")


def _pipes(ctx: "DumpContext") -> dict[int, _Pipe]:
    return ctx.kind_state.setdefault(NAME, {})


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    ino = int(fd.link[len("pipe:["):-1])
    p = _pipes(fd.ctx).setdefault(ino, _Pipe(ino, first=(fd.task.pid, fd.fd, fd.link)))
    end = (fd.task.pid, fd.fd)
    acc = fd.info.flags & os.O_ACCMODE
    if acc == os.O_RDONLY:
        p.readers.append(end)
    elif acc == os.O_WRONLY:
        p.writers.append(end)
    else:
        raise Unsupported(f"pid {fd.task.pid}: fd {fd.fd}: {fd.link} is open read-write "
                          "(reopened through /proc); not supported")
    pe = pipe_pb2.pipe_entry(
        id=fid, pipe_id=ino, flags=fd.info.flags & ~os.O_CLOEXEC,
        fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0, pid_type=0, pid=0))
    fe = fdinfo_pb2.file_entry(type=TYPE, id=fid, pipe=pe)
    p.entries.append(fe.pipe)  # the entry's own copy: finish() may mark it external
    return fe


def note_shared(fd: "FdCtx", fid: int) -> None:
    """Another fd on an end we already have: still an end in the tree."""
    if fd.link.startswith("pipe:[") and fd.info is not None:
        ino = int(fd.link[len("pipe:["):-1])
        p = _pipes(fd.ctx).get(ino)
        if p is not None:
            end = (fd.task.pid, fd.fd)
            (p.readers if fd.info.flags & os.O_ACCMODE == os.O_RDONLY else p.writers).append(end)


def _peek(pid: int, fd: int) -> tuple[bytes, int]:
    """The bytes in the pipe whose read end is ``fd`` of ``pid``, unconsumed."""
    src = pidfd_getfd(pid, fd)
    try:
        return read_buffer(src)
    finally:
        os.close(src)


def _peek_via_writer(pid: int, fd: int) -> tuple[bytes, int]:
    """The bytes left in a pipe nobody reads any more (they still count
    for FIONREAD and for how much fits): tee(2) wants a read end, so open
    one for the moment through /proc -- a new open file description that
    goes away with our close, the tree being stopped meanwhile."""
    src = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return read_buffer(src)
    finally:
        os.close(src)


def read_buffer(src: int) -> tuple[bytes, int]:
    """(bytes buffered, buffer size) of the pipe ``src`` reads from, without
    taking the bytes: tee(2) duplicates them into a pipe of our own."""
    r = w = -1
    try:
        size = fcntl.fcntl(src, F_GETPIPE_SZ)
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
        try:
            n = syscall(NR_TEE, src, w, size, SPLICE_F_NONBLOCK)
        except OSError as exc:
            if exc.errno != 11:  # EAGAIN: the pipe is empty
                raise
            n = 0
        data = bytearray()
        while len(data) < n:
            data += os.read(r, n - len(data))
        return bytes(data), size
    finally:
        for x in (r, w):
            if x >= 0:
                os.close(x)


def refill(w: int, size: int | None, data: bytes, what: str) -> None:
    """Size a pipe (F_SETPIPE_SZ) and write its saved bytes back through ``w``."""
    if size:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)
    if len(data) > fcntl.fcntl(w, F_GETPIPE_SZ):
        raise RestoreError(f"{what}: {len(data)} bytes do not fit its buffer")
    view = memoryview(data)
    while view:
        view = view[os.write(w, view):]


def other_end_held(pid: int, fd: int, reader: bool) -> bool:
    """Is the other end of the pipe whose end is ``fd`` of ``pid`` still
    open anywhere?  (poll reports it; our pidfd_getfd copy is the same open
    file description, so it changes no count.)"""
    mine = pidfd_getfd(pid, fd)
    try:
        p = select.poll()
        p.register(mine, 0)  # POLLHUP and POLLERR are always reported
        revents = p.poll(0)
    finally:
        os.close(mine)
    gone = select.POLLHUP if reader else select.POLLERR
    return not (revents and revents[0][1] & gone)


def finish(ctx: "DumpContext") -> None:
    for p in _pipes(ctx).values():
        pid, fd, link = p.first
        if not p.readers or not p.writers:
            missing = "read" if not p.readers else "write"
            have = p.writers[0] if not p.readers else p.readers[0]
            if other_end_held(*have, reader=bool(p.readers)):
                _external(ctx, p, missing)
                continue
            # Closed everywhere: nothing to save; restore closes it again.
        if p.readers:
            data, size = _peek(*p.readers[0])
        else:
            data, size = _peek_via_writer(*p.writers[0])
        ctx.add_payload("pipes-data", pipe_data_pb2.pipe_data_entry(
            pipe_id=p.ino, bytes=len(data), size=size), data)


def _external(ctx: "DumpContext", p: _Pipe, missing: str) -> None:
    """A pipe whose other end is held outside the tree: a container's
    stdio (fd 0-2 of the root) is saved as external, anything else refused."""
    pid, fd, link = p.first
    root = ctx.tasks[0].pid
    ours = p.readers or p.writers
    stdio = sorted(f for t, f in ours if t == root and f <= 2)
    container = os.stat(f"/proc/{root}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    if not stdio or not container:
        raise Unsupported(f"pid {pid}: fd {fd}: {link}: its {missing} end is held "
                          "outside the dumped tree (by another process or in a "
                          "message in flight); pipes to outside processes are "
                          "not supported (only a container's stdio may be, fd 0-2 of a "
                          "root in its own pid namespace: restored with --inherit-fd "
                          f"fd[N]:pipe:[{p.ino}])")
    if p.readers:
        data, _ = _peek(*p.readers[0])
    else:
        data, _ = _peek_via_writer(*p.writers[0])
    if data:
        raise Unsupported(f"pid {root}: fd {stdio[0]}: {link}: the root's stdio pipe to "
                          f"outside the tree holds {len(data)} bytes in flight; they would "
                          "not follow the pipe the restore is given (--inherit-fd)")
    for pe in p.entries:
        pe.external = True


# ------------------------------------------------------------- restore ----

def _restorer_pipes(rctx: "RestoreContext") -> dict[int, tuple[int, int]]:
    state = rctx.kind_state.get(NAME)
    if state is None:
        state = {}
        rctx.kind_state[NAME] = state
        rctx.before_detach.append(lambda: _close_ours(rctx))
        for e in rctx.payload_entries("pipes-data"):
            state.setdefault(e.msg.pipe_id, _make_pipe(rctx, e.msg, e.payload))
    return state


def _close_ours(rctx: "RestoreContext") -> None:
    """Close the restorer's ends of every pipe before the tree runs.  The
    puppets hold theirs by now; an end nobody held at dump is thereby
    closed everywhere again, so a reader gets EOF and a writer EPIPE from
    its first call, not once the restorer exits."""
    ours = rctx.kind_state.pop(NAME + "-fds", [])
    for fd in ours:
        rctx.own_fds.remove(fd)
        os.close(fd)


def _own(rctx: "RestoreContext", *fds: int) -> None:
    rctx.own_fds += fds
    rctx.kind_state.setdefault(NAME + "-fds", []).extend(fds)


def _make_pipe(rctx: "RestoreContext", msg: Any, data: bytes) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    _own(rctx, r, w)
    refill(w, msg.size if msg.HasField("size") else None, data, f"pipe:[{msg.pipe_id}]")
    return r, w


def _inherited(rctx: "RestoreContext", rt: "RestoreTask", pe: Any) -> int:
    """The end of an external pipe (a container's stdio): the caller's fd
    given as --inherit-fd fd[N]:pipe:[INO]."""
    key = f"pipe:[{pe.pipe_id}]"
    fd = rctx.opts.inherit_fd.get(key)
    acc = pe.flags & os.O_ACCMODE
    what = "read" if acc == os.O_RDONLY else "write"
    if fd is None:
        raise RestoreError(f"pid {rt.pid}: {key}: its {what} end was held by the tree, the "
                           "other outside it (the container's stdio): give the pipe that "
                           f"stands for it with --inherit-fd fd[N]:{key}")
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        raise RestoreError(f"--inherit-fd fd[{fd}]:{key}: {exc.strerror}") from None
    if got != acc and got != os.O_RDWR:
        raise RestoreError(f"--inherit-fd fd[{fd}]:{key}: not open for {what}ing, as the "
                           f"end pid {rt.pid} held")
    fcntl.fcntl(fd, fcntl.F_SETFL, pe.flags & ~os.O_ACCMODE & ~os.O_ASYNC)
    return rt.grab_fd(os.getpid(), fd)


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    pe = entry.pipe
    if pe.HasField("external") and pe.external:
        return _inherited(rctx, rt, pe)
    ends = _restorer_pipes(rctx)
    if pe.pipe_id not in ends:
        # No data entry: an empty pipe (CRIU writes none for those).
        ends[pe.pipe_id] = _make_pipe(rctx, pipe_data_pb2.pipe_data_entry(
            pipe_id=pe.pipe_id, bytes=0), b"")
    r, w = ends[pe.pipe_id]
    acc = pe.flags & os.O_ACCMODE
    mine = r if acc == os.O_RDONLY else w
    used = rctx.kind_state.setdefault(NAME + "-used", set())
    if (pe.pipe_id, acc) in used:
        # A second open file description of this end (opened again through
        # /proc/PID/fd): open ours again the same way, so its status flags
        # are its own and not those of the first.
        mine = os.open(f"/proc/self/fd/{mine}", acc | os.O_NONBLOCK | os.O_CLOEXEC)
        _own(rctx, mine)
    used.add((pe.pipe_id, acc))
    # Status flags (O_NONBLOCK) belong to the open file description: set
    # them on ours before the puppet takes it.  O_ASYNC is set by the task
    # itself (fown.py), so SIGIO carries its own fd number.
    fcntl.fcntl(mine, fcntl.F_SETFL, pe.flags & ~os.O_ACCMODE & ~os.O_ASYNC)
    return rt.grab_fd(os.getpid(), mine)
