"""Live TCP connections (tcp-stream-INO.img) through TCP_REPAIR, and the
network lock that holds their traffic back between dump and restore.

Dump, for each established connection (after the freeze):
1. the network lock: an nftables table of our own, ``inet CRIU-procsnap_ROOT``
   (ROOT = the dumped tree's root pid; named as criu's nftables lock, and
   the inventory says so, so criu's restore of our images removes it; the
   restore removes criu's lock of criu's images the same way, by the
   inventory's method: its table, or its iptables rules), with a drop rule for the
   connection's packets in each direction.  From now on the peer's
   segments reach nobody, so neither our socket nor the peer changes
   state, and no RST can be sent for a socket that does not exist;
2. TCP_REPAIR on our pidfd_getfd copy of the socket; then, as CRIU's
   soccr does: TCP_INFO (state, options, window scales), SIOCOUTQ /
   SIOCOUTQNSD / SIOCINQ (queue lengths), TCP_MAXSEG (in repair mode the
   MSS clamp), TCP_TIMESTAMP, TCP_REPAIR_WINDOW, and both queues with
   their sequence numbers (TCP_REPAIR_QUEUE + TCP_QUEUE_SEQ + MSG_PEEK);
3. if the tree is then killed, the socket is still in repair mode, and a
   socket in repair mode closes silently: the peer sees no FIN and no
   RST.  If the tree runs on (--leave-running, or the dump failed),
   repair mode is turned off without a window probe and the lock goes.

Restore: a socket in repair mode, bound and "connected" (no handshake in
repair mode) with the dumped sequence numbers, the options set with
TCP_REPAIR_OPTIONS, the receive queue and the sent-but-unacknowledged
part of the send queue put back in repair mode, the unsent part sent
normally, the window restored.  Repair mode is turned off once every task
is built, just before they run; the lock is removed once they run.  The
peer's retransmissions then find the connection where it was.

Every state the kernel can freeze a connection in is handled as CRIU's
soccr does: FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING, and a
closed connection that still holds data (CLOSE).  The dump does not count
the FIN in the send queue and records the sequence numbers past it; the
restore builds the connection ESTABLISHED in repair mode, with the
sequence numbers put back before each FIN, then replays the shutdowns:
our FIN is put in the send queue with shutdown(SHUT_WR) (as already sent,
TCP_REPAIR_QUEUE = SEND_QUEUE, when the peer had acknowledged it), and
the peer's FIN, and its acknowledgement of ours, are injected through a
raw socket as segments from the peer, marked 0xC114 (CRIU's SOCCR_MARK)
so that the network lock lets them in.  The state reached is checked
against the image.

A connection that was reset, its error still pending (sk_err:
ECONNRESET, EPIPE, ECONNREFUSED), is dumped as CLOSE with its unread
data, but SO_ERROR -- the one way to read the error -- clears it.  So it
is read at the dump's commit point (DumpContext.commits: every other
image written, the tree about to be killed) and its tcp-stream image is
written then, with procsnap's own field so_error.  With --leave-running
it is refused (the running socket would lose it); an error no RST makes
(ETIMEDOUT...) shows only once read: the dump then fails naming it, and
says the socket lost it.  The restore builds the connection in the state
tcp_reset() turns into that error (ESTABLISHED, CLOSE_WAIT, SYN_SENT)
and injects an RST at the exact next sequence number.

SYN_SENT (a non-blocking connect() whose SYN is not answered yet): as
soccr, dumped in repair mode like the others (both queues empty, write_seq
one past the SYN); restored by setting the sequence numbers in repair
mode, then a real non-blocking connect() out of repair mode, which sends
the SYN again from the same initial sequence number, then repair mode on
again until the tree runs.  The SYN retransmission timer does the rest.

If a restore is abandoned, ``procsnap network-unlock DIR`` removes the
lock (the peer then gets RSTs for a connection nobody holds).
"""
from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import socket
import struct
import time
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from subprocess import CompletedProcess
    from typing import Any

from .. import images, logs
from ..images import legacy as legacy_files
from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import tcp_stream_pb2
from ..kernel import netns
from ..kernel import nftables

if TYPE_CHECKING:
    from ..tasks import DumpContext
    from ..tasks import RestoreContext
    from ..tasks import FdCtx

NAME = "tcp"
log = logs.Logger("procsnap.tcp")

# The stats key (dump's and restore's) of the time spent on the queues'
# bytes alone, inside the stage of the module that calls us: at dump the
# peek buffer, the peeks with their length checks and the bytes' writes
# into the image; at restore putting both queues back and the checks that
# the kernel holds them.  The bench's TCP row is this; STAGE + "-cpu" is
# the CPU time of the same steps (the thread's own, kernel included).
STAGE = "tcp-queues"


def _clock() -> tuple[float, float]:
    return time.monotonic(), time.thread_time()


def _timed(stats: dict[str, float], t0: tuple[float, float]) -> None:
    stats[STAGE] = stats.get(STAGE, 0.0) + time.monotonic() - t0[0]
    stats[STAGE + "-cpu"] = stats.get(STAGE + "-cpu", 0.0) + time.thread_time() - t0[1]

# <linux/tcp.h>
TCP_INFO = 11
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_REPAIR_OFF_NO_WP = -1     # leave repair mode without a window probe
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2
TCPOPT_MSS, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4
# <linux/sockios.h>
SIOCINQ = 0x541B
SIOCOUTQ = 0x5411
SIOCOUTQNSD = 0x894B
_WINDOW = struct.Struct("5I")   # struct tcp_repair_window
SO_MARK = 36
SO_PEERNAME = 28
SOCCR_MARK = 0xC114             # CRIU's mark for its own segments through the lock

# <net/tcp_states.h>
ESTABLISHED, SYN_SENT, FIN_WAIT1, FIN_WAIT2 = 1, 2, 4, 5
CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING = 7, 8, 9, 11
# the states a connection is dumped in (soccr's list)
CONN_STATES = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING,
                         CLOSE, SYN_SENT})
# soccr.c: where the FINs are.  Ours is in the send queue (first when we
# shut down before the peer, second after); the peer's is at the end of
# the receive queue; "acked" when the other side acknowledged it.
SNDQ_FIRST_FIN = frozenset({FIN_WAIT1, FIN_WAIT2, CLOSING})
SNDQ_SECOND_FIN = frozenset({LAST_ACK, CLOSE})
SNDQ_FIN_ACKED = frozenset({FIN_WAIT2, CLOSE})
RCVQ_FIN = frozenset({CLOSE_WAIT, LAST_ACK, CLOSE, CLOSING})
RCVQ_FIN_ACKED = frozenset({CLOSE})
TH_FIN, TH_RST, TH_ACK = 0x01, 0x04, 0x10
# A reset connection's pending error (sk_err) and the state tcp_reset()
# must find the socket in to set it: an RST injected there recreates it.
RESET_FROM = {errno.ECONNRESET: ESTABLISHED, errno.EPIPE: CLOSE_WAIT,
              errno.ECONNREFUSED: SYN_SENT}
RESET_ERRORS = tuple(RESET_FROM)

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}


def unpack_addr(fam: int, words: Any) -> str:
    raw = struct.pack(f"<{len(words)}I", *words)
    if not raw:
        raw = bytes(4 if fam == socket.AF_INET else 16)
    return socket.inet_ntop(fam, raw)


def tcp_state(sk: socket.socket) -> int:
    """tcpi_state, the first byte of struct tcp_info."""
    return sk.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)[0]


def _ioctl_int(sk: socket.socket, req: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sk.fileno(), req, b"\0" * 4))[0])


# --------------------------------------------------------- network lock ----

def _nft() -> None:
    if not nftables.available():
        raise DumpError("--tcp-established needs nftables for its network lock: "
                        "install it (apt-get install nftables)")


# inventory_entry.network_lock_method (criu's enum NETWORK_LOCK_METHOD)
LOCK_IPTABLES, LOCK_NFTABLES, LOCK_SKIP = 0, 1, 2


def run_id(root_pid: int) -> str:
    """What the inventory records as dump_criu_run_id: criu's restore
    names the lock table it deletes "inet CRIU-<run id>"."""
    return f"procsnap_{root_pid}"


def table_name(root_pid: int) -> str:
    """Our lock table, named as criu names its own (nftables lock method),
    so that criu's restore of our images removes it."""
    return f"CRIU-{run_id(root_pid)}"


def old_table_name(root_pid: int) -> str:
    """The name procsnap's images made before 2026-11-30 carry no run id for."""
    return f"procsnap_{root_pid}"


def inventory(ctx: "DumpContext", inv: Any) -> None:
    """The lock taken, in the inventory as criu 4.x records it (method and
    run id): criu's restore then deletes our table as it deletes its own."""
    st = ctx.kind_state.get(NAME)
    if st is not None and st["locked"]:
        inv.network_lock_method = LOCK_NFTABLES
        inv.dump_criu_run_id = run_id(ctx.tasks[0].pid)


def _criu_iptables_unlock(fam: int, src: str, sport: int, dst: str, dport: int) -> None:
    """Remove the two rules criu's iptables lock method (its default) put
    in for one connection, spelled as criu/netfilter.c does (src/dst as the
    socket sees them); a rule already gone is no error, as in criu."""
    if fam == socket.AF_INET6 and src.startswith("::ffff:") and dst.startswith("::ffff:"):
        fam, src, dst = socket.AF_INET, src[7:], dst[7:]
    import subprocess
    cmd = "iptables" if fam == socket.AF_INET else "ip6tables"
    for chain, (a, ap, b, bp) in (("INPUT", (src, sport, dst, dport)),
                                  ("OUTPUT", (dst, dport, src, sport))):
        subprocess.run([cmd, "-w", "-t", "filter", "-D", chain, "--protocol", "tcp",
                        "-m", "mark", "!", "--mark", str(SOCCR_MARK), "--source", b,
                        "--sport", str(bp), "--destination", a, "--dport", str(ap),
                        "-j", "DROP"], capture_output=True, timeout=30)


def unlock_images(images_dir: str, root_pid: int, conns: list[tuple[int, str, int, str, int]]
                  ) -> bool:
    """Remove the lock of the dump in images_dir, whichever tool made it:
    the inventory's method says how (criu 4.x always writes it); without
    one, procsnap's older table.  ``conns`` (family, src, sport, dst,
    dport) are the connections, for criu's per-connection iptables rules."""
    inv = images.read_one(images_dir, "inventory")
    if not inv.HasField("network_lock_method"):
        return unlock(old_table_name(root_pid))
    if inv.network_lock_method == LOCK_NFTABLES:
        rid = inv.dump_criu_run_id if inv.HasField("dump_criu_run_id") else str(root_pid)
        return unlock(f"CRIU-{rid}")
    if inv.network_lock_method == LOCK_IPTABLES:
        for c in conns:
            _criu_iptables_unlock(*c)
        return bool(conns)
    return False


def _run_nft(script: str) -> "nftables.Result | CompletedProcess[str]":
    # in process (libnftables): the lock is taken inside the frozen time
    _nft()
    return nftables.run(script)


def lock_connection(table: str, fam: int, local: tuple[str, int],
                    remote: tuple[str, int], create: bool) -> None:
    """Drop both directions of one connection (creating the table first)."""
    ip = "ip" if fam == socket.AF_INET else "ip6"
    if fam == socket.AF_INET6 and all(_v4_mapped(a) for a in (local[0], remote[0])):
        # an IPv6 socket talking to an IPv4 peer: IPv4 on the wire, where
        # ip6 rules never match (the lock held nothing: the window probe
        # and the peer's segments went through, and the peer got an RST)
        ip = "ip"
        local = (local[0][7:], local[1])
        remote = (remote[0][7:], remote[1])
    lines = []
    if create:
        lines += [f"add table inet {table}",
                  f"add chain inet {table} input {{ type filter hook input priority -150 ; "
                  "policy accept ; }",
                  f"add chain inet {table} output {{ type filter hook output priority -150 ; "
                  "policy accept ; }",
                  # the segments the restore injects (replayed FINs) pass
                  f"add rule inet {table} input meta mark {SOCCR_MARK:#x} accept",
                  f"add rule inet {table} output meta mark {SOCCR_MARK:#x} accept"]
    lines += [
        f"add rule inet {table} input {ip} saddr {remote[0]} {ip} daddr {local[0]} "
        f"tcp sport {remote[1]} tcp dport {local[1]} drop",
        f"add rule inet {table} output {ip} saddr {local[0]} {ip} daddr {remote[0]} "
        f"tcp sport {local[1]} tcp dport {remote[1]} drop"]
    res = _run_nft("\n".join(lines) + "\n")
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["failed"])[0]
        raise DumpError(f"network lock (nft, table inet {table}): {msg}")


def _v4_mapped(addr: str) -> bool:
    return addr.lower().startswith("::ffff:") and "." in addr


def unlock(table: str) -> bool:
    """Remove our table; False if there was none."""
    if not nftables.available():
        return False
    # the table is gone when run returns; its netlink socket's close
    # (which waits for the kernel to free the table) does not hold us up
    return nftables.run(f"delete table inet {table}\n", wait=False).returncode == 0


# A tree in its own network namespace is locked as a whole, from inside
# that namespace (criu's network_lock_internal with nftables): every packet
# in or out of the namespace is dropped but for the segments the restore
# marks itself.  The namespace's own ruleset is saved after the lock is set
# (resources.namespaces.net), so the restored namespace starts locked too;
# the lock goes once the restored tree runs.  Per-connection rules in
# procsnap's own namespace would never see the namespace's traffic (a
# connection over its loopback never leaves it).

def _netns_lock_script(table: str) -> str:
    return "\n".join([
        f"add table inet {table}",
        f"add chain inet {table} input {{ type filter hook input priority 0 ; policy drop ; }}",
        f"add rule inet {table} input meta mark {SOCCR_MARK:#x} accept",
        f"add chain inet {table} output {{ type filter hook output priority 0 ; "
        "policy drop ; }",
        f"add rule inet {table} output meta mark {SOCCR_MARK:#x} accept"]) + "\n"


def lock_netns_here(table: str) -> None:
    """Lock the network namespace of the calling thread (whole), unless it
    is locked already (the restored ruleset brings the dump's lock)."""
    _nft()
    if nftables.run(f"list table inet {table}\n").returncode == 0:
        return
    res = _run_nft(_netns_lock_script(table))
    if res.returncode != 0:
        msg = (res.stderr.strip().splitlines() or ["failed"])[0]
        raise DumpError(f"network lock (nft, table inet {table} in the tree's network "
                        f"namespace): {msg}")


def lock_netns(pid: int, table: str) -> None:
    """Lock ``pid``'s network namespace as a whole, from inside it."""
    with netns.inside(pid):
        lock_netns_here(table)


def unlock_netns(pid: int, table: str) -> bool:
    """Remove the lock from ``pid``'s network namespace; False if there was
    none (or the namespace is gone)."""
    try:
        with netns.inside(pid):
            return unlock(table)
    except OSError:
        return False


# CRIU's own lock of a tree in its own network namespace, with its default
# method (iptables, criu/net.c iptables_network_lock_internal): a chain
# CRIU that INPUT and OUTPUT jump to, dropping all but marked packets.  CRIU
# saves the namespace's rules after locking, so its images carry the lock;
# CRIU's restore removes it once the tree runs
# (iptables_network_unlock_internal).  A restore of CRIU's images does the same.
CRIU_CHAIN = "CRIU"
_IPTABLES = ("iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy")


def unlock_criu_iptables_in(pid: int) -> bool:
    """Remove CRIU's iptables lock from ``pid``'s network namespace, as
    CRIU's restore does; False if there was none."""
    import shutil
    import subprocess
    found = False
    try:
        with netns.inside(pid):
            for tool in _IPTABLES:
                exe = shutil.which(tool)
                if exe is None or subprocess.run(
                        [exe, "-w", "-S", CRIU_CHAIN], capture_output=True,
                        timeout=30).returncode != 0:
                    continue
                found = True
                for chain in ("INPUT", "OUTPUT"):
                    while subprocess.run([exe, "-w", "-D", chain, "-j", CRIU_CHAIN],
                                         capture_output=True, timeout=30).returncode == 0:
                        pass
                for op in ("-F", "-X"):
                    subprocess.run([exe, "-w", op, CRIU_CHAIN], capture_output=True, timeout=30)
    except OSError:
        return found
    return found


def network_unlock_dir(images_dir: str) -> bool:
    """The lock of the dump in ``images_dir`` (found by its root pid)."""
    tree = images.read_image(images_dir, "pstree")
    if not tree:
        return False
    conns = [_conn(f.isk) for f in legacy_files.file_entries(images_dir)
             if f.HasField("isk") and f.isk.proto == socket.IPPROTO_TCP
             and os.path.exists(images.image_path(images_dir, "tcp-stream", f.isk.ino))]
    return unlock_images(images_dir, tree[0].pid, conns)


def _conn(ie: Any) -> tuple[int, str, int, str, int]:
    return (ie.family, unpack_addr(ie.family, ie.src_addr), ie.src_port,
            unpack_addr(ie.family, ie.dst_addr), ie.dst_port)


# ----------------------------------------------------------------- dump ----

def _state(ctx: "DumpContext") -> dict[str, Any]:
    st = ctx.kind_state.get(NAME)
    if st is None:
        st = {"table": table_name(ctx.tasks[0].pid), "locked": False, "repaired": [],
              "streams": [], "reset": [], "cleared": []}
        ctx.kind_state[NAME] = st

        def cleanup(keep: bool) -> None:
            # keep: the tree is killed now; repair mode makes the close
            # silent and the lock holds the peers until the restore.
            if keep:
                return
            for label, err in st["cleared"]:
                # read at the commit point, then the dump did not end in the
                # kill (--sync failed, a post-dump script said no): not silent
                log.warning("%s: its pending error %s was read for the dump, which then "
                            "did not complete; the running socket no longer reports it",
                            label, errno.errorcode.get(err, err))
            for sk, reuseaddr in st["repaired"]:
                try:
                    sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP)
                    # leaving repair mode clears SO_REUSEADDR: the task's own back
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)
                except OSError:
                    pass
            if st["locked"]:
                unlock(st["table"])
        ctx.cleanups.append(cleanup)
    return st


def peer_of(sk: socket.socket) -> tuple[str, int] | None:
    """The peer of a TCP socket, also once the connection is closed
    (getpeername says ENOTCONN then; SO_PEERNAME still answers).  None if
    it never had one."""
    try:
        return tuple(sk.getpeername()[:2])  # type: ignore[return-value]
    except OSError:
        pass
    size = 16 if sk.family == socket.AF_INET else 28
    try:
        raw = sk.getsockopt(socket.SOL_SOCKET, SO_PEERNAME, size)
    except OSError:
        return None
    port = struct.unpack(">H", raw[2:4])[0]
    if not port:
        return None
    if sk.family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port


def dump_established(fd: "FdCtx", sk: socket.socket, ie: Any, label: str,
                     reset: bool = False) -> None:
    """A connection in any of CONN_STATES (ie.state), in repair mode.
    ``reset``: CLOSE with an error pending (inetsk)."""
    st = _state(fd.ctx)
    local = sk.getsockname()[:2]
    remote = peer_of(sk)
    assert remote is not None
    if not fd.ctx.netns_locked:
        lock_connection(st["table"], sk.family, local, remote, create=not st["locked"])
        st["locked"] = True
    # else: the tree's own network namespace is locked as a whole (lock_netns)
    # TCP_REPAIR_ON forces SO_REUSEADDR on, and leaving repair mode clears
    # it: the task's value is read first, to be put back
    reuseaddr = sk.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    try:
        sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
    except OSError as exc:
        raise DumpError(f"{label}: cannot enter TCP repair mode: {exc.strerror}") from None
    st["repaired"].append((sk, reuseaddr))
    try:
        tse = _save(sk, label, ie.state)
    except OSError as exc:
        raise DumpError(f"{label}: reading the connection in repair mode: "
                        f"{exc.strerror or exc}") from None
    if not reset:
        st["streams"].append((ie.ino, tse, sk, label))
        return
    # its image is written at the commit point, with the error
    if not st["reset"]:
        fd.ctx.commits.append(functools.partial(_commit_resets, fd.ctx, st))
    st["reset"].append((sk, label, ie.ino, tse))


def _commit_resets(ctx: "DumpContext", st: dict[str, Any]) -> None:
    """The pending error of each reset connection, read now that every
    other image is written and the tree is about to be killed: SO_ERROR
    clears it, so before this point a failing dump would leave the tree
    running without it."""
    errors = []
    for sk, label, _ino, _tse in st["reset"]:
        err = sk.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        errors.append(err)
        if err:
            st["cleared"].append((label, err))
    for (sk, label, ino, tse), err in zip(st["reset"], errors):
        if err and err not in RESET_ERRORS:
            st["cleared"].remove((label, err))   # said here, not warned again
            raise Unsupported(
                f"{label}: its pending error is {errno.errorcode.get(err, err)} "
                f"({os.strerror(err)}); procsnap recreates only "
                f"{', '.join(errno.errorcode[e] for e in RESET_ERRORS)} (with an injected "
                "RST), and reading the error cleared it: the socket no longer reports it")
    for (sk, label, ino, tse), err in zip(st["reset"], errors):
        if err:
            tse.so_error = err
        _write_stream(ctx, ino, tse, sk, label)


def _save(sk: socket.socket, label: str, state0: int) -> Any:
    info = sk.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)
    state, options, wscale = info[0], info[5], info[6]
    if state != state0:
        raise Unsupported(f"{label}: TCP state changed from {TCP_STATES.get(state0, state0)} "
                          f"to {TCP_STATES.get(state, state)} under the lock")
    outq_len = _ioctl_int(sk, SIOCOUTQ)
    unsq_len = _ioctl_int(sk, SIOCOUTQNSD)
    inq_len = _ioctl_int(sk, SIOCINQ)
    if state == CLOSE:
        # a reset connection may keep data in its send queue that nobody
        # can read any more (soccr drops it too); a closed one has none
        outq_len = unsq_len = 0
    if state in SNDQ_FIRST_FIN or state in SNDQ_SECOND_FIN:
        # our FIN takes a sequence number but holds no byte
        outq_len = max(outq_len - 1, 0)
        unsq_len = max(unsq_len - 1, 0)
    tse = tcp_stream_pb2.tcp_stream_entry(
        inq_len=inq_len, inq_seq=0, outq_len=outq_len, outq_seq=0, opt_mask=options,
        snd_wscale=0, mss_clamp=sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG),
        unsq_len=unsq_len,
        nodelay=bool(sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
        cork=bool(sk.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)))
    if options & TCPI_OPT_WSCALE:
        # __u8 tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4 -- low nibble first
        tse.snd_wscale = wscale & 0xF
        tse.rcv_wscale = wscale >> 4
    if options & TCPI_OPT_TIMESTAMPS:
        tse.timestamp = sk.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP) & 0xFFFFFFFF
    win = _WINDOW.unpack(sk.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, _WINDOW.size))
    tse.snd_wl1, tse.snd_wnd, tse.max_window, tse.rcv_wnd, tse.rcv_wup = win
    # the queues' bytes are peeked when the image is written (_write_stream)
    tse.inq_seq = _queue_seq(sk, TCP_RECV_QUEUE)
    tse.outq_seq = _queue_seq(sk, TCP_SEND_QUEUE)
    sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    return tse


def _queue_seq(sk: socket.socket, queue: int) -> int:
    sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
    return int(sk.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ) & 0xFFFFFFFF)


# The receive queue is peeked a window at a time (SO_PEEK_OFF moves on by
# what each peek returned) through one small buffer that stays in the
# cache; the send queue takes no SO_PEEK_OFF (tcp_peek_sndq copies it whole
# from its start), so it needs a buffer of its full size.
_WINDOW_BYTES = 256 << 10
_PAGE = 4096
MADV_POPULATE_WRITE = 23


class _Buffer:
    """Anonymous memory for the peeks, in 4 KiB pages faulted in by one
    MADV_POPULATE_WRITE (Linux 5.14; else by the copy itself), never huge
    pages: this VM's balloon reports free blocks of 2 MiB and more to the
    host (page_reporting_order 9), so a huge page is often one the host
    must fault in again: 2 MiB took 0.3 ms or 5-10 ms, 8 MiB of huge pages
    1.7 to 50 ms CPU in fresh processes, 4 KiB pages a steady ~0.6 ms a MiB.

    view(n, file_pos) gives n bytes placed 2 KiB off the file position
    modulo 4 KiB: a copy whose destination is a few bytes ahead of its
    source modulo 4 KiB runs at a third of the speed (4K aliasing: write(2)
    of 8 MiB took 7 ms from a page-aligned buffer to an image offset a few
    dozen bytes into a page, 2 ms with the 2 KiB skew)."""

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, size + 2 * _PAGE,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for advice in (mmap.MADV_NOHUGEPAGE, MADV_POPULATE_WRITE):
            try:
                self._map.madvise(advice)
            except (OSError, AttributeError):   # an older kernel: faulted by the copy
                pass
        self._views: list[memoryview] = []

    def view(self, n: int, file_pos: int) -> memoryview:
        skew = (file_pos + _PAGE // 2) % _PAGE
        v = memoryview(self._map)[skew:skew + n]
        self._views.append(v)
        return v

    def close(self) -> None:
        for v in self._views:
            v.release()
        self._map.close()


def _peek(sk: socket.socket, view: memoryview) -> int:
    """Peek up to len(view) bytes; how many came."""
    return int(sk.recv_into(view, len(view), socket.MSG_PEEK | socket.MSG_DONTWAIT))


def _short(label: str, which: str, got: int, length: int) -> DumpError:
    return DumpError(f"{label}: {which} queue gave {got} bytes, expected {length}")


def _receive_queue(sk: socket.socket, w: Any, buf: _Buffer, length: int, label: str) -> bool:
    """The receive queue into the image, a window at a time with
    SO_PEEK_OFF; False if this kernel's TCP takes no SO_PEEK_OFF (before
    6.10), nothing written then.  The task's own SO_PEEK_OFF is put back."""
    from .sockets import SO_PEEK_OFF
    try:
        old = sk.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
        sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    except OSError:
        return False
    try:
        win = buf.view(min(length + 1, _WINDOW_BYTES), w.tell())
        done = 0
        while True:
            # the last peek asks one byte more than expected: proves the
            # queue holds exactly length (a queue of a whole number of
            # windows ends with a peek of one byte that must find none)
            ask = min(_WINDOW_BYTES, length - done + 1)
            try:
                got = _peek(sk, win[:ask])
            except BlockingIOError:
                got = 0
            if got != min(ask, length - done):
                raise _short(label, "receive", done + got, length)
            if got:
                w.write_raw(win[:got])
            done += got
            if got < ask:
                break
    finally:
        sk.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)
    return True


def _copy_queues(sk: socket.socket, w: Any, inq_len: int, outq_len: int, label: str) -> None:
    """Both queues of a connection in repair mode, as they follow the
    entry in its image: the receive queue, then the send queue.  Each peek
    asks one byte more than the queue's expected length, which proves it
    holds exactly that."""
    tcp = socket.IPPROTO_TCP
    # the receive queue's window, also the filler of the send queue's place
    bufs = [_Buffer(_WINDOW_BYTES)]
    try:
        if inq_len:
            sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
            if not _receive_queue(sk, w, bufs[0], inq_len, label):
                bufs.append(_Buffer(inq_len + 1))
                _whole_queue(sk, w, bufs[-1], inq_len, label, "receive")
        if outq_len:
            sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            if outq_len < _IN_PLACE or not _send_queue_in_place(sk, w, bufs[0], outq_len,
                                                                 label):
                bufs.append(_Buffer(outq_len + 1))
                _whole_queue(sk, w, bufs[-1], outq_len, label, "send")
    finally:
        sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        for buf in bufs:
            buf.close()


# A send queue this big is peeked into the image file's own pages (a
# shared mapping of its place in the file, written first with a filler the
# peek overwrites): no buffer of ours to fault in and free, no second copy.
# 4 MiB: ~4.7 ms CPU this way, ~6 ms through 4 KiB pages of our own.
_IN_PLACE = 1 << 20


def _send_queue_in_place(sk: socket.socket, w: Any, buf: _Buffer, length: int,
                         label: str) -> bool:
    """The send queue peeked into its place in the image through a shared
    mapping; False if the file cannot be mapped (nothing written then)."""
    fd = w.fileno()
    at = w.tell()
    filler = buf.view(_WINDOW_BYTES, at)
    done = 0
    try:
        # one byte more, for the peek's spare byte; cut off below
        while done < length + 1:
            done += os.write(fd, filler[:min(len(filler), length + 1 - done)])
    except OSError as exc:
        raise DumpError(f"{w.path}: write failed: {exc.strerror or exc}") from None
    start = at - at % mmap.ALLOCATIONGRANULARITY
    try:
        m = mmap.mmap(fd, at + length + 1 - start, offset=start)
    except OSError:
        # a filesystem that maps no files: the filler goes again
        os.ftruncate(fd, at)
        w.resync(at)
        return False
    view = memoryview(m)[at - start:]
    try:
        try:
            m.madvise(MADV_POPULATE_WRITE)
        except (OSError, AttributeError):   # faulted in by the copy instead
            pass
        got = _peek(sk, view)
    finally:
        view.release()
        m.close()
    if got != length:
        raise _short(label, "send", got, length)
    os.ftruncate(fd, at + length)
    w.resync(at + length)
    return True


def _whole_queue(sk: socket.socket, w: Any, buf: _Buffer, length: int, label: str,
                 which: str) -> None:
    """A queue in one peek, then into the image."""
    view = buf.view(length + 1, w.tell())
    got = _peek(sk, view)
    if got != length:
        raise _short(label, which, got, length)
    w.write_raw(view[:got])


def _write_stream(ctx: "DumpContext", ino: int, tse: Any, sk: socket.socket,
                  label: str) -> None:
    """The connection's image: its entry, then its queues' bytes peeked
    straight into the image (the socket is still in repair mode, behind
    the lock: they are what _save counted)."""
    ctx.created.append(images.image_path(ctx.images_dir, "tcp-stream", ino))
    with images.ImageWriter(ctx.images_dir, "tcp-stream", ino) as w:
        w.write(tse)
        t0 = _clock()
        try:
            if tse.inq_len or tse.outq_len:
                _copy_queues(sk, w, tse.inq_len, tse.outq_len, label)
        except OSError as exc:
            raise DumpError(f"{label}: reading the queues in repair mode: "
                            f"{exc.strerror or exc}") from None
        finally:
            _timed(ctx.stats, t0)


def finish(ctx: "DumpContext") -> None:
    st = ctx.kind_state.get(NAME)
    if not st:
        return
    streams, st["streams"] = st["streams"], []
    for ino, tse, sk, label in streams:
        _write_stream(ctx, ino, tse, sk, label)


# -------------------------------------------------------------- restore ----

def _rst(rctx: "RestoreContext") -> dict[str, Any]:
    st = rctx.kind_state.get(NAME)
    if st is None:
        st = {"fds": [], "conns": []}
        rctx.kind_state[NAME] = st

        def repair_off() -> None:
            for fd, reuseaddr in st["fds"]:
                sk = socket.socket(fileno=fd)
                try:
                    sk.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
                    # leaving repair mode cleared SO_REUSEADDR (sk_reuse)
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuseaddr)
                except OSError as exc:
                    raise RestoreError(f"TCP socket: cannot leave repair mode: "
                                       f"{exc.strerror}") from None
                finally:
                    sk.detach()

        def drop_lock() -> None:
            unlock_images(rctx.images_dir, rctx.tasks[0].pid, st["conns"])
        rctx.before_detach.append(repair_off)
        rctx.after_detach.append(drop_lock)
    return st


def closed_instead(rctx: "RestoreContext") -> None:
    """A connection restored closed (--tcp-close): its lock must still go
    once the tree runs."""
    _rst(rctx)


def _send_all(sk: socket.socket, data: bytes | memoryview, what: str) -> None:
    view = memoryview(data)
    chunk = len(view)
    while view:
        try:
            n = sk.send(view[:chunk])
        except OSError as exc:
            # In repair mode the kernel makes one linear skb per call:
            # a big one may fail with ENOMEM; try smaller (as soccr).
            if exc.errno == 12 and chunk > 1024:
                chunk //= 2
                continue
            raise RestoreError(f"{what}: cannot put back queued data: {exc.strerror}") from None
        view = view[n:]


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        got = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return got >= (major, minor)


# sendfile(2) into a socket goes through sendmsg(MSG_SPLICE_PAGES) since
# 6.5, where tcp_sendmsg_locked honours repair mode (tcp_send_rcvq: the
# bytes are copied into the receive queue).  Before, it went through
# ->sendpage, which ignores repair mode: the receive queue's bytes would
# have gone to the send queue.
_SENDFILE_INTO_REPAIR = _kernel_at_least(6, 5)


class _ImageQueues:
    """The queues' bytes of a tcp-stream image, left in the file: no
    copy of megabytes through Python.

    The receive queue goes to the socket with sendfile(2) (the kernel
    copies it from the page cache into the queue: one copy, no buffer of
    ours).  The send queue is sent from a read-only mapping of the file:
    sendfile would splice the page-cache pages themselves into the send
    queue without a copy, and a later change to the image file would then
    change what the connection retransmits."""

    def __init__(self, path: str, offset: int, inq_len: int, outq_len: int) -> None:
        self.path, self.offset = path, offset
        self.inq_len, self.outq_len = inq_len, outq_len
        self._map: mmap.mmap | None = None
        self._views: list[memoryview] = []
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _view(self, start: int, length: int) -> memoryview:
        at = self.offset + start
        if self._map is None:
            try:
                self._map = mmap.mmap(self.fd, 0, prot=mmap.PROT_READ)
            except OSError:
                # a filesystem that maps no files: read it
                data = os.pread(self.fd, length, at)
                if len(data) != length:
                    raise RestoreError(f"{self.path}: {length} bytes of queue at offset {at}, "
                                       f"{len(data)} read") from None
                return memoryview(data)
        v = memoryview(self._map)[at:at + length]
        self._views.append(v)
        return v

    def outq(self, start: int, length: int) -> memoryview:
        return self._view(self.inq_len + start, length)

    def to_receive_queue(self, sk: socket.socket, what: str) -> None:
        """The receive queue, into ``sk`` (in repair mode, TCP_RECV_QUEUE)."""
        done = 0
        if _SENDFILE_INTO_REPAIR:
            try:
                while done < self.inq_len:
                    n = os.sendfile(sk.fileno(), self.fd, self.offset + done,
                                    self.inq_len - done)
                    if n <= 0:
                        break
                    done += n
            except OSError as exc:
                # whatever refused it (a filesystem without splice, a
                # kernel without it in repair mode): the rest by send()
                log.debug("%s: sendfile into the receive queue: %s; send() instead",
                          what, exc.strerror or exc)
        if done < self.inq_len:
            _send_all(sk, self._view(done, self.inq_len - done), what)

    def close(self) -> None:
        os.close(self.fd)
        try:
            for v in self._views:
                v.release()
            if self._map is not None:
                self._map.close()
        except BufferError:
            # a view still held by a traceback being raised: the mapping
            # goes with it
            pass


def _check_queue(sk: socket.socket, req: int, want: int, what: str, which: str) -> None:
    """The kernel holds exactly the bytes put back, in the queue meant."""
    got = _ioctl_int(sk, req)
    if got != want:
        raise RestoreError(f"{what}: the {which} queue holds {got} bytes after the restore put "
                           f"back {want}")


def _seq(v: int) -> int:
    """A sequence number as the signed int setsockopt takes."""
    return int(struct.unpack("i", struct.pack("I", v & 0xFFFFFFFF))[0])


def restore_established(rctx: "RestoreContext", sk: socket.socket, ie: Any, what: str) -> None:
    """The connection of ``ie`` (any of CONN_STATES) on our fresh socket
    ``sk``, left in repair mode until the tree runs."""

    st = _rst(rctx)
    st["conns"].append(_conn(ie))
    path = images.image_path(rctx.images_dir, "tcp-stream", ie.ino)
    if not os.path.exists(path):
        raise RestoreError(f"{what}: {path}: missing (was the dump made with "
                           "--tcp-established?)")
    # the queues stay in the file: sent to the socket from there
    entries = images.read_entries(rctx.images_dir, "tcp-stream", ie.ino, tails=False)
    if len(entries) != 1:
        raise RestoreError(f"{path}: expected one entry, found {len(entries)}")
    tse, entry = entries[0].msg, entries[0]
    t0 = _clock()
    src = _ImageQueues(path, entry.tail_offset, tse.inq_len, entry.tail_len - tse.inq_len)
    _timed(rctx.stats, t0)
    try:
        _restore_established(rctx, sk, ie, tse, src, what)
    finally:
        t0 = _clock()
        src.close()
        _timed(rctx.stats, t0)


def _restore_established(rctx: "RestoreContext", sk: socket.socket, ie: Any, tse: Any,
                         src: "_ImageQueues", what: str) -> None:
    st = _rst(rctx)
    state = ie.state
    err = tse.so_error if tse.HasField("so_error") else 0
    if err:
        # a reset connection: built in the state the RST found it in, then
        # reset by an injected RST, which sets the same error (tcp_reset)
        if ie.state != CLOSE or err not in RESET_FROM:
            raise RestoreError(f"{what}: pending error {errno.errorcode.get(err, err)} on a "
                               f"socket in state {TCP_STATES.get(ie.state, ie.state)} "
                               "cannot be recreated")
        state = RESET_FROM[err]
    if state not in CONN_STATES:
        raise RestoreError(f"{what}: TCP state {TCP_STATES.get(state, state)} cannot be "
                           "restored")
    tcp = socket.IPPROTO_TCP
    # the sequence numbers before the FINs (soccr's libsoccr_set_sk_data_noq)
    inq_seq = tse.inq_seq - (1 if state in RCVQ_FIN else 0)
    outq_seq = tse.outq_seq - (1 if state in SNDQ_FIRST_FIN or state in SNDQ_SECOND_FIN else 0)
    # big buffers while the queues are refilled (restore_opts puts the
    # dumped sizes back): a full send queue must fit again
    from .sockets import prepare
    prepare(sk)
    sk.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)
    # in repair mode the bind skips the port conflict check (sk_reuse is
    # SK_FORCE_REUSE): a listener or a TIME_WAIT on the port does not stop it
    sk.bind((unpack_addr(ie.family, ie.src_addr), ie.src_port))
    # the kernel moves these on by what is queued below
    sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
    sk.setsockopt(tcp, TCP_QUEUE_SEQ, _seq(inq_seq - tse.inq_len))
    sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
    # SYN_SENT: write_seq is one past the SYN; the SYN is sent again with
    # the same initial sequence number (soccr's seq--)
    sk.setsockopt(tcp, TCP_QUEUE_SEQ, _seq(outq_seq - tse.outq_len
                                           - (1 if state == SYN_SENT else 0)))
    peer = (unpack_addr(ie.family, ie.dst_addr), ie.dst_port)
    if state == SYN_SENT:
        _resend_syn(sk, peer, what)
    else:
        sk.connect(peer)
    opts = []
    if tse.opt_mask & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERM, 0))
    if tse.opt_mask & TCPI_OPT_WSCALE:
        opts.append((TCPOPT_WINDOW, tse.snd_wscale + (tse.rcv_wscale << 16)))
    if tse.opt_mask & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    opts.append((TCPOPT_MSS, tse.mss_clamp))
    if state != SYN_SENT:
        # (a SYN_SENT socket negotiates them with its own SYN, as soccr)
        sk.setsockopt(tcp, TCP_REPAIR_OPTIONS,
                      b"".join(struct.pack("II", c, v) for c, v in opts))
    if tse.opt_mask & TCPI_OPT_TIMESTAMPS:
        sk.setsockopt(tcp, TCP_TIMESTAMP, struct.pack("I", tse.timestamp))
    t0 = _clock()
    if src.inq_len:
        sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
        src.to_receive_queue(sk, what)
        _check_queue(sk, SIOCINQ, src.inq_len, what, "receive")
    unsent = tse.unsq_len if tse.HasField("unsq_len") else 0
    sent = src.outq_len - unsent
    if sent:
        sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        _send_all(sk, src.outq(0, sent), what)
    if unsent:
        # never left this host: sent normally (the lock holds it back)
        sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
        sk.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_OFF)
        _send_all(sk, src.outq(sent, unsent), what)
        sk.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)
    if src.outq_len:
        # the end of the send queue, not its length (SIOCOUTQ): an
        # acknowledgement may shorten the queue by now, never move its end
        sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        end = sk.getsockopt(tcp, TCP_QUEUE_SEQ) & 0xFFFFFFFF
        if end != outq_seq & 0xFFFFFFFF:
            raise RestoreError(f"{what}: the send queue ends at sequence number {end} after the "
                               f"restore put back {src.outq_len} bytes, not at "
                               f"{outq_seq & 0xFFFFFFFF}")
    _timed(rctx.stats, t0)
    if tse.HasField("snd_wl1"):
        rcv_wnd, rcv_wup = tse.rcv_wnd, tse.rcv_wup
        if state in RCVQ_FIN:
            # the window as it was before the peer's FIN came in
            rcv_wup -= 1
            rcv_wnd += 1
        sk.setsockopt(tcp, TCP_REPAIR_WINDOW, _WINDOW.pack(
            tse.snd_wl1, tse.snd_wnd, tse.max_window, rcv_wnd, rcv_wup & 0xFFFFFFFF))
    sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)
    if state not in (ESTABLISHED, SYN_SENT):
        _replay_fins(sk, ie, tse, state, inq_seq, outq_seq, what)
    if err:
        # at the sequence number the socket expects next (RFC 5961: only
        # an exact one resets), acknowledging all it sent
        inject(ie, tse.inq_seq, tse.outq_seq, TH_RST | TH_ACK, 0)
        _wait_state(sk, CLOSE, what, "the injected RST")
    if not ie.HasField("tcp_opts"):
        # an image without tcp_opts (inetsk sets those)
        if tse.nodelay:
            sk.setsockopt(tcp, socket.TCP_NODELAY, 1)
        if tse.cork:
            sk.setsockopt(tcp, socket.TCP_CORK, 1)
    st["fds"].append((sk.fileno(), int(ie.opts.reuseaddr)))


def _resend_syn(sk: socket.socket, peer: tuple[str, int], what: str) -> None:
    """A connection in SYN_SENT, as soccr: a real, non-blocking connect()
    out of repair mode sends the SYN again from the dumped initial sequence
    number (the network lock holds it back until the tree runs; then the
    SYN retransmission timer does the rest), and repair mode goes back on."""
    tcp = socket.IPPROTO_TCP
    sk.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_OFF)
    blocking = sk.getblocking()
    sk.setblocking(False)
    err = sk.connect_ex(peer)
    sk.setblocking(blocking)
    if err not in (0, errno.EINPROGRESS):
        raise RestoreError(f"{what}: cannot send the SYN again: {os.strerror(err)}")
    sk.setsockopt(tcp, TCP_REPAIR, TCP_REPAIR_ON)


def _replay_fins(sk: socket.socket, ie: Any, tse: Any, state: int, inq_seq: int,
                 outq_seq: int, what: str) -> None:
    """From ESTABLISHED to ``state``, in soccr's order (libsoccr_restore)."""
    tcp = socket.IPPROTO_TCP
    snd_una = outq_seq - tse.outq_len
    # the peer's window as it last advertised it, in its own scale
    win = min(tse.snd_wnd >> (tse.snd_wscale if tse.opt_mask & TCPI_OPT_WSCALE else 0), 0xFFFF)

    def our_fin() -> None:
        acked = state in SNDQ_FIN_ACKED
        if acked:
            # queued as already sent: the peer's ACK below takes it
            sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        sk.shutdown(socket.SHUT_WR)
        if acked:
            sk.setsockopt(tcp, TCP_REPAIR_QUEUE, TCP_NO_QUEUE)

    if state in SNDQ_FIRST_FIN:
        our_fin()
    if state in RCVQ_FIN:
        inject(ie, inq_seq, snd_una, TH_FIN | TH_ACK, win)
    if state in SNDQ_SECOND_FIN:
        our_fin()
    if state in SNDQ_FIN_ACKED:
        seq = inq_seq + (1 if state in RCVQ_FIN_ACKED else 0)
        inject(ie, seq, snd_una + 1, TH_ACK, win)
    _wait_state(sk, state, what, "replaying the FINs")


def _wait_state(sk: socket.socket, state: int, what: str, how: str) -> None:
    got = tcp_state(sk)
    for _ in range(200):
        if got == state:
            break
        # loopback delivers in the sender's softirq; a real NIC later
        import time
        time.sleep(0.005)
        got = tcp_state(sk)
    if got != state:
        raise RestoreError(f"{what}: {how} gave TCP state "
                           f"{TCP_STATES.get(got, got)}, not {TCP_STATES.get(state, state)}")


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def inject(ie: Any, seq: int, ack: int, flags: int, window: int) -> None:
    """Send our socket a segment as if from its peer (soccr's send_fin),
    through a raw socket, marked so that the network lock lets it in."""
    fam = ie.family
    ours = socket.inet_pton(fam, unpack_addr(fam, ie.src_addr))
    peer = socket.inet_pton(fam, unpack_addr(fam, ie.dst_addr))
    if fam == socket.AF_INET6 and peer[:12] == b"\0" * 10 + b"\xff\xff":
        fam, ours, peer = socket.AF_INET, ours[12:], peer[12:]     # v4-mapped: IPv4 on the wire
    tcph = struct.pack("!HHIIBBHHH", ie.dst_port, ie.src_port, seq & 0xFFFFFFFF,
                       ack & 0xFFFFFFFF, 5 << 4, flags, window, 0, 0)
    if fam == socket.AF_INET:
        pseudo = peer + ours + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcph))
    else:
        pseudo = peer + ours + struct.pack("!IxxxB", len(tcph), socket.IPPROTO_TCP)
    tcph = tcph[:16] + struct.pack("!H", _csum(pseudo + tcph)) + tcph[18:]
    if fam == socket.AF_INET:
        # id, checksum and total length: the kernel fills them in
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcph), 0, 0, 64,
                          socket.IPPROTO_TCP, 0, peer, ours)
    else:
        iph = struct.pack("!IHBB16s16s", 6 << 28, len(tcph), socket.IPPROTO_TCP, 64, peer, ours)
    raw = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)   # IPPROTO_RAW: header ours
    try:
        raw.setsockopt(socket.SOL_SOCKET, SO_MARK, SOCCR_MARK)
        raw.sendto(iph + tcph, (socket.inet_ntop(fam, ours), 0))
    except OSError as exc:
        raise RestoreError(f"TCP {unpack_addr(ie.family, ie.src_addr)}:{ie.src_port}: cannot "
                           f"inject the peer's segment: {exc.strerror or exc}") from None
    finally:
        raw.close()
