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
import os
import signal
import time
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from . import logs
from . import images, pagexfer
from .errors import ActionScriptFailed, ImageError, ProcsnapError, RestoreError
from .images import legacy as legacy_files, pidview
from .images.pb import core_pb2
from .inject import SYSCALL_INSN, TRAMPOLINE, InjectError, Injector
from .kernel import consts as C
from .kernel import ptrace
from .kernel.libc import address_of, prctl, syscall_holding_gil
from .kernel.structs import CloneArgs
from .procfs.parse import maps_ranges
from .resources.core import TASK_DEAD, TASK_STOPPED
from .images.parent import flags_of
from .resources.memory import PE_PRESENT, VMA_FILE_PRIVATE, VMA_FILE_SHARED, check_pages
from .tasks import (PUPPET_OPTIONS, TRAMP_SIZE, RestoreContext, RestoreOptions, RestoreTask,
                    RestoreThread)

log = logs.Logger("procsnap.restorer")

# Stage timings of the last restore in this process (the API returns a pid).
last_stats: dict[str, float] = {}
# the host pid of the root being restored, once it exists (criu's
# CRTOOLS_INIT_PID and the pid of its RPC notifications): not always the
# images' (RestoreContext.relabel)
current: dict[str, int] = {}

IMG_VERSION = 2


def _collect(rctx: RestoreContext, check_pids: bool = True) -> None:
    """Read and check every image.  ``check_pids=False`` leaves out the
    check that the saved pids are free here (a reader's check of an image
    set, as the CRIU fixture tests make: nothing is created)."""
    d = rctx.images_dir
    if not os.path.isdir(d):
        raise ImageError(d, "no such images directory")
    inv = images.read_one(d, "inventory")
    if inv.img_version != IMG_VERSION:
        raise ImageError(images.image_path(d, "inventory", None),
                         f"image version {inv.img_version} is not supported (want {IMG_VERSION})")
    tree = images.read_image(d, "pstree")
    pstree_path = images.image_path(d, "pstree", None)
    if not tree:
        raise ImageError(pstree_path, "no process in the tree")
    if inv.HasField("plugins_entry") and inv.plugins_entry.plugins:
        # criu's plugins (GPU state, ...) saved state procsnap cannot read
        raise ImageError(images.image_path(d, "inventory", None),
                         "the dump needs criu plugins "
                         f"({', '.join(inv.plugins_entry.plugins)}); procsnap has none")
    if inv.HasField("root_ids"):
        rctx.root_ids = inv.root_ids
    _from_inside_view(rctx, inv, tree)
    for e in tree:
        # pids at every level (a tree in a pid namespace of its own)
        if e.ns_pid:
            rctx.nspids[e.pid] = list(reversed(e.ns_pid))
            n = len(e.ns_pid)
            for i, tid in enumerate(e.threads):
                if tid != e.pid and len(e.ns_threads) >= (i + 1) * n:
                    rctx.nspids[tid] = list(reversed(e.ns_threads[i * n:(i + 1) * n]))
    _relabel(rctx, tree)
    for f in legacy_files.file_entries(d):  # files.img, or CRIU's older per-kind images
        rctx.files[f.id] = f
    if rctx.inside_pids:
        _files_outside_view(rctx)
    pids = {e.pid for e in tree}
    for i, entry in enumerate(tree):
        if entry.pid in rctx.by_pid:
            raise ImageError(pstree_path, f"pid {entry.pid} appears twice")
        if i and entry.ppid not in rctx.by_pid:
            raise ImageError(pstree_path, f"pid {entry.pid}: parent {entry.ppid} is not "
                             "listed before it")
        rt = RestoreTask(pid=entry.pid, images_dir=d, pstree=entry)
        rt._rctx = rctx
        pre = rctx.dumped_pid(entry.pid)  # as the dump knew it
        ipid = rctx.image_pid(entry.pid)  # the pid the images are named by
        rt.core = images.read_one(d, "core", ipid)
        _check_core(rt, rt.core, entry.pid)
        rt.zombie = rt.core.tc.task_state == TASK_DEAD
        rctx.tasks.append(rt)
        rctx.by_pid[entry.pid] = rt
        if pre != entry.pid:
            rctx.by_pid[pre] = rt   # image values naming it (locks, owners, terminals)
        elif check_pids and os.path.exists(f"/proc/{entry.pid}") and not _freed(entry.pid):
            raise RestoreError(f"pid {entry.pid} is already taken by a running process "
                               f"({_who(entry.pid)})")
        if rt.zombie:
            continue
        _check_live_core(rt, rt.core, entry.pid)
        threads = list(entry.threads) or [entry.pid]
        if threads[0] != entry.pid:
            threads = [entry.pid] + [t for t in threads if t != entry.pid]
        rt.threads = [RestoreThread(entry.pid, rt.core)]
        for tid in threads[1:]:
            if tid in pids or (check_pids and os.path.exists(f"/proc/{tid}")):
                raise RestoreError(f"thread id {tid} of pid {entry.pid} is already taken")
            core = images.read_one(d, "core", rctx.image_pid(tid))
            _check_core(rt, core, tid)
            _check_live_core(rt, core, tid)
            rt.threads.append(RestoreThread(tid, core))
        rt.ids = rt.core.ids if rt.core.HasField("ids") else images.read_one(d, "ids", ipid)
        rt.mm = images.read_one(d, "mm", ipid)
        if not os.path.exists(rt.image_name("pagemap")) and \
                os.path.exists(os.path.join(d, pagexfer.SENT_RECORD)):
            raise ImageError(rt.image_name("pagemap"), "no such image: this dump sent its "
                             "pages to a page server; copy these images into the page "
                             "server's images dir and restore from there")
        pm = images.read_image(d, "pagemap", ipid)
        if not pm:
            raise ImageError(rt.image_name("pagemap"), "empty pagemap (no head)")
        rt.pages_id = pm[0].pages_id
        rt.pagemap = pm[1:]
        pages = rt.image_name("pages")
        need = sum(e.nr_pages for e in rt.pagemap
                   if flags_of(e) & PE_PRESENT) * C.PAGE_SIZE
        try:
            have = os.stat(pages).st_size
        except FileNotFoundError:
            raise ImageError(pages, "no such image") from None
        if have < need:
            raise ImageError(pages, f"truncated: {have} bytes, the pagemap needs {need}")
        # every page found now, in these images or a pre-dump's (parent):
        # a page none holds is a damaged image set, before anything is made
        check_pages(rt)
        rt.fs = images.read_one(d, "fs", ipid)
        _shared_with_parent(rctx, rt)
        rt.fdinfos = images.read_image(d, "fdinfo", rt.ids.files_id)
        for ident in [rt.mm.exe_file_id, rt.fs.cwd_id, rt.fs.root_id] + \
                [f.id for f in rt.fdinfos] + \
                [v.shmid for v in rt.mm.vmas if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)]:
            rctx.file_entry(ident)


def _taken(pid: int) -> bool:
    """Is ``pid`` held now (by a live task, or a zombie not reaped yet)?"""
    return os.path.exists(f"/proc/{pid}")


# How far above the last pid the kernel gave the free ones are looked for:
# the kernel hands out pids upwards, so the processes forked meanwhile (by
# the runtime, our own helpers, the rest of the machine) do not reach them
# before clone3's set_tid takes them; below it are the old pids other
# restores may be about to take again.
PID_GAP = 4096


def _free_pids(count: int, avoid: set[int]) -> list[int]:
    """``count`` host pids free now, well above the last one the kernel
    gave (clone3's set_tid takes them; one taken meanwhile fails it, EEXIST)."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
        with open("/proc/sys/kernel/ns_last_pid") as f:
            cand = int(f.read()) + PID_GAP
    except OSError:
        pid_max, cand = 1 << 22, 300
    if cand >= pid_max:
        cand = 300 + cand % (pid_max - 300)
    out: list[int] = []
    tries = 0
    while len(out) < count:
        cand += 1
        tries += 1
        if cand >= pid_max:
            cand = 300
        if tries > pid_max:
            raise RestoreError(f"no {count} free pids for the tree")
        if cand not in avoid and not _taken(cand):
            out.append(cand)
    return out


def _relabel(rctx: RestoreContext, tree: list[Any]) -> None:
    """A tree in a pid namespace of its own is restored under its pids
    inside it; its host pids are taken again where they are free and
    replaced by free ones where they are not (the dumped container still
    runs -- Podman's restore --import --name, a second copy -- or its old
    init waits to be reaped), as criu, which never sets them.  Rewrites the
    pstree entries and nspids in place (rctx.relabel keeps the map)."""
    if not tree or not tree[0].ns_pid:
        return
    ids = [e.pid for e in tree] + [t for e in tree for t in e.threads if t != e.pid]
    taken = [p for p in ids if _taken(p)]
    if not taken:
        return
    new = dict(zip(taken, _free_pids(len(taken), set(ids))))
    rctx.relabel.update(new)

    def m(p: int) -> int:
        return new.get(p, p)
    for e in tree:
        e.pid, e.ppid, e.pgid, e.sid = m(e.pid), m(e.ppid), m(e.pgid), m(e.sid)
        e.threads[:] = [m(t) for t in e.threads]
        if e.ns_pid:
            e.ns_pid[0] = m(e.ns_pid[0])        # outermost first (the NSpid line)
        n = len(e.ns_pid)
        for i in range(0, len(e.ns_threads), n or 1):
            e.ns_threads[i] = m(e.ns_threads[i])
    for old, host in new.items():
        levels = rctx.nspids.get(old)
        if levels:
            levels[-1] = host                   # innermost first: the host's is last
            rctx.nspids[host] = levels          # old key kept: image values name it


def _from_inside_view(rctx: RestoreContext, inv: Any, tree: list[Any]) -> None:
    """CRIU's pstree of a tree in a pid namespace of its own.

    CRIU (4.x) records such a tree by the pids seen inside its namespace
    (the root is 1) and names its images by them; every other image names
    pids the same way.  procsnap's own images name the dumper's view and
    give every level in ns_pid.  So a pstree without ns_pid whose root is
    in another pid namespace than the dumper (the ids against the
    inventory's root_ids) is CRIU's: each task and thread is given an
    outside pid here, one free now, from the top of the pid range (away
    from any inside pid), and the entries are rewritten to procsnap's
    form: outside pids, ns_pid = [outside, inside].  The inside pids are
    restored exactly (set_tid); other images' pids are inside pids, which
    is what the puppets pass in their calls (RestoreContext.vpid leaves a
    pid it does not know unchanged).  ``rctx.image_pids`` maps back to the
    pid each image file is named by."""
    if pidview.is_inside_form(tree):
        rctx.image_pids = pidview.to_outside(tree)  # procsnap's own, from 2026-11-30
        rctx.inside_pids = {i: o for o, i in rctx.image_pids.items()}
        rctx.all_inside = True
        return
    if not tree or any(e.ns_pid for e in tree) or not inv.HasField("root_ids"):
        return  # procsnap's older form (the outside view), or no pid namespace
    root = tree[0]
    core = images.read_one(rctx.images_dir, "core", root.pid)
    ids = core.ids if core.HasField("ids") else \
        images.read_one(rctx.images_dir, "ids", root.pid)
    if not ids.HasField("pid_ns_id") or not inv.root_ids.HasField("pid_ns_id") \
            or ids.pid_ns_id == inv.root_ids.pid_ns_id:
        return
    inside = list(dict.fromkeys(p for e in tree for p in [e.pid, *e.threads]))
    with open("/proc/sys/kernel/pid_max") as f:
        cand = int(f.read()) - 1
    taken = set(inside)
    outside: dict[int, int] = {}
    for p in inside:
        while cand in taken or os.path.exists(f"/proc/{cand}"):
            cand -= 1
        if cand <= 300:
            raise RestoreError("no free pid left for the tree's outside pids")
        outside[p] = cand
        taken.add(cand)

    def out(p: int) -> int:
        return outside.get(p, p)
    for e in tree:
        e.ns_pid[:] = [out(e.pid), e.pid]
        e.ns_threads[:] = [x for t in e.threads for x in (out(t), t)]
        e.pid, e.ppid, e.pgid, e.sid = out(e.pid), out(e.ppid), out(e.pgid), out(e.sid)
        e.threads[:] = [out(t) for t in e.threads]
    rctx.image_pids = {o: i for i, o in outside.items()}
    rctx.inside_pids = dict(outside)
    rctx.all_inside = True
    log.info("CRIU's inside view of pid namespace pids: outside pids %s", rctx.image_pids)


def _files_outside_view(rctx: RestoreContext) -> None:
    """The pids file entries name (SIGIO owners, pidfds) in images of a pid
    namespace are inside pids: to the outside pids this restore works with."""
    for fid, f in list(rctx.files.items()):
        rctx.files[fid] = pidview.map_file_pids(f, rctx.inside_pids)


def _shared_with_parent(rctx: RestoreContext, rt: RestoreTask) -> None:
    """An fd table or fs struct shared (one files_id / fs_id) is made by
    cloning the child from its parent with CLONE_FILES / CLONE_FS, as
    CRIU's get_clone_mask: only sharing with the parent can be rebuilt."""
    parent = rctx.by_pid.get(rt.pstree.ppid)
    for field in ("files_id", "fs_id"):
        mine = getattr(rt.ids, field)
        others = [t.pid for t in rctx.tasks
                  if t is not rt and t.ids is not None and getattr(t.ids, field) == mine]
        if not others:
            continue
        if parent is None or parent.ids is None or getattr(parent.ids, field) != mine:
            raise ImageError(rt.image_name("ids"), f"pid {rt.pid}: {field} {mine} is shared "
                             f"with pid {others[0]}, not with its parent")
        setattr(rt, "shares_files" if field == "files_id" else "shares_fs", True)


def _freed(pid: int, timeout: float = 3.0) -> bool:
    """A pid held by a zombie (or a task on its way out: the dump that
    just killed it) is about to be free: wait for its parent to reap it.
    LXC restores right after the dump stopped the container, while its
    monitor is still collecting the old init."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state not in (b"Z", b"X"):
            return False
        time.sleep(0.005)
    return False


def _who(pid: int) -> str:
    """What holds a pid, for the error: its name, state and parent."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        comm = text[text.index(b"(") + 1:text.rindex(b")")].decode(errors="replace")
        state, ppid = text.rsplit(b")", 1)[1].split()[:2]
        return f"{comm}, state {state.decode()}, parent {int(ppid)}"
    except (OSError, ValueError, IndexError):
        return "gone since"


def _check_core(rt: RestoreTask, core: Any, ident: int) -> None:
    if core.mtype != core_pb2.core_entry.X86_64:
        name = core_pb2.core_entry.march.Name(core.mtype) \
            if core.mtype in core_pb2.core_entry.march.values() else str(core.mtype)
        raise ImageError(rt.image_name("core", ident),
                         f"core image is for architecture {name}, this is x86_64")
    if ident == rt.pid and not core.HasField("tc"):
        raise ImageError(rt.image_name("core", ident), "core entry has no tc")


def _check_live_core(rt: RestoreTask, core: Any, ident: int) -> None:
    """A thread that runs again needs its registers and its own state."""
    for part in ("thread_info", "thread_core"):
        if not core.HasField(part):
            raise ImageError(rt.image_name("core", ident), f"core entry has no {part}")
    for d in core.thread_info.tls:
        if not d.seg_not_present:
            # criu saves the GDT TLS slots (set_thread_area, 32-bit code);
            # procsnap does not set them: the task's %fs/%gs would be wrong
            raise RestoreError(f"pid {rt.pid}: thread {ident}: GDT TLS entry "
                               f"{d.entry_number} (set_thread_area) is in use; procsnap "
                               "does not restore set_thread_area entries")
    if ident == rt.pid and any(sa.compat_sigaction for sa in core.tc.sigactions
                               if sa.HasField("compat_sigaction")):
        raise RestoreError(f"pid {rt.pid}: signal handlers of a 32-bit (compat) task; "
                           "procsnap restores x86_64 tasks only")
    fp = core.thread_info.fpregs
    if fp.HasField("xsave") and fp.xsave.HasField("cet") and fp.xsave.cet.cet:
        # criu 4.x saves an enabled user shadow stack (CET); procsnap does
        # not make one, and a thread that had it must not run without it.
        raise RestoreError(f"pid {rt.pid}: thread {ident}: a CET shadow stack "
                           f"(MSR_IA32_U_CET {fp.xsave.cet.cet:#x}, ssp "
                           f"{fp.xsave.cet.ssp:#x}) is in the image; procsnap does not "
                           "restore shadow stacks")


# ------------------------------------------------------------- create ----

def _clone_with_pid(pid: int, flags: int = 0, set_tid: list[int] | None = None) -> tuple[int, int]:
    """fork() whose child gets exactly ``pid``; the child waits on a pipe.

    ``flags`` are the CLONE_NEW* of the namespaces the root is made in;
    ``set_tid`` its pids at every level, innermost first (1 in its own pid
    namespace, then ``pid``).

    Returns (pid, fd): the caller closes fd -- the pipe's write end --
    once the child is seized and stopped.  Closing it earlier would let a
    child that reaches its read() late see EOF and exit (status 127).
    """
    want = set_tid or [pid]
    tid = (ctypes.c_int32 * len(want))(*want)
    # clone3 refuses an exit signal with CLONE_PARENT: the child then takes
    # ours (SIGCHLD for a process forked the usual way), for our parent.
    exit_signal = 0 if flags & C.CLONE_PARENT else signal.SIGCHLD
    args = CloneArgs(flags=flags, exit_signal=exit_signal,
                     set_tid=ctypes.addressof(tid), set_tid_size=len(want))
    r, w = os.pipe()
    try:
        child = syscall_holding_gil(C.NR["clone3"], ctypes.addressof(args), ctypes.sizeof(args))
    except OSError as exc:
        os.close(r)
        os.close(w)
        if exc.errno == 17:
            raise RestoreError(f"pid {pid} is already taken") from None
        raise RestoreError(f"pid {pid}: clone3 with set_tid {want} and flags {flags:#x} "
                           f"failed: {exc.strerror}") from None
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
    return child, w



def _seize_puppet(pid: int) -> Any:
    ptrace.seize(pid, PUPPET_OPTIONS)
    ptrace.interrupt(pid)
    return _wait_new_stop(pid)


def _wait_new_stop(pid: int) -> Any:
    """Wait for the first stop of a task we seized or that was auto-attached."""
    while True:
        status = ptrace.wait_stop(pid)
        if ptrace.stop_event(status) == C.PTRACE_EVENT_STOP:
            return ptrace.get_regs(pid)
        ptrace.cont(pid, 0)  # swallow any signal (e.g. a stray SIGSTOP)


def _own_syscall_insn() -> int:
    """A ``syscall`` instruction in libc: at the same address in our fork."""
    base = address_of("syscall")
    code = ctypes.string_at(base, 256)
    idx = code.find(SYSCALL_INSN)
    if idx < 0:
        raise RestoreError("no syscall instruction found in libc's syscall()")
    return base + idx


def _pick_trampoline(rctx: RestoreContext, pid: int) -> int:
    """A free range, with a free page either side, in every layout involved:
    the puppet's now, and every task's to be (children inherit the page)."""
    with open(f"/proc/{pid}/maps") as f:
        used = maps_ranges(f.read(), f"/proc/{pid}/maps")
    for rt in rctx.tasks:
        if rt.mm is not None:
            used += [(v.start, v.end) for v in rt.mm.vmas]
    used.sort()
    need = TRAMP_SIZE + 2 * C.PAGE_SIZE
    cand = 0x10000000  # 256 MiB: above low mmap_min_addr and typical non-PIE text
    for start, end in used:
        if start >= cand + need:
            break
        cand = max(cand, (end + C.PAGE_SIZE - 1) // C.PAGE_SIZE * C.PAGE_SIZE)
    if cand + need > C.TASK_SIZE:
        raise RestoreError(f"pid {pid}: no free address range for the trampoline")
    return cand + C.PAGE_SIZE


def _prepare_root(rctx: RestoreContext, rt: RestoreTask, regs: Any,
                  self_pidfd: int | None = None) -> None:
    """The root puppet: drop what it inherited from us (but ``self_pidfd``,
    a pidfd to the restorer), map the trampoline."""
    pid = rt.pid
    inj = Injector(pid, _own_syscall_insn(), regs)
    rt.inj = inj
    conf = ptrace.get_rseq(pid)
    if conf.rseq_abi_pointer:
        # While the area is still mapped, or the next syscall faults.
        inj.call("rseq", conf.rseq_abi_pointer, conf.rseq_abi_size,
                 C.RSEQ_FLAG_UNREGISTER, conf.signature)
    addr = _pick_trampoline(rctx, pid)
    got = inj.call("mmap", addr, TRAMP_SIZE, C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC,
                   C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_FIXED_NOREPLACE, -1, 0)
    if got != addr:
        raise RestoreError(f"pid {pid}: trampoline mapped at {got:#x}, not {addr:#x}")
    inj.write_mem(addr, TRAMPOLINE)
    _use_trampoline(rt, inj, addr)

    top = max([f.fd for t in rctx.tasks for f in t.fdinfos] + [2]) + 1
    rctx.spare_fd_base = top + 1  # top itself is for the terminal
    if rctx.opts.shell_job:
        tty = next((fd for fd in (0, 1, 2) if _isatty(fd)), None)
        from .resources import tty as ttys
        if tty is None and ttys.needs_shell_terminal(rctx):
            raise RestoreError("--shell-job: procsnap restore has no terminal on fds 0-2 "
                               "to give the restored process")
        if tty is not None:
            rt.tty_fd = inj.call("fcntl", tty, C.F_DUPFD_CLOEXEC, top)
    keep = [] if rt.tty_fd is None else [rt.tty_fd]
    if self_pidfd is not None:
        # In a pid namespace of its own the puppet cannot name the restorer
        # by pid: it keeps a pidfd to it, inherited through clone3, for
        # grab_fd (every child forked before the builds inherits it too).
        mine = inj.call("fcntl", self_pidfd, C.F_DUPFD_CLOEXEC, rctx.spare_fd_base)
        rctx.spare_fd_base = mine + 1
        rt.pidfds[os.getpid()] = mine
        keep.append(mine)
    low = 0
    for fd in sorted(keep):
        if fd > low:
            inj.call("close_range", low, fd - 1, 0)
        low = fd + 1
    inj.call("close_range", low, 0xFFFFFFFF, 0)


def _root_terminals(rctx: RestoreContext, rt: RestoreTask) -> None:
    """The root's pty pairs and session, once its namespaces are made (a
    tree with a mount namespace of its own has its own devpts: the pairs
    are made in it) and before any fork: every task inherits them."""
    from .resources import tty as ttys
    ttys.prepare_root(rctx, rt)
    _set_session(rt)


def _use_trampoline(rt: RestoreTask, inj: Injector, addr: int) -> None:
    inj.syscall_ip = addr
    inj.trap_ip = addr
    rt.tramp = addr
    inj.use_scratch(addr + C.PAGE_SIZE, TRAMP_SIZE - C.PAGE_SIZE)


def _set_session(rt: RestoreTask) -> None:
    # A new task is in its parent's session; only a leader needs a call.
    # Groups are set once every task exists (see _set_groups).
    from .resources import tty

    if rt.pstree.sid == rt.pid:
        rt.inj.call("setsid")
        tty.session_started(rt._rctx, rt)  # its controlling terminal, before it forks


def _clone_in(rctx: RestoreContext, inj: Injector, tid: int, flags: int, exit_signal: int,
              what: str, clear_tid: int = 0) -> tuple[int, Any]:
    """clone3 with set_tid injected in a puppet: the new task (a child, or
    a thread with CLONE_THREAD) gets exactly ``tid`` (at every pid
    namespace level) and starts stopped, auto-attached
    (PTRACE_O_TRACEFORK/TRACECLONE).  Returns its host pid -- ``tid``, or
    for a puppet inside a new user namespace the one the kernel gave at
    the host's level (_repid) -- and its registers.  ``clear_tid``: its
    clear-tid address (CLONE_CHILD_CLEARTID), as set_tid_address sets it."""
    created = rctx.created
    levels = rctx.set_tid(tid)
    hinted = rctx.host_pid_unset
    if hinted:
        # the host's level is owned by the host's user namespace: the
        # puppet may not set it (namespaces.user)
        if len(levels) < 2:
            raise RestoreError(f"{what} {tid}: a puppet inside a new user namespace cannot "
                               "choose a pid in the host's pid namespace")
        levels = levels[:-1]
    tid_addr = inj.put(b"".join(x.to_bytes(4, "little") for x in levels), align=8)
    if clear_tid:
        flags |= C.CLONE_CHILD_CLEARTID
    args = CloneArgs(flags=flags, exit_signal=exit_signal, set_tid=tid_addr,
                     set_tid_size=len(levels), child_tid=clear_tid)
    try:
        if hinted:
            from .resources.namespaces import user   # (a tree in a user namespace only)
            user.hint_host_pid(tid)
        got = inj.call("clone3", inj.put(bytes(args), align=8), ctypes.sizeof(args))
    except InjectError as exc:
        if exc.errno == 17:
            raise RestoreError(f"{what} {tid} is already taken") from None
        raise RestoreError(f"{what} {tid}: clone3 in pid {inj.pid} failed: "
                           f"{os.strerror(exc.errno or 0)}") from None
    finally:
        inj.reset_scratch()
    # clone3 answers in the puppet's pid namespace (not the child's, for a
    # child made in a nested one: CLONE_NEWPID)
    want = rctx.vpid(tid, inj.pid)
    host = tid if got == want else got
    if hinted:
        host = _host_pid(inj.pid, got, bool(flags & C.CLONE_THREAD)) or host
    created.append(host)  # from now on, a failure kills it
    if got != want:
        raise RestoreError(f"{what} {tid}: clone3 gave {got}")
    if host != tid:
        _repid(rctx, tid, host, what)
    return host, _wait_new_stop(host)


def _host_pid(parent: int, got: int, thread: bool) -> int | None:
    """The host pid of the child (or thread) ``parent`` just made, which it
    knows as ``got`` (a pid in its own pid namespace)."""
    from .resources.namespaces.pid import nspid

    level = len(nspid(parent)) - 1
    if thread:
        cands = [int(t) for t in os.listdir(f"/proc/{parent}/task")]
    else:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            cands = [int(x) for x in f.read().split()]
    for c in cands:
        try:
            levels = nspid(parent, c) if thread else nspid(c)
        except FileNotFoundError:
            continue
        if len(levels) > level and levels[level] == got:
            return c
    return None


def _repid(rctx: RestoreContext, old: int, new: int, what: str) -> None:
    """A task or thread planned as host pid ``old`` got ``new`` (another
    process took ``old`` between the hint and the clone3): the tree's
    bookkeeping follows, as _relabel does before anything is made.  A
    ``new`` the images name for another task would make two tasks one."""
    known = set(rctx.by_pid) | rctx.all_ids() | set(rctx.relabel) | set(rctx.image_pids)
    if new in known:
        raise RestoreError(f"{what} {old}: the host's pid {old} was taken meanwhile and the "
                           f"kernel gave {new}, a pid the tree's images name for another "
                           "task; try the restore again")
    rctx.relabel[rctx.dumped_pid(old)] = new
    levels = rctx.nspids.get(old)
    if levels:
        levels[-1] = new
        rctx.nspids[new] = levels  # old key kept: image values name it

    def m(p: int) -> int:
        return new if p == old else p
    for t in rctx.tasks:
        e = t.pstree
        e.pid, e.ppid, e.pgid, e.sid = m(e.pid), m(e.ppid), m(e.pgid), m(e.sid)
        e.threads[:] = [m(x) for x in e.threads]
        n = len(e.ns_pid)
        if n:
            e.ns_pid[0] = m(e.ns_pid[0])
            for i in range(0, len(e.ns_threads), n):
                e.ns_threads[i] = m(e.ns_threads[i])
        for th in t.threads:
            th.tid = m(th.tid)
        if t.pid == old:
            t.pid = new
            rctx.by_pid[new] = t
    log.info("%s %d restored as host pid %d (taken meanwhile)", what, old, new)


def _fork_child(parent: RestoreTask, rt: RestoreTask) -> None:
    """The parent puppet forks the child with its PID (clone3 set_tid)."""
    flags = (C.CLONE_FILES if rt.shares_files else 0) | (C.CLONE_FS if rt.shares_fs else 0)
    if len(parent._rctx.set_tid(rt.pid)) > len(parent._rctx.set_tid(parent.pid)):
        # the init of a pid namespace nested in the tree (namespaces.pid):
        # set_tid's first entry, 1, is its pid inside
        flags |= C.CLONE_NEWPID
    _, regs = _clone_in(parent._rctx, parent.inj, rt.pid, flags, signal.SIGCHLD, "pid")
    rt.inj = Injector(rt.pid, parent.inj.syscall_ip, regs)
    _use_trampoline(rt, rt.inj, parent.tramp)
    rt.tty_fd = parent.tty_fd
    # inherited: only the restorer's, at this point; one table shared
    # (CLONE_FILES) is one set of pidfds, closed once
    rt.pidfds = parent.pidfds if rt.shares_files else dict(parent.pidfds)
    _set_session(rt)


def _spawn_helper(rctx: RestoreContext, rt: RestoreTask, pid: int,
                  what: str = "helper") -> tuple[Injector, Callable[[], None]]:
    """A short-lived task with ``pid``, forked by ``rt`` with no exit
    signal (its end leaves no SIGCHLD pending in ``rt``), stopped; returns
    its injector and the function that ends it: it exits, ``rt`` reaps it."""
    pid, regs = _clone_in(rctx, rt.inj, pid, 0, 0, what)
    inj = Injector(pid, rt.inj.syscall_ip, regs)
    inj.trap_ip = rt.inj.trap_ip
    inj.use_scratch(rt.inj.scratch, rt.inj.scratch_size)

    def end() -> None:
        regs = inj.base.copy()
        regs.rip = inj.syscall_ip
        regs.orig_rax = (1 << 64) - 1
        regs.rax, regs.rdi = C.NR["exit_group"], 0
        ptrace.set_regs(pid, regs)
        inj.detach()
        rt.inj.call("wait4", rctx.vpid(pid, rt.pid), 0, C.WALL, 0)  # as its parent names it

    return inj, end


def _group_helpers(rctx: RestoreContext) -> None:
    """A process group whose leader was gone at dump time (exited and
    reaped: dumper.core._check_reaped_leader) is made, as CRIU's
    TASK_HELPER, by a short-lived task with the leader's pid, forked by
    the group's first member: it calls setpgid(0, 0), the members join
    (_set_groups), then it exits and its parent reaps it (_end_helpers).
    It is cloned with no exit signal, so its end leaves no SIGCHLD
    pending in the parent.  The group outside the tree that a shell job's
    root was in is not one: the root inherits the restorer's."""
    root = rctx.tasks[0]
    for rt in rctx.tasks:
        pgid = rt.pstree.pgid
        if pgid == rt.pid or pgid in rctx.by_pid or pgid in rctx.group_helpers:
            continue
        if pgid == root.pstree.pgid:
            continue  # the shell's group (--shell-job), inherited
        if rctx.nspids:
            pgid = _inside_group(rctx, rt, pgid)
            if pgid in rctx.group_helpers:
                continue
        inj, end = _spawn_helper(rctx, rt, pgid, "process group leader (helper)")
        rctx.group_helpers[pgid] = (rt, end)
        inj.call("setpgid", 0, 0)


def _inside_helper(rctx: RestoreContext, rt: RestoreTask, inner: int, what: str) -> int:
    """A helper task forked by ``rt`` in the tree's own pid namespace with
    pid ``inner`` there (the images name it so): it gets a free host pid,
    returned; the restore works with host pids."""
    levels = rctx.nspids.get(rt.pid) or []
    if len(levels) != 2 or rctx.nspids.get(rctx.tasks[0].pid, [])[:1] != [1]:
        raise ImageError(rt.image_name("core"), f"pid {rt.pid}: {what} {inner}, in a pid "
                         "namespace nested in the tree's own")
    host = _free_pids(1, rctx.all_ids() | set(rctx.nspids))[0]
    rctx.nspids[host] = [inner, host]
    return host


def _inside_group(rctx: RestoreContext, rt: RestoreTask, inner: int) -> int:
    """A group whose leader is gone, in the tree's own pid namespace: the
    images name it by its pid inside (pidview; no task maps it out).  Its
    helper gets that pid inside and a free host pid; the members' pgid
    becomes the host pid, as every pid the restore works with."""
    host = _inside_helper(rctx, rt, inner, "process group with no leader in the tree")
    rctx.inside_pids[inner] = host
    for t in rctx.tasks:
        if t.pstree.pgid == inner:
            t.pstree.pgid = host
    return host


def _end_helpers(rctx: RestoreContext) -> None:
    """Every group exists with its members: the helpers exit and are reaped."""
    for _, end in rctx.group_helpers.values():
        end()


def _set_groups(rctx: RestoreContext) -> None:
    """setpgid for every task: group leaders first, then the members."""
    live = [t for t in rctx.tasks]
    for rt in live:
        if rt.pstree.pgid == rt.pid and rt.pstree.sid != rt.pid:
            rt.inj.call("setpgid", 0, 0)
    for rt in live:
        want = rt.pstree.pgid
        if want == rt.pid or (want not in rctx.by_pid and want not in rctx.group_helpers):
            continue  # leader (done) or the shell's group (inherited)
        cur = rt.inj.call("getpgid", 0)
        if cur != rctx.vpid(want, rt.pid):
            rt.inj.call("setpgid", 0, rctx.vpid(want, rt.pid))


def _make_zombie(rt: RestoreTask) -> None:
    """Let the task exit with its dumped status; its parent keeps the zombie."""
    code = rt.core.tc.exit_code
    inj = rt.inj
    inj.call("prctl", C.PR_SET_NAME, inj.put(rt.core.tc.comm.encode()[:15] + b"\0"), 0, 0, 0)
    inj.reset_scratch()
    regs = inj.base.copy()
    regs.rip = inj.syscall_ip
    regs.orig_rax = (1 << 64) - 1
    if os.WIFSIGNALED(code):
        sig = os.WTERMSIG(code)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            # The disposition must be the default one for the signal to kill
            # (SIGKILL's cannot be changed, and asking is EINVAL).
            act = inj.put(bytes(32), align=8)
            inj.call("rt_sigaction", sig, act, 0, 8)
            inj.call("rt_sigprocmask", 1, inj.put((1 << (sig - 1)).to_bytes(8, "little")), 0, 8)
        regs.rax, regs.rdi, regs.rsi = C.NR["kill"], rt._rctx.vpid(rt.pid, rt.pid), sig
    else:
        regs.rax, regs.rdi = C.NR["exit_group"], os.WEXITSTATUS(code)
    ptrace.set_regs(rt.pid, regs)
    inj.detach()
    # Not traced any more: it exits now and stays a zombie of its parent.


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _create_threads(rctx: RestoreContext, rt: RestoreTask) -> None:
    """Clone every other thread from the leader, with its TID (set_tid)."""
    inj = rt.inj
    flags = (C.CLONE_VM | C.CLONE_FS | C.CLONE_FILES | C.CLONE_SIGHAND | C.CLONE_THREAD
             | C.CLONE_SYSVSEM)
    for th in rt.threads[1:]:
        # its clear-tid address given at its birth: no set_tid_address
        # call in it later (taskattrs)
        _, regs = _clone_in(rctx, inj, th.tid, flags, 0, f"pid {rt.pid}: thread",
                            clear_tid=th.core.thread_info.clear_tid_addr)
        th.inj = Injector(th.tid, inj.syscall_ip, regs)
        th.inj.trap_ip = inj.trap_ip
        th.inj.use_scratch(inj.scratch, inj.scratch_size)


def _build(rctx: RestoreContext, rt: RestoreTask) -> None:
    from . import resources

    rt.threads[0].inj = rt.inj
    for mod in resources.RESTORE_ORDER:
        t = time.monotonic()
        mod.restore(rctx, rt)
        if mod.NAME == "memory":
            _create_threads(rctx, rt)
        rctx.stats[mod.NAME] = rctx.stats.get(mod.NAME, 0.0) + time.monotonic() - t


def _finish(rctx: RestoreContext, rt: RestoreTask) -> None:
    """Last injected calls, then registers: the task is ready to run."""
    from .resources import core, signals

    inj = rt.inj
    rt.close_pidfds()
    from .resources import tty
    if not rt.shares_files:  # else its parent's table: closed there already
        tty.close_pool(rctx, rt)
        if rt.tty_fd is not None and not any(f.fd == rt.tty_fd for f in rt.fdinfos):
            inj.call("close", rt.tty_fd)
    # The last injected call removes the page it is executed from; we stop
    # at its exit and never return there.
    inj.call("munmap", rt.tramp, rt.tramp_size, last=True)
    for th in rt.threads:
        core.final(rctx, rt, th, signals.final_mask(rt, th))


# ---------------------------------------------------------------- API ----

def restore(images_dir: str, *, detached: bool = True, shell_job: bool = False,
            pidfile: str | None = None, skip_file_check: bool = False,
            inherit_fd: dict[str, int] | None = None, tcp_close: bool = False,
            ext_unix_sk: bool = False,
            verify: bool = True, action: Callable[..., int] | None = None,
            fs_root: str | None = None, ext_mount_map: dict[str, str] | None = None,
            ext_mount_auto: bool = False, ext_veth: dict[str, str] | None = None,
            restore_sibling: bool = False,
            manage_cgroups: str = "soft", cgroup_root: tuple[str, ...] = (),
            empty_ns: int = 0, join_ns: dict[str, str] | None = None,
            orphan_pts_master: bool = False,
            lazy_pages: bool = False, work_dir: str | None = None) -> int:
    """Recreate the process tree saved in ``images_dir``.

    ``lazy_pages`` (criu's restore --lazy-pages): private anonymous memory
    is not read now; the ``lazy-pages`` daemon, which must be listening on
    ``lazy-pages.socket`` in ``work_dir`` (default: the images directory),
    serves it on fault and pushes the rest in the background.

    ``action`` is called at criu's action-script stages: pre-restore,
    post-restore and pre-resume (all tasks built, still stopped: a non-zero
    status kills the tree), network-unlock (a tree in its own network
    namespace) and post-resume.

    With ``verify`` (the default) every task is compared with its images
    before any runs (procsnap.verify); a difference fails the restore.

    Returns the root's PID when ``detached``; otherwise waits for it and
    returns its exit status (128 + signal number if it was killed).
    """
    from . import tmpnames
    from .resources import memory, namespaces, regfile, sysvipc

    t0 = time.monotonic()
    rctx = RestoreContext(os.path.abspath(images_dir),
                          RestoreOptions(
                              detached=detached, shell_job=shell_job, pidfile=pidfile,
                              skip_file_check=skip_file_check, inherit_fd=dict(inherit_fd or {}),
                              tcp_close=tcp_close, verify=verify, action=action,
                              ext_unix_sk=ext_unix_sk, orphan_pts_master=orphan_pts_master,
                              root=os.path.abspath(fs_root) if fs_root else None,
                              ext_mount_map=dict(ext_mount_map or {}),
                              ext_mount_auto=ext_mount_auto,
                              ext_veth=dict(ext_veth or {}),
                              restore_sibling=restore_sibling,
                              manage_cgroups=manage_cgroups, cgroup_root=tuple(cgroup_root),
                              empty_ns=empty_ns, join_ns=dict(join_ns or {}),
                              lazy_socket=(lazy_socket_path(work_dir or images_dir)
                                           if lazy_pages else None)))
    if restore_sibling:
        detached = True  # the root is not our child: its parent waits for it
    tmpnames.report(rctx.images_dir)
    current.clear()
    _action(rctx, "pre-restore")
    _collect(rctx)
    def proc_helper(rt: RestoreTask, pid: int) -> Callable[[], None]:
        if rctx.nspids:
            # /proc/N of the tree's own /proc: N inside its pid namespace
            pid = _inside_helper(rctx, rt, pid, "helper for /proc")
        return _spawn_helper(rctx, rt, pid, "helper for /proc")[1]
    rctx.spawn_helper = proc_helper
    rctx.stats["collect"] = time.monotonic() - t0
    lazy_sk = _lazy_connect(rctx) if rctx.opts.lazy_socket else None
    from .resources import cgroup
    cgroup.prepare(rctx)  # the cgroups, before any task: a task's fd may open one
    root = rctx.tasks[0]
    if root.zombie:
        raise ImageError(root.image_name("core"), "the root task is a zombie")
    created = False
    self_pidfd: int | None = None
    try:
        namespaces.join(rctx)  # this thread enters them: the root's clone inherits them
        flags = namespaces.clone_flags(rctx)
        nested = any(len(ids) > len(rctx.set_tid(root.pid)) for ids in rctx.nspids.values())
        if flags & C.CLONE_NEWUSER:
            # puppets inside a new user namespace may not pidfd_getfd from
            # us: they hold a socket instead, over which we send them fds
            # (RestoreTask._recv_fd), where the pidfd of us would be
            import socket
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            rctx.fd_channel = ours
            self_pidfd = theirs.detach()
            rctx.own_fds.append(self_pidfd)
        elif flags & C.CLONE_NEWPID or nested:
            self_pidfd = syscall_holding_gil(C.NR["pidfd_open"], os.getpid(), 0)
            rctx.own_fds.append(self_pidfd)
        if restore_sibling:
            # criu's --restore-sibling: our parent (LXC's monitor) is the
            # root's parent and reaps it; we trace it like any puppet.
            flags |= C.CLONE_PARENT
        root.pid, wake = _clone_with_pid(root.pid, flags, rctx.set_tid(root.pid))
        current["root_pid"] = root.pid
        rctx.created.append(root.pid)
        created = True
        try:
            regs = _seize_puppet(root.pid)
        finally:
            os.close(wake)  # EOF wakes (and ends) a child we failed to seize
        _prepare_root(rctx, root, regs, self_pidfd)
        namespaces.restore(rctx, root)  # before any child: they inherit them
        _root_terminals(rctx, root)
        if namespaces.new_kinds(rctx):
            # criu's stages around a new root's namespaces: the caller (a
            # container runtime) configures them, e.g. the network of an
            # --empty-ns net restore, before any task is built in them
            _action(rctx, "setup-namespaces")
            namespaces.setup_done(rctx, root)
            _action(rctx, "post-setup-namespaces")
        from .resources import tty
        tty.prepare_orphans(rctx, root)  # in the tree's devpts, before any fork
        # Create every task first (parents fork their children, in tree
        # order), so sessions, groups and zombies are in place before any
        # task is rebuilt.  Each task's private memory is in place before
        # it forks its children: they inherit it copy-on-write.
        memory.premap(rctx, root)
        for rt in rctx.tasks[1:]:
            _fork_child(rctx.by_pid[rt.pstree.ppid], rt)
            if not rt.zombie:
                memory.premap(rctx, rt)
        namespaces.enter_children_ns(rctx)  # every task exists: nested pid ns too
        _group_helpers(rctx)
        _set_groups(rctx)
        from .resources import tty
        tty.set_foreground(rctx)  # each terminal's foreground group, now that groups exist
        _end_helpers(rctx)
        for rt in rctx.tasks:
            if rt.zombie:
                _make_zombie(rt)
                if lazy_sk is not None:
                    # a zombie has no memory: its negative pid (criu's
                    # lazy_pages_setup_zombie; criu's daemon counts the tasks)
                    rctx.kind_state["lazy_send"](rt, [], zombie=True)
        t = time.monotonic()
        rctx.stats["create"] = t - t0
        for rt in rctx.tasks:
            if not rt.zombie:
                _build(rctx, rt)
        from .resources import memfd
        memfd.seal_all(rctx)  # after every mapping of them exists
        for rt in rctx.tasks:
            if not rt.zombie:
                _finish(rctx, rt)
        for hook in rctx.before_detach:
            hook()
        if verify:
            # After the hooks (SIGIO owners set, TCP sockets out of repair
            # mode), so it sees the state the tree will run with; still
            # stopped under ptrace, nothing let go: a difference kills the
            # whole tree below.
            from .verify import verify as check_tree
            check_tree(rctx)
        _action(rctx, "post-restore")
        regfile.restore_done(rctx, ok=True)  # ghosts and link remaps go
        for hook in rctx.after_names_gone:
            hook()
        if pidfile:
            with open(pidfile, "w") as f:
                f.write(f"{root.pid}\n")
        if action is not None and _own_netns(root.pid):
            _action(rctx, "network-unlock")
        _action(rctx, "pre-resume")
        # Let them go, leaves first: a parent never runs before its children
        # are whole.
        for rt in reversed(rctx.tasks):
            if not rt.zombie:
                tc = rt.core.tc
                if tc.task_state == TASK_STOPPED:  # stopped as it was
                    # Sent while it is still traced: it stops before it
                    # runs one instruction (sent after the detach, it ran
                    # on for a moment -- zdtm vdso02's child exited).
                    os.kill(rt.pid, tc.stop_signo if tc.HasField("stop_signo") and tc.stop_signo
                            else signal.SIGSTOP)
                for th in reversed(rt.threads):
                    th.inj.detach()
        rctx.stats["running"] = time.monotonic() - t0  # the tree runs from here
        for hook in rctx.after_detach:
            hook()
        if lazy_sk is not None:
            # after the tree runs, as criu: the daemon's background push
            # does not compete with the restore's last steps
            _lazy_finish(rctx, lazy_sk)
    except BaseException as exc:
        if created:
            _kill_all(rctx)
        regfile.restore_done(rctx, ok=False)  # ghosts go, link remaps stay for a retry
        sysvipc.restore_failed(rctx)  # host shm segments it made go
        if isinstance(exc, ProcsnapError):
            raise
        if isinstance(exc, OSError):
            raise RestoreError(f"restore of {images_dir} failed: {exc.strerror or exc}") from None
        raise
    finally:
        namespaces.leave(rctx)  # procsnap's thread back in its own namespaces
        if lazy_sk is not None:
            lazy_sk.close()  # without restore-finished: the daemon gives up (and kills)
        if rctx.fd_channel is not None:
            rctx.fd_channel.close()
        for fd in rctx.own_fds:
            os.close(fd)
    if action is not None:
        action("post-resume")  # the tree runs already: a failure is only reported (as criu)
    rctx.stats["total"] = time.monotonic() - t0
    last_stats.clear()
    last_stats.update(rctx.stats)  # for `procsnap restore -v`
    if detached:
        return root.pid
    return wait_exit(root.pid)


def lazy_socket_path(work_dir: str) -> str:
    from .kernel.uffd import LAZY_PAGES_SOCK_NAME
    return os.path.join(os.path.abspath(work_dir), LAZY_PAGES_SOCK_NAME)


def _unix_address(path: str) -> tuple[str, int | None]:
    """A path short enough for sockaddr_un: long ones through /proc/self/fd."""
    if len(os.fsencode(path)) < 108:
        return path, None
    dfd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dfd}/{os.path.basename(path)}", dfd


def _lazy_connect(rctx: RestoreContext) -> Any:
    """restore --lazy-pages: connect to the daemon before anything is made,
    and give memory.restore the way to hand it each task's userfaultfd."""
    import _socket   # not socket.py, whose enum tables cost ~3 ms here
    from .kernel import uffd
    path = rctx.opts.lazy_socket
    assert path is not None
    sk = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    addr, dfd = _unix_address(path)
    try:
        sk.connect(addr)
    except OSError as exc:
        sk.close()
        raise RestoreError(f"restore --lazy-pages: no lazy-pages daemon at {path} "
                           f"({exc.strerror}): start `lazy-pages -D DIR` first") from None
    finally:
        if dfd is not None:
            os.close(dfd)

    def send(rt: RestoreTask, fds: list[int], zombie: bool = False) -> None:
        try:
            uffd.send_uffd(sk, -rctx.image_pid(rt.pid) if zombie else rctx.image_pid(rt.pid),
                           fds)
        except OSError as exc:
            raise RestoreError(f"pid {rt.pid}: restore --lazy-pages: the lazy-pages daemon "
                               f"is gone ({exc.strerror or exc})") from None
    rctx.kind_state["lazy_send"] = send
    return sk


def _lazy_finish(rctx: RestoreContext, sk: Any) -> None:
    """criu's LAZY_PAGES_RESTORE_FINISHED, once the tree runs: the daemon
    starts pushing what was not faulted in.  A daemon gone by now fails
    the restore (its guard kills the tree)."""
    import struct
    from .kernel import uffd
    try:
        sk.sendall(struct.pack("I", uffd.LAZY_PAGES_RESTORE_FINISHED))
    except OSError as exc:
        raise RestoreError("restore --lazy-pages: the lazy-pages daemon is gone "
                           f"({exc.strerror or exc})") from None


def _action(rctx: RestoreContext, name: str) -> None:
    """Run criu's action scripts for a stage; a refusal fails the restore."""
    if rctx.opts.action is None:
        return
    status = rctx.opts.action(name)
    if status:
        raise ActionScriptFailed(name, status,
                                 f"restore of {rctx.images_dir}: the {name} action script "
                                 f"failed ({status})")


def _own_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _kill_all(rctx: RestoreContext) -> None:
    """Kill everything this restore created (the root's children die with it
    only if we kill them too: they are not in its session's fate)."""
    for pid in rctx.created:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Reap what we trace as well as the root, our child: a traced thread's
    # exit waits for its tracer, and a leader's for its threads, so waiting
    # for the root alone hangs once threads exist (and a killed init of a pid
    # namespace waits until every task in it is reaped).  Threads first, then
    # children before parents.
    leaders = {t.pid for t in rctx.tasks}
    order = [p for p in rctx.created if p not in leaders] + \
        [p for p in reversed(rctx.created) if p in leaders]
    for pid in order:
        try:
            os.waitpid(pid, C.WALL)
        except ChildProcessError:
            pass


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
