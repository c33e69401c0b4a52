"""Credentials: uids, gids, groups, capabilities, securebits
(thread_core.creds in core-PID.img).

Restore order matters and is the reason this module runs last before the
registers: once the puppet drops its uid and capabilities, it can no
longer do the privileged steps (PR_SET_MM_MAP's exe, chroot, rlimits).
Within this module: bounding set and securebits first (they need
CAP_SETPCAP), then groups and gids, then uids with KEEP_CAPS so the
permitted set survives, then capset, then the ambient set (a uid change
clears it; raising needs the cap permitted and inheritable) and
no_new_privs, and finally the dumpable flag, which a uid change resets.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ..images.pb import creds_pb2
import functools
import os

from ..errors import RestoreError
from ..inject import Read
from ..kernel import consts as C
from ..kernel.structs import CapData, CapHeader

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "creds"
SECBIT_KEEP_CAPS = 1 << 4


def _words(mask: int) -> list[int]:
    return [mask & 0xFFFFFFFF, mask >> 32]


def _mask(words) -> int:
    w = list(words) + [0, 0]
    return w[0] | (w[1] << 32)


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    from .namespaces import user

    # In a user namespace of its own, ids are saved as the task sees them
    # (as CRIU's parasite reads them); /proc shows procsnap's view.
    idmap = user.id_map(task.pid)
    for thread in task.threads:
        st = task.thread_status(thread.tid)
        uids, gids, groups = tuple(st.uids), tuple(st.gids), list(st.groups)
        if idmap is not None:
            uids = user.inside_ids(task.pid, thread.tid, uids, "uid", idmap)
            gids = user.inside_ids(task.pid, thread.tid, gids, "gid", idmap)
            groups = user.inside_groups(groups, idmap)
        _dump_one(thread.read(SECUREBITS).result, st, thread.core, uids, gids, groups)


# asked of each thread by the driver, in one batch a thread (dumper._ask_threads)
SECUREBITS = Read("prctl", C.PR_GET_SECUREBITS, 0, 0, 0, 0)
THREAD_READS = [SECUREBITS]


def _dump_one(secbits: int, st, core, uids: tuple, gids: tuple, groups: list) -> None:
    uid, euid, suid, fsuid = uids
    gid, egid, sgid, fsgid = gids
    creds = creds_pb2.creds_entry(
        uid=uid, gid=gid, euid=euid, egid=egid, suid=suid, sgid=sgid, fsuid=fsuid, fsgid=fsgid,
        cap_inh=_words(st.cap_inh), cap_prm=_words(st.cap_prm), cap_eff=_words(st.cap_eff),
        cap_bnd=_words(st.cap_bnd), secbits=secbits, groups=groups)
    if st.cap_amb:
        creds.cap_amb.extend(_words(st.cap_amb))
    if st.no_new_privs:
        creds.no_new_privs = 1
    core.thread_core.creds.CopyFrom(creds)


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    # Credentials are per thread in Linux (the libc wrappers broadcast;
    # the raw syscalls we inject do not): set each thread's own.
    for thread in rt.threads:
        _restore_one(thread.inj, thread.core, rctx.host_pid_unset)
    if rt.mm.HasField("dumpable"):
        rt.inj.call("prctl", C.PR_SET_DUMPABLE, rt.mm.dumpable, 0, 0, 0)


@functools.lru_cache(maxsize=1)
def _own_creds() -> tuple:
    """The restorer's credentials -- which every puppet starts with -- in the
    shape of _key(): when a task's are the same, nothing needs doing."""
    from ..kernel.libc import prctl
    from ..procfs.reader import ProcReader

    st = ProcReader(os.getpid()).status()
    secbits = prctl(C.PR_GET_SECUREBITS)
    return (st.uids, st.gids, sorted(st.groups), st.cap_inh, st.cap_prm, st.cap_eff,
            st.cap_bnd, secbits)


@functools.lru_cache(maxsize=1)
def _own_amb_nnp() -> tuple[int, int]:
    """The restorer's ambient set and no_new_privs, which puppets inherit."""
    from ..procfs.reader import ProcReader

    st = ProcReader(os.getpid()).status()
    return st.cap_amb or 0, st.no_new_privs or 0


def _key(c) -> tuple:
    return ((c.uid, c.euid, c.suid, c.fsuid), (c.gid, c.egid, c.sgid, c.fsgid),
            sorted(c.groups), _mask(c.cap_inh), _mask(c.cap_prm), _mask(c.cap_eff),
            _mask(c.cap_bnd), c.secbits)


def _restore_one(inj, core, inside: bool = False) -> None:
    th = core.thread_core
    _restore_ids_caps(inj, core, inside)
    if not th.HasField("creds"):
        return
    c = th.creds
    amb = _mask(c.cap_amb)
    own_amb, own_nnp = _own_amb_nnp()
    if own_amb and own_amb != amb:
        inj.call("prctl", C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if own_nnp and not c.no_new_privs:
        raise RestoreError(f"pid {inj.pid}: procsnap runs with no_new_privs, which its "
                           "children cannot drop; the task had none")
    if amb and amb != own_amb:
        # After capset: a cap must be permitted and inheritable to be raised,
        # and a uid change away from 0 clears the ambient set.
        if c.secbits & C.SECBIT_NO_CAP_AMBIENT_RAISE:
            raise RestoreError(f"pid {inj.pid}: ambient capabilities {amb:#x} with "
                               "SECBIT_NO_CAP_AMBIENT_RAISE set cannot be raised again")
        for cap in range(64):
            if amb >> cap & 1:
                inj.call("prctl", C.PR_CAP_AMBIENT, C.PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    if c.HasField("no_new_privs") and c.no_new_privs:
        # Per thread, and for good: it cannot be unset.
        inj.call("prctl", C.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _current_groups(inj) -> list[int]:
    """The puppet's supplementary groups as it sees them (getgroups)."""
    n = inj.call("getgroups", 0, 0)
    if not n:
        return []
    addr = inj.put(bytes(4 * n), align=4)
    n = inj.call("getgroups", n, addr)
    raw = inj.read_mem(addr, 4 * n)
    return [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 4 * n, 4)]


def _restore_ids_caps(inj, core, inside: bool = False) -> None:
    """``inside``: the puppet lives in the tree's new user namespace
    (namespaces.user), whose ids and capability sets are not procsnap's."""
    th = core.thread_core
    if th.HasField("creds") and (inside or _key(th.creds) != _own_creds()):
        c = th.creds
        bnd = _mask(c.cap_bnd)
        if inside:
            from ..procfs.reader import ProcReader
            have = ProcReader(inj.pid).status().cap_bnd  # a new namespace's: every cap
        else:
            have = _own_creds()[6]
        for cap in range(64):
            if have & (1 << cap) and not bnd & (1 << cap):
                try:
                    inj.call("prctl", C.PR_CAPBSET_DROP, cap, 0, 0, 0)
                except OSError as exc:
                    if exc.errno != 22:  # EINVAL: the kernel has no such capability
                        raise
        cur_secbits = inj.call("prctl", C.PR_GET_SECUREBITS, 0, 0, 0, 0)
        want = c.secbits | SECBIT_KEEP_CAPS
        if cur_secbits != want:
            inj.call("prctl", C.PR_SET_SECUREBITS, want, 0, 0, 0)
        groups = list(c.groups)
        if inside and sorted(_current_groups(inj)) == sorted(groups):
            # as it is already; with setgroups "deny" it may not be set at
            # all, and a group unmapped inside (the overflow gid) can only
            # be inherited, never set
            pass
        else:
            addr = inj.put(b"".join(g.to_bytes(4, "little") for g in groups) or b"\0\0\0\0",
                           align=4)
            inj.call("setgroups", len(groups), addr)
        inj.call("setresgid", c.gid, c.egid, c.sgid)
        inj.call("setfsgid", c.fsgid, check=False)
        inj.call("setresuid", c.uid, c.euid, c.suid)
        inj.call("setfsuid", c.fsuid, check=False)
        hdr = CapHeader(version=C.LINUX_CAPABILITY_VERSION_3, pid=0)
        inh, prm, eff = _mask(c.cap_inh), _mask(c.cap_prm), _mask(c.cap_eff)
        data = (CapData * 2)()
        for i in range(2):
            data[i].effective = (eff >> (32 * i)) & 0xFFFFFFFF
            data[i].permitted = (prm >> (32 * i)) & 0xFFFFFFFF
            data[i].inheritable = (inh >> (32 * i)) & 0xFFFFFFFF
        h = inj.put(bytes(hdr), align=8)
        d = inj.put(bytes(data), align=8)
        inj.call("capset", h, d)
        if not c.secbits & SECBIT_KEEP_CAPS:
            # PR_SET_KEEPCAPS needs no privilege, unlike PR_SET_SECUREBITS.
            inj.call("prctl", C.PR_SET_KEEPCAPS, 0, 0, 0, 0)
        # A change of euid, egid, fsuid or fsgid clears the parent-death
        # signal taskattrs set: set it again (zdtm pdeath_sig as uid 18943).
        if th.HasField("pdeath_sig") and th.pdeath_sig:
            inj.call("prctl", C.PR_SET_PDEATHSIG, th.pdeath_sig, 0, 0, 0)
        inj.reset_scratch()


