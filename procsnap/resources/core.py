"""Registers and task identity: core-PID.img's thread_info (general
registers, FPU/xsave), pstree.img's entry and ids-PID.img.

The registers are stored as the task must resume: a system call our freeze
interrupted is already rewound to restart (see dump.restart_fixup), so
restore does not depend on the kernel's restart block, which dies with
the task.  They are the last thing installed in the puppet, after the
trampoline page is gone, right before it is let go.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import DumpError, RestoreError, Unsupported
from ..images.pb import core_pb2, core_x86_pb2
from ..kernel import ptrace, xsave
from ..kernel.structs import USER_REGS_FIELDS, UserRegs

if TYPE_CHECKING:
    from ..dump import DumpContext, DumpTask
    from ..restore import RestoreContext, RestoreTask

NAME = "core"

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
    from ..dump import make_pstree_entry, restart_fixup

    pid = task.pid
    stat = task.stat
    assert stat is not None and task.regs is not None
    is_root = task is ctx.tasks[0]
    if is_root and not ctx.opts.shell_job:
        if stat.session != pid:
            raise DumpError(f"pid {pid} is not a session leader (its session {stat.session} is "
                            "outside the dump); use --shell-job, or start it with setsid")
        if stat.pgrp != pid:
            raise DumpError(f"pid {pid} is not a process group leader (its group "
                            f"{stat.pgrp} is outside the dump); use --shell-job")
    regs = restart_fixup(task.regs)
    if regs.cs != 0x33:
        raise Unsupported(f"pid {pid}: runs in 32-bit mode (cs {regs.cs:#x}); not supported")
    ti = task.core.thread_info
    ti.gpregs.CopyFrom(regs_to_entry(regs))
    try:
        parts = xsave.split(ptrace.get_xstate(pid))
    except ValueError as exc:
        raise Unsupported(f"pid {pid}: {exc}") from None
    ti.fpregs.CopyFrom(core_x86_pb2.user_x86_fpregs_entry(**parts["fpregs"]))
    ti.fpregs.xsave.CopyFrom(core_x86_pb2.user_x86_xsave_entry(**parts["xsave"]))
    ti.clear_tid_addr = 0
    task.pstree = make_pstree_entry(task)
    if is_root:
        task.pstree.ppid = 0  # as CRIU: the root's parent is not in the dump
    n = ctx.tasks.index(task) + 1
    task.ids = core_pb2.task_kobj_ids_entry(vm_id=n, files_id=n, fs_id=n, sighand_id=n)
    task.core.ids.CopyFrom(task.ids)


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Nothing to do mid-way: see :func:`final`."""


def final(rctx: "RestoreContext", rt: "RestoreTask", sigmask: int) -> None:
    """Install registers, FPU state and signal mask; the puppet is ready."""
    core = rt.core
    if core.mtype != core_pb2.core_entry.X86_64 or not core.HasField("thread_info"):
        raise RestoreError(f"{rt.image_name('core')}: not an x86_64 task")
    ti = core.thread_info
    regs = entry_to_regs(ti.gpregs)
    cur = ptrace.get_xstate(rt.pid)
    fp = ti.fpregs
    fpregs = {k: getattr(fp, k) for k in ("cwd", "swd", "twd", "fop", "rip", "rdp", "mxcsr",
                                          "mxcsr_mask", "st_space", "xmm_space")}
    xs = None
    if fp.HasField("xsave"):
        xs = {f.name: getattr(fp.xsave, f.name) for f in fp.xsave.DESCRIPTOR.fields}
    try:
        area = xsave.join(fpregs, xs, len(cur))
    except ValueError as exc:
        raise RestoreError(f"{rt.image_name('core')}: {exc}") from None
    ptrace.set_regs(rt.pid, regs)
    ptrace.set_xstate(rt.pid, area)
    ptrace.set_sigmask(rt.pid, sigmask)
