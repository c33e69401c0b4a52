"""Binary layouts shared with the kernel (x86_64), declared as field lists.

Each class quotes the C definition it mirrors; field names are the
kernel's, so code reading them matches the kernel sources.
"""
from __future__ import annotations

import ctypes

u64 = ctypes.c_uint64
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u16 = ctypes.c_uint16


class Iovec(ctypes.Structure):
    """struct iovec { void *iov_base; size_t iov_len; };"""
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


USER_REGS_FIELDS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)


class UserRegs(ctypes.Structure):
    """struct user_regs_struct (arch/x86/include/asm/user_64.h).

    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx,
    si, di, orig_ax, ip, cs, flags, sp, ss, fs_base, gs_base, ds, es, fs, gs;
    """
    _fields_ = [(name, u64) for name in USER_REGS_FIELDS]

    def copy(self) -> "UserRegs":
        new = UserRegs()
        ctypes.memmove(ctypes.byref(new), ctypes.byref(self), ctypes.sizeof(self))
        return new

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in USER_REGS_FIELDS}


class CloneArgs(ctypes.Structure):
    """struct clone_args (include/uapi/linux/sched.h), version 2 (88 bytes).

    __aligned_u64 flags, pidfd, child_tid, parent_tid, exit_signal, stack,
    stack_size, tls, set_tid, set_tid_size, cgroup;
    """
    _fields_ = [(n, u64) for n in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
        "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]


class PrctlMmMap(ctypes.Structure):
    """struct prctl_mm_map (include/uapi/linux/prctl.h), 104 bytes.

    __u64 start_code, end_code, start_data, end_data, start_brk, brk,
    start_stack, arg_start, arg_end, env_start, env_end;
    __u64 *auxv; __u32 auxv_size; __u32 exe_fd;
    """
    _fields_ = [(n, u64) for n in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
        "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")] + [
        ("auxv_size", u32), ("exe_fd", u32)]


class KSigaction(ctypes.Structure):
    """The kernel's struct sigaction for rt_sigaction on x86_64.

    __sighandler_t sa_handler; unsigned long sa_flags;
    __sigrestore_t sa_restorer; sigset_t sa_mask;  (sigset_t: 64 bits)
    """
    _fields_ = [("sa_handler", u64), ("sa_flags", u64),
                ("sa_restorer", u64), ("sa_mask", u64)]


class StackT(ctypes.Structure):
    """stack_t { void *ss_sp; int ss_flags; size_t ss_size; };"""
    _fields_ = [("ss_sp", u64), ("ss_flags", s32), ("_pad", s32), ("ss_size", u64)]


class RseqConfiguration(ctypes.Structure):
    """struct ptrace_rseq_configuration {
        __u64 rseq_abi_pointer; __u32 rseq_abi_size; __u32 signature;
        __u32 flags; __u32 pad; };
    """
    _fields_ = [("rseq_abi_pointer", u64), ("rseq_abi_size", u32),
                ("signature", u32), ("flags", u32), ("pad", u32)]


class PeekSiginfoArgs(ctypes.Structure):
    """struct ptrace_peeksiginfo_args { __u64 off; __u32 flags; __s32 nr; };"""
    _fields_ = [("off", u64), ("flags", u32), ("nr", s32)]


SIGINFO_SIZE = 128


class CapHeader(ctypes.Structure):
    """struct __user_cap_header_struct { __u32 version; int pid; };"""
    _fields_ = [("version", u32), ("pid", s32)]


class CapData(ctypes.Structure):
    """struct __user_cap_data_struct { __u32 effective, permitted, inheritable; };"""
    _fields_ = [("effective", u32), ("permitted", u32), ("inheritable", u32)]


class Itimerval(ctypes.Structure):
    """struct itimerval { struct timeval it_interval, it_value; } (4 x long)."""
    _fields_ = [("interval_sec", ctypes.c_int64), ("interval_usec", ctypes.c_int64),
                ("value_sec", ctypes.c_int64), ("value_usec", ctypes.c_int64)]


class RobustListHead(ctypes.Structure):
    """Only its size matters to set_robust_list: 3 words (24 bytes)."""
    _fields_ = [("list", u64), ("futex_offset", u64), ("list_op_pending", u64)]


for _cls, _size in ((UserRegs, 216), (CloneArgs, 88), (PrctlMmMap, 104),
                    (KSigaction, 32), (StackT, 24), (RseqConfiguration, 24),
                    (PeekSiginfoArgs, 16), (Itimerval, 32)):
    assert ctypes.sizeof(_cls) == _size, _cls
