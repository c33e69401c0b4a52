"""Numbers from the x86_64 kernel ABI that procsnap uses.

Kept in one place so every module spells a constant the same way.
"""
from __future__ import annotations

PAGE_SIZE = 4096

# sync_file_range(2) flags
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4

MSG_CMSG_CLOEXEC = 0x40000000

TASK_SIZE = 0x7FFFFFFFF000  # 47-bit user address space (no 5-level paging)

# System call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
NR = {
    "read": 0, "write": 1, "open": 2, "close": 3, "fstat": 5, "lseek": 8,
    "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12, "rt_sigaction": 13,
    "rt_sigprocmask": 14, "pread64": 17, "pwrite64": 18, "mremap": 25,
    "madvise": 28, "dup": 32, "dup2": 33, "getitimer": 36, "setitimer": 38,
    "getpid": 39, "kill": 62, "fcntl": 72, "chdir": 80, "fchdir": 81,
    "umask": 95, "setuid": 105, "setgid": 106, "setpgid": 109, "getppid": 110, "getpgid": 121,
    "setsid": 112, "setgroups": 116, "setresuid": 117, "setresgid": 119,
    "setfsuid": 122, "setfsgid": 123, "capget": 125, "capset": 126,
    "rt_sigpending": 127, "rt_sigtimedwait": 128, "rt_sigqueueinfo": 129, "sigaltstack": 131, "personality": 135,
    "prctl": 157, "arch_prctl": 158, "chroot": 161, "gettid": 186,
    "set_tid_address": 218, "exit_group": 231, "openat": 257,
    "set_robust_list": 273, "get_robust_list": 274, "dup3": 292,
    "rt_tgsigqueueinfo": 297, "prlimit64": 302, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "rseq": 334, "pidfd_open": 434,
    "clone3": 435, "close_range": 436, "pidfd_getfd": 438,
    # a puppet in a new user namespace (resources/namespaces/user.py,
    # creds.py; tasks.RestoreTask._recv_fd)
    "getgroups": 115, "recvmsg": 47,
    # batched page copies (resources/memory.py)
    "preadv": 295, "pwritev": 296,
    # event fds (resources/eventfd.py, signalfd.py, timerfd.py, eventpoll.py,
    # inotify.py)
    "ioctl": 16, "epoll_ctl": 233, "inotify_add_watch": 254,
    "inotify_rm_watch": 255, "timerfd_create": 283, "timerfd_settime": 286,
    "signalfd4": 289, "eventfd2": 290, "epoll_create1": 291,
    "inotify_init1": 294, "open_by_handle_at": 304,
    # files by identity (resources/regfile.py)
    "newfstatat": 262, "linkat": 265, "name_to_handle_at": 303,
    # dirty-page tracking for pre-dump (resources/memtrack.py)
    "userfaultfd": 323,
    # the end of a batch of injected calls (inject.batch_code)
    "tgkill": 234,
}

# ptrace requests and options (include/uapi/linux/ptrace.h).
PTRACE_PEEKDATA = 2
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_PEEKSIGINFO_SHARED = 1

PTRACE_O_TRACESYSGOOD = 1
PTRACE_O_TRACEFORK = 2
PTRACE_O_TRACEVFORK = 4
PTRACE_O_TRACECLONE = 8
PTRACE_O_EXITKILL = 1 << 20
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: waitpid for threads and clone children too

NT_PRSTATUS = 1
NT_X86_XSTATE = 0x202

# Restart codes a syscall interrupted by our freeze leaves in rax.
ERESTARTSYS = 512
ERESTARTNOINTR = 513
ERESTARTNOHAND = 514
ERESTART_RESTARTBLOCK = 516
RESTART_CODES = (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)

# mmap
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x100
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000

# prctl
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_TID_ADDRESS = 40
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_SET_MM = 35
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

ARCH_MAP_VDSO_64 = 0x2003

# open flags
O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_ACCMODE = 3
O_CREAT = 0o100
O_APPEND = 0o2000
O_NONBLOCK = 0o4000
O_DIRECTORY = 0o200000
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
O_LARGEFILE = 0o100000
AT_FDCWD = -100
F_DUPFD = 0
F_GETFD = 1
F_SETFD = 2
F_SETFL = 4
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1

RSEQ_SIG = 0x53053053
RSEQ_FLAG_UNREGISTER = 1

CLONE_VM = 0x00000100
CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_SIGHAND = 0x00000800
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
CLONE_SYSVSEM = 0x00040000
CLONE_CHILD_CLEARTID = 0x00200000
SIGCHLD = 17
SIGKILL = 9
SIGSTOP = 19
SIGTRAP = 5
NSIG = 64

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
LINUX_CAPABILITY_VERSION_3 = _LINUX_CAPABILITY_VERSION_3

RLIM_NLIMITS = 16

# Event fds.
KCMP_EPOLL_TFD = 7                 # kcmp(2): is a file registered in an epoll
EPOLL_CTL_ADD = 1
EFD_SEMAPHORE = 1
TFD_TIMER_ABSTIME = 1
TFD_IOC_SET_TICKS = 0x40085400     # _IOW('T', 0, u64), CONFIG_CHECKPOINT_RESTORE
INOTIFY_IOC_SETNEXTWD = 0x40044900  # _IOW('I', 0, s32), CONFIG_CHECKPOINT_RESTORE
FIONREAD = 0x541B

# file locks (resources/file_lock.py)
NR["flock"] = 73
# Task-state audit (procsnap/audit.py) and the task attributes it adds.
NR.update({"membarrier": 324, "sched_getattr": 315})
PR_GET_KEEPCAPS = 7
PR_GET_TIMING = 13
PR_GET_TSC = 25
PR_TSC_ENABLE = 1
PR_MCE_KILL_GET = 34
PR_MCE_KILL_DEFAULT = 2
PR_GET_TIMERSLACK = 30
PR_GET_SECCOMP = 21
PR_GET_SPECULATION_CTRL = 52
PR_SPEC_STORE_BYPASS = 0
PR_SPEC_INDIRECT_BRANCH = 1
PR_SPEC_L1D_FLUSH = 2
PR_GET_IO_FLUSHER = 58
PR_SCHED_CORE = 62
PR_SCHED_CORE_GET = 0
PR_GET_MDWE = 66
PR_GET_MEMORY_MERGE = 68
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1
MEMBARRIER_CMD_GET_REGISTRATIONS = 1 << 9
# the REGISTER commands GET_REGISTRATIONS reports, each a command of its own
MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED = 1 << 4
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE = 1 << 6
MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ = 1 << 8
SCHED_RESET_ON_FORK = 0x40000000
SCHED_DEADLINE = 6
# Memory mapping flags and advice (resources/memory.py: smaps VmFlags).
NR["mlock"] = 149
MAP_DROPPABLE = 0x08       # a map type like MAP_PRIVATE (Linux 6.11)
MAP_LOCKED = 0x2000
MAP_HUGETLB = 0x40000
HUGETLBFS_MAGIC = 0x958458F6  # statfs f_type of hugetlbfs (linux/magic.h)
MFD_HUGETLB = 4
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_DONTFORK = 10
MADV_MERGEABLE = 12
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_WIPEONFORK = 18
MADV_DONTNEED = 4
# POSIX timers, seccomp, no_new_privs, ambient caps, affinity, timer slack
# (resources/taskattrs.py, resources/seccomp.py, resources/creds.py)
NR.update({"timer_create": 222, "timer_settime": 223, "timer_gettime": 224,
           "timer_getoverrun": 225, "timer_delete": 226, "seccomp": 317,
           "sched_setaffinity": 203, "sched_getaffinity": 204,
           "set_mempolicy": 238, "get_mempolicy": 239, "clock_gettime": 228})
PR_TIMER_CREATE_RESTORE_IDS = 77
PR_TIMER_CREATE_RESTORE_IDS_OFF = 0
PR_TIMER_CREATE_RESTORE_IDS_ON = 1
SI_TIMER = -2
PR_CAP_AMBIENT_IS_SET = 1
PR_SET_SECCOMP = 22
PR_SET_TIMERSLACK = 29
SECCOMP_MODE_STRICT = 1
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
PTRACE_O_SUSPEND_SECCOMP = 1 << 21
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_SECCOMP_GET_METADATA = 0x420D
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
MADV_GUARD_INSTALL = 102  # Linux 6.13: guard pages (SIGSEGV on touch)
# Reading pages in at restore (memory._fill_from): fault a batch in with one
# call, from the puppet (process_madvise on itself: any advice since 6.13).
MADV_POPULATE_WRITE = 23   # Linux 5.14
MAP_POPULATE = 0x8000
PIDFD_SELF_THREAD_GROUP = -10001   # Linux 6.15: "this process" as a pidfd
NR.update({"process_madvise": 440})

# Linux AIO (resources/aio.py).
NR.update({"io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209})
IOCB_CMD_PWRITE = 1
AIO_RING_MAGIC = 0xA10A10A1
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2

# Namespaces (include/uapi/linux/sched.h) and the calls that make and enter them.
CLONE_NEWTIME = 0x00000080   # clone3/unshare/setns only (CSIGNAL's bits for clone)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NR.update({"uname": 63, "sethostname": 170, "setdomainname": 171, "unshare": 272,
           "setns": 308})
CLOCK_MONOTONIC = 1
CLOCK_BOOTTIME = 7
# Mount namespaces (resources/namespaces/mnt.py): building a mount tree in
# a puppet, saving a tmpfs from inside its namespace.
NR.update({"mount": 165, "umount2": 166, "pivot_root": 155, "mkdirat": 258,
           "open_tree": 428, "move_mount": 429, "mount_setattr": 442,
           # mounts made by the restorer for a puppet in a new user namespace
           "fsopen": 430, "fsconfig": 431, "fsmount": 432})
# files2: O_TMPFILE files made again and filled inside the puppet
# (regfile.py), fanotify groups (fanotify.py), a dead process's pidfd
# (pidfd.py).
NR.update({"fchmod": 91, "fchown": 93, "utimensat": 280, "copy_file_range": 326,
           "fanotify_init": 300, "fanotify_mark": 301, "waitid": 247, "fork": 57})
# System V shm attached by a puppet (resources/sysvipc.py).
NR.update({"shmat": 30, "shmdt": 67})
# Terminals (asm-generic/ioctls.h, x86_64): resources/tty.py.
TCGETS2 = 0x802C542A
TCSETS2 = 0x402C542B
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCGLCKTRMIOS = 0x5456
TIOCSLCKTRMIOS = 0x5457
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCGPTLCK = 0x80045439
TIOCPKT = 0x5420
TIOCGPKT = 0x80045438
TIOCEXCL = 0x540C
TIOCGEXCL = 0x80045440
TIOCSCTTY = 0x540E
TIOCNOTTY = 0x5422
TIOCGPGRP = 0x540F
TIOCSPGRP = 0x5410
TIOCGSID = 0x5429
TIOCINQ = 0x541B
TIOCSTI = 0x5412
TIOCGPTPEER = 0x5441
# tree2: a process group helper is reaped by the member that forked it
# (restorer._end_helpers).
NR.update({"wait4": 61})
