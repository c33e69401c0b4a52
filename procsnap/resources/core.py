"""Registers and task identity: core-PID.img's thread_info (general
registers, FPU/xsave), pstree.img's entry and ids-PID.img.

The registers are stored as the task must resume: a system call our freeze
interrupted is already rewound to restart (see dumper.restart_fixup), so
restore does not depend on the kernel's restart block, which dies with
the task.  They are the last thing installed in the puppet, after the
trampoline page is gone, right before it is let go.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import core_pb2, core_x86_pb2
from ..kernel import consts as C
from ..kernel import ptrace, xsave
from ..kernel.libc import syscall
from ..inject import restart_fixup
from ..kernel.structs import USER_REGS_FIELDS, UserRegs
from ..tasks import make_pstree_entry

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "core"
DUMPS_ZOMBIES = True
# tc.task_state (CRIU's compel task states)
TASK_ALIVE = 1
TASK_DEAD = 2
TASK_STOPPED = 3

# user_regs_struct field -> CRIU's user_x86_regs_entry field
_REG_NAMES = {"rbp": "bp", "rbx": "bx", "rax": "ax", "rcx": "cx", "rdx": "dx", "rsi": "si",
              "rdi": "di", "orig_rax": "orig_ax", "rip": "ip", "eflags": "flags", "rsp": "sp"}


def regs_to_entry(regs: UserRegs):
    return core_x86_pb2.user_x86_regs_entry(
        **{_REG_NAMES.get(n, n): getattr(regs, n) for n in USER_REGS_FIELDS},
        mode=core_x86_pb2.NATIVE)


def entry_to_regs(entry) -> UserRegs:
    regs = UserRegs()
    for n in USER_REGS_FIELDS:
        setattr(regs, n, getattr(entry, _REG_NAMES.get(n, n)))
    return regs


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    pid = task.pid
    stat = task.stat
    assert stat is not None
    is_root = task is ctx.tasks[0]
    if is_root:
        _check_sessions(ctx)
    task.pstree = make_pstree_entry(task)
    if is_root:
        task.pstree.ppid = 0  # as CRIU: the root's parent is not in the dump
    if task.zombie:
        # A zombie has no memory, files or registers: only its exit status.
        tc = task.core.tc
        tc.task_state, tc.exit_code = TASK_DEAD, stat.exit_code
        tc.personality, tc.flags, tc.blk_sigset, tc.comm = 0, stat.flags, 0, stat.comm
        return
    for th in task.threads:
        assert th.regs is not None
        regs = restart_fixup(th.regs)
        if regs.cs != 0x33:
            raise Unsupported(f"pid {pid}: thread {th.tid} runs in 32-bit mode "
                              f"(cs {regs.cs:#x}); not supported")
        ti = th.core.thread_info
        ti.gpregs.CopyFrom(regs_to_entry(regs))
        try:
            parts = xsave.split(ptrace.get_xstate(th.tid))
        except ValueError as exc:
            raise Unsupported(f"pid {pid}: thread {th.tid}: {exc}") from None
        ti.fpregs.CopyFrom(core_x86_pb2.user_x86_fpregs_entry(**parts["fpregs"]))
        ti.fpregs.xsave.CopyFrom(core_x86_pb2.user_x86_xsave_entry(**parts["xsave"]))
        ti.clear_tid_addr = 0
    n = ctx.task_number(task)
    task.ids = core_pb2.task_kobj_ids_entry(vm_id=n, files_id=n, fs_id=n, sighand_id=n)
    _shared_kobjs(ctx, task)
    task.core.ids.CopyFrom(task.ids)


# kcmp(2) types: the kernel objects clone() may share between processes
KCMP_VM, KCMP_FILES, KCMP_FS, KCMP_SIGHAND = 1, 2, 3, 4


def _same_as(ctx: "DumpContext", task: "DumpTask", kind: int) -> int | None:
    """The pid of a task seen before that shares object ``kind`` with
    ``task`` (kcmp orders objects: 0 same, 1 less, 2 greater, so a binary
    search over those seen finds it), or None; ``task`` joins the list."""
    known: list[int] = ctx.kind_state.setdefault(f"kcmp-{kind}", [])
    lo, hi = 0, len(known)
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            order = syscall(C.NR["kcmp"], task.pid, known[mid], kind, 0, 0)
        except OSError as exc:
            raise DumpError(f"pid {task.pid}: kcmp with pid {known[mid]}: "
                            f"{exc.strerror}") from None
        if order == 0:
            return known[mid]
        if order == 1:
            hi = mid
        else:
            lo = mid + 1
    known.insert(lo, task.pid)
    return None


def _shared_kobjs(ctx: "DumpContext", task: "DumpTask") -> None:
    """ids-PID.img as CRIU: processes that share an fd table (CLONE_FILES)
    or an fs struct -- cwd, root, umask (CLONE_FS) -- get the same
    files_id / fs_id, and the restore clones the child with that flag from
    its parent; the table (its fds) and the fs struct are restored once,
    by the first.  Only a child sharing with its parent can be made so
    (as CRIU's get_clone_mask): any other sharing is refused.  Memory and
    signal handlers shared between processes (CLONE_VM: vfork, CLONE_SIGHAND
    needs it) are refused: each would come back with a copy of its own."""
    other = _same_as(ctx, task, KCMP_VM)
    if other is not None:
        raise Unsupported(f"pid {task.pid}: shares its memory with pid {other} (clone with "
                          "CLONE_VM, e.g. vfork, without CLONE_THREAD); not supported")
    by_pid = {t.pid: t for t in ctx.tasks}
    parent = by_pid.get(task.stat.ppid) if task.stat is not None else None
    for kind, field, what, flag in ((KCMP_FILES, "files_id", "fd table", "CLONE_FILES"),
                                    (KCMP_FS, "fs_id", "cwd, root and umask", "CLONE_FS")):
        other = _same_as(ctx, task, kind)
        if other is None:
            continue
        owner = by_pid[other]
        assert owner.ids is not None
        if parent is None or parent.ids is None or \
                getattr(parent.ids, field) != getattr(owner.ids, field):
            raise Unsupported(f"pid {task.pid}: shares its {what} with pid {other} (clone "
                              f"with {flag}), and its parent does not share it: only a "
                              "table shared with the parent can be restored")
        setattr(task.ids, field, getattr(owner.ids, field))


def shares_with_parent(ctx: "DumpContext", task: "DumpTask", field: str) -> bool:
    """Does ``task`` share its ``files_id``/``fs_id`` object with a task
    dumped before it (so that one saves it)?"""
    ids = task.ids
    return ids is not None and getattr(ids, field) != ctx.task_number(task)


def _check_sessions(ctx: "DumpContext") -> None:
    """Refuse session/group layouts the restore cannot rebuild.

    Every task is recreated by its parent, so a task can only be in its
    parent's session or lead its own (setsid); a process group must be led
    by a task of the tree -- or, for a shell job, be the shell's group.
    """
    root = ctx.tasks[0]
    rstat = root.stat
    assert rstat is not None
    if not ctx.opts.shell_job:
        if rstat.session != root.pid:
            raise DumpError(f"pid {root.pid} is not a session leader (its session "
                            f"{rstat.session} is outside the dump); use --shell-job, "
                            "or start it with setsid")
        if rstat.pgrp != root.pid:
            raise DumpError(f"pid {root.pid} is not a process group leader (its group "
                            f"{rstat.pgrp} is outside the dump); use --shell-job")
    pids = {t.pid: t for t in ctx.tasks}
    for t in ctx.tasks[1:]:
        st = t.stat
        assert st is not None
        parent = pids.get(st.ppid)
        psid = parent.stat.session if parent is not None and parent.stat else None
        if st.session not in (t.pid, psid):
            raise Unsupported(f"pid {t.pid}: its session {st.session} is neither its own nor "
                              "its parent's; this layout is not supported yet")
        if st.pgrp not in pids and not (ctx.opts.shell_job and st.pgrp == rstat.pgrp):
            _check_reaped_leader(ctx, t.pid, st.pgrp, pids)


def _check_reaped_leader(ctx: "DumpContext", pid: int, pgrp: int, pids: dict) -> None:
    """A group whose leader is not in the tree is saved only when that
    leader is gone -- exited and reaped, so no task has its pid -- and no
    task outside the tree is in the group: the restore then recreates it
    with a short-lived helper task of that pid (as CRIU's TASK_HELPER).  A
    leader alive outside is refused: the restored members would sit in a
    group of their own, cut from it."""
    if os.path.exists(f"/proc/{pgrp}"):
        raise Unsupported(f"pid {pid}: its process group {pgrp} is led from outside "
                          "the dumped tree")
    root = ctx.tasks[0].pid
    try:
        own_ns = os.stat(f"/proc/{root}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        own_ns = False
    if own_ns:
        # the helper is made with the leader's pid inside the namespace too:
        # the member's NSpgid says it (pstree names the group by it)
        inner = _inside_pgid(pid)
        if inner is None:
            raise Unsupported(f"pid {pid}: its process group {pgrp} was led by a process "
                              "that is gone, in a pid namespace of the tree's own, and its "
                              f"pid there is unknown (no NSpgid in /proc/{pid}/status)")
        ctx.kind_state.setdefault(GONE_GROUPS, {})[pgrp] = inner
    for other in _group_members(pgrp):
        if other not in pids:
            raise Unsupported(f"pid {pid}: its process group {pgrp} (its leader is gone) also "
                              f"holds pid {other}, outside the dumped tree")


# DumpContext.kind_state key: outside pgid -> inside pgid of a group whose
# leader is gone, in the tree's own pid namespace (images.pidview.to_inside)
GONE_GROUPS = "gone-groups"


def _inside_pgid(pid: int) -> int | None:
    """The group of ``pid`` as its own pid namespace names it (the last of
    NSpgid; a zombie's status has it too)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpgid:"):
                    ids = line.split()[1:]
                    return int(ids[-1]) if len(ids) == 2 else None
    except OSError:
        pass
    return None


def _group_members(pgrp: int) -> list[int]:
    """Every process (in our pid namespace) whose group is ``pgrp``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgrp:
            out.append(int(name))
    return out


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Nothing to do mid-way: see :func:`final`."""


def final(rctx: "RestoreContext", rt: "RestoreTask", th: Any, sigmask: int) -> None:
    """Install one thread's registers, FPU state and signal mask."""
    core = th.core
    if core.mtype != core_pb2.core_entry.X86_64 or not core.HasField("thread_info"):
        raise RestoreError(f"{rt.image_name('core', th.tid)}: not an x86_64 task")
    ti = core.thread_info
    regs = entry_to_regs(ti.gpregs)
    cur = ptrace.get_xstate(th.tid)
    fp = ti.fpregs
    fpregs = {k: getattr(fp, k) for k in ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr",
                                          "mxcsr_mask", "st_space", "xmm_space")}
    xs = None
    if fp.HasField("xsave"):
        xs = {f.name: getattr(fp.xsave, f.name) for f in fp.xsave.DESCRIPTOR.fields}
    try:
        area = xsave.join(fpregs, xs, len(cur))
    except ValueError as exc:
        raise RestoreError(f"{rt.image_name('core', th.tid)}: {exc}") from None
    ptrace.set_regs(th.tid, regs)
    ptrace.set_xstate(th.tid, area)
    ptrace.set_sigmask(th.tid, sigmask)
