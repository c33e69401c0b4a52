"""seccomp: strict mode and BPF filter chains, per thread (CRIU's
seccomp.img, thread_core.seccomp_mode / seccomp_filter).

Dump: every filter of every thread is read from outside with
PTRACE_SECCOMP_GET_FILTER (index 0 is the oldest, the root of the chain)
and its flags with PTRACE_SECCOMP_GET_METADATA.  Filters are stored once
for the whole tree: a filter is identified by its program, its flags and
the filter before it, so a chain inherited by fork or shared by threads
is one chain in seccomp.img, and each thread names its newest filter.

The kernel never tells whether two threads' identical chains are one
object (inherited, or TSYNC) or two copies, but it matters: a later
SECCOMP_FILTER_FLAG_TSYNC succeeds only when every other thread's filter
is an ancestor of the caller's.  So the longest prefix common to all the
threads of a process is installed once, from the leader with TSYNC (one
shared chain, as CRIU does when all threads are alike), and each thread
adds the rest of its own chain alone.

Order: filters apply to the task's own system calls, including the ones
we inject, and may forbid them (or kill for them: strict mode allows
read/write/exit/sigreturn only).  Both halves therefore run every tracee
with PTRACE_O_SUSPEND_SECCOMP (:func:`seize_options` for the dump, set
here on the puppet's threads for the restore) -- injected calls bypass
the filters until we detach, which ends the suspension.  At restore the
filters go in after taskattrs and before creds: installing a filter
without no_new_privs needs CAP_SYS_ADMIN, which the puppet still has;
creds then drops privileges and sets no_new_privs exactly per thread.

Refused: a filter whose program can return SECCOMP_RET_USER_NOTIF -- its
listener fd (the supervisor's end) is not restored, and without one the
kernel fails those calls with ENOSYS instead of asking the supervisor.
"""
from __future__ import annotations

import ctypes
import functools
import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..errors import RestoreError, Unsupported
from ..images.pb import core_pb2, seccomp_pb2
from ..kernel import consts as C
from ..kernel import ptrace

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "seccomp"
_CAP_SYS_ADMIN = 21
_BPF_RET_K = 0x06  # BPF_RET | BPF_K: return a constant


@functools.lru_cache(maxsize=1)
def suspend_option() -> int:
    """PTRACE_O_SUSPEND_SECCOMP when we may use it (CAP_SYS_ADMIN, not under
    seccomp ourselves), else 0 -- a task under filters then fails at its
    first injected call the filters forbid, as before."""
    eff = seccomp = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
            elif line.startswith("Seccomp:"):
                seccomp = int(line.split()[1])
    return C.PTRACE_O_SUSPEND_SECCOMP if eff >> _CAP_SYS_ADMIN & 1 and not seccomp else 0


def seize_options() -> int:
    """The dumper's PTRACE_SEIZE options."""
    return C.PTRACE_O_TRACESYSGOOD | suspend_option()


def _user_notif(prog: bytes) -> bool:
    for off in range(0, len(prog), 8):
        code = int.from_bytes(prog[off:off + 2], "little")
        k = int.from_bytes(prog[off + 4:off + 8], "little")
        if code == _BPF_RET_K and k & C.SECCOMP_RET_ACTION_FULL == C.SECCOMP_RET_USER_NOTIF:
            return True
    return False


def _state(ctx: "DumpContext") -> tuple[Any, dict[tuple[int, bytes, int], int]]:
    """seccomp.img's one entry, made at the first filter, and the index of
    its filters by (prev, program, flags)."""
    if "seccomp" not in ctx.kind_state:
        entry = seccomp_pb2.seccomp_entry()
        ctx.add_shared("seccomp", entry)
        ctx.kind_state["seccomp"] = (entry, {})
    return ctx.kind_state["seccomp"]


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    for th in task.threads:
        tid = th.tid
        st = task.thread_status(tid)
        mode = int(st.raw.get("Seccomp", "0"))
        tcore = th.core.thread_core
        if mode == 0:
            continue
        where = "" if tid == task.pid else f"thread {tid}: "
        if mode == C.SECCOMP_MODE_STRICT:
            tcore.seccomp_mode = core_pb2.strict
            continue
        if mode != C.SECCOMP_MODE_FILTER:
            raise Unsupported(f"pid {task.pid}: {where}seccomp mode {mode}; unknown to procsnap")
        if not suspend_option():
            raise Unsupported(f"pid {task.pid}: {where}runs under seccomp filters; reading "
                              "them needs CAP_SYS_ADMIN")
        entry, index = _state(ctx)
        filters = entry.seccomp_filters
        prev = 0  # image index + 1 of the filter before (0: none)
        i = 0
        while (prog := ptrace.seccomp_filter(tid, i)) is not None:
            if _user_notif(prog):
                raise Unsupported(f"pid {task.pid}: {where}seccomp filter {i} can return "
                                  "SECCOMP_RET_USER_NOTIF; its supervisor's listener fd is "
                                  "not restored")
            flags = ptrace.seccomp_flags(tid, i)
            key = (prev, prog, flags)
            if key not in index:
                ent = filters.add(filter=prog, flags=flags)
                if prev:
                    ent.prev = prev - 1
                index[key] = len(filters)
            prev = index[key]
            i += 1
        if not prev:
            raise Unsupported(f"pid {task.pid}: {where}seccomp filter mode without a filter")
        tcore.seccomp_mode = core_pb2.filter
        tcore.seccomp_filter = prev - 1


# -- restore ------------------------------------------------------------------

def _chain(rctx: "RestoreContext", rt: "RestoreTask", top: int) -> list[int]:
    """Image indexes of a chain, oldest first."""
    entries = _image(rctx, rt)
    out: list[int] = []
    i: int | None = top
    while i is not None:
        if i >= len(entries) or i in out:
            raise RestoreError(f"{rt.image_name('core')}: seccomp filter {i} is not in "
                               f"seccomp.img ({len(entries)} filters) or loops")
        out.append(i)
        i = entries[i].prev if entries[i].HasField("prev") else None
    return out[::-1]


def _image(rctx: "RestoreContext", rt: "RestoreTask") -> list[Any]:
    got = rctx.kind_state.get("seccomp")
    if got is None:
        path = images.image_path(rctx.images_dir, "seccomp", None)
        ents = images.read_image(rctx.images_dir, "seccomp") if os.path.exists(path) else []
        got = list(ents[0].seccomp_filters) if ents else []
        rctx.kind_state["seccomp"] = got
    return got


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    from ..tasks import PUPPET_OPTIONS

    modes = [th.core.thread_core.seccomp_mode if th.core.thread_core.HasField("seccomp_mode")
             else core_pb2.disabled for th in rt.threads]
    if not any(modes):
        return
    for th in rt.threads:
        # From now on our injected calls bypass the filters; detach ends it.
        ptrace.set_options(th.tid, PUPPET_OPTIONS | C.PTRACE_O_SUSPEND_SECCOMP)
    chains = {th.tid: _chain(rctx, rt, th.core.thread_core.seccomp_filter)
              for th, m in zip(rt.threads, modes) if m == core_pb2.filter}
    shared: list[int] = []
    if len(chains) == len(rt.threads) > 1:
        lists = list(chains.values())
        for step in zip(*lists):
            if len(set(step)) != 1:
                break
            shared.append(step[0])
    entries = _image(rctx, rt)
    for i in shared:
        _install(rt, rt.threads[0], entries[i], C.SECCOMP_FILTER_FLAG_TSYNC)
    for th, mode in zip(rt.threads, modes):
        if mode == core_pb2.strict:
            th.inj.call("prctl", C.PR_SET_SECCOMP, C.SECCOMP_MODE_STRICT, 0, 0, 0)
        elif mode == core_pb2.filter:
            for i in chains[th.tid][len(shared):]:
                _install(rt, th, entries[i], 0)


def _install(rt: "RestoreTask", th: Any, ent: Any, extra: int) -> None:
    inj = th.inj
    prog = bytes(ent.filter)
    if not prog or len(prog) % 8:
        raise RestoreError(f"{rt.image_name('core', th.tid)}: a seccomp filter of "
                           f"{len(prog)} bytes")
    code = inj.put(prog, align=8)
    fprog = inj.put(ctypes.c_uint64(len(prog) // 8).value.to_bytes(8, "little")
                    + code.to_bytes(8, "little"), align=8)
    flags = (ent.flags if ent.HasField("flags") else 0) | extra
    try:
        inj.call("seccomp", C.SECCOMP_SET_MODE_FILTER, flags, fprog)
    except OSError as exc:
        raise RestoreError(f"{rt.image_name('core', th.tid)}: cannot install a seccomp "
                           f"filter (flags {flags:#x}): {os.strerror(exc.errno or 0)}") from None
    inj.reset_scratch()
