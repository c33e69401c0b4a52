"""Unix sockets (fd kind UNIXSK, inline in files.img as file_entry.usk;
queued messages in sk-queues.img).

What a socket is comes from sock_diag (sockets.unix_table): type, state,
name, the socket file's inode, the peer's inode, the connections waiting
in a listener's accept queue ("icons"), and the shutdown bits.  Options
and queued data come from a pidfd_getfd copy of the socket.  Relations
between sockets are settled in ``finish``, once every task is seen:

* a peer inside the tree: nothing to do, both ends are in the images;
* a peer outside the tree: refused, naming both ends and who holds the
  other one, unless the user marks the socket ``--external unix[INO]``
  (INO = the inode of *our* socket, as criu's): it is then restored from
  the fd given with ``--inherit-fd fd[N]:unix[INO]``;
* a connection still waiting in a listener's accept queue: its peer is
  written as the listener (as CRIU does) and it connects again at
  restore; if the client already sent data into it, or the client is
  outside the tree, the dump is refused (the data sits in a socket that
  has no fd anywhere);
* a stream socket whose peer is gone (peer 0, shut down both ways) is
  kept with its queue, as is a datagram socket whose peer closed.

Restore follows pipes: the *restorer* makes every socket in its own
process -- a connected pair with socketpair(), a listener with bind and
listen, a client by connecting to the restored server -- fills each
receive queue by sending from the peer (or from a scratch socket to its
name), applies options and shutdown, and each puppet takes its end with
pidfd_getfd, so the open file descriptions are shared as before.

Names: a relative name is bound again from the directory it was bound
in, so the address stays the relative string: the task's cwd at dump,
or, when the task changed directory since, the directory the socket's
own file says (SIOCUNIXFILE opens the dentry it was bound to, deleted or
not, as criu; only for a task with our root and mount namespace);
refused when neither leads to the socket's file.  A name whose
file was deleted or replaced (a ghost) is bound as CRIU's
bind_on_deleted: whatever is there is parked, missing directories made,
the socket bound, an O_PATH fd of its file kept (clients connect and
queues fill through /proc/self/fd/N), the file removed and the rest put
back.  An accepted socket is made by connecting to its listener and
accepting, so it keeps the listener's name.

Queued messages (sk-queues.img): the files in flight (SCM_RIGHTS) are
files of the dump (files.dump_in_flight) named in the scm entry, and are
sent along again at restore, from the open file description a task has
(or opened in the task being restored); credentials recorded with a
message (SCM_CREDENTIALS) are kept in ``ucred`` (CRIU's reserved number
128) and given again -- root may name any pid, uid, gid -- when the pid
is a task of the tree (alive at restore), else refused.

The restore check (verify.py) does not compare queues: reading them back
in the restored tree would need a peek of every socket in every task
while it is stopped, for what the restore just wrote itself from the
images; the integration tests check them from inside the targets.

Senders: each queued datagram's sender name is recorded
(sk_packet_entry.addr, CRIU's reserved number 3) and it is sent again
from a socket of that name: the restored socket of the tree that has it,
else a scratch socket bound to it for the send (an abstract name, or a
path removed again afterwards), or an unnamed one.  Refused at dump: a
sender name a socket outside the tree holds, an absolute name that is a
file now, a relative name nobody holds, and a connected receiver's
datagram from another socket than its peer (queued before the connect).

Limits (said in the README): files in flight on a stream socket in a read with other bytes are
refused (where their message began cannot be told by peeking); an epoll
in flight is saved when every file it watches is held by a task of the
tree (eventpoll.dump_in_flight), else refused.
"""
from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import stat
import struct
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

from ..errors import RestoreError, Unsupported
from ..images.pb import fdinfo_pb2, sk_opts_pb2, sk_packet_pb2, sk_unix_pb2
from ..kernel.libc import pidfd_getfd
from . import anonfd, fdaudit, regfile, sockets, sockopts

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "unixsk"
FDINFO = {
    "scm_fds": fdaudit.saved("the files in flight in queued SCM_RIGHTS messages: dumped as "
                             "files of the tree, named in sk-queues.img's scm entries"),
}
TYPE = fdinfo_pb2.UNIXSK
FINISH_FIRST = True  # files.finish: our queues' files in flight join the dump first

# tcp_states.h, as unix sockets report them
ST_ESTABLISHED = 1
ST_CLOSE = 7
ST_LISTEN = 10
TYPES: dict[int, str] = {int(socket.SOCK_STREAM): "stream", int(socket.SOCK_DGRAM): "dgram",
                         int(socket.SOCK_SEQPACKET): "seqpacket"}


@record
class _Sk:
    fid: int
    diag: sockets.UnixDiag
    pid: int
    fd: int
    link: str
    entry: Any                      # the unix_sk_entry inside our file_entry
    holders: list[tuple[int, int]] = field(default_factory=list)


def matches(fd: "FdCtx") -> bool:
    return sockets.family_of(fd) == socket.AF_UNIX


def _state(ctx: "DumpContext") -> dict[int, _Sk]:
    return ctx.kind_state.setdefault(NAME, {})


def _name_text(name: bytes) -> str:
    if name[:1] == b"\0":
        return "@" + name[1:].decode(errors="replace")
    return name.decode(errors="replace")


def _what_fd(fd: "FdCtx", d: sockets.UnixDiag) -> str:
    return _what(_Sk(0, d, fd.task.pid, fd.fd, fd.link, None))


def _what(sk: _Sk) -> str:
    d = sk.diag
    text = f"pid {sk.pid}: fd {sk.fd}: unix {TYPES.get(d.type, d.type)} socket {d.ino}"
    return text + (f" ({_name_text(d.name)})" if d.name else "")


def dump(fd: "FdCtx", fid: int) -> Any:
    what = sockets.describe(fd)
    if not sockets.same_netns(fd.task.pid, fd.ctx):
        raise Unsupported(f"{what}: the process is in another network namespace than "
                          "the tree's root; its sockets cannot be dumped")
    ino = sockets.socket_ino(fd.link)
    d = sockets.unix_table(fd.ctx).get(ino)
    if d is None:
        raise Unsupported(f"{what}: unix socket {ino} is not reported by sock_diag")
    if d.type not in TYPES:
        raise Unsupported(f"{what}: unix socket of type {d.type}; only stream, dgram and "
                          "seqpacket are supported")
    if d.state not in (ST_ESTABLISHED, ST_CLOSE, ST_LISTEN):
        raise Unsupported(f"{what}: unix socket in state {d.state}; not supported")
    sk = sockets.copy_of(fd)
    sockopts.audit(fd.ctx, f"{what}: unix {TYPES[d.type]} socket", sk, connected=False)
    if d.type == socket.SOCK_DGRAM and d.state == ST_ESTABLISHED and not d.peer:
        _check_dgram_peerless(sk, d, what)
    flags = anonfd.file_flags(fd, "the unix socket")
    fe = fdinfo_pb2.file_entry(type=TYPE, id=fid, usk=sk_unix_pb2.unix_sk_entry(
        id=fid, ino=ino, type=d.type, state=d.state, flags=flags, uflags=0,
        backlog=d.wqueue if d.state == ST_LISTEN else 0, peer=d.peer,
        fown=anonfd.no_owner(), opts=sockets.dump_opts(fd, sk), name=d.name,
        shutdown=sockets.shutdown_field(d.shutdown)))
    if d.name and d.name[:1] != b"\0":
        _resolve_name(fd, d, fe.usk)
    _state(fd.ctx)[ino] = _Sk(fid, d, fd.task.pid, fd.fd, fd.link, fe.usk,
                              [(fd.task.pid, fd.fd)])
    return fe


def _check_dgram_peerless(sk: socket.socket, d: sockets.UnixDiag, what: str) -> None:
    """An ESTABLISHED datagram socket that sock_diag shows without a peer
    is one of two things, told apart by getpeername (which changes
    nothing): connected to a socket since closed (a dead peer), or never
    connected itself but connected *to* by others (which marks it
    ESTABLISHED).  Restore rebuilds the first when it has no name (a
    socketpair whose other end is closed) and the second when it has one
    (bound, and a scratch socket connects to it); the two other cases
    could not be rebuilt as they were."""
    try:
        sk.getpeername()
        dead_peer = True
    except OSError:
        dead_peer = False
    if dead_peer and d.name:
        raise Unsupported(f"{what}: unix dgram socket bound to a name and connected to a "
                          "socket that is closed; not supported")
    if not dead_peer and not d.name:
        raise Unsupported(f"{what}: unbound unix dgram socket marked connected without "
                          "a peer; not supported")


def note_shared(fd: "FdCtx", fid: int) -> None:
    if fd.link.startswith("socket:["):
        sk = _state(fd.ctx).get(sockets.socket_ino(fd.link))
        if sk is not None:
            sk.holders.append((fd.task.pid, fd.fd))


def _resolve_name(fd: "FdCtx", d: sockets.UnixDiag, ue: Any) -> None:
    """Mode and owner of the socket file, and whether it is still there.

    The file is looked up from the task's root (and, for a relative name,
    from its cwd, which is the best guess of where it was bound: the
    kernel keeps only the string).  A file that is gone or is another
    inode now means the socket is bound to a deleted name: it is bound
    again at restore and unlinked, so it still has that name.
    """
    pid = fd.task.pid
    name = os.fsdecode(d.name)
    bound_in = None
    if name.startswith("/"):
        where = f"/proc/{pid}/root{name}"
    else:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        bound_in = _bound_dir(fd, d, name)
        if bound_in is not None and bound_in != cwd:
            # the task changed directory since it bound the name: the
            # socket's own file says where (CRIU's SIOCUNIXFILE); the path
            # read from here is found from here as names are (name_prefix)
            cwd = bound_in
            where = f"{regfile.name_prefix(fd.task)}{cwd.rstrip('/')}/{name}"
        else:
            where = f"/proc/{pid}/cwd/{name}"
        ue.name_dir = cwd
    try:
        st = os.stat(where)
    except FileNotFoundError:
        st = None
    if st is None or d.vfs is None or st.st_ino != d.vfs[1]:
        if not name.startswith("/") and bound_in is None:
            # the kernel keeps only the string: from another cwd the
            # socket's file (if any) cannot be found, and making it again
            # in the wrong directory would leave the real one dead
            raise Unsupported(f"{_what_fd(fd, d)}: bound to the relative name {name!r}, which "
                              f"from the task's cwd ({ue.name_dir}) is not its socket file; "
                              "where it was bound cannot be known")
        ue.deleted = True
        return
    ue.file_perms.CopyFrom(sk_unix_pb2.file_perms_entry(
        mode=st.st_mode, uid=st.st_uid, gid=st.st_gid))


SIOCUNIXFILE = 0x89E0   # SIOCPROTOPRIVATE: an O_PATH fd of the socket's bound file


def _bound_dir(fd: "FdCtx", d: sockets.UnixDiag, name: str) -> str | None:
    """The directory a relative name was bound in, from the socket's own
    file (SIOCUNIXFILE opens the dentry it was bound to, deleted or not):
    its path less the name.  The path is read from here: from our root in
    our mount namespace, from its root in another (as every name of the
    task, regfile.name_prefix); so not for a task chrooted in ours, whose
    names are not ours.  None when unknown."""
    pid = fd.task.pid
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt") and \
                os.stat(f"/proc/{pid}/root") != os.stat("/"):
            return None
        sk = sockets.copy_of(fd)
        h = fcntl.ioctl(sk.fileno(), SIOCUNIXFILE)
    except OSError:
        return None
    try:
        path = os.readlink(f"/proc/self/fd/{h}")
        st = os.fstat(h)
    finally:
        os.close(h)
    if d.vfs is None or st.st_ino != d.vfs[1]:
        return None   # (not the socket's own file: trust nothing)
    if path.endswith(" (deleted)"):
        path = path[:-len(" (deleted)")]
    if not path.endswith("/" + name):
        return None
    return path[:-len(name) - 1] or "/"


def _holder_of(ino: int) -> str:
    """Who holds socket INO, for error messages (a bounded /proc scan)."""
    want = f"socket:[{ino}]"
    seen = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                seen += 1
                if seen > 200000:
                    return "held by an unknown process"
                try:
                    if os.readlink(f"/proc/{name}/fd/{fd}") == want:
                        return f"held by pid {name} fd {fd}"
                except OSError:
                    continue
        except OSError:
            continue
    return "held by no process (in flight or closed)"


def finish(ctx: "DumpContext") -> None:
    socks = _state(ctx)
    if not socks:
        return
    # Queues first: the files in flight in them become files of the dump
    # (and a unix socket in flight one of ours, whose queue is read too),
    # so the relations below see every socket.
    dump_fd = ctx.kind_state["files.in_flight"]
    peeked: set[int] = set()
    while True:
        todo = [sk for sk in list(socks.values()) if sk.diag.ino not in peeked]
        if not todo:
            break
        for sk in todo:
            peeked.add(sk.diag.ino)
            _dump_queue(ctx, sk, dump_fd)
    table = sockets.unix_table(ctx)
    external = set(ctx.opts.external) if hasattr(ctx.opts, "external") else set()
    waiting: dict[int, int] = {}  # client ino -> ino of the listener holding it
    for sk in socks.values():
        for icon in sk.diag.icons:
            waiting[icon] = sk.diag.ino
    for sk in socks.values():
        d, ue = sk.diag, sk.entry
        if d.state == ST_LISTEN:
            for icon in d.icons:
                if icon not in socks:
                    raise Unsupported(
                        f"{_what(sk)}: a connection from unix socket {icon} (outside the "
                        f"dumped tree, {_holder_of(icon)}) waits in its accept queue; "
                        "it cannot be restored")
            continue
        if d.peer and d.peer not in socks:
            peer = table.get(d.peer)
            pname = f" ({_name_text(peer.name)})" if peer is not None and peer.name else ""
            if f"unix[{d.ino}]" not in external:
                if getattr(ctx.opts, "ext_unix_sk", False):
                    _extern_peer(ctx, sk, peer, pname)
                    continue
                raise Unsupported(
                    f"{_what(sk)} is connected to unix socket {d.peer}{pname} outside the "
                    f"dumped tree ({_holder_of(d.peer)}); mark it --external unix[{d.ino}] "
                    f"and restore with --inherit-fd fd[N]:unix[{d.ino}]")
            ue.uflags |= USK_INHERIT
            if d.rqueue:
                raise Unsupported(f"{_what(sk)} is external and has data queued; "
                                  "that data could not be given back")
            continue
        if d.peer and d.peer in socks:
            peer_sk = socks[d.peer]
            if peer_sk.diag.peer != d.ino and not peer_sk.diag.name:
                raise Unsupported(f"{_what(sk)}: its peer {d.peer} is connected elsewhere "
                                  "and has no name to reconnect to")
        elif d.state == ST_ESTABLISHED and d.ino in waiting:
            # Not accepted yet: connect again at restore.  Data it sent
            # is in the embryo socket, which nobody can read out.
            if d.wqueue:
                raise Unsupported(f"{_what(sk)} waits to be accepted by unix socket "
                                  f"{waiting[d.ino]} and already sent data; not supported")
            ue.peer = waiting[d.ino]
        elif d.state == ST_ESTABLISHED and d.ino in _outside_icons(table, socks):
            raise Unsupported(f"{_what(sk)} waits to be accepted by a listener outside the "
                              "dumped tree; it cannot be restored")


def _extern_peer(ctx: "DumpContext", sk: _Sk, peer: sockets.UnixDiag | None,
                 pname: str) -> None:
    """criu's --ext-unix-sk: a datagram socket connected to a named socket
    outside the tree is connected to that name again at restore (whoever
    holds it then: what the option accepts).  The peer is written as an
    entry of its own with USK_EXTERN, as criu does, and no fd uses it.
    Only what criu takes: the peer a datagram socket with a name; and its
    queue must be empty (nobody outside would send those messages again)."""
    d = sk.diag
    what = f"{_what(sk)} is connected to unix socket {d.peer}{pname} outside the dumped tree"
    if peer is None:
        raise Unsupported(f"{what}, which sock_diag does not report")
    if peer.type != socket.SOCK_DGRAM or d.type != socket.SOCK_DGRAM:
        raise Unsupported(f"{what}: --ext-unix-sk takes datagram sockets only (half of a "
                          f"{TYPES.get(peer.type, peer.type)} connection cannot be connected "
                          "again)")
    if not peer.name or peer.name[:1] not in (b"/", b"\0"):
        raise Unsupported(f"{what}: the peer has no name (or a relative one) to connect "
                          "to again; --ext-unix-sk cannot take it")
    if d.rqueue:
        raise Unsupported(f"{what} and has {d.rqueue} message(s) queued from it; they "
                          "could not be given back")
    if peer.ino in _state(ctx) or any(f.type == TYPE and f.usk.ino == peer.ino
                                      for f in ctx.files):
        return  # another socket of ours already wrote it
    fid = ctx.new_file_id()
    ctx.files.append(fdinfo_pb2.file_entry(type=TYPE, id=fid, usk=sk_unix_pb2.unix_sk_entry(
        id=fid, ino=peer.ino, type=peer.type, state=peer.state, flags=0, uflags=USK_EXTERN,
        backlog=0, peer=0, fown=anonfd.no_owner(), name=peer.name,
        opts=sk_opts_pb2.sk_opts_entry(so_sndbuf=0, so_rcvbuf=0, so_snd_tmo_sec=0,
                                       so_snd_tmo_usec=0, so_rcv_tmo_sec=0,
                                       so_rcv_tmo_usec=0))))


def _dump_queue(ctx: "DumpContext", sk: _Sk, dump_fd: Callable[[int, str], int]) -> None:
    """The receive queue of ``sk``, unconsumed, into sk-queues.img; each
    file in flight (SCM_RIGHTS) is dumped as a file of the tree (as CRIU's
    dump_my_file) and named by its id in the message's scm entry."""
    d = sk.diag
    if d.state == ST_LISTEN:
        return
    if d.type != socket.SOCK_DGRAM and d.state == ST_CLOSE:
        # never connected (or released): no queue, and recvmsg on it
        # fails (EINVAL for stream, ENOTCONN for seqpacket)
        if d.rqueue:
            raise Unsupported(f"{_what(sk)}: unconnected, with {d.rqueue} bytes queued; "
                              "not supported")
        return
    packets = sockets.peek_queue(_copy(ctx, sk), _what(sk), d.type == socket.SOCK_STREAM,
                                 eof=bool(d.shutdown & sockets.RCV_SHUTDOWN))
    # our copies of the files in flight stay open to the end of the dump:
    # their kinds (a pipe's ends, a socket's copy) look at them again
    held = [x for pk in packets for x in pk.fds]
    ctx.cleanups.append(lambda keep: sockets.close_all(held))
    tree = {t.pid for t in ctx.tasks}
    for pk in packets:
        entry = sk_packet_pb2.sk_packet_entry(id_for=sk.fid, length=len(pk.data))
        if d.type != socket.SOCK_STREAM:
            entry.addr = _sender_addr(ctx, sk, pk.addr)
        if pk.cred_pid:
            # sent again with them (root may name any pid, uid and gid),
            # which needs the pid alive then: a task of the tree
            if pk.cred_pid not in tree:
                raise Unsupported(f"{_what(sk)}: a queued message carries the credentials of "
                                  f"pid {pk.cred_pid} (SCM_CREDENTIALS), outside the dumped "
                                  "tree; they could not be given again")
            entry.ucred.CopyFrom(sk_packet_pb2.sk_ucred_entry(
                pid=pk.cred_pid, uid=pk.cred_uid, gid=pk.cred_gid))
        if pk.fds:
            ids = [dump_fd(x, f"{_what(sk)}: a file in flight in a queued message")
                   for x in pk.fds]
            entry.scm.add(type=SCM_RIGHTS, rights=ids)
        ctx.add_payload("sk-queues", entry, pk.data)


SCM_RIGHTS = 1


def _sender_addr(ctx: "DumpContext", sk: _Sk, addr: Any) -> bytes:
    """The sender of a queued datagram (sk_packet_entry.addr), refused
    where the restore could not send it from that name again: a name a
    socket outside the tree holds, an absolute name that is a file now
    (its socket gone), a relative one (its directory is not known), or a
    sender other than the peer of a connected receiver (which takes
    nothing from anyone else)."""
    raw = sockets.sockaddr_bytes(socket.AF_UNIX, addr)
    name = raw[2:]
    d = sk.diag
    if d.peer:
        peer = sockets.unix_table(ctx).get(d.peer)
        if peer is not None and name != peer.name:
            raise Unsupported(f"{_what(sk)}: a datagram from {_name_text(name) or 'an unnamed socket'} "
                              "was queued before it connected to "
                              f"{_name_text(peer.name) or 'its unnamed peer'}; a connected "
                              "socket takes datagrams from its peer only, so its sender "
                              "address would change")
        return raw
    if not name:
        return raw
    holders = [u for u in sockets.unix_table(ctx).values() if u.name == name]
    if holders:
        mine = _state(ctx)
        if any(u.ino not in mine for u in holders):
            raise Unsupported(f"{_what(sk)}: a queued datagram came from "
                              f"{_name_text(name)}, a socket outside the dumped tree; put "
                              "back, it would come from another address")
        return raw   # sent again from that socket, restored too
    if name[:1] != b"\0":
        if not name.startswith(b"/"):
            raise Unsupported(f"{_what(sk)}: a queued datagram came from {_name_text(name)}, "
                              "a relative name nobody holds now; put back, it would come "
                              "from another address")
        if os.path.lexists(name):
            raise Unsupported(f"{_what(sk)}: a queued datagram came from {_name_text(name)}, "
                              "now a file no socket holds; put back, it would come from "
                              "another address")
    return raw


def _outside_icons(table: dict[int, sockets.UnixDiag], socks: dict[int, _Sk]) -> set[int]:
    return {i for d in table.values() if d.ino not in socks for i in d.icons}


def _copy(ctx: "DumpContext", sk: _Sk) -> socket.socket:
    cache = ctx.kind_state.setdefault(sockets.NAME, {}).setdefault("copies", {})
    return cache[(sk.pid, sk.fd)]  # type: ignore[no-any-return]


# uflags bits (CRIU's sk-unix.h)
USK_EXTERN = 0x1
USK_INHERIT = 0x8


# ------------------------------------------------------------- restore ----

@record
class _Rst:
    by_ino: dict[int, Any]
    # file id -> (message, file ids in flight, (pid, uid, gid) or None,
    # the sender's name or None where the image does not say)
    queues: dict[int, list[tuple[bytes, list[int], tuple[int, int, int] | None,
                                 bytes | None]]]
    made: dict[int, int] = field(default_factory=dict)  # ino -> restorer fd
    filling: set[int] = field(default_factory=set)      # inos whose queue is being filled
    ghosts: dict[int, int] = field(default_factory=dict)  # ino -> O_PATH fd of its file
    # ino -> O_PATH fd of its named file, for a tree under its own root
    named: dict[int, int] = field(default_factory=dict)
    own: list[int] = field(default_factory=list)  # the restorer's fds, closed at its end
    rctx: Any = None
    cur_rt: Any = None      # the task whose fd is being opened: files in flight open there


def _rst(rctx: "RestoreContext") -> _Rst:
    st = rctx.kind_state.get(NAME)
    if st is None:
        by_ino = {f.usk.ino: f.usk for f in rctx.files.values() if f.type == TYPE}
        ids = {ue.id for ue in by_ino.values()}
        queues: dict[int, list[tuple[bytes, list[int], tuple[int, int, int] | None,
                                     bytes | None]]] = {}
        for e in rctx.payload_entries("sk-queues"):
            if e.msg.id_for in ids:
                rights = [i for scm in e.msg.scm if scm.type == SCM_RIGHTS for i in scm.rights]
                if any(scm.type != SCM_RIGHTS for scm in e.msg.scm):
                    raise RestoreError(f"sk-queues.img: a message for file {e.msg.id_for} "
                                       "carries a control message procsnap cannot send")
                u = e.msg.ucred
                cred = (u.pid, u.uid, u.gid) if e.msg.HasField("ucred") else None
                sender = (sockets.sockaddr_parse(e.msg.addr)[1] if e.msg.HasField("addr")
                          else None)
                queues.setdefault(e.msg.id_for, []).append((e.payload, rights, cred, sender))
        st = _Rst(by_ino, queues, own=rctx.own_fds, rctx=rctx)
        rctx.kind_state[NAME] = st
    return st  # type: ignore[no-any-return]


def _label(ue: Any) -> str:
    text = f"unix {TYPES.get(ue.type, ue.type)} socket {ue.ino}"
    return text + (f" ({_name_text(ue.name)})" if ue.name else "")


def _address(ue: Any) -> bytes:
    name = bytes(ue.name)
    if name[:1] == b"\0" or not ue.name_dir or name.startswith(b"/"):
        return name
    return os.path.join(os.fsencode(ue.name_dir), name)


def _listener_named(st: _Rst, ue: Any) -> Any:
    """The listener whose name an accepted socket ``ue`` reports, if any."""
    if ue.state == ST_LISTEN or not ue.name:
        return None
    return next((o for o in st.by_ino.values()
                 if o.ino != ue.ino and o.name == ue.name and o.state == ST_LISTEN), None)


def _shares_listener_name(st: _Rst, ue: Any) -> bool:
    """An accepted socket reports its listener's name: not its own bind."""
    if ue.state == ST_LISTEN or not ue.name:
        return False
    return any(o.ino != ue.ino and o.name == ue.name and o.state == ST_LISTEN
               for o in st.by_ino.values())


@contextlib.contextmanager
def _in_name_dir(ue: Any) -> Iterator[None]:
    """A relative name is bound (and looked up) from the directory it was
    bound in, so the socket keeps the relative string as its address
    (getsockname, a peer's getpeername) as the task made it."""
    if not ue.name_dir or bytes(ue.name)[:1] in (b"\0", b"/"):
        yield
        return
    back = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.chdir(ue.name_dir)
        except OSError as exc:
            raise RestoreError(f"{_label(ue)}: its name is relative to {ue.name_dir}, "
                               f"which cannot be entered: {exc.strerror}") from None
        yield
    finally:
        os.fchdir(back)
        os.close(back)


def _bind(st: _Rst, sk: socket.socket, ue: Any) -> None:
    if not ue.name or _shares_listener_name(st, ue):
        return
    addr = bytes(ue.name)
    if addr[:1] == b"\0":
        _bind_at(sk, ue, addr)
        return
    # bound by procsnap, under the tree's root: the socket's address is
    # the very string given to bind(), the tree's own name
    with st.rctx.in_tree_root(), _in_name_dir(ue):
        if ue.deleted:
            _bind_ghost(st, sk, ue, addr)
            return
        try:
            old = os.lstat(addr)
        except FileNotFoundError:
            old = None
        if old is not None:
            if not stat.S_ISSOCK(old.st_mode):
                raise RestoreError(f"{_label(ue)}: {os.fsdecode(addr)} exists and is not a socket")
            if _alive(addr, ue.type):
                raise RestoreError(f"{_label(ue)}: {os.fsdecode(addr)} is in use by a live socket")
            # the file of the dumped socket, left behind when it was killed
            os.unlink(addr)
        _bind_at(sk, ue, addr)
        _set_perms(ue, addr)


def _bind_at(sk: socket.socket, ue: Any, addr: bytes) -> None:
    try:
        sk.bind(addr)
    except OSError as exc:
        raise RestoreError(f"{_label(ue)}: cannot bind: {exc.strerror}") from None


def _set_perms(ue: Any, addr: bytes) -> None:
    if ue.HasField("file_perms"):
        os.chown(addr, ue.file_perms.uid, ue.file_perms.gid)
        os.chmod(addr, stat.S_IMODE(ue.file_perms.mode))


def _bind_ghost(st: _Rst, sk: socket.socket, ue: Any, addr: bytes) -> None:
    """A socket whose file was deleted, or replaced by another file (a
    ghost, as CRIU's bind_on_deleted): whatever is at the name now is
    moved aside, missing directories are made, the socket is bound and an
    O_PATH fd of its file kept -- sockets that connect or send to it go
    through /proc/self/fd/N, the name being gone -- then the file is
    removed, the other put back and the directories removed again."""
    made: list[bytes] = []
    d = os.path.dirname(addr)
    while d and not os.path.lexists(d):
        made.append(d)
        d = os.path.dirname(d)
    parked = None
    bound = False
    try:
        for m in reversed(made):
            os.mkdir(m, 0o755)
        if os.path.lexists(addr):
            parked = addr + b".procsnap-sk-ghost.%d" % os.getpid()
            os.rename(addr, parked)
        _bind_at(sk, ue, addr)
        bound = True
        _set_perms(ue, addr)
        st.ghosts[ue.ino] = os.open(addr, os.O_PATH | os.O_CLOEXEC)
        st.own.append(st.ghosts[ue.ino])
    finally:
        if bound:
            os.unlink(addr)
        if parked is not None:
            os.rename(parked, addr)
        for m in made:
            os.rmdir(m)


def _target(st: _Rst, ue: Any) -> bytes:
    """Where to reach socket ``ue`` by name: its (absolute) address, or
    its kept file for a ghost."""
    fd = st.ghosts.get(ue.ino)
    if fd is not None:
        return b"/proc/self/fd/%d" % fd
    addr = _address(ue)
    rctx = st.rctx
    if rctx is None or rctx.tree_root_fd is None or not addr.startswith(b"/"):
        return addr
    # the tree's name, which our root does not reach: its file through an
    # O_PATH fd (tree_path itself could pass sun_path's 108 bytes)
    fd = st.named.get(ue.ino)
    if fd is None:
        try:
            fd = os.open(rctx.tree_path(os.fsdecode(addr)), os.O_PATH | os.O_CLOEXEC)
        except OSError as exc:
            raise RestoreError(f"{_label(ue)}: cannot find its file to reach it: "
                               f"{exc.strerror}") from None
        st.named[ue.ino] = fd
        st.own.append(fd)
    return b"/proc/self/fd/%d" % fd


def _alive(addr: bytes, typ: int) -> bool:
    probe = socket.socket(socket.AF_UNIX, typ)
    try:
        probe.setblocking(False)
        probe.connect(addr)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except BlockingIOError:
        return True   # a listener with a full backlog: alive
    except OSError:
        return False
    finally:
        probe.close()


def _fill(st: _Rst, ue: Any, receiver: socket.socket, sender: socket.socket | None,
          connect: bool = False) -> None:
    """Queue the dumped messages on ``receiver``: from its peer ``sender``,
    or from a scratch socket to its name; a datagram whose sender the
    image names and that way would not give comes from a socket of that
    name (_send_from).  ``connect``: the scratch socket
    connects first (even with nothing to send), which marks a datagram
    receiver ESTABLISHED as the dumped one was."""
    st.filling.add(ue.ino)
    try:
        _fill_queue(st, ue, receiver, sender, connect)
    finally:
        st.filling.discard(ue.ino)


def _fill_queue(st: _Rst, ue: Any, receiver: socket.socket, sender: socket.socket | None,
                connect: bool) -> None:
    msgs = st.queues.get(ue.id, [])
    if not msgs and not connect:
        return
    scratch = None
    if sender is None:
        if not ue.name:
            raise RestoreError(f"{_label(ue)}: has queued data but neither a peer nor a "
                               "name to send it from")
        scratch = socket.socket(socket.AF_UNIX, ue.type)
        sockets.prepare(scratch)
        if connect:
            try:
                scratch.connect(_target(st, ue))
            except OSError as exc:
                scratch.close()
                raise RestoreError(f"{_label(ue)}: cannot connect to it to queue its "
                                   f"messages: {exc.strerror}") from None
    natural = b"" if sender is None else _name_of(sender)
    try:
        for data, rights, cred, want in msgs:
            if ue.type != socket.SOCK_STREAM and want is not None and want != natural:
                # from a sender the usual way would not give: its own name
                _send_from(st, ue, want, data, rights, cred, len(msgs))
                continue
            view = memoryview(data)
            # the files in flight go with the message's first byte, as sent
            anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                     array.array("i", [_in_flight(st, fid) for fid in rights]).tobytes())]
                   if rights else [])
            if cred is not None:
                anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS,
                            struct.pack("iII", *cred)))
            while view:
                try:
                    if scratch is not None:
                        if ue.type == socket.SOCK_STREAM:
                            raise RestoreError(f"{_label(ue)}: stream data without a peer")
                        if connect:
                            n = scratch.sendmsg([view], anc, socket.MSG_DONTWAIT)
                        else:
                            n = scratch.sendmsg([view], anc, socket.MSG_DONTWAIT,
                                                _target(st, ue))
                    else:
                        assert sender is not None
                        n = sender.sendmsg([view], anc, socket.MSG_DONTWAIT)
                    # the rest of a stream message: its credentials, not its files
                    anc = [a for a in anc if a[1] != socket.SCM_RIGHTS]
                except BlockingIOError:
                    raise RestoreError(f"{_label(ue)}: its {len(msgs)} queued messages do not "
                                       "fit its queue (net.unix.max_dgram_qlen?)") from None
                if ue.type != socket.SOCK_STREAM:
                    break  # one datagram, whole
                view = view[n:]
    finally:
        if scratch is not None:
            scratch.close()


def _name_of(sk: socket.socket) -> bytes:
    return sockets.sockaddr_bytes(socket.AF_UNIX, sk.getsockname())[2:]


def _send_from(st: _Rst, ue: Any, want: bytes, data: bytes, rights: list[int],
               cred: tuple[int, int, int] | None, count: int) -> None:
    """One datagram to ``ue`` from a socket named ``want``: the restored
    socket of the tree that has that name, else a scratch socket bound to
    it for this send (b"": an unnamed one)."""
    if not ue.name and ue.ino not in st.ghosts:
        raise RestoreError(f"{_label(ue)}: a datagram from {_name_text(want) or 'an unnamed socket'}"
                           " cannot be put back: the socket has no name to send it to")
    anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS,
             array.array("i", [_in_flight(st, fid) for fid in rights]).tobytes())]
           if rights else [])
    if cred is not None:
        anc.append((socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("iII", *cred)))
    holder = next((o for o in st.by_ino.values()
                   if want and o.name == want and o.type == ue.type), None)
    unlink = False
    if holder is not None:
        if holder.ino in st.filling:
            raise RestoreError(f"{_label(ue)}: datagrams queued both ways with "
                               f"{_label(holder)} cannot be put back in order")
        fd = st.made.get(holder.ino)
        if fd is None:
            fd = _make(st.rctx, st, holder.ino)
        out = socket.socket(fileno=os.dup(fd))
    else:
        out = socket.socket(socket.AF_UNIX, ue.type)
        if want:
            try:
                out.bind(want)
            except OSError as exc:
                out.close()
                raise RestoreError(f"{_label(ue)}: a queued datagram came from "
                                   f"{_name_text(want)}, which cannot be bound again to send "
                                   f"it: {exc.strerror}") from None
            unlink = want[:1] != b"\0"
    try:
        out.sendmsg([data], anc, socket.MSG_DONTWAIT, _target(st, ue))
    except BlockingIOError:
        raise RestoreError(f"{_label(ue)}: its {count} queued messages do not fit its queue "
                           "(net.unix.max_dgram_qlen?)") from None
    except OSError as exc:
        raise RestoreError(f"{_label(ue)}: cannot put back a datagram from "
                           f"{_name_text(want) or 'an unnamed socket'}: {exc.strerror}") from None
    finally:
        out.close()
        if unlink:
            os.unlink(want)


def _in_flight(st: _Rst, fid: int) -> int:
    """File ``fid`` (one in flight in a queued message) as an fd of ours,
    to send: taken from whoever has it already (the same open file
    description as a task holding it too), or opened in the task whose fd
    is being restored and taken from there -- then it is placed, and any
    task that holds it later takes it from us."""
    rctx = st.rctx
    if fid in rctx.placed:
        owner, ofd = rctx.placed[fid]
        if owner == os.getpid():
            return int(ofd)
        ours = pidfd_getfd(owner, ofd)
    else:
        rt = st.cur_rt
        tmp = rctx.kind_state["files.open_for"](rt, fid)
        ours = pidfd_getfd(rt.pid, tmp)
        rt.inj.call("close", tmp)
        rctx.placed[fid] = (os.getpid(), ours)
    st.own.append(ours)
    return ours


def _finish_one(rctx: "RestoreContext", st: _Rst, ue: Any, sk: socket.socket) -> None:
    sockets.restore_opts(sk, ue.opts, _label(ue))
    fd = sk.detach()
    # status flags belong to the open file description the puppet takes
    # (O_ASYNC but: the task sets it itself, fown.restore_task)
    fcntl.fcntl(fd, fcntl.F_SETFL, ue.flags & ~os.O_ACCMODE & ~os.O_ASYNC)
    rctx.own_fds.append(fd)
    st.made[ue.ino] = fd


def _make(rctx: "RestoreContext", st: _Rst, ino: int) -> int:
    if ino in st.made:
        return st.made[ino]
    ue = st.by_ino.get(ino)
    if ue is None:
        raise RestoreError(f"unix socket {ino}: no entry for it in files.img")
    peer = st.by_ino.get(ue.peer) if ue.peer else None
    if ue.state == ST_LISTEN:
        sk = socket.socket(socket.AF_UNIX, ue.type)
        _bind(st, sk, ue)
        sk.listen(ue.backlog)
        # connections it accepted: connected and accepted again, so the
        # accepted end has the listener's name as it had (getsockname,
        # the client's getpeername) -- before any waiting connection is
        # queued, which accept would take first
        for acc in list(st.by_ino.values()):
            cli = st.by_ino.get(acc.peer) if acc.peer else None
            if (acc.state == ST_LISTEN or acc.name != ue.name or acc.ino in st.made
                    or cli is None or cli.peer != acc.ino):
                continue
            c = socket.socket(socket.AF_UNIX, cli.type)
            _bind(st, c, cli)
            try:
                c.connect(_target(st, ue))
                a, _addr = sk.accept()
            except OSError as exc:
                raise RestoreError(f"{_label(acc)}: cannot connect and accept it again on "
                                   f"{_label(ue)}: {exc.strerror}") from None
            for one, e in ((c, cli), (a, acc)):
                sockets.prepare(one)
            _fill(st, cli, c, a)
            _fill(st, acc, a, c)
            for one, e in ((c, cli), (a, acc)):
                sockets.apply_shutdown(one, e.shutdown)
            _finish_one(rctx, st, cli, c)
            _finish_one(rctx, st, acc, a)
        _finish_one(rctx, st, ue, sk)
        # connections that waited to be accepted, in their order
        for other in st.by_ino.values():
            if other.peer == ino and other.state == ST_ESTABLISHED and other.ino not in st.made:
                _make(rctx, st, other.ino)
        return st.made[ino]
    if ue.peer == ino:
        # a datagram socket connected to its own name: it sends to itself
        sk = socket.socket(socket.AF_UNIX, ue.type)
        _bind(st, sk, ue)
        sockets.prepare(sk)
        try:
            sk.connect(_target(st, ue))
        except OSError as exc:
            raise RestoreError(f"{_label(ue)}: cannot connect it to itself: "
                               f"{exc.strerror}") from None
        _fill(st, ue, sk, sk)
        sockets.apply_shutdown(sk, ue.shutdown)
        _finish_one(rctx, st, ue, sk)
        return st.made[ino]
    if peer is not None and peer.peer == ino and peer.state != ST_LISTEN:
        for end in (ue, peer):
            lis = _listener_named(st, end)
            if lis is not None:
                # an accepted connection: its listener makes it again
                _make(rctx, st, lis.ino)
                if ino in st.made:
                    return st.made[ino]
        # both ends here: one socketpair
        a, b = socket.socketpair(socket.AF_UNIX, ue.type)
        for sk, e in ((a, ue), (b, peer)):
            _bind(st, sk, e)
            sockets.prepare(sk)
        _fill(st, ue, a, b)
        _fill(st, peer, b, a)
        for sk, e in ((a, ue), (b, peer)):
            sockets.apply_shutdown(sk, e.shutdown)
        _finish_one(rctx, st, ue, a)
        _finish_one(rctx, st, peer, b)
        return st.made[ino]
    if ue.state == ST_ESTABLISHED and not ue.peer and ue.type == socket.SOCK_DGRAM \
            and ue.name:
        # A datagram socket others connected to (that is what made it
        # ESTABLISHED) has no peer of its own: it must not get one here,
        # or connecting to it again fails with EPERM.  A scratch socket
        # connects to its name and queues the messages, as the senders did.
        sk = socket.socket(socket.AF_UNIX, ue.type)
        _bind(st, sk, ue)
        sockets.prepare(sk)
        _fill(st, ue, sk, None, connect=True)
        sockets.apply_shutdown(sk, ue.shutdown)
        _finish_one(rctx, st, ue, sk)
        return st.made[ino]
    if ue.state == ST_ESTABLISHED and not ue.peer:
        # the peer closed: make a pair, queue, and close the other end --
        # under the closed peer's name, which its messages came from
        a, b = socket.socketpair(socket.AF_UNIX, ue.type)
        _bind(st, a, ue)
        sockets.prepare(a)
        sockets.prepare(b)
        names = {m[3] for m in st.queues.get(ue.id, []) if m[3]}
        gone = names.pop() if len(names) == 1 else b""
        if gone:
            try:
                b.bind(gone)
            except OSError as exc:
                raise RestoreError(f"{_label(ue)}: its queued messages came from "
                                   f"{_name_text(gone)}, its closed peer, which cannot be "
                                   f"bound again to send them: {exc.strerror}") from None
        try:
            _fill(st, ue, a, b)
        finally:
            b.close()
            if gone and gone[:1] != b"\0":
                os.unlink(gone)
        sockets.apply_shutdown(a, ue.shutdown)
        _finish_one(rctx, st, ue, a)
        return st.made[ino]
    sk = socket.socket(socket.AF_UNIX, ue.type)
    _bind(st, sk, ue)
    sockets.prepare(sk)
    # before connecting: a connected datagram socket accepts only its peer
    _fill(st, ue, sk, None)
    if peer is not None:
        _make(rctx, st, peer.ino)  # the server is bound (and listening) first
        try:
            sk.connect(_target(st, peer))
        except OSError as exc:
            raise RestoreError(f"{_label(ue)}: cannot connect to {_label(peer)}: "
                               f"{exc.strerror}") from None
    sockets.apply_shutdown(sk, ue.shutdown)
    _finish_one(rctx, st, ue, sk)
    return st.made[ino]


def _make_to_extern(rctx: "RestoreContext", st: _Rst, ue: Any, peer: Any) -> int:
    """A datagram socket dumped with criu's --ext-unix-sk: connected again
    to its peer's name, which a socket outside the tree must hold now."""
    if ue.ino in st.made:
        return st.made[ue.ino]
    if not getattr(rctx.opts, "ext_unix_sk", False):
        raise RestoreError(f"{_label(ue)} was connected to {_label(peer)} outside the tree "
                           "(dumped with --ext-unix-sk): restore with --ext-unix-sk to "
                           "connect it to that name again")
    sk = socket.socket(socket.AF_UNIX, ue.type)
    _bind(st, sk, ue)
    sockets.prepare(sk)
    try:
        # the name as the tree sees it: under its root, when it has its own
        with rctx.in_tree_root():
            sk.connect(bytes(peer.name))
    except OSError as exc:
        sk.close()
        raise RestoreError(f"{_label(ue)}: cannot connect to {_label(peer)} outside the "
                           f"tree: {exc.strerror}") from None
    sockets.apply_shutdown(sk, ue.shutdown)
    _finish_one(rctx, st, ue, sk)
    return st.made[ue.ino]


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    ue = entry.usk
    st = _rst(rctx)
    st.cur_rt = rt
    peer = st.by_ino.get(ue.peer) if ue.peer else None
    if peer is not None and peer.uflags & USK_EXTERN:
        return rt.grab_fd(os.getpid(), _make_to_extern(rctx, st, ue, peer))
    if ue.uflags & USK_INHERIT or (ue.peer and ue.peer not in st.by_ino):
        key = f"unix[{ue.ino}]"
        fd = getattr(rctx.opts, "inherit_fd", {}).get(key)
        if fd is None:
            raise RestoreError(f"{_label(ue)} was connected to unix socket {ue.peer} outside "
                               f"the tree: give it with --inherit-fd fd[N]:{key}")
        return rt.grab_fd(os.getpid(), fd)
    return rt.grab_fd(os.getpid(), _make(rctx, st, ue.ino))
