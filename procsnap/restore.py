"""The restore driver: recreate each task under its PID and rebuild it as a
puppet driven through ptrace.

Stages, in order (as CRIU's cr-restore.c, collect everything first):
1. Collect: read and check every image before creating anything, so a
   damaged or foreign image set fails with nothing to clean up.
2. Create: clone3() with set_tid gives the child the exact PID (EEXIST if
   taken).  The child -- a copy of this Python process -- only blocks on a
   pipe; we seize it (PTRACE_O_EXITKILL: if the restorer dies, so does the
   half-built task) and interrupt it.
3. Prepare the puppet: unregister the rseq area it inherited (while that
   memory still exists, else the next syscall faults), map a small
   trampoline page holding a ``syscall`` instruction plus scratch space at
   an address free in both the old and the new layout, keep the terminal
   for --shell-job and close every inherited fd.
4. The resource modules in ``resources.RESTORE_ORDER`` rebuild the task.
5. Unmap the trampoline (from its own syscall instruction: at the exit
   stop we never return into it), install registers, FPU state and the
   signal mask, detach.
A failure at any point kills what was created and reports one line.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from . import images
from .errors import ImageError, ProcsnapError, RestoreError
from .images.pb import core_pb2
from .inject import InjectError, Injector
from .kernel import consts as C
from .kernel import ptrace
from .kernel.libc import address_of, prctl, syscall_holding_gil
from .kernel.structs import CloneArgs
from .procfs.parse import parse_maps

log = logging.getLogger("procsnap.restore")

TRAMP_SIZE = 64 * 1024
IMG_VERSION = 2


@dataclass
class RestoreOptions:
    detached: bool = True
    shell_job: bool = False
    pidfile: str | None = None
    skip_file_check: bool = False


@dataclass
class RestoreTask:
    pid: int
    images_dir: str
    pstree: Any
    core: Any = None
    ids: Any = None
    mm: Any = None
    pagemap: list[Any] = field(default_factory=list)
    pages_id: int = 0
    fs: Any = None
    fdinfos: list[Any] = field(default_factory=list)
    inj: Injector = None  # type: ignore[assignment]
    tramp: int = 0
    tramp_size: int = TRAMP_SIZE
    tty_fd: int | None = None

    def image_name(self, kind: str) -> str:
        ident: int | None = self.pid
        if kind == "fdinfo":
            ident = self.ids.files_id if self.ids is not None else None
        elif kind == "pages":
            ident = self.pages_id
        return images.image_path(self.images_dir, kind, ident)

    def open_in_puppet(self, path: str, flags: int, check: Any = None) -> int:
        """Open ``path`` inside the puppet: the file is opened by the process
        that will own it, in its own context (as a FUSE server sees it)."""
        inj = self.inj
        try:
            fd = inj.call("openat", C.AT_FDCWD & (2**64 - 1), inj.put_str(path), flags, 0)
        except InjectError as exc:
            raise RestoreError(f"{path}: cannot open for pid {self.pid}: "
                               f"{os.strerror(exc.errno or 0)}") from None
        if check is not None:
            from .resources import regfile
            regfile.check_opened(self._rctx, self, fd, check)
        inj.reset_scratch()
        return fd

    _rctx: Any = None


@dataclass
class RestoreContext:
    images_dir: str
    opts: RestoreOptions
    files: dict[int, Any] = field(default_factory=dict)
    tasks: list[RestoreTask] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def file_entry(self, fid: int) -> Any:
        try:
            return self.files[fid]
        except KeyError:
            raise ImageError(images.image_path(self.images_dir, "files", None),
                             f"no file entry with id {fid}") from None


# ------------------------------------------------------------ collect ----

def _collect(rctx: RestoreContext) -> None:
    d = rctx.images_dir
    if not os.path.isdir(d):
        raise ImageError(d, "no such images directory")
    inv = images.read_one(d, "inventory")
    if inv.img_version != IMG_VERSION:
        raise ImageError(images.image_path(d, "inventory", None),
                         f"image version {inv.img_version} is not supported (want {IMG_VERSION})")
    tree = images.read_image(d, "pstree")
    if not tree:
        raise ImageError(images.image_path(d, "pstree", None), "no process in the tree")
    if len(tree) > 1:
        raise ImageError(images.image_path(d, "pstree", None),
                         f"{len(tree)} processes: restoring process trees is not supported yet")
    for f in images.read_image(d, "files"):
        rctx.files[f.id] = f
    for entry in tree:
        rt = RestoreTask(pid=entry.pid, images_dir=d, pstree=entry)
        rt._rctx = rctx
        if len(entry.threads) > 1:
            raise ImageError(images.image_path(d, "pstree", None),
                             f"pid {entry.pid} has {len(entry.threads)} threads: "
                             "multi-threaded restore is not supported yet")
        rt.core = images.read_one(d, "core", entry.pid)
        if rt.core.mtype != core_pb2.core_entry.X86_64:
            name = core_pb2.core_entry.march.Name(rt.core.mtype) \
                if rt.core.mtype in core_pb2.core_entry.march.values() else str(rt.core.mtype)
            raise ImageError(rt.image_name("core"),
                             f"core image is for architecture {name}, this is x86_64")
        for part in ("thread_info", "tc", "thread_core"):
            if not rt.core.HasField(part):
                raise ImageError(rt.image_name("core"), f"core entry has no {part}")
        rt.ids = rt.core.ids if rt.core.HasField("ids") else images.read_one(d, "ids", entry.pid)
        rt.mm = images.read_one(d, "mm", entry.pid)
        pm = images.read_image(d, "pagemap", entry.pid)
        if not pm:
            raise ImageError(rt.image_name("pagemap"), "empty pagemap (no head)")
        rt.pages_id = pm[0].pages_id
        rt.pagemap = pm[1:]
        pages = rt.image_name("pages")
        need = sum(e.nr_pages for e in rt.pagemap
                   if not e.HasField("flags") or e.flags & 4) * C.PAGE_SIZE
        try:
            have = os.stat(pages).st_size
        except FileNotFoundError:
            raise ImageError(pages, "no such image") from None
        if have < need:
            raise ImageError(pages, f"truncated: {have} bytes, the pagemap needs {need}")
        rt.fs = images.read_one(d, "fs", entry.pid)
        rt.fdinfos = images.read_image(d, "fdinfo", rt.ids.files_id)
        for ident in [rt.mm.exe_file_id, rt.fs.cwd_id, rt.fs.root_id] + \
                [f.id for f in rt.fdinfos] + [v.shmid for v in rt.mm.vmas if v.status & 0xC0]:
            rctx.file_entry(ident)
        if os.path.exists(f"/proc/{entry.pid}"):
            raise RestoreError(f"pid {entry.pid} is already taken by a running process")
        rctx.tasks.append(rt)


# ------------------------------------------------------------- create ----

def _clone_with_pid(pid: int) -> int:
    """fork() whose child gets exactly ``pid``; the child waits on a pipe."""
    tid = (ctypes.c_int32 * 1)(pid)
    args = CloneArgs(flags=0, exit_signal=signal.SIGCHLD,
                     set_tid=ctypes.addressof(tid), set_tid_size=1)
    r, w = os.pipe()
    try:
        child = syscall_holding_gil(C.NR["clone3"], ctypes.addressof(args), ctypes.sizeof(args))
    except OSError as exc:
        os.close(r)
        os.close(w)
        if exc.errno == 17:
            raise RestoreError(f"pid {pid} is already taken") from None
        raise RestoreError(f"pid {pid}: clone3 with set_tid failed: {exc.strerror}") from None
    if child == 0:
        # The puppet-to-be: a raw clone of this interpreter.  Do as little
        # as possible; it is stopped and rebuilt from outside.
        try:
            prctl(C.PR_SET_PDEATHSIG, signal.SIGKILL)
            os.close(w)
            os.read(r, 1)
        finally:
            os._exit(127)
    os.close(r)
    os.close(w)  # EOF wakes a child that was never seized
    return child


def _seize_puppet(pid: int) -> Any:
    ptrace.seize(pid, C.PTRACE_O_TRACESYSGOOD | C.PTRACE_O_EXITKILL)
    ptrace.interrupt(pid)
    while True:
        status = ptrace.wait_stop(pid)
        if ptrace.stop_event(status) == C.PTRACE_EVENT_STOP:
            return ptrace.get_regs(pid)
        ptrace.cont(pid, 0)  # swallow any signal (e.g. a stray SIGSTOP)


def _own_syscall_insn() -> int:
    """A ``syscall`` instruction in libc: at the same address in our fork."""
    base = address_of("syscall")
    code = ctypes.string_at(base, 256)
    idx = code.find(b"\x0f\x05")
    if idx < 0:
        raise RestoreError("no syscall instruction found in libc's syscall()")
    return base + idx


def _pick_trampoline(rt: RestoreTask) -> int:
    """A free range, with a free page either side, in both layouts."""
    used = [(m.start, m.end) for m in parse_maps(open(f"/proc/{rt.pid}/maps").read())]
    used += [(v.start, v.end) for v in rt.mm.vmas]
    used.sort()
    need = TRAMP_SIZE + 2 * C.PAGE_SIZE
    cand = 0x10000000  # 256 MiB: above low mmap_min_addr and typical non-PIE text
    for start, end in used:
        if start >= cand + need:
            break
        cand = max(cand, (end + C.PAGE_SIZE - 1) // C.PAGE_SIZE * C.PAGE_SIZE)
    if cand + need > C.TASK_SIZE:
        raise RestoreError(f"pid {rt.pid}: no free address range for the trampoline")
    return cand + C.PAGE_SIZE


def _prepare_puppet(rctx: RestoreContext, rt: RestoreTask, regs: Any) -> None:
    pid = rt.pid
    inj = Injector(pid, _own_syscall_insn(), regs)
    rt.inj = inj
    conf = ptrace.get_rseq(pid)
    if conf.rseq_abi_pointer:
        inj.call("rseq", conf.rseq_abi_pointer, conf.rseq_abi_size,
                 C.RSEQ_FLAG_UNREGISTER, conf.signature)
    addr = _pick_trampoline(rt)
    got = inj.call("mmap", addr, TRAMP_SIZE, C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC,
                   C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED_NOREPLACE, -1, 0)
    if got != addr:
        raise RestoreError(f"pid {pid}: trampoline mapped at {got:#x}, not {addr:#x}")
    inj.write_mem(addr, b"\x0f\x05")
    inj.syscall_ip = addr
    rt.tramp = addr
    inj.use_scratch(addr + C.PAGE_SIZE, TRAMP_SIZE - C.PAGE_SIZE)

    top = max([f.fd for f in rt.fdinfos] + [2]) + 1
    if rctx.opts.shell_job:
        tty = next((fd for fd in (0, 1, 2) if _isatty(fd)), None)
        if tty is None and any(rctx.file_entry(f.id).type == 11 for f in rt.fdinfos):
            raise RestoreError("--shell-job: procsnap restore has no terminal on fds 0-2 "
                               "to give the restored process")
        if tty is not None:
            rt.tty_fd = inj.call("fcntl", tty, C.F_DUPFD_CLOEXEC, top)
    if rt.tty_fd is not None:
        inj.call("close_range", 0, rt.tty_fd - 1, 0)
        inj.call("close_range", rt.tty_fd + 1, 0xFFFFFFFF, 0)
    else:
        inj.call("close_range", 0, 0xFFFFFFFF, 0)
    # Session and group: the dump insists the root leads both unless it is
    # a shell job, which stays in the restoring shell's session.
    if rt.pstree.sid == pid:
        inj.call("setsid")
    elif rt.pstree.pgid == pid:
        inj.call("setpgid", 0, 0)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _build(rctx: RestoreContext, rt: RestoreTask) -> None:
    from . import resources
    from .resources import core, signals

    for mod in resources.RESTORE_ORDER:
        t = time.monotonic()
        mod.restore(rctx, rt)
        rctx.stats[mod.NAME] = rctx.stats.get(mod.NAME, 0.0) + time.monotonic() - t
    inj = rt.inj
    if rt.tty_fd is not None:
        inj.call("close", rt.tty_fd)
    # The last injected call removes the page it is executed from; we stop
    # at its exit and never return there.
    inj.call("munmap", rt.tramp, rt.tramp_size)
    core.final(rctx, rt, signals.final_mask(rt))


# ---------------------------------------------------------------- API ----

def restore(images_dir: str, *, detached: bool = True, shell_job: bool = False,
            pidfile: str | None = None, skip_file_check: bool = False) -> int:
    """Recreate the process tree saved in ``images_dir``.

    Returns the root's PID when ``detached``; otherwise waits for it and
    returns its exit status (128 + signal number if it was killed).
    """
    t0 = time.monotonic()
    rctx = RestoreContext(os.path.abspath(images_dir),
                          RestoreOptions(detached, shell_job, pidfile, skip_file_check))
    _collect(rctx)
    rctx.stats["collect"] = time.monotonic() - t0
    created: list[int] = []
    try:
        for rt in rctx.tasks:
            rt.pid = _clone_with_pid(rt.pid)
            created.append(rt.pid)
            regs = _seize_puppet(rt.pid)
            _prepare_puppet(rctx, rt, regs)
            _build(rctx, rt)
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(f"{rctx.tasks[0].pid}\n")
        for rt in rctx.tasks:
            rt.inj.detach()
    except BaseException as exc:
        for pid in created:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if isinstance(exc, ProcsnapError):
            raise
        if isinstance(exc, OSError):
            raise RestoreError(f"restore of {images_dir} failed: {exc.strerror or exc}") from None
        raise
    rctx.stats["total"] = time.monotonic() - t0
    root = rctx.tasks[0].pid
    if detached:
        return root
    return wait_exit(root)


def wait_exit(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        if os.WIFEXITED(status):
            return os.WEXITSTATUS(status)
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
