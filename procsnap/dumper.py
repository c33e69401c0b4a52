"""The dump driver: freeze the tree, let every resource module record its
part, write the images, then kill or release the tree.

Order of work, and why:
1. Find the tasks and *seize every one* (PTRACE_SEIZE + PTRACE_INTERRUPT)
   before reading anything: state read before the freeze is not trusted.
2. Under the freeze, inject a scratch page into each task (for syscalls
   that return data through a pointer), ask each thread in one batch of
   injected calls every read the modules declare (THREAD_READS,
   _ask_threads), and run the resource modules in
   ``resources.DUMP_ORDER``.  Cheap checks that may refuse the dump (fds,
   mappings) run before memory, so a refusal costs no page copying.
3. Write the images.  Each image goes to a temporary name and is renamed
   into place when complete; on failure every image this dump created is
   removed.
4. Only when all images are written: kill the tree, or (--leave-running)
   put back each task's registers and detach.  On any failure the tasks
   are released exactly as they were.  As criu, the images are then
   complete in the page cache, not necessarily on disk (a crash of the
   machine can lose them, a crash of procsnap cannot); ``sync`` (--sync)
   waits until they are on disk before the tree is killed -- write-back of
   the pages starts while they are copied, so the wait overlaps the copy.
   With --leave-running the tree is released first and synced after: the
   tree is not kept frozen for a disk it does not need.

``stats["frozen"]`` is the time the tree was held: from the end of the
freeze to its release or kill (criu's frozen_time).
"""
from __future__ import annotations

import os
import signal
import time
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable

from . import logs
from . import audit, images, pagexfer
from .resources import seccomp
from .errors import (AccessDenied, ActionScriptFailed, DumpError, NoSuchProcess, ProcsnapError,
                     ZombieProcess)
from .images import pidview
from .images.pb import core_pb2, inventory_pb2, pstree_pb2
from .inject import (HOME_OFFSET, LANDING_SIZE, Injector, InjectError, Read, batch_signal,
                     find_syscall_insn, landing_pad, restart_fixup)
from .kernel import consts as C
from .kernel import ptrace
from .procfs.reader import ProcReader, is_kernel_thread
from .tasks import DumpContext, DumpOptions, DumpTask, DumpThread

log = logs.Logger("procsnap.dumper")

SCRATCH_SIZE = 64 * 1024


def _check_target(pid: int) -> None:
    if pid == os.getpid():
        raise DumpError(f"pid {pid} is procsnap itself: it cannot dump itself")
    if pid <= 0:
        raise DumpError(f"pid {pid}: not a valid process id")
    if not os.path.exists(f"/proc/{pid}"):
        raise NoSuchProcess(pid)
    if is_kernel_thread(pid):
        raise DumpError(f"pid {pid} is a kernel thread: kernel threads cannot be dumped")
    # An ancestor of ours would have to be frozen while it waits for us.
    ppid = os.getppid()
    seen = 0
    while ppid > 1 and seen < 4096:
        if ppid == pid:
            raise DumpError(f"pid {pid} is an ancestor of procsnap: it cannot be dumped from inside")
        try:
            ppid = ProcReader(ppid).stat().ppid
        except ProcsnapError:
            break
        seen += 1


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue  # a thread exited while we listed
    except FileNotFoundError:
        raise NoSuchProcess(pid) from None
    return sorted(set(out))


def _is_zombie(pid: int) -> bool:
    try:
        return ProcReader(pid).stat().state in ("Z", "X")
    except ZombieProcess:
        return True


def _seize_thread(pid: int, th: DumpThread) -> None:
    tid = th.tid
    try:
        ptrace.seize(tid, seccomp.seize_options())  # injected calls bypass its filters
    except OSError as exc:
        if exc.errno == 3:
            raise NoSuchProcess(pid, f"pid {pid}: thread {tid} vanished during the freeze") from None
        if exc.errno == 1:
            raise AccessDenied(pid, f"pid {pid}: cannot trace thread {tid} "
                                    "(already traced, or not permitted)") from None
        raise DumpError(f"pid {pid}: PTRACE_SEIZE of {tid} failed: {exc.strerror}") from None
    th.held = True
    ptrace.interrupt(tid)


def _wait_interrupted(pid: int, th: DumpThread) -> None:
    tid = th.tid
    while True:
        try:
            status = ptrace.wait_stop(tid)
        except ProcessLookupError:
            raise NoSuchProcess(pid, f"pid {pid}: thread {tid} exited during the freeze") from None
        if ptrace.stop_event(status) == C.PTRACE_EVENT_STOP:
            # SIGTRAP: our interrupt; a stop signal: it was in a job-control
            # stop (SIGSTOP, SIGTSTP...) and comes back stopped.
            if os.WSTOPSIG(status) != signal.SIGTRAP:
                th.stop_signo = os.WSTOPSIG(status)
            break
        # A signal was about to be delivered: let it through and keep
        # waiting for our interrupt, so the process sees what it was sent.
        ptrace.cont(tid, os.WSTOPSIG(status))
    th.regs = ptrace.get_regs(tid)


def _freeze(ctx: "DumpContext", root: int) -> None:
    """Seize every thread of every process of the tree, then re-scan.

    A task may fork or clone while we walk: walking again after everything
    known is stopped finds the newcomers; when a walk finds nothing new the
    whole tree is frozen (stopped tasks cannot create more).
    """
    by_pid: dict[int, DumpTask] = {}
    for _ in range(100):
        changed = False
        order = [root]
        listed = {root}
        i = 0
        while i < len(order):
            pid = order[i]
            i += 1
            task = by_pid.get(pid)
            if task is None:
                task = DumpTask(pid, ProcReader(pid))
                by_pid[pid] = task
                ctx.tasks.append(task)
                changed = True
                if _is_zombie(pid):
                    task.zombie = True
            if task.zombie:
                continue
            try:
                new = _seize_new_threads(task)
            except (NoSuchProcess, AccessDenied):
                if pid == root or not _exiting(pid):
                    raise
                # A child exiting under our feet (it was still running: its
                # parent had been frozen, not it).  Forget it; the next walk
                # finds it as the zombie its frozen parent cannot reap.
                _forget(ctx, by_pid, task)
                changed = True
                continue
            if new:
                changed = True
            for c in _children(pid):
                if c not in listed:
                    listed.add(c)
                    order.append(c)
        # a task that was listed before but is no longer in the tree exited
        gone = [t.pid for t in ctx.tasks if t.pid not in listed]
        if gone:
            raise NoSuchProcess(gone[0], f"pid {gone[0]}: exited during the freeze")
        if not changed:
            rank = {pid: n for n, pid in enumerate(order)}
            ctx.tasks.sort(key=lambda t: rank[t.pid])
            return
    raise DumpError(f"pid {root}: the tree keeps changing; cannot freeze it")


def _seize_new_threads(task: DumpTask) -> bool:
    """Seize the threads of the task not seized yet; True if there were any.

    A thread (not the leader) that exits before we hold it is simply not
    part of the dump."""
    known = {th.tid for th in task.threads}
    new = [DumpThread(t) for t in task.proc.tids() if t not in known]
    held = []
    for th in new:
        try:
            _seize_thread(task.pid, th)
        except (NoSuchProcess, AccessDenied):
            if th.tid == task.pid or not _thread_gone(task.pid, th.tid):
                raise
            continue
        task.threads.append(th)
        held.append(th)
    for th in held:
        try:
            _wait_interrupted(task.pid, th)
        except NoSuchProcess:
            if th.tid == task.pid:
                raise
            task.threads.remove(th)  # exited before the interrupt took hold
    task.threads.sort(key=lambda t: t.tid != task.pid)  # leader first
    return bool(held)


def _thread_gone(pid: int, tid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _exiting(pid: int) -> bool:
    """Gone, a zombie, or past the point where it may be traced (exiting)."""
    if _thread_gone(pid, pid):
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            flags = int(f.read().rsplit(")", 1)[1].split()[6])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return True
    return bool(flags & 0x4)  # PF_EXITING


def _forget(ctx: DumpContext, by_pid: dict[int, DumpTask], task: DumpTask) -> None:
    """Drop a task the freeze cannot hold, letting go of threads we seized."""
    for th in task.threads:
        try:
            ptrace.detach(th.tid)
        except OSError:
            pass
    task.threads.clear()
    del by_pid[task.pid]
    ctx.tasks.remove(task)


def _prepare_injection(task: DumpTask) -> None:
    """Find a syscall instruction, map a scratch area, one injector a thread."""
    code = [(m.start, m.end) for m in task.maps if m.path == "[vdso]"]
    code += [(m.start, m.end) for m in task.maps if "x" in m.perms and m.path != "[vsyscall]"]
    ip = find_syscall_insn(task.pid, code)
    for th in task.threads:
        assert th.regs is not None
        th.inj = Injector(th.tid, ip, th.regs)
        th.inj.resume_regs = restart_fixup(th.regs)  # a killed dump leaves it runnable
    inj = task.need_inj()
    # The scratch area starts with one landing pad a thread: its own
    # 'syscall', then code that reloads the thread's saved registers.  All
    # later calls run from there, stopping at syscall entry and exit (one
    # int3 stop would be faster, but a SIGTRAP has no way home): if
    # procsnap is killed while a call runs, the task returns from it into
    # its pad and goes on where it was frozen.  Where executable memory is
    # refused, the calls keep going through the code's own syscall.
    pads = len(task.threads) * LANDING_SIZE
    size = SCRATCH_SIZE + (pads + C.PAGE_SIZE - 1) // C.PAGE_SIZE * C.PAGE_SIZE
    landing = True
    try:
        addr = inj.call("mmap", 0, size, C.PROT_READ | C.PROT_WRITE | C.PROT_EXEC,
                        C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0)
    except InjectError:
        landing = False
        addr = inj.call("mmap", 0, size, C.PROT_READ | C.PROT_WRITE,
                        C.MAP_PRIVATE | C.MAP_ANONYMOUS, -1, 0)
    task.scratch, task.scratch_size = addr, size
    data = addr + (size - SCRATCH_SIZE)
    for n, th in enumerate(task.threads):
        tinj = th.need_inj()
        tinj.use_scratch(data, SCRATCH_SIZE)
        if landing:
            pad = addr + n * LANDING_SIZE
            assert tinj.resume_regs is not None
            tinj.write_mem(pad, landing_pad(pad, tinj.resume_regs))
            tinj.syscall_ip = pad
            _batch_signal(task, th, pad)


def _batch_signal(task: DumpTask, th: DumpThread, pad: int) -> None:
    """Let the thread run batches of calls (inject.batch_code) when it can:
    a signal ignored by default that it neither blocks nor catches nor has
    pending, and no seccomp filter -- one could fail the batch's end
    tgkill (or kill the task for a call), and the thread would run on
    untraced; strict mode forbids the calls themselves once we are gone."""
    st = task.thread_status(th.tid)
    if st.seccomp:
        return
    inj = th.need_inj()
    # PTRACE_GETSIGMASK, not status's SigBlk: frozen in a call that sleeps
    # with a mask of its own (sigsuspend, ppoll, epoll_pwait...), the
    # thread gets its own mask back when it resumes -- the mask our batch
    # runs with, in which our signal may be blocked (and then the batch
    # would never stop); ptrace gives that one, status the call's.
    inj.batch_sig = batch_signal(ptrace.get_sigmask(th.tid), st.sig_cgt,
                                 st.sig_pnd | st.shd_pnd)
    inj.batch_home = pad + HOME_OFFSET


def _ask_threads(ctx: DumpContext, modules: list[Any]) -> None:
    """The per-thread reads the audit and the modules declare (THREAD_READS)
    asked of each thread in one batch -- one stop a thread instead of two
    a read; each module finds its answers with DumpThread.read.  A thread
    that cannot run batches is asked one read at a time when read, as
    before."""
    reads: list[Read] = [r for mod in modules for r in getattr(mod, "THREAD_READS", ())]
    for task in ctx.tasks:
        if task.zombie:
            continue
        for th in task.threads:
            inj = th.need_inj()
            if not inj.batch_sig:
                continue
            mine = [r for r in reads if not r.leader_only or th.tid == task.pid]
            th.answers.update(zip(mine, inj.ask(mine)))


def _release(task: DumpTask, *, kill: bool) -> None:
    """Undo our presence in the task: scratch page, registers, ptrace."""
    if task.zombie:
        return
    pid = task.pid
    if task.inj is not None and task.scratch and not kill:
        # (a killed task needs no cleaning, and may be dying already: one
        # with PR_SET_PDEATHSIG dies with its parent, killed before it)
        try:
            task.inj.call("munmap", task.scratch, task.scratch_size, last=True)
        except OSError:
            pass
        task.scratch = 0
    if kill:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for th in task.threads:
        if not th.held:
            continue
        # Its registers are right already: every injected call ends by
        # putting back resume_regs (rewound for restart), and a thread we
        # made no call in still has its own, restarted by the kernel.
        try:
            if th.inj is not None:
                th.inj.detach()
            else:
                ptrace.detach(th.tid)
        except (OSError, ProcessLookupError):
            pass  # the thread died under us: nothing left to release
        th.held = False


def dump(pid: int, images_dir: str, *, leave_running: bool = False,
         shell_job: bool = False, ghost_limit: int = 1 << 20,
         link_remap: bool = False, external: tuple[str, ...] = (),
         tcp_established: bool = False, file_locks: bool = False,
         tcp_close: bool = False, skip_in_flight: bool = False, ext_unix_sk: bool = False,
         action: Callable[[str], int] | None = None,
         ext_mount_auto: bool = False, manage_cgroups: str = "soft",
         cgroup_root: tuple[str, ...] = (), empty_ns: int = 0, sync: bool = False,
         prev_images_dir: str | None = None,
         orphan_pts_master: bool = False,
         page_server: tuple[str, int] | None = None) -> dict[str, float]:
    """Checkpoint the process tree rooted at ``pid`` into ``images_dir``.

    Returns stage timings.  Raises a ProcsnapError subclass on failure, in
    which case the tree is left running as it was and no image is left.
    ``action`` is called at criu's action-script stages (pre-dump,
    network-lock, query-ext-files, post-dump, network-unlock); a non-zero post-dump status
    leaves the tree running with its images kept (ActionScriptFailed).
    ``sync``: the images are on disk (not only in the page cache) when
    this returns, and before the tree is killed.  ``prev_images_dir``
    (criu's --prev-images-dir): a pre-dump's images, linked as ``parent``;
    pages not written since it stay there (see pre_dump).  ``page_server``
    (criu's --page-server --address --port): the pagemaps and pages go to
    that page server (procsnap.pagexfer), every other image to images_dir.
    """
    from . import resources  # late: resources import this module's types
    from .resources import namespaces, regfile

    t0 = time.monotonic()
    ctx = _begin(pid, images_dir, DumpOptions(
        leave_running=leave_running, shell_job=shell_job, ghost_limit=ghost_limit,
        link_remap=link_remap, external=tuple(external), tcp_established=tcp_established,
        file_locks=file_locks, tcp_close=tcp_close, skip_in_flight=skip_in_flight,
        ext_unix_sk=ext_unix_sk, orphan_pts_master=orphan_pts_master,
        action=action, ext_mount_auto=ext_mount_auto, manage_cgroups=manage_cgroups,
        cgroup_root=tuple(cgroup_root), empty_ns=empty_ns, sync=sync,
        prev_images_dir=prev_images_dir, page_server=page_server))
    regfile.forget_mounts()  # no mount table from an earlier dump
    status = _action(ctx, "pre-dump")
    if status:
        _remove_created(ctx)  # the parent link
        raise ActionScriptFailed("pre-dump", status,
                                 f"pid {pid}: the pre-dump action script failed ({status})")
    client = _connect_page_server(ctx)   # before the freeze: a bad address freezes nothing
    ok = False
    script_refused = 0     # a post-dump script's status: the tree runs on
    # criu runs the network scripts only for a tree in its own network
    # namespace (the host's is never locked as a whole)
    net_scripts = action is not None and _own_netns(pid)
    net_locked = False
    t_frozen = 0.0
    try:
        t_frozen = _freeze_tree(ctx, pid)
        if net_scripts:
            net_locked = True
            status = _action(ctx, "network-lock")
            if status:
                raise ActionScriptFailed("network-lock", status, f"pid {pid}: the "
                                         f"network-lock action script failed ({status})")
        # the tree's own network namespace is locked as a whole, from inside
        # (not one the caller owns: --empty-ns net saves nothing of it)
        if _own_netns(pid) and not ctx.opts.empty_ns & C.CLONE_NEWNET:
            _lock_netns(ctx, pid)
        # criu asks an RPC client here (frozen, network locked) for more
        # external resources; shell scripts never see this stage
        status = _action(ctx, "query-ext-files")
        if status:
            raise ActionScriptFailed("query-ext-files", status, f"pid {pid}: the "
                                     f"query-ext-files notification failed ({status})")
        _look(ctx)
        for task in ctx.tasks:
            task.core = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
            if not task.zombie:
                for th in task.threads:
                    th.core = task.core if th.tid == task.pid else \
                        core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
        if client is not None:
            ctx.kind_state[pagexfer.NAMES_KEY] = _image_names(ctx)
        if prev_images_dir is not None:
            from .resources import memtrack
            t = time.monotonic()
            record = memtrack.load(os.path.join(images_dir, "parent"))
            _tracked(ctx, record)
            # our userfaultfds leave the tree before its fds are saved
            inodes = {ino for _, ino in record.values()}
            for task in ctx.tasks:
                if not task.zombie:
                    memtrack.disarm(task, inodes)
            ctx.stats["track"] = time.monotonic() - t
        t = time.monotonic()
        _ask_threads(ctx, [audit, *resources.DUMP_ORDER])
        ctx.stats["ask"] = time.monotonic() - t
        t = time.monotonic()
        audit.check_all(ctx)  # state the images would lose refuses the dump here
        ctx.stats["audit"] = time.monotonic() - t
        for mod in resources.DUMP_ORDER:
            t = time.monotonic()
            for task in ctx.tasks:
                if task.zombie and not getattr(mod, "DUMPS_ZOMBIES", False):
                    continue
                mod.dump(ctx, task)
            # What spans tasks (a pipe's two ends) is settled once all are seen.
            finish = getattr(mod, "finish", None)
            if finish is not None:
                finish(ctx)
            ctx.stats[mod.NAME] = ctx.stats.get(mod.NAME, 0.0) + time.monotonic() - t
        t = time.monotonic()
        namespaces.dump(ctx)  # every task's ids, then the tree's own namespaces
        ctx.stats["namespaces"] = time.monotonic() - t
        t = time.monotonic()
        if client is not None:
            _close_page_server(ctx, client)
        _write_images(ctx)
        if not leave_running:
            for commit in ctx.commits:
                commit()
        if sync and not leave_running:
            images.sync_dir(images_dir)  # the whole set is on disk before we kill anything
        regfile.dump_done(ctx)  # link remaps now belong to the images
        ctx.stats["write"] = time.monotonic() - t
        ok = True
        # criu's migration hook: a script that says no keeps the tree
        # running here (the images stay, for the caller to decide)
        script_refused = _action(ctx, "post-dump")
    except OSError as exc:  # InjectError among them
        raise _dump_error(pid, exc) from None
    finally:
        if not ok:
            if client is not None:
                client.abort()   # the server keeps no image of a failed dump
            _remove_created(ctx)
        kill = ok and not leave_running and not script_refused
        if net_locked and not kill:
            _action(ctx, "network-unlock")  # the tree goes on here: its network too
        for cleanup in reversed(ctx.cleanups):
            cleanup(kill)
        # Kill the root first: with the whole tree stopped nobody can react
        # to a sibling's death before it dies too.
        for task in ctx.tasks:
            _release(task, kill=kill)
        if t_frozen:
            ctx.stats["frozen"] = time.monotonic() - t_frozen
        if kill:
            _wait_dead([th.tid for task in ctx.tasks for th in task.threads])
    if sync and leave_running:
        t = time.monotonic()
        images.sync_dir(images_dir)  # the tree runs again already
        ctx.stats["sync"] = time.monotonic() - t
    ctx.stats["total"] = time.monotonic() - t0
    if script_refused:
        raise ActionScriptFailed("post-dump", script_refused,
                                 f"pid {pid}: the post-dump action script returned "
                                 f"{script_refused}; the tree runs on, images kept")
    return ctx.stats


def _begin(pid: int, images_dir: str, opts: DumpOptions) -> DumpContext:
    """What dump and pre-dump do before anything is frozen: the target
    checked, the images directory made, temporary names an earlier killed
    run left reported, the parent linked."""
    from . import tmpnames

    _check_target(pid)
    try:
        os.makedirs(images_dir, exist_ok=True)
    except OSError as exc:
        raise DumpError(f"{images_dir}: cannot create images directory: {exc.strerror}") from None
    ctx = DumpContext(images_dir, opts)
    tmpnames.report(images_dir)
    if opts.prev_images_dir is not None:
        _link_parent(ctx, opts.prev_images_dir)
    return ctx


def _freeze_tree(ctx: DumpContext, pid: int) -> float:
    """Freeze the tree; returns when it was frozen (the start of criu's
    frozen_time)."""
    if _is_zombie(pid):
        raise ZombieProcess(pid)
    t = time.monotonic()
    _freeze(ctx, pid)
    t_frozen = time.monotonic()
    ctx.stats["freeze"] = t_frozen - t
    ctx.set_fs_views()  # where each task's names are found from here
    return t_frozen


def _look(ctx: DumpContext) -> None:
    """Under the freeze, each task read once: stat, status and its mappings
    (costly; before our scratch page exists), then the scratch page."""
    for task in ctx.tasks:
        task.stat = task.proc.stat()
        if task.zombie:
            continue
        task.status = task.proc.status()
        task.maps = task.proc.smaps()
        _prepare_injection(task)


def _dump_error(pid: int, exc: OSError) -> DumpError:
    """An injection or system call failing under the freeze, as the one
    line a failed dump says."""
    if isinstance(exc, InjectError):  # says which task and call itself
        return DumpError(str(exc))
    return DumpError(f"pid {pid}: {exc.strerror or exc}")


def _connect_page_server(ctx: DumpContext) -> "pagexfer.PageClient | None":
    """A failure to connect leaves no image (the parent link) behind."""
    if ctx.opts.page_server is None:
        return None
    address, port = ctx.opts.page_server
    try:
        client = pagexfer.PageClient(address, port)
    except ProcsnapError:
        _remove_created(ctx)
        raise
    ctx.kind_state[pagexfer.CLIENT_KEY] = client
    return client


def _close_page_server(ctx: DumpContext, client: "pagexfer.PageClient") -> None:
    """PS_IOV_CLOSE: the server has written every pagemap when it answers;
    what it holds is noted locally for a later --prev-images-dir."""
    t = time.monotonic()
    client.close()
    ctx.created.append(pagexfer.save_sent(ctx.images_dir, client))
    ctx.stats["page-server"] = time.monotonic() - t


def _link_parent(ctx: DumpContext, prev: str) -> None:
    """The ``parent`` link of the images dir, as criu makes it: the path as
    given (relative: to the images dir)."""
    link = os.path.join(ctx.images_dir, "parent")
    if not os.path.isdir(os.path.join(ctx.images_dir, prev)):
        raise DumpError(f"{prev}: the previous images directory does not exist "
                        "(relative paths are taken from the images directory, as criu)")
    try:
        os.unlink(link)
    except FileNotFoundError:
        pass
    os.symlink(prev, link)
    ctx.created.append(link)


def _tracked(ctx: DumpContext, record: dict[int, tuple[int, int]]) -> None:
    """Under the freeze: for each task whose pre-dump tracking still holds,
    the pages written since (memory.split_by_parent leaves the others in
    the parent) and the VMAs our userfaultfd protects -- whose VmFlags
    'uw' is then ours, not the task's."""
    from .record import replace
    from .resources import memory, memtrack
    track: dict[str, Any] = {"parent": os.path.join(ctx.images_dir, "parent"),
                             "written": {}, "registered": {}, "names": _image_names(ctx)}
    for task in ctx.tasks:
        if task.zombie or not memtrack.valid(task.pid, record.get(task.pid)):
            continue
        track["written"][task.pid] = memtrack.written(task.pid)
        track["registered"][task.pid] = [(m.start, m.end) for m in task.maps
                                         if "uw" in m.vmflags]
        task.maps = [replace(m, vmflags=tuple(f for f in m.vmflags if f != "uw"))
                     if "uw" in m.vmflags else m for m in task.maps]
    ctx.kind_state[memory.TRACK] = track


def _remove_created(ctx: DumpContext) -> None:
    """A failed dump or pre-dump leaves no image behind."""
    for path in ctx.created:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _image_names(ctx: DumpContext) -> dict[int, int]:
    """outside pid -> the pid its per-task images are named by: for a tree
    in a pid namespace of its own, its pid inside (as _write_images names
    them, from the pstree; here from NSpid, which pre_dump has without a
    pstree), so that a pre-dump's pagemaps are found by the dump and the
    restore that follow it."""
    return pidview.inside_names([pstree_pb2.pstree_entry(pid=t.pid, ns_pid=t.status.nspid)
                                 for t in ctx.tasks if t.status is not None])


def pre_dump(pid: int, images_dir: str, *, prev_images_dir: str | None = None,
             page_server: tuple[str, int] | None = None) -> dict[str, float]:
    """criu's pre-dump: copy the tree's private memory while it is frozen,
    then let it run on with its writes tracked (resources/memtrack.py), so
    that a later ``dump(..., prev_images_dir=images_dir)`` (or another
    pre-dump) copies under its freeze only the pages written since.  Only
    memory is saved (pagemap-PID.img, pages-N.img, inventory.img, plus
    procsnap's ``memtrack`` record); with ``prev_images_dir`` the images
    link to it as ``parent`` and unchanged pages stay there.  The tree
    keeps a userfaultfd (a high fd, O_CLOEXEC) until the dump, which
    closes it.  Returns stage timings ("frozen" among them)."""
    from .resources import memory, memtrack

    t0 = time.monotonic()
    ctx = _begin(pid, images_dir, DumpOptions(leave_running=True,
                                              prev_images_dir=prev_images_dir,
                                              page_server=page_server))
    record: dict[int, tuple[int, int]] = {}
    if prev_images_dir is not None:
        record = memtrack.load(os.path.join(images_dir, "parent"))
    client = _connect_page_server(ctx)
    ok = False
    armed: dict[int, tuple[int, int]] = {}
    t_frozen = 0.0
    try:
        t_frozen = _freeze_tree(ctx, pid)
        _look(ctx)
        if client is not None:
            ctx.kind_state[pagexfer.NAMES_KEY] = _image_names(ctx)
        if prev_images_dir is not None:
            _tracked(ctx, record)
        t = time.monotonic()
        for task in ctx.tasks:
            if not task.zombie:
                memory.pre_dump(ctx, task)
        ctx.stats["memory"] = time.monotonic() - t
        if client is not None:
            _close_page_server(ctx, client)
        t = time.monotonic()
        arm = ctx.kind_state.get(memory.TRACK + ".arm", {})
        for task in ctx.tasks:
            if not task.zombie:
                armed[task.pid] = memtrack.arm(task, record.get(task.pid), arm.get(task.pid, []))
        ctx.stats["track"] = time.monotonic() - t
        t = time.monotonic()
        d = images_dir
        inv = inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True,
                                            ns_per_id=True, lsmtype=inventory_pb2.NO_LSM)
        ctx.created.append(images.image_path(d, "inventory", None))
        images.write_one(d, "inventory", inv)
        names = _image_names(ctx)
        for task in ctx.tasks:
            for kind, ident, msgs in task.extra_images:
                if kind in pidview.PER_PID_KINDS and ident is not None:
                    ident = names.get(ident, ident)
                ctx.created.append(images.image_path(d, kind, ident))
                images.write_image(d, kind, msgs, ident)
        ctx.created.append(memtrack.save(d, armed))
        ctx.stats["write"] = time.monotonic() - t
        ok = True
    except OSError as exc:  # InjectError among them
        raise _dump_error(pid, exc) from None
    finally:
        if not ok:
            if client is not None:
                client.abort()
            _remove_created(ctx)
            # the tree goes on as it was: without a tracker made now
            made = {ino for p, (fd, ino) in armed.items() if record.get(p) != (fd, ino)}
            for task in ctx.tasks:
                if task.inj is not None and not task.zombie:
                    try:
                        memtrack.disarm(task, made)
                    except OSError:
                        pass
        for task in ctx.tasks:
            _release(task, kill=False)
        if t_frozen:
            ctx.stats["frozen"] = time.monotonic() - t_frozen
    ctx.stats["total"] = time.monotonic() - t0
    return ctx.stats


def _action(ctx: DumpContext, name: str) -> int:
    return ctx.opts.action(name) if ctx.opts.action is not None else 0


def _lock_netns(ctx: DumpContext, pid: int) -> None:
    """Lock the tree's own network namespace as a whole, from inside it (as
    criu: whether or not a connection is dumped): its peers and its own
    loopback traffic stand still until the restored tree runs.  Set before
    the namespace's ruleset is saved, so the restored namespace starts
    locked; removed here again if the tree runs on."""
    from .resources import tcp
    table = tcp.table_name(pid)
    try:
        tcp.lock_netns(pid, table)
    except DumpError:
        if ctx.opts.tcp_established:
            raise
        return  # no nft: nothing of the tree's state hangs on the lock
    ctx.netns_locked = True

    def unlock(keep: bool) -> None:
        if not keep:
            tcp.unlock_netns(pid, table)
    ctx.cleanups.append(unlock)


def _own_netns(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def _wait_dead(tids: list[int], timeout: float = 5.0) -> None:
    """Return once every killed thread has exited and been reaped by us
    where we were its tracer: a dump that stops the tree is over when the
    tree is, so a restore run right after it (lxc-checkpoint -s, then -r)
    finds its pids free.  A task killed while still traced is a zombie
    that its parent cannot reap until we, its tracer, have collected it
    (a container's init waits for its children so: its pid stays taken)."""
    end = time.monotonic() + timeout
    left = list(tids)
    while left and time.monotonic() < end:
        # All at once: a pid namespace's init stays alive until we have
        # collected its children.
        for tid in list(left):
            _reap_traced(tid)
            state = _state(tid)
            if state is None or state == "X" or (state == "Z" and not _traced_by_us(tid)):
                left.remove(tid)  # gone, or its parent's to reap now
        if left:
            time.sleep(0.001)


def _traced_by_us(tid: int) -> bool:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1]) == os.getpid()
    except OSError:
        pass
    return False


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


def _reap_traced(pid: int) -> None:
    # We were its tracer: collect the exit notification meant for us, so
    # the real parent's wait is not delayed by ptrace bookkeeping.
    try:
        os.waitpid(pid, C.WALL | os.WNOHANG)
    except ChildProcessError:
        pass


def _write_images(ctx: DumpContext) -> None:
    d = ctx.images_dir
    from .resources import memory
    memory.mark_shared(ctx)  # no PE_LAZY on memory a parent and child share

    def track(kind: str, ident: int | None) -> None:
        ctx.created.append(images.image_path(d, kind, ident))

    inv = inventory_pb2.inventory_entry(img_version=2, fdinfo_per_id=True,
                                        ns_per_id=True, lsmtype=inventory_pb2.NO_LSM)
    # As CRIU: the dumper's own ids, which the restore compares the root's
    # with to know which namespaces to create (resources.namespaces).
    inv.root_ids.CopyFrom(core_pb2.task_kobj_ids_entry(vm_id=0, files_id=0, fs_id=0,
                                                       sighand_id=0))
    from .resources import namespaces
    namespaces.own_ids(inv.root_ids)
    if "tcp" in ctx.kind_state:  # resources.tcp's NAME: it locked the network
        from .resources import tcp  # (else not imported: socket, subprocess, shutil...)
        tcp.inventory(ctx, inv)
    track("inventory", None)
    images.write_one(d, "inventory", inv)
    # A tree in a pid namespace of its own is written as CRIU writes it:
    # the pids inside (pstree and the per-task image names; images.pidview)
    from .resources import core as core_kind
    entries, inside = pidview.to_inside([t.pstree for t in ctx.tasks],
                                        ctx.kind_state.get(core_kind.GONE_GROUPS))
    track("pstree", None)
    images.write_image(d, "pstree", entries)
    for task in ctx.tasks:
        for th in task.threads or [DumpThread(task.pid, core=task.core)]:
            tid = inside.get(th.tid, th.tid)
            track("core", tid)
            images.write_one(d, "core", pidview.map_core_pids(th.core, inside), tid)
        if task.ids is not None:
            track("ids", inside.get(task.pid, task.pid))
            images.write_one(d, "ids", task.ids, inside.get(task.pid, task.pid))
        for kind, ident, msgs in task.extra_images:
            if kind in pidview.PER_PID_KINDS and ident is not None:
                ident = inside.get(ident, ident)
            track(kind, ident)
            images.write_image(d, kind, msgs, ident)
    track("files", None)
    images.write_image(d, "files", [pidview.map_file_pids(f, inside) for f in ctx.files]
                       if inside else ctx.files)
    for (kind, ident), msgs in ctx.shared_images.items():
        track(kind, ident)
        images.write_image(d, kind, [pidview.map_pids(kind, m, inside) for m in msgs]
                           if inside else msgs, ident)
    for kind, pairs in ctx.payload_images.items():
        track(kind, None)
        with images.ImageWriter(d, kind) as w:
            for msg, data in pairs:
                w.write(msg)
                w.write_raw(data)

