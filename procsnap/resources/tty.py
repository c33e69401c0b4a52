"""Terminals (fd kind TTY; tty-info.img, tty-data.img): pseudo-terminal
pairs held in the tree, /dev/tty, controlling terminals, and the terminal
of a shell job.

Saved, as CRIU's images (tty_info_entry once per side of a pty,
tty_file_entry per open file description, tty_data_entry per side with
bytes queued for reading on it):

- a pty pair whose master is in the tree (tmux, screen, sshd, expect):
  both ends, the index (the restore opens /dev/ptmx until the kernel
  hands out the same index, and fails if another process has it), the
  termios (TCGETS2, with the speeds), the locked termios, the window size,
  packet mode, the lock (TIOCGPTLCK), exclusive mode of each side, the pts
  node's owner and permission bits, and whether the slave was opened and
  closed again (the master then reads EIO);
- the bytes queued in both directions.  A tty cannot be read without
  consuming, so they are read out of our pidfd_getfd copies (O_NONBLOCK
  set for the read on the shared description and put back), and put back
  -- into the tree at restore, into the same pty when the tree runs on --
  with TIOCSTI on the reading side: synchronous, no echo, no signals (the
  slave's input flags and local modes other than ICANON are off while it
  is done).  Input of a slave in canonical mode, complete lines and a
  partial one, is read by turning ICANON off for the read, and queued
  back in canonical mode, editing characters (literals, typed after ^V)
  after VLNEXT; refused when it holds a NUL (the kernel's mark of an end
  of file typed, or a literal NUL: they cannot be told apart -- put back
  as an end of file when the tree runs on) or when VLNEXT is disabled
  and an editing character is queued.  A '\n' or VEOL/VEOL2 queued is
  taken as the line end it normally is.
  A master in packet mode with a status byte pending (POLLPRI) is refused.
- each session's controlling terminal: the session leader takes it with
  TIOCSCTTY right after its setsid, before it forks the tasks that
  inherit it; the foreground process group (TIOCSPGRP) once every group
  exists.  /dev/tty is reopened by the task, on its controlling terminal.
- a pts whose master is gone (hung up, its node deleted): a pair is made
  with the index, the slave files are opened and the master closed again.

A terminal whose other end is outside the tree, as criu saves it:

- named with criu's ``--external tty[RDEV:DEV]`` (LXC's console: a pts of
  the host whose master LXC's monitor holds): CRIU's EXT_TTY -- termios,
  locked termios, window size, exclusive mode, the node's owner, the
  session it controls and its foreground group, the input typed and not
  read yet; at restore the fd given with ``--inherit-fd
  fd[N]:tty[RDEV:DEV]`` takes its place (every file of it is that one
  open file description, its session leader takes it with TIOCSCTTY);
- with criu's ``--orphan-pts-master`` (runc's terminal: runc sends it in
  every RPC request): a pts whose master is outside, of the host's
  devpts or of the task's own /dev/pts (a container's instance, which its
  mount namespace brings back new): saved as the slave with the same
  state; at restore a new pair is made at its index in the tree's
  /dev/pts (a bind of the pts, runc's /dev/console, made it already:
  namespaces/mnt.py), the slave is the tree's, the master goes to the
  caller with the orphan-pts-master action (criu's RPC: SCM_RIGHTS).
  On criu's command line it is refused (nobody to take the master).
The tree's output not yet read by the outside end stays in the old pty,
whose master the outside holder keeps.

/dev/console and the virtual consoles are the host's devices, their state
shared with everything outside the tree (as a regular file's contents):
the fd is reopened by its path (a REG entry, opened O_NOCTTY); a VT in
VT_PROCESS mode (it signals its owning process on switches) is refused.

A tree with a mount namespace of its own (a container, zdtm.py's ns
flavour) has its own devpts on its /dev/pts: its ptys are dumped from the
devpts the tree sees, and made again in the new one once the mount tree is
built (a pts bound elsewhere, as on /dev/console, is made with the mount
tree: namespaces.mnt).

Refused, one line naming pid and fd: other terminal drivers (serial,
legacy BSD ptys); a pts of a devpts instance other than the one on the
tree's /dev/pts (but an orphan pts, above); a pty one of whose ends is open outside the tree (found by a scan
of /proc); a master whose slave was never opened (input queued for the
slave cannot be read without opening it, which changes the pair); a task
whose controlling terminal is outside the tree or which lost the
controlling terminal its session has; with --orphan-pts-master, a task
whose controlling terminal is a pts at the orphan's index of another devpts
instance, or cannot be told from it (stat's tty_nr is the index only; the
task's own TIOCGSID on its fd of the orphan tells); an --external terminal restored
without the fd that stands for it.  With --shell-job a pts whose master
is outside the tree (the user's terminal) is the job's terminal: at
restore the fds get the restoring shell's terminal, as criu does.

Not saved, and why it cannot be lost silently: the ldisc's own bookkeeping
of canonical editing (the echo column, a pending ^V) exists only in the
kernel and is reset by any termios change; output stopped by ^S
(flow.stopped) has no ioctl to read it.  Both are transient states of
interactive typing.

The restore check (verify) compares each tty fd's open flags; termios,
window size, index, lock, packet and exclusive modes are read back and
compared here right after they are set, before any task runs.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import stat as st_mod
import struct
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from ..errors import ImageError, RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, fown_pb2, tty_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.libc import pidfd_getfd
from . import fdaudit, regfile

if TYPE_CHECKING:
    from ..tasks import DumpContext, FdCtx, RestoreContext, RestoreTask

NAME = "tty"
FDINFO = {
    "tty-index": fdaudit.saved("the pty's index: the pair is restored with it"),
}
TYPE = fdinfo_pb2.TTY
PTS_MAJORS = range(136, 144)
TTY_MAJORS = (3, 4, 5, 204) + tuple(PTS_MAJORS)
PTMX = (5, 2)

_T2 = struct.Struct("<4IB19s2I")   # struct termios2 (TCGETS2/TCSETS2)
_T1 = struct.Struct("<4IB19s")     # struct termios (TIOCGLCKTRMIOS)
_WS = struct.Struct("<4H")
_INT = struct.Struct("i")
NCCS = 19
VINTR, VQUIT, VERASE, VKILL, VEOF, VTIME, VMIN = 0, 1, 2, 3, 4, 5, 6
VEOL, VREPRINT, VWERASE, VLNEXT, VEOL2 = 11, 12, 14, 15, 16
ICANON = 0o2
IEXTEN = 0o100000
EXTPROC = 0o200000


# ------------------------------------------------------------ helpers ----

def _ioctl_int(fd: int, req: int, value: int | None = None) -> int:
    if value is None:
        return int(_INT.unpack(fcntl.ioctl(fd, req, b"\0" * 4))[0])
    fcntl.ioctl(fd, req, _INT.pack(value))
    return 0


def get_termios(fd: int) -> Any:
    raw = fcntl.ioctl(fd, C.TCGETS2, b"\0" * _T2.size)
    i, o, c, lf, line, cc, isp, osp = _T2.unpack(raw)
    return tty_pb2.termios_entry(c_iflag=i, c_oflag=o, c_cflag=c, c_lflag=lf, c_line=line,
                                 c_ispeed=isp, c_ospeed=osp, c_cc=list(cc))


def set_termios(fd: int, t: Any) -> None:
    fcntl.ioctl(fd, C.TCSETS2, _T2.pack(t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_line,
                                        bytes(list(t.c_cc)[:NCCS]).ljust(NCCS, b"\0"),
                                        t.c_ispeed, t.c_ospeed))


def _get_locked(fd: int) -> Any:
    raw = fcntl.ioctl(fd, C.TIOCGLCKTRMIOS, b"\0" * _T1.size)
    i, o, c, lf, line, cc = _T1.unpack(raw)
    return tty_pb2.termios_entry(c_iflag=i, c_oflag=o, c_cflag=c, c_lflag=lf, c_line=line,
                                 c_ispeed=0, c_ospeed=0, c_cc=list(cc))


def _set_locked(fd: int, t: Any) -> None:
    fcntl.ioctl(fd, C.TIOCSLCKTRMIOS, _T1.pack(t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag,
                                               t.c_line,
                                               bytes(list(t.c_cc)[:NCCS]).ljust(NCCS, b"\0")))


def get_winsize(fd: int) -> Any:
    r, c, x, y = _WS.unpack(fcntl.ioctl(fd, C.TIOCGWINSZ, b"\0" * _WS.size))
    return tty_pb2.winsize_entry(ws_row=r, ws_col=c, ws_xpixel=x, ws_ypixel=y)


def _same_termios(a: Any, b: Any) -> bool:
    return (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_line, list(a.c_cc)) == \
        (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_line, list(b.c_cc))


def _pts_dev(index: int) -> int:
    return os.makedev(136 + index // 256, index % 256)


def _index_of(rdev: int) -> int:
    return (os.major(rdev) - 136) * 256 + os.minor(rdev)


def _tty_nr_dev(tty_nr: int) -> tuple[int, int]:
    """/proc/PID/stat's tty_nr (new_encode_dev) as (major, minor)."""
    return (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)


def _devpts_dev(prefix: str = "") -> int:
    """The devpts instance on /dev/pts as the tree sees it (``prefix``:
    regfile.name_prefix: a tree in its own mount namespace has its own,
    as zdtm.py's ns flavour and containers mount one)."""
    return os.stat(prefix + "/dev/pts/ptmx").st_dev


def _polled(fd: int) -> int:
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLPRI | select.POLLHUP)
    ev = p.poll(0)
    return ev[0][1] if ev else 0


def _drain(fd: int, packet: bool = False) -> bytes:
    """Read what is queued on ``fd`` (our copy) without blocking: O_NONBLOCK
    is set on the shared description for the read and put back."""
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EIO):
                    break
                raise
            if not chunk:
                break
            # packet mode: every read starts with a status byte (0: data)
            out += chunk[1:] if packet else chunk
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, fl)
    return out


def inject_input(fd: int, data: bytes, saved: Any | None) -> None:
    """Queue ``data`` for reading on the tty of ``fd`` exactly: TIOCSTI
    hands each byte to the line discipline synchronously.  For a slave
    (``saved`` its termios) the input flags and the local modes are off
    meanwhile -- no echo, no signals, no translation -- but ICANON and
    EXTPROC (changing them resets the line state).  In canonical mode
    IEXTEN is on and an editing character is sent after VLNEXT, so it is
    queued as the literal it was; a NUL is the end-of-file mark canonical
    mode queues for VEOF, and is sent as VEOF."""
    if not data:
        return
    seq: list[int] = list(data)
    if saved is not None:
        t = tty_pb2.termios_entry()
        t.CopyFrom(saved)
        t.c_iflag = 0
        t.c_lflag = saved.c_lflag & (ICANON | EXTPROC)
        if saved.c_lflag & ICANON:
            cc = list(saved.c_cc)
            t.c_lflag |= IEXTEN
            escape = _canon_edit(saved)
            seq = []
            for b in data:
                if b == 0:
                    seq.append(cc[VEOF])
                elif b in escape:
                    seq += [cc[VLNEXT], b]
                else:
                    seq.append(b)
        set_termios(fd, t)
    try:
        for b in seq:
            fcntl.ioctl(fd, C.TIOCSTI, bytes([b]))
    finally:
        if saved is not None:
            set_termios(fd, saved)


def _canon_edit(t: Any) -> set[int]:
    """The characters canonical mode (with IEXTEN) acts on rather than
    queues: they are in the queue only as literals typed after VLNEXT."""
    cc = list(t.c_cc)
    return {cc[i] for i in (VERASE, VKILL, VEOF, VWERASE, VREPRINT, VLNEXT)} - {0}


# ---------------------------------------------------------------- dump ----

# Bookkeeping compared by identity, without a generated repr: dataclass()
# compiles __eq__ and __repr__ at import, at every start of procsnap.
@record(eq=False, repr=False)
class _Side:
    """One end of a pty pair as first seen in the tree."""
    info_id: int
    holder: tuple[int, int, str]      # (pid, fd, link) first seen, for messages
    copy: int                         # our pidfd_getfd copy (the same description)
    st: os.stat_result
    hung: bool = False


@record(eq=False, repr=False)
class _Pair:
    """A pty pair of the tree, by index."""
    index: int
    master: _Side | None = None
    slave: _Side | None = None


@record(eq=False, repr=False)
class _DumpState:
    """The terminals met during one dump."""
    pairs: dict[int, _Pair] = field(default_factory=dict)
    copies: list[int] = field(default_factory=list)
    ctty_info: int | None = None
    ctty_holders: list[tuple[int, int]] = field(default_factory=list)
    writeback: list[Callable[[], None]] = field(default_factory=list)
    vts: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # rdev -> (pid, fd, fid)
    ext: dict[int, Any] = field(default_factory=dict)   # rdev -> tty_info_entry (EXT_TTY)
    ext_copy: dict[int, tuple[int, str]] = field(default_factory=dict)  # rdev -> (our copy, where)
    orphans: dict[int, Any] = field(default_factory=dict)  # index -> info (--orphan-pts-master)


def _state(ctx: "DumpContext") -> _DumpState:
    st = ctx.kind_state.get("tty")
    if st is None:
        st = ctx.kind_state["tty"] = _DumpState()

        def cleanup(killed: bool) -> None:
            if not killed:
                for put_back in st.writeback:   # the tree runs on: its bytes go back
                    put_back()
            for c in st.copies:
                os.close(c)
            st.copies.clear()
        ctx.cleanups.append(cleanup)
    return st


def matches(fd: "FdCtx") -> bool:
    st = fd.st
    return st is not None and st_mod.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in TTY_MAJORS


VT_GETMODE = 0x5601
VT_PROCESS = 1


def _console(fd: "FdCtx", fid: int, where: str, major: int, minor: int) -> Any:
    """/dev/console and the virtual consoles (zdtm console, vt): the device
    and its state (termios, keyboard and display modes, input typed) are
    the host's, shared with everything outside the tree, as a regular
    file's contents are: the fd is reopened by its path (a REG entry,
    regfile.py, with O_NOCTTY so that opening it makes it nobody's
    controlling terminal; the dumped tree's own is checked by _check_ctty).
    What the task itself set up is refused: a VT in VT_PROCESS mode
    signals its owning process on every console switch, and the kernel
    keeps that process, which a restore cannot hand over."""
    what = "the system console (5:1)" if major == 5 else f"a virtual console (4:{minor})"
    copy = pidfd_getfd(fd.task.pid, fd.fd)
    try:
        mode = fcntl.ioctl(copy, VT_GETMODE, bytes(8))
    except OSError:
        mode = bytes(8)   # not a VT behind it (a serial console): no such mode
    finally:
        os.close(copy)
    if mode[0] == VT_PROCESS:
        raise Unsupported(f"{where}: {what} in VT_PROCESS mode (VT_SETMODE): the kernel "
                          "signals its owning process on console switches, which a restore "
                          "cannot hand over")
    assert fd.st is not None
    _state(fd.ctx).vts.setdefault(fd.st.st_rdev, (fd.task.pid, fd.fd, fid))
    return regfile.dump(fd, fid)


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.st is not None and fd.info is not None
    task, ctx = fd.task, fd.ctx
    rdev = fd.st.st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    where = f"pid {task.pid}: fd {fd.fd}: {fd.link}"
    if (major, minor) == (5, 1) or (major == 4 and minor < 64):
        return _console(fd, fid, where, major, minor)
    state = _state(ctx)
    flags = fd.info.flags & ~os.O_CLOEXEC
    if (major, minor) == (5, 0):
        # /dev/tty: reopened at restore on the task's controlling terminal
        if state.ctty_info is None:
            state.ctty_info = ctx.new_file_id()
            ctx.shared_image("tty-info").append(tty_pb2.tty_info_entry(
                id=state.ctty_info, type=tty_pb2.CTTY, locked=False, exclusive=False,
                packet_mode=False, sid=0, pgrp=0, rdev=rdev))
        state.ctty_holders.append((task.pid, fd.fd))
        return _file_entry(fid, state.ctty_info, flags)
    if f"tty[{rdev:x}:{fd.st.st_dev:x}]" in getattr(ctx.opts, "external", ()):
        return _dump_external(fd, fid, flags)
    master = (major, minor) == PTMX
    if not master and major not in PTS_MAJORS:
        raise Unsupported(f"{where}: a terminal ({major}:{minor}) of a driver procsnap does "
                          "not save (only pseudo-terminals of /dev/pts)")
    copy = pidfd_getfd(task.pid, fd.fd)
    state.copies.append(copy)
    if master:
        index = _ioctl_int(copy, C.TIOCGPTN)
        if (fd.st.st_dev, fd.st.st_ino) not in _ptmx_nodes(regfile.name_prefix(task)):
            raise Unsupported(f"{where}: a pty master of another devpts instance; only "
                              "/dev/ptmx and /dev/pts/ptmx of the task's /dev are supported")
    else:
        index = _index_of(rdev)
        if (fd.st.st_dev != _devpts_dev(regfile.name_prefix(task))
                and not _own_devpts(fd, index)):
            raise Unsupported(f"{where}: a pts of another devpts instance; only the one "
                              "mounted on the task's /dev/pts is supported"
                              + ("" if ctx.opts.orphan_pts_master else
                                 " (or, with --orphan-pts-master, the task's own /dev/pts)"))
    pair = state.pairs.setdefault(index, _Pair(index))
    side = pair.master if master else pair.slave
    if side is None:
        side = _Side(ctx.new_file_id(), (task.pid, fd.fd, fd.link), copy, fd.st)
        if not master:
            try:
                get_termios(copy)
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                side.hung = True  # its master closed: the slave is hung up
        if master:
            pair.master = side
        else:
            pair.slave = side
    elif master and side.st.st_ino != fd.st.st_ino:
        raise Unsupported(f"{where}: two pty masters with index {index} (another devpts "
                          "instance): not supported")
    elif side.st.st_dev != fd.st.st_dev:
        raise Unsupported(f"{where}: two pts with index {index} of two devpts instances "
                          f"(this one and pid {side.holder[0]}'s fd {side.holder[1]}): not "
                          "supported")
    return _file_entry(fid, side.info_id, flags)


def _own_devpts(fd: "FdCtx", index: int) -> bool:
    """With --orphan-pts-master (runc's terminal): is this pts one of the
    devpts instance the task has on its own /dev/pts (a container's, which
    its mount namespace brings back as a new instance), named by that
    path?  Its master is outside the tree; the restore makes a new pair
    there, at its index (opening /dev/pts/ptmx in the restored tree)."""
    if not fd.ctx.opts.orphan_pts_master or fd.link != f"/dev/pts/{index}":
        return False
    assert fd.st is not None
    try:
        own = os.stat(f"/proc/{fd.task.pid}/root/dev/pts/ptmx")
    except OSError:
        return False
    return own.st_dev == fd.st.st_dev and os.major(own.st_rdev) == 5


def _dump_external(fd: "FdCtx", fid: int, flags: int) -> Any:
    """A terminal named with criu's ``--external tty[RDEV:DEV]`` (LXC's
    console: a pts of the host whose master LXC's monitor holds): saved as
    CRIU's EXT_TTY -- its termios, locked termios, window size, owner,
    exclusive mode, and (_check_ctty) the session it is the controlling
    terminal of with its foreground group; at restore the fd given with
    ``--inherit-fd fd[N]:tty[RDEV:DEV]`` takes its place.  Its queued bytes
    belong to the other end, outside the tree (criu does not read them
    either: a tty read consumes)."""
    assert fd.st is not None
    state = _state(fd.ctx)
    rdev = fd.st.st_rdev
    info = state.ext.get(rdev)
    if info is None:
        copy = pidfd_getfd(fd.task.pid, fd.fd)
        state.copies.append(copy)
        state.ext_copy[rdev] = (copy, f"pid {fd.task.pid}: fd {fd.fd}: {fd.link}")
        info = tty_pb2.tty_info_entry(
            id=fd.ctx.new_file_id(), type=tty_pb2.EXT_TTY, locked=False,
            exclusive=bool(_ioctl_int(copy, C.TIOCGEXCL)), packet_mode=False,
            sid=0, pgrp=0, rdev=rdev, dev=fd.st.st_dev, uid=fd.st.st_uid,
            gid=fd.st.st_gid)
        info.termios.CopyFrom(get_termios(copy))
        info.termios_locked.CopyFrom(_get_locked(copy))
        info.winsize.CopyFrom(get_winsize(copy))
        state.ext[rdev] = info
        fd.ctx.shared_image("tty-info").append(info)
    return _file_entry(fid, info.id, flags)


def _ptmx_nodes(prefix: str = "") -> set[tuple[int, int]]:
    """(dev, ino) of the ptmx nodes that open a pty of /dev/pts (as the
    tree sees them: ``prefix`` as for _devpts_dev)."""
    out = set()
    for path in ("/dev/ptmx", "/dev/pts/ptmx"):
        try:
            st = os.stat(prefix + path)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def _file_entry(fid: int, info_id: int, flags: int) -> Any:
    return fdinfo_pb2.file_entry(
        type=fdinfo_pb2.TTY, id=fid,
        tty=tty_pb2.tty_file_entry(id=fid, tty_info_id=info_id, flags=flags,
                                   fown=fown_pb2.fown_entry(uid=0, euid=0, signum=0,
                                                            pid_type=0, pid=0)))


def _outside_holders(ctx: "DumpContext", pairs: dict[int, _Pair]) -> dict[int, tuple[int, int]]:
    """index -> (pid, fd) of a process outside the tree holding either end
    of a pty of the tree: restored apart, it would lose its terminal."""
    ours = {t.pid for t in ctx.tasks} | {os.getpid()}
    devpts = _devpts_dev(regfile.name_prefix(ctx.tasks[0]))
    found: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in ours:
            continue
        pid = int(name)
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for f in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{f}")
            except OSError:
                continue
            if not st_mod.S_ISCHR(st.st_mode):
                continue
            if os.major(st.st_rdev) in PTS_MAJORS and st.st_dev == devpts:
                index = _index_of(st.st_rdev)
            elif (os.major(st.st_rdev), os.minor(st.st_rdev)) == PTMX:
                try:
                    with open(f"/proc/{pid}/fdinfo/{f}") as fi:
                        line = next((ln for ln in fi if ln.startswith("tty-index:")), None)
                except OSError:
                    continue
                if line is None:
                    continue
                index = int(line.split()[1])
                pair = pairs.get(index)
                # the same master (a devpts index is unique per instance;
                # every instance's ptmx is its inode 2)
                if pair is None or pair.master is None or \
                        (pair.master.st.st_dev, pair.master.st.st_ino) != (st.st_dev, st.st_ino):
                    continue
            else:
                continue
            if index in pairs:
                found.setdefault(index, (pid, int(f)))
    return found


def finish(ctx: "DumpContext") -> None:
    """Once every fd is seen: pair the ends, read each pair's state and
    queued bytes, and settle each task's controlling terminal."""
    state = ctx.kind_state.get("tty")
    pairs = state.pairs if state is not None else {}
    infos = ctx.shared_image("tty-info") if pairs else []
    if state is not None:
        for rdev, ext in state.ext.items():
            # what the outside end typed and the tree has not read yet
            copy, where = state.ext_copy[rdev]
            _dump_input(ctx, state, ext.id, copy, ext.termios, where)
    inside = {i: p for i, p in pairs.items() if p.master is not None}
    outside = _outside_holders(ctx, inside) if inside else {}
    for index in sorted(pairs):
        assert state is not None
        pair = pairs[index]
        m, s = pair.master, pair.slave
        if m is None:
            assert s is not None
            pid, fd, link = s.holder
            if s.hung:
                infos.append(_info(s, index, sid=0, pgrp=0))   # no termios: hung up (as CRIU)
                continue
            if not ctx.opts.shell_job and not ctx.opts.orphan_pts_master:
                if s.st.st_dev != _devpts_dev():
                    # a container's terminal (its own devpts; the master is
                    # the runtime's): the shell's terminal cannot stand in
                    raise Unsupported(f"pid {pid}: fd {fd}: terminal {link}: a pts of the "
                                      "tree's own devpts whose master is outside the dumped "
                                      "tree (a container's terminal): criu's "
                                      "--orphan-pts-master, as runc asks over criu's RPC, "
                                      "hands a new master to the caller")
                raise Unsupported(f"pid {pid}: fd {fd}: terminal {link}: its master is outside "
                                  "the dumped tree; use --shell-job to dump a process attached "
                                  "to a terminal")
            # the shell job's terminal (restored as the restoring shell's),
            # or criu's orphan pts (restored with a new master for the
            # caller): its state as criu saves it; _check_ctty sets the
            # session it controls
            info = _info(s, index, sid=0, pgrp=0)
            info.termios.CopyFrom(get_termios(s.copy))
            if ctx.opts.orphan_pts_master:
                info.termios_locked.CopyFrom(_get_locked(s.copy))
                info.winsize.CopyFrom(get_winsize(s.copy))
                info.exclusive = bool(_ioctl_int(s.copy, C.TIOCGEXCL))
                state.orphans[index] = info
                # what the outside end typed and the tree has not read yet
                # (the tree's output is the outside end's to read, on the
                # master it keeps)
                _dump_input(ctx, state, s.info_id, s.copy, info.termios,
                            f"pid {pid}: fd {fd}: terminal {link}")
            infos.append(info)
            continue
        mpid, mfd, mlink = m.holder
        where = f"pid {mpid}: fd {mfd}: pty master {mlink} (index {index})"
        if index in outside:
            opid, ofd = outside[index]
            raise Unsupported(f"{where}: the pty is also open in pid {opid} (fd {ofd}) outside "
                              "the dumped tree; restored apart it would lose it")
        slave_fd = s.copy if s is not None else None
        if s is None:
            if not _polled(m.copy) & select.POLLHUP:
                raise Unsupported(f"{where}: its slave was never opened; input queued for the "
                                  "slave cannot be read without opening it, which changes "
                                  "the pair")
            # The slave was opened and closed again (the master reads EIO):
            # ours, opened and closed again, reads its input and keeps that.
            slave_fd = fcntl.ioctl(m.copy, C.TIOCGPTPEER,
                                   os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            state.copies.append(slave_fd)
            sst = os.fstat(slave_fd)
            s = pair.slave = _Side(ctx.new_file_id(), (mpid, mfd, mlink), slave_fd, sst)
        try:
            sid = _ioctl_int(m.copy, C.TIOCGSID)
        except OSError:
            sid = 0
        pgrp = 0
        if sid:
            try:
                pgrp = _ioctl_int(m.copy, C.TIOCGPGRP)
            except OSError:
                pgrp = 0
        termios = get_termios(m.copy)   # a master's TCGETS is its slave's
        for side, is_master in ((m, True), (s, False)):
            info = _info(side, index, sid=sid, pgrp=pgrp)
            info.termios.CopyFrom(termios)
            info.termios_locked.CopyFrom(_get_locked(m.copy))
            info.winsize.CopyFrom(get_winsize(m.copy))
            info.locked = bool(_ioctl_int(m.copy, C.TIOCGPTLCK))
            info.packet_mode = bool(_ioctl_int(m.copy, C.TIOCGPKT))
            info.exclusive = bool(_ioctl_int(side.copy, C.TIOCGEXCL))
            infos.append(info)
        _dump_queues(ctx, state, pair, termios, slave_fd, where)
    _check_ctty(ctx, pairs)


def _info(side: _Side, index: int, sid: int, pgrp: int) -> Any:
    st = side.st
    info = tty_pb2.tty_info_entry(id=side.info_id, type=tty_pb2.PTY, locked=False,
                                  exclusive=False, packet_mode=False, sid=sid, pgrp=pgrp,
                                  rdev=st.st_rdev, dev=st.st_dev, uid=st.st_uid,
                                  gid=st.st_gid)
    info.pty.index = index
    if os.major(st.st_rdev) in PTS_MAJORS:
        info.mode = st_mod.S_IMODE(st.st_mode)
    return info


def _dump_queues(ctx: "DumpContext", state: _DumpState, pair: _Pair, termios: Any,
                 slave_fd: int | None, where: str) -> None:
    m, s = pair.master, pair.slave
    assert m is not None and s is not None and slave_fd is not None
    packet = bool(_ioctl_int(m.copy, C.TIOCGPKT))
    if packet and _polled(m.copy) & select.POLLPRI:
        raise Unsupported(f"{where}: packet mode with a status byte pending for the master "
                          "(TIOCPKT_FLUSH*/STOP/START): not saved")
    # The slave's output, readable on the master.
    out = _drain(m.copy, packet)
    if out:
        mcopy = m.copy
        state.writeback.append(lambda: inject_input(mcopy, out, None))
        ctx.add_shared("tty-data", tty_pb2.tty_data_entry(tty_id=m.info_id, data=out))
    _dump_input(ctx, state, s.info_id, slave_fd, termios, where)


def _dump_input(ctx: "DumpContext", state: _DumpState, info_id: int, slave_fd: int,
                termios: Any, where: str) -> None:
    """The bytes queued for reading on a slave (our copy ``slave_fd``),
    saved for tty ``info_id`` and put back if the tree runs on."""
    # In canonical mode, complete lines and a partial one are all readable
    # once ICANON is off.
    canon = bool(termios.c_lflag & ICANON)
    if canon:
        raw = tty_pb2.termios_entry()
        raw.CopyFrom(termios)
        raw.c_lflag &= ~ICANON
        set_termios(slave_fd, raw)
        try:
            inp = _drain(slave_fd)
        finally:
            set_termios(slave_fd, termios)   # empty now: no line state to keep
    else:
        inp = _drain(slave_fd)
    if inp:
        state.writeback.append(lambda: inject_input(slave_fd, inp, termios))
        if canon and 0 in inp:
            raise Unsupported(f"{where}: {len(inp)} bytes of input queued in canonical mode "
                              "hold a NUL: an end of file typed (VEOF) or a literal NUL, which "
                              "cannot be told apart")
        if canon and set(inp) & _canon_edit(termios) and not list(termios.c_cc)[VLNEXT]:
            raise Unsupported(f"{where}: input queued in canonical mode holds an editing "
                              "character and VLNEXT is disabled: it cannot be queued back as "
                              "the literal it is")
        ctx.add_shared("tty-data", tty_pb2.tty_data_entry(tty_id=info_id, data=inp))


def _ctty_is(task: Any, info: Any) -> bool:
    """Whether ``task``'s controlling terminal is the pts of ``info`` (an
    orphan pts the tree holds) and not the pts at the same index of another
    devpts instance: /proc/PID/stat's tty_nr is the index only.  The
    kernel answers TIOCGSID on a slave only to a task whose controlling
    terminal it is: asked in the task on its own fd of the pts.  A task
    holding none (it closed them) can be told only when no other instance
    we see (ours, the task's /dev/pts) has a pts at that index."""
    pid = task.pid
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for name in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_rdev, st.st_dev) != (info.rdev, info.dev):
            continue
        inj = task.need_inj()
        try:
            inj.call("ioctl", int(name), C.TIOCGSID, inj.put(bytes(4), align=4))
        except InjectError as exc:
            if exc.errno == errno.ENOTTY:
                return False  # a pts of its that is not its terminal
            raise
        finally:
            inj.reset_scratch()
        return True
    for d in ("/dev/pts", f"/proc/{pid}/root/dev/pts"):
        try:
            st = os.stat(f"{d}/{info.pty.index}")
        except OSError:
            continue
        if st.st_rdev == info.rdev and st.st_dev != info.dev:
            return False
    return True


def _slave_attrs(fd: int, s: Any) -> None:
    """The slave side's exclusive mode and its pts node's owner and mode,
    as the image has them."""
    if s.exclusive:
        fcntl.ioctl(fd, C.TIOCEXCL)
    if s.HasField("uid"):
        os.fchown(fd, s.uid, s.gid)
    if s.HasField("mode"):
        os.fchmod(fd, s.mode)


def _claim(task: Any, st: Any, pids: set[int], info: Any, name: str) -> None:
    """A terminal whose other end is outside the tree (an --external one,
    an orphan pts) is the controlling terminal of ``task``'s session: its
    leader takes it again at restore and sets the foreground group (stat's
    tpgid: TIOCGPGRP answers only the terminal's own session).  One
    session per terminal, led from inside the tree."""
    if st.session not in pids:
        raise Unsupported(f"pid {task.pid}: its controlling terminal, {name}, belongs "
                          f"to session {st.session}, whose leader is outside the dumped tree")
    if info.sid and info.sid != st.session:
        raise Unsupported(f"pid {task.pid}: its controlling terminal, {name}, is "
                          f"session {info.sid}'s too: not supported")
    info.sid, info.pgrp = st.session, max(st.tpgid, 0)


def _vt_ctty(ctx: "DumpContext", task: Any, st: Any, rdev: int, pids: set[int],
             infos: dict[int, Any]) -> None:
    """A virtual console as controlling terminal (zdtm vt: a session leader
    opened it without O_NOCTTY): kept when the terminal's session is the
    task's, its leader is in the tree and a task of the tree holds an fd
    of it (reopened by path; the leader takes it again with TIOCSCTTY and
    sets its foreground group)."""
    name = f"virtual console 4:{os.minor(rdev)}"
    holder = _state(ctx).vts.get(rdev)
    if holder is None:
        raise Unsupported(f"pid {task.pid}: its controlling terminal, {name}, is held by no "
                          "fd of the tree: not supported")
    if st.session not in pids:
        raise Unsupported(f"pid {task.pid}: its controlling terminal, {name}, belongs to "
                          f"session {st.session}, whose leader is outside the dumped tree")
    info = infos.get(rdev)
    if info is None:
        # a controlling terminal is its session's by definition; its
        # foreground group is stat's tpgid (TIOCGPGRP answers only the
        # terminal's own session)
        info = infos[rdev] = tty_pb2.tty_info_entry(
            id=ctx.new_file_id(), type=tty_pb2.VT, locked=False, exclusive=False,
            packet_mode=False, sid=st.session, pgrp=max(st.tpgid, 0), rdev=rdev,
            reg_id=holder[2])
        ctx.shared_image("tty-info").append(info)
    elif info.sid != st.session:
        raise Unsupported(f"pid {task.pid}: its controlling terminal, {name}, is session "
                          f"{info.sid}'s too: not supported")


def _check_ctty(ctx: "DumpContext", pairs: dict[int, _Pair]) -> None:
    """Every task's controlling terminal (stat tty_nr) is a pty of the tree
    that its session leader takes back, or (--shell-job) the shell's."""
    by_sid: dict[int, int] = {}
    for index, pair in pairs.items():
        if pair.master is not None:
            info = next(i for i in ctx.shared_image("tty-info") if i.id == pair.master.info_id)
            if info.sid:
                by_sid[info.sid] = index
    pids = {t.pid for t in ctx.tasks}
    vt_infos: dict[int, Any] = {}
    dstate = ctx.kind_state.get("tty")
    ext_infos: dict[int, Any] = dstate.ext if dstate is not None else {}
    orphans: dict[int, Any] = dstate.orphans if dstate is not None else {}
    for task in ctx.tasks:
        if task.zombie or task.stat is None:
            continue
        st = task.stat
        major, minor = _tty_nr_dev(st.tty_nr)
        has = st.tty_nr != 0
        if has and major == 4 and 0 < minor < 64:
            _vt_ctty(ctx, task, st, os.makedev(major, minor), pids, vt_infos)
            continue
        ext = ext_infos.get(os.makedev(major, minor)) if has else None
        if ext is not None:
            # an --external terminal: taken again from the fd handed in
            _claim(task, st, pids, ext,
                   f"terminal {major}:{minor} (--external tty[{ext.rdev:x}:{ext.dev:x}])")
            continue
        idx = _index_of(os.makedev(major, minor)) if has and major in PTS_MAJORS else None
        orphan = orphans.get(idx) if idx is not None else None
        if orphan is not None:
            # --orphan-pts-master: its session leader takes the new slave
            name = f"/dev/pts/{idx} (its master outside the tree)"
            if not _ctty_is(task, orphan):
                raise Unsupported(f"pid {task.pid}: its controlling terminal is pts {idx} of "
                                  f"another devpts instance than the tree's {name}, or cannot "
                                  "be told from it (the same index): not supported")
            _claim(task, st, pids, orphan, name)
            continue
        if has and idx is not None and idx in pairs and pairs[idx].master is not None:
            if by_sid.get(st.session) != idx:
                raise Unsupported(f"pid {task.pid}: its controlling terminal /dev/pts/{idx} "
                                  f"is not its session's ({st.session}): not supported")
            if st.session not in pids:
                raise Unsupported(f"pid {task.pid}: its controlling terminal /dev/pts/{idx} "
                                  f"belongs to session {st.session}, whose leader is outside "
                                  "the dumped tree")
            continue
        if has:
            if ctx.opts.shell_job:
                continue  # the shell's terminal: the restore inherits the restoring shell's
            name = f"/dev/pts/{idx}" if idx is not None else f"terminal {major}:{minor}"
            raise Unsupported(f"pid {task.pid}: its controlling terminal {name} is outside the "
                              "dumped tree; use --shell-job")
        if st.session in by_sid:
            raise Unsupported(f"pid {task.pid}: has no controlling terminal while its session "
                              f"{st.session} has /dev/pts/{by_sid[st.session]}: not supported")
    state = ctx.kind_state.get("tty")
    if state is not None and state.ctty_holders:
        for pid, fd in state.ctty_holders:
            task = next(t for t in ctx.tasks if t.pid == pid)
            assert task.stat is not None
            if task.stat.tty_nr == 0:
                raise Unsupported(f"pid {pid}: fd {fd}: /dev/tty of a process that has no "
                                  "controlling terminal any more: not supported")


# ------------------------------------------------------------- restore ----

@record(eq=False, repr=False)
class _RestoreState:
    """The terminals made during one restore."""
    infos: dict[int, Any]
    pool: dict[int, int] = field(default_factory=dict)      # file id -> fd in every puppet
    base: dict[int, int] = field(default_factory=dict)      # index -> a slave fd (ours)
    ctty: dict[int, int] = field(default_factory=dict)      # sid -> index
    fg: dict[int, int] = field(default_factory=dict)        # sid -> foreground pgrp
    shell: set[int] = field(default_factory=set)            # info ids of the shell's terminal
    vt_fd: dict[int, tuple[int, Any]] = field(default_factory=dict)  # sid -> (fd, VT info)
    ext: dict[int, int] = field(default_factory=dict)       # EXT_TTY info id -> fd in every puppet
    ext_ctty: dict[int, int] = field(default_factory=dict)  # sid -> fd of its --external terminal
    ext_fg: dict[int, int] = field(default_factory=dict)    # sid -> foreground pgrp
    ext_flags: dict[int, int] = field(default_factory=dict)  # EXT_TTY info id -> its F_GETFL
    orphans: dict[int, tuple[Any, list[Any]]] = field(default_factory=dict)  # index -> (info, files)


def _rstate(rctx: "RestoreContext") -> _RestoreState:
    st = rctx.kind_state.get("tty")
    if st is None:
        from .. import images
        path = images.image_path(rctx.images_dir, "tty-info", None)
        infos = {i.id: i for i in images.read_image(rctx.images_dir, "tty-info")} \
            if os.path.exists(path) else {}
        st = rctx.kind_state["tty"] = _RestoreState(infos)
    return st


def _move_high(rt: "RestoreTask", base: int, fd: int) -> int:
    """The puppet's ``fd`` moved to a number at or above ``base`` (no
    task's fd table reaches there)."""
    new = int(rt.inj.call("fcntl", fd, C.F_DUPFD_CLOEXEC, base))
    rt.inj.call("close", fd)
    return new


def _open_noctty(rt: "RestoreTask", path: str, flags: int) -> int:
    """``path`` opened by the puppet, never becoming its controlling terminal."""
    inj = rt.inj
    try:
        return int(inj.call("openat", C.AT_FDCWD & (2**64 - 1), inj.put_str(path),
                            flags | os.O_NOCTTY | os.O_CLOEXEC, 0))
    except InjectError as exc:
        raise RestoreError(f"{path}: cannot open for pid {rt.pid}: "
                           f"{os.strerror(exc.errno or 0)}") from None
    finally:
        inj.reset_scratch()


def _puppet_copy(rt: "RestoreTask", fd: int) -> int:
    return pidfd_getfd(rt.pid, fd)


def prepare_root(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """In the root puppet, before it forks anything: every pty pair with
    its index and state, each open file description of it at an fd number
    no task uses (every task inherits them; files.restore takes its own,
    close_pool drops the rest)."""
    # (a pty the mount tree made that no pair of the tree takes is an
    # orphan's, or closed by prepare_orphans, which always comes next)
    _prepare_root(rctx, rt)


def _prepare_root(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    state = _rstate(rctx)
    if not state.infos:
        return
    files: dict[int, list[Any]] = {}
    for f in rctx.files.values():
        if f.type == fdinfo_pb2.TTY:
            files.setdefault(f.tty.tty_info_id, []).append(f)
    pairs: dict[int, dict[str, Any]] = {}
    for info in state.infos.values():
        if info.type == tty_pb2.PTY:
            side = "master" if (os.major(info.rdev), os.minor(info.rdev)) == PTMX else "slave"
            pairs.setdefault(info.pty.index, {})[side] = info
    for index, pair in list(pairs.items()):
        if "master" not in pair and pair["slave"].HasField("termios"):
            if rctx.opts.orphan_pts_master:
                # a new pair once the tree's mount namespace is in place
                # (prepare_orphans): criu's --orphan-pts-master
                state.orphans[index] = (pair["slave"], files.get(pair["slave"].id, []))
            else:
                state.shell.add(pair["slave"].id)  # --shell-job: the restoring shell's terminal
            del pairs[index]
    junk: list[int] = []
    inj = rt.inj
    base = rctx.spare_fd_base

    high = functools.partial(_move_high, rt, base)
    open_at = functools.partial(_open_noctty, rt)

    for info in state.infos.values():
        if info.type == tty_pb2.EXT_TTY:
            _inherit_external(rctx, rt, info, files.get(info.id, []), high)
    try:
        for index in sorted(pairs):
            pair = pairs[index]
            m, s = pair.get("master"), pair.get("slave")
            mfd = _open_index(rt, index, junk, open_at)
            mcopy = _puppet_copy(rt, mfd)
            try:
                _ioctl_int(mcopy, C.TIOCSPTLCK, 0)
                sfd = high(open_at(f"/dev/pts/{index}", os.O_RDWR))
                scopy = _puppet_copy(rt, sfd)
                try:
                    if s is not None:
                        for f in files.get(s.id, []):
                            state.pool[f.id] = high(_open_slave(rt, mfd, index, f.tty.flags,
                                                                open_at))
                    if m is not None:
                        mfiles = files.get(m.id, [])
                        if len(mfiles) > 1:
                            raise ImageError(rctx.images_dir, f"pty {index}: {len(mfiles)} "
                                             "open files of one master")
                        for f in mfiles:
                            inj.call("fcntl", mfd, C.F_SETFL, f.tty.flags)
                            mfd = high(mfd)
                            state.pool[f.id] = mfd
                    if s is not None and not s.HasField("termios"):
                        # hung up: its master is gone, its node deleted
                        inj.call("close", sfd)
                        inj.call("close", mfd)
                        continue
                    assert m is not None and s is not None
                    _set_pair(rctx, index, m, s, mcopy, scopy)
                    state.base[index] = sfd
                    if m.sid:
                        sid = rctx.outside_pid(m.sid)
                        state.ctty[sid] = index
                        state.fg[sid] = rctx.outside_pid(m.pgrp)
                finally:
                    os.close(scopy)
            finally:
                os.close(mcopy)
    finally:
        for fd in junk:
            inj.call("close", fd)


def _holder(rctx: "RestoreContext", files: list[Any]) -> str:
    """'pid P: fd F: ' of the first task holding one of ``files``, for messages."""
    ids = {f.id for f in files}
    return next((f"pid {t.pid}: fd {fe.fd}: " for t in rctx.tasks for fe in t.fdinfos
                 if fe.id in ids), "")


def ext_key(info: Any) -> str:
    """criu's name of an external terminal: tty[RDEV:DEV] in hex."""
    return f"tty[{info.rdev:x}:{info.dev:x}]"


def _inherit_external(rctx: "RestoreContext", rt: "RestoreTask", info: Any, files: list[Any],
                      high: Callable[[int], int]) -> None:
    """An EXT_TTY (criu's --external tty[RDEV:DEV] at dump): the terminal
    handed in with --inherit-fd fd[N]:tty[RDEV:DEV] (LXC's new console)
    takes its place, as criu's open_ext_tty: its termios, locked termios,
    window size and owner are set as saved, every file of it is that one
    open file description (its status flags set), and its session leader
    takes it as controlling terminal (session_started)."""
    key = ext_key(info)
    ours = rctx.opts.inherit_fd.get(key)
    holder = _holder(rctx, files)
    if ours is None:
        raise RestoreError(f"{holder}{key}: a terminal outside the dumped tree, named with "
                           "--external at dump: give the one that stands for it with "
                           f"--inherit-fd fd[N]:{key}")
    if not os.isatty(ours):
        raise RestoreError(f"{holder}--inherit-fd fd[{ours}]:{key}: not a terminal")
    if info.HasField("termios"):
        set_termios(ours, info.termios)
    if info.HasField("termios_locked"):
        _set_locked(ours, info.termios_locked)
    if info.HasField("winsize"):
        w = info.winsize
        fcntl.ioctl(ours, C.TIOCSWINSZ, _WS.pack(w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
    if info.exclusive:
        fcntl.ioctl(ours, C.TIOCEXCL)
    if info.HasField("uid") and info.HasField("gid"):
        os.fchown(ours, info.uid, info.gid)
    if info.HasField("termios") and not _same_termios(get_termios(ours), info.termios):
        raise RestoreError(f"{holder}--inherit-fd fd[{ours}]:{key}: termios not as in the "
                           "image after setting")
    # the input the tree had not read yet, queued on the new terminal
    inject_input(ours, _tty_data(rctx).get(info.id, b""), info.termios)
    if files:
        fl = fcntl.fcntl(ours, fcntl.F_GETFL)
        keep = os.O_ACCMODE | C.O_LARGEFILE
        fcntl.fcntl(ours, fcntl.F_SETFL, (fl & keep) | (files[0].tty.flags & ~keep))
    state = _rstate(rctx)
    # what the restore check expects: the description handed in, whose
    # f_flags keep an O_CLOEXEC its opener (LXC) gave open(2) -- fdinfo
    # then shows it whatever the fd's own flag
    state.ext_flags[info.id] = fcntl.fcntl(ours, fcntl.F_GETFL)
    fd = high(rt.grab_fd(os.getpid(), ours))
    state.ext[info.id] = fd
    for f in files:
        state.pool[f.id] = fd
    if info.sid:
        sid = rctx.outside_pid(info.sid)
        state.ext_ctty[sid] = fd
        state.ext_fg[sid] = rctx.outside_pid(info.pgrp) if info.pgrp else 0


def _open_slave(rt: "RestoreTask", mfd: int, index: int, flags: int,
                open_at: Callable[[str, int], int]) -> int:
    """A slave file with exactly ``flags``: open(2) adds O_LARGEFILE,
    TIOCGPTPEER on the master (openpty's way) does not."""
    if flags & C.O_LARGEFILE:
        return open_at(f"/dev/pts/{index}", flags)
    try:
        # (no O_CLOEXEC here: TIOCGPTPEER keeps it in the file's flags)
        return int(rt.inj.call("ioctl", mfd, C.TIOCGPTPEER, flags | os.O_NOCTTY))
    except InjectError as exc:
        raise RestoreError(f"pty {index}: TIOCGPTPEER in pid {rt.pid}: "
                           f"{os.strerror(exc.errno or 0)}") from None


def _open_index(rt: "RestoreTask", index: int, junk: list[int],
                open_at: Callable[[str, int], int], ptmx: str = "/dev/ptmx") -> int:
    """A new master with ``index``: the kernel gives the lowest free index,
    so /dev/ptmx is opened until it is reached (the lower ones are kept in
    ``junk`` meanwhile, as CRIU does)."""
    from .namespaces import PREMADE
    premade = rt._rctx.kind_state.get(PREMADE, {}) if rt._rctx is not None else {}
    if index in premade:
        return int(premade.pop(index))  # made with the mount tree (a pts bound elsewhere)
    while True:
        fd = open_at(ptmx, os.O_RDWR)
        copy = _puppet_copy(rt, fd)
        try:
            got = _ioctl_int(copy, C.TIOCGPTN)
        finally:
            os.close(copy)
        if got == index:
            return fd
        junk.append(fd)
        if got > index:
            raise RestoreError(f"pty index {index} (/dev/pts/{index}) is in use by another "
                               "process")


def _set_pair(rctx: "RestoreContext", index: int, m: Any, s: Any, mcopy: int,
              scopy: int) -> None:
    data = _tty_data(rctx)
    t = m.termios
    inject_input(scopy, data.get(s.id, b""), t)    # the slave's input
    inject_input(mcopy, data.get(m.id, b""), None)  # its output, for the master to read
    set_termios(mcopy, t)
    if m.HasField("termios_locked"):
        _set_locked(mcopy, m.termios_locked)
    if m.HasField("winsize"):
        w = m.winsize
        fcntl.ioctl(mcopy, C.TIOCSWINSZ, _WS.pack(w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
    _ioctl_int(mcopy, C.TIOCPKT, 1 if m.packet_mode else 0)
    if m.locked:
        # Locked last, once every task has opened its files: a locked
        # master fails any open of its slave, /dev/tty included (EIO).
        keep = os.dup(mcopy)
        rctx.own_fds.append(keep)

        def lock() -> None:
            _ioctl_int(keep, C.TIOCSPTLCK, 1)
        rctx.before_detach.append(lock)
    if m.exclusive:
        fcntl.ioctl(mcopy, C.TIOCEXCL)
    _slave_attrs(scopy, s)
    # Read back: what the kernel took is what the image says.
    got = get_termios(mcopy)
    diffs = []
    if not _same_termios(got, t):
        diffs.append("termios")
    if m.HasField("winsize") and get_winsize(mcopy) != m.winsize:
        diffs.append("window size")
    if _ioctl_int(mcopy, C.TIOCGPTN) != index:
        diffs.append("index")
    if bool(_ioctl_int(mcopy, C.TIOCGPKT)) != m.packet_mode:
        diffs.append("packet mode")
    if bool(_ioctl_int(mcopy, C.TIOCGEXCL)) != m.exclusive or \
            bool(_ioctl_int(scopy, C.TIOCGEXCL)) != s.exclusive:
        diffs.append("exclusive mode")
    if diffs:
        raise RestoreError(f"pty {index}: {', '.join(diffs)} not as in the image after setting")


def prepare_orphans(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """criu's --orphan-pts-master (runc's terminal), in the root puppet once
    the tree's namespaces are made (its mount namespace: a container's
    devpts is a new instance) and before it forks: a pts whose master was
    outside the tree gets a new pair at its index in the tree's own
    /dev/pts (its /dev/pts/ptmx), set as saved (termios, locked termios,
    window size, exclusive mode, owner and mode of the node); the slave's
    files are the tree's (every task inherits them, as prepare_root's),
    its session leader takes it as controlling terminal; the master is
    handed to the caller with the orphan-pts-master action (criu's RPC
    sends it to the client with SCM_RIGHTS) and closed here, as criu's
    pty_open_unpaired_slave."""
    state = _rstate(rctx)
    # masters of ptys the mount namespace made for a bind of their pts
    # (namespaces/mnt.py: runc's /dev/console), fds of this puppet
    from .namespaces import PREMADE
    premade: dict[int, int] = rctx.kind_state.pop(PREMADE, {})
    try:
        _make_orphans(rctx, rt, state, premade)
    finally:
        for fd in premade.values():   # the ones no orphan took: closed before any fork
            rt.inj.call("close", fd)


def _make_orphans(rctx: "RestoreContext", rt: "RestoreTask", state: _RestoreState,
                  premade: dict[int, int]) -> None:
    if not state.orphans:
        return
    action = rctx.opts.action
    if action is None:
        index, (_, sfiles) = min(state.orphans.items())
        raise RestoreError(f"{_holder(rctx, sfiles)}/dev/pts/{index}: --orphan-pts-master: "
                           "no caller to hand the new pty master to (criu's RPC only)")
    inj = rt.inj
    base = rctx.spare_fd_base

    high = functools.partial(_move_high, rt, base)
    open_at = functools.partial(_open_noctty, rt)

    junk: list[int] = []
    try:
        for index in sorted(state.orphans):
            s, sfiles = state.orphans[index]
            mfd = premade.pop(index, None)
            if mfd is None:
                mfd = _open_index(rt, index, junk, open_at, "/dev/pts/ptmx")
            mcopy = _puppet_copy(rt, mfd)
            try:
                _ioctl_int(mcopy, C.TIOCSPTLCK, 0)
                set_termios(mcopy, s.termios)
                if s.HasField("termios_locked"):
                    _set_locked(mcopy, s.termios_locked)
                if s.HasField("winsize"):
                    w = s.winsize
                    fcntl.ioctl(mcopy, C.TIOCSWINSZ,
                                _WS.pack(w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
                for f in sfiles:
                    state.pool[f.id] = high(_open_slave(rt, mfd, index, f.tty.flags, open_at))
                sfd = high(int(inj.call("ioctl", mfd, C.TIOCGPTPEER,
                                        os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)))
                scopy = _puppet_copy(rt, sfd)
                try:
                    _slave_attrs(scopy, s)
                    if not _same_termios(get_termios(scopy), s.termios):
                        raise RestoreError(f"pty {index}: termios not as in the image after "
                                           "setting")
                    # the input the tree had not read yet
                    inject_input(scopy, _tty_data(rctx).get(s.id, b""), s.termios)
                finally:
                    os.close(scopy)
                state.base[index] = sfd
                if s.sid:
                    sid = rctx.outside_pid(s.sid)
                    state.ctty[sid] = index
                    state.fg[sid] = rctx.outside_pid(s.pgrp) if s.pgrp else 0
                    if sid == rctx.dumped_pid(rt.pid):
                        # the root: its setsid was before its namespaces
                        inj.call("ioctl", sfd, C.TIOCSCTTY, 0)
                status = action("orphan-pts-master", mcopy)
                if status:
                    raise RestoreError(f"{_holder(rctx, sfiles)}/dev/pts/{index}: the caller "
                                       f"refused its new master (orphan-pts-master: {status})")
            finally:
                os.close(mcopy)
            inj.call("close", mfd)
    finally:
        for fd in junk:
            inj.call("close", fd)


def _tty_data(rctx: "RestoreContext") -> dict[int, bytes]:
    cache = rctx.kind_state.get("tty-data")
    if cache is None:
        from .. import images
        path = images.image_path(rctx.images_dir, "tty-data", None)
        entries = images.read_image(rctx.images_dir, "tty-data") if os.path.exists(path) else []
        cache = rctx.kind_state["tty-data"] = {}
        for e in entries:
            cache[e.tty_id] = cache.get(e.tty_id, b"") + e.data
    return cache  # type: ignore[no-any-return]


def session_started(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Right after a session leader's setsid, before it forks: it takes
    its controlling terminal, which the tasks it forks then inherit."""
    if rt.pstree.sid != rt.pid:
        return
    state = _rstate(rctx)
    index = state.ctty.get(rctx.dumped_pid(rt.pid))
    if index is not None:
        rt.inj.call("ioctl", state.base[index], C.TIOCSCTTY, 0)
    ext = state.ext_ctty.get(rctx.dumped_pid(rt.pid))
    if ext is not None:
        rt.inj.call("ioctl", ext, C.TIOCSCTTY, 0)
    for info in state.infos.values():
        if info.type == tty_pb2.VT and rctx.outside_pid(info.sid) == rctx.dumped_pid(rt.pid):
            # a virtual console: opened by its path (the REG file of the
            # dump), taken, kept open in the leader until its foreground
            # group is set (close_pool closes what its children inherit)
            path = rctx.file_entry(info.reg_id).reg.name
            fd = rt.open_in_puppet(path, os.O_RDWR | os.O_NOCTTY)
            fd2 = int(rt.inj.call("fcntl", fd, C.F_DUPFD_CLOEXEC, rctx.spare_fd_base))
            rt.inj.call("close", fd)
            rt.inj.call("ioctl", fd2, C.TIOCSCTTY, 0)
            state.vt_fd[rctx.outside_pid(info.sid)] = (fd2, info)


def set_foreground(rctx: "RestoreContext") -> None:
    """Once every process group exists: each terminal's foreground group,
    set by its session leader (the foreground one since TIOCSCTTY)."""
    state = rctx.kind_state.get("tty")
    if state is None:
        return
    for sid, (fd, info) in state.vt_fd.items():
        leader = rctx.by_pid.get(sid)
        if leader is not None and not leader.zombie and info.pgrp \
                and rctx.outside_pid(info.pgrp) != sid:
            inj = leader.inj
            pgrp = rctx.vpid(rctx.outside_pid(info.pgrp))
            inj.call("ioctl", fd, C.TIOCSPGRP, inj.put(_INT.pack(pgrp)))
            inj.reset_scratch()
    fgs = [(sid, pgrp, state.base[state.ctty[sid]]) for sid, pgrp in state.fg.items()]
    fgs += [(sid, pgrp, state.ext_ctty[sid]) for sid, pgrp in state.ext_fg.items()]
    for sid, pgrp, tty_fd in fgs:
        leader = rctx.by_pid.get(sid)   # by image pid too (rctx.relabel)
        if leader is None or leader.zombie or not pgrp or pgrp == sid:
            continue
        inj = leader.inj
        inj.call("ioctl", tty_fd, C.TIOCSPGRP, inj.put(_INT.pack(rctx.vpid(pgrp, sid))))
        inj.reset_scratch()


def close_pool(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Every puppet inherited the root's pty files: drop them once the
    task's own fds are in place."""
    state = rctx.kind_state.get("tty")
    if state is None:
        return
    for fd in set(state.pool.values()) | set(state.base.values()) | set(state.ext.values()):
        rt.inj.call("close", fd)
    for fd, info in state.vt_fd.values():
        # the leader's and what the tasks it forked inherited (not others)
        try:
            held = os.stat(f"/proc/{rt.pid}/fd/{fd}").st_rdev == info.rdev
        except OSError:
            held = False
        if held:
            rt.inj.call("close", fd)


def needs_shell_terminal(rctx: "RestoreContext") -> bool:
    """Does any fd of the images stand for the shell job's terminal (a
    pts whose master is not in the images)?"""
    state = _rstate(rctx)
    masters = {i.pty.index for i in state.infos.values() if i.type == tty_pb2.PTY
               and (os.major(i.rdev), os.minor(i.rdev)) == PTMX}
    shell = {i.id for i in state.infos.values() if i.type == tty_pb2.PTY
             and i.HasField("termios") and i.pty.index not in masters}
    return any(f.type == fdinfo_pb2.TTY and f.tty.tty_info_id in shell
               for f in rctx.files.values())


def restored_pts(rctx: "RestoreContext", entry: Any) -> tuple[int, int, bool] | None:
    """For the restore check: (st_rdev, st_dev, master) of the pts a
    restored pty fd must be on -- its index on the devpts instance of the
    tree's /dev/pts, where the restore makes every pair (the fd's own node;
    a master's peer) -- or None for a terminal the restore does not make
    (the shell job's, /dev/tty, an --external one).  The index alone would
    pass a pts of another devpts instance: each instance numbers from 0."""
    state = _rstate(rctx)
    info = state.infos.get(entry.tty.tty_info_id)
    if info is None or info.type != tty_pb2.PTY or info.id in state.shell:
        return None
    dev = rctx.kind_state.get("tty-devpts")
    if dev is None:
        dev = rctx.kind_state["tty-devpts"] = os.stat(rctx.tree_path("/dev/pts/ptmx")).st_dev
    master = (os.major(info.rdev), os.minor(info.rdev)) == PTMX
    return _pts_dev(info.pty.index), dev, master


def pts_node(copy: int, master: bool) -> os.stat_result:
    """The pts node of a pty fd (``copy``, ours): the fd's own, or for a
    master its peer's, opened O_PATH with TIOCGPTPEER (O_PATH does not open
    the slave: the pair's state stays as it is)."""
    if not master:
        return os.fstat(copy)
    peer = fcntl.ioctl(copy, C.TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)  # returns the new fd
    try:
        return os.fstat(peer)
    finally:
        os.close(peer)


def expected_flags(rctx: "RestoreContext", entry: Any) -> int | None:
    """The open flags a restored tty fd has (for the restore check); None
    for the shell job's terminal (the restoring shell's, by design)."""
    state = _rstate(rctx)
    info = state.infos.get(entry.tty.tty_info_id)
    if info is not None and info.type == tty_pb2.EXT_TTY:
        return state.ext_flags.get(info.id)   # the description handed in (--inherit-fd)
    if info is None or info.type != tty_pb2.PTY or info.id in state.shell:
        return None
    return int(entry.tty.flags)


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    state = _rstate(rctx)
    info = state.infos.get(entry.tty.tty_info_id)
    if info is None:
        raise ImageError(rt.image_name("fdinfo"), f"tty file {entry.id}: no tty-info entry "
                         f"{entry.tty.tty_info_id}")
    if info.type == tty_pb2.CTTY:
        return rt.open_in_puppet("/dev/tty", entry.tty.flags | os.O_NOCTTY)
    fd = state.pool.get(entry.id)
    if fd is not None:
        return int(rt.inj.call("fcntl", fd, C.F_DUPFD_CLOEXEC, 0))
    if rt.tty_fd is None:
        raise RestoreError(f"{rt.image_name('fdinfo')}: the process had a terminal; "
                           "restore it with --shell-job from a terminal")
    return int(rt.inj.call("fcntl", rt.tty_fd, C.F_DUPFD_CLOEXEC, 0))
