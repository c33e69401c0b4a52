"""The task and context types the drivers fill and the resource modules read.

The dump driver (dumper) makes a DumpContext with one DumpTask per process
(one DumpThread per thread); the restore driver (restorer) makes a
RestoreContext with one RestoreTask per process.  The resource modules
take these and nothing else from the drivers, so they sit below them:
kernel < procfs < images < inject < tasks < resources < drivers < cli, an
import tree with no circle.
"""
from __future__ import annotations

import contextlib
import os
from .record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

from . import images
from .errors import ImageError, RestoreError
from .images.pb import pstree_pb2
from .inject import Answer, InjectError, Injector, Read
from .kernel import consts as C
from .kernel.structs import UserRegs
from .procfs.parse import FdInfo, MapEntry, Stat, Status
from .procfs.reader import ProcReader

# ------------------------------------------------------------------ dump ----

# The tasks, threads and contexts are compared by identity (eq=False; two
# of them never hold the same fields) and have no generated repr (one would
# print every image of a tree): dataclass() compiles each generated method
# at import, and these two for the seven classes below were ~5 % of the
# instructions of procsnap's start-up.

@record
class DumpOptions:
    """What the caller of dump() asked for."""
    leave_running: bool = False
    shell_job: bool = False
    ghost_limit: int = 1 << 20   # largest deleted file saved as a ghost (CRIU's default)
    link_remap: bool = False     # may hard-link unlinked files back (CRIU's --link-remap)
    external: tuple[str, ...] = ()   # criu's --external keys, e.g. "unix[INO]"
    tcp_established: bool = False    # dump live TCP connections (TCP_REPAIR)
    file_locks: bool = False         # save file locks and leases (CRIU's --file-locks)
    tcp_close: bool = False          # criu's dump --tcp-close: connections come back closed
    skip_in_flight: bool = False     # criu's --skip-in-flight: drop unaccepted connections
    ext_unix_sk: bool = False        # criu's --ext-unix-sk: dgram peers outside by name
    orphan_pts_master: bool = False  # criu's --orphan-pts-master: a pts whose master is outside
    # criu's action scripts: called with a stage's name ("pre-dump",
    # "post-dump", "network-lock"...), returns the scripts' status (0 = go on)
    action: Callable[[str], int] | None = None
    ext_mount_auto: bool = False     # criu's --ext-mount-map auto: external mounts found in ours
    # criu's --manage-cgroups MODE: "ignore" saves no cgroup at all; any other
    # mode saves membership and the controllers' properties
    manage_cgroups: str = "soft"
    cgroup_root: tuple[str, ...] = ()  # criu's --cgroup-root [CONTROLLER:]/PATH: dump from there
    # criu's --empty-ns net (CLONE_NEWNET): the network namespace belongs to
    # the caller (a container runtime); only its loopback's state is saved
    empty_ns: int = 0
    # procsnap's --sync (criu has none): the images are on disk, not only in
    # the page cache, before the tree is killed; write-back of the pages
    # starts while they are copied
    sync: bool = False
    # criu's --prev-images-dir: the images of a pre-dump this dump builds
    # on (linked as "parent"); pages unchanged since stay there
    prev_images_dir: str | None = None
    # criu's --page-server --address A --port P: (A, P); pagemaps and pages
    # go to that page server (procsnap.pagexfer), the rest stays local
    page_server: tuple[str, int] | None = None


@record(eq=False, repr=False)
class DumpThread:
    """One thread of a process: its own registers, injector and core."""
    tid: int
    regs: UserRegs | None = None      # as found at the freeze
    inj: Injector | None = None
    core: Any = None                  # core_entry of this thread (leader: the task's)
    held: bool = False                # seized by us
    stop_signo: int = 0               # job-control stop signal it was stopped by
    # What the thread answered to the modules' THREAD_READS, asked by the
    # driver in one batch (dumper._ask_threads); a read not here is asked
    # when read.
    answers: dict[Read, Answer] = field(default_factory=dict)

    def need_inj(self) -> Injector:
        assert self.inj is not None
        return self.inj

    def read(self, r: Read) -> Answer:
        """The thread's answer to ``r`` (an error of a checked read raised)."""
        return self.need_inj().answer(r, self.answers.get(r))


@record(eq=False, repr=False)
class DumpTask:
    """Everything the resource modules learn about one process."""
    pid: int
    proc: ProcReader
    threads: list[DumpThread] = field(default_factory=list)  # [0] is the leader
    zombie: bool = False
    scratch: int = 0
    scratch_size: int = 0
    maps: list[MapEntry] = field(default_factory=list)
    stat: Stat | None = None
    status: Status | None = None
    core: Any = None                  # core_entry, filled by several modules
    ids: Any = None                   # task_kobj_ids_entry
    pstree: Any = None
    extra_images: list[tuple[str, int | None, list[Any]]] = field(default_factory=list)
    # Where the names readlink gives for this task (fds, cwd, root) are
    # found from here: "" in our mount namespace, else the root of its
    # mount namespace (DumpContext.set_fs_views); None: not decided yet.
    fs_prefix: str | None = None
    _thread_status: dict[int, Status] = field(default_factory=dict)

    def thread_status(self, tid: int) -> Status:
        """/proc status of one of its threads, read once under the freeze
        (the leader's is ``status``): the driver, the audit, creds and
        seccomp all look at it."""
        if tid == self.pid and self.status is not None:
            return self.status
        st = self._thread_status.get(tid)
        if st is None:
            st = self._thread_status[tid] = self.proc.thread_status(tid)
        return st

    @property
    def inj(self) -> Injector | None:
        """The leader's injector (None until the task is prepared, or a zombie)."""
        return self.threads[0].inj if self.threads else None

    @property
    def regs(self) -> UserRegs | None:
        """The leader's registers as found at the freeze."""
        return self.threads[0].regs if self.threads else None

    def need_inj(self) -> Injector:
        assert self.inj is not None
        return self.inj


@record(eq=False, repr=False)
class DumpContext:
    """The state of one dump, shared by the resource modules."""
    images_dir: str
    opts: DumpOptions
    tasks: list[DumpTask] = field(default_factory=list)
    files: list[Any] = field(default_factory=list)       # file_entry for files.img
    # images not of one task: (kind, id or None) -> entries
    shared_images: dict[tuple[str, int | None], list[Any]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)      # paths to remove on failure
    stats: dict[str, float] = field(default_factory=dict)
    pages_ids: int = 0
    payload_images: dict[str, list[tuple[Any, bytes]]] = field(default_factory=dict)
    kind_state: dict[str, Any] = field(default_factory=dict)  # per fd kind, across tasks
    # (st_dev, st_ino) -> [(pid, fd, file id)] of every fd seen so far, to
    # find open file descriptions shared between fds and processes (kcmp
    # decides among the fds on one inode; keyed so 10,000 fds stay linear).
    open_files: dict[tuple[int, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    # Run before the tasks are released, with True when the dump is
    # complete and the tree is killed (TCP sockets stay in repair mode and
    # the network lock stays), False when the tree runs on.
    cleanups: list[Callable[[bool], None]] = field(default_factory=list)
    # Run once every image is written, before the tree is killed (never
    # with --leave-running): state that reading destroys (a socket's
    # pending error) is read only here, where nothing of the dump itself
    # is left to fail; each may write images of its own.
    commits: list[Callable[[], None]] = field(default_factory=list)
    # the tree's own network namespace is locked as a whole (resources.tcp)
    netns_locked: bool = False
    _next_id: int = 1
    _numbers: dict[int, int] = field(default_factory=dict)

    def set_fs_views(self) -> None:
        """Decide every task's fs_prefix, once the tree is frozen.

        readlink of /proc/PID/fd/N (cwd, root) prints a path from *our*
        root; for a task in another mount namespace, from that
        namespace's root -- also for a chrooted task, whose own root
        (/proc/PID/root) is elsewhere.  So names of a foreign mount
        namespace are looked up under /proc/P/root of a task P of that
        namespace whose root is the namespace's root (its root reads "/"
        from here), as criu does (mntns_get_root_fd).  Without such a
        task, each task's own root is the best guess left (a name found
        there is still checked by identity, never trusted)."""
        ours = _ns_ino("self")
        roots: dict[int, str] = {}
        ns_of: dict[int, int | None] = {}
        for t in self.tasks:
            ino = ns_of[t.pid] = _ns_ino(str(t.pid))
            if ino is None or ino == ours or ino in roots:
                continue
            try:
                if os.readlink(f"/proc/{t.pid}/root") == "/":
                    roots[ino] = f"/proc/{t.pid}/root"
            except OSError:
                pass
        for t in self.tasks:
            ino = ns_of[t.pid]
            if ino is None or ino == ours:
                t.fs_prefix = ""
            else:
                t.fs_prefix = roots.get(ino, f"/proc/{t.pid}/root")

    def task_number(self, task: "DumpTask") -> int:
        """1, 2, ... in tree order: the ids of ids-PID.img (vm, files, fs, sighand)."""
        if len(self._numbers) != len(self.tasks):
            self._numbers = {id(t): n for n, t in enumerate(self.tasks, 1)}
        return self._numbers[id(task)]

    def new_file_id(self) -> int:
        fid = self._next_id
        self._next_id += 1
        return fid

    def add_shared(self, kind: str, msg: Any, ident: int | None = None) -> None:
        self.shared_image(kind, ident).append(msg)

    def shared_image(self, kind: str, ident: int | None = None) -> list[Any]:
        """The entries of an image not of one task (tty-info.img, ...)."""
        return self.shared_images.setdefault((kind, ident), [])

    def add_payload(self, kind: str, msg: Any, data: bytes) -> None:
        """An entry followed by raw bytes (pipe data, queued packets)."""
        self.payload_images.setdefault(kind, []).append((msg, data))


def _ns_ino(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


@record(eq=False, repr=False)
class FdCtx:
    """One fd of a task as the fd kind modules see it at dump."""
    ctx: DumpContext
    task: DumpTask
    fd: int
    link: str            # what readlink says (never trusted alone: see regfile)
    info: FdInfo | None  # /proc/PID/fdinfo/FD
    st: os.stat_result | None


def make_pstree_entry(task: DumpTask) -> Any:
    st = task.stat
    assert st is not None
    threads = [th.tid for th in task.threads] or [task.pid]
    return pstree_pb2.pstree_entry(pid=task.pid, ppid=st.ppid, pgid=st.pgrp,
                                   sid=st.session, threads=threads)


# --------------------------------------------------------------- restore ----

TRAMP_SIZE = 64 * 1024  # the puppet's trampoline: a syscall page plus scratch space

PUPPET_OPTIONS = (C.PTRACE_O_TRACESYSGOOD | C.PTRACE_O_EXITKILL | C.PTRACE_O_TRACEFORK
                  | C.PTRACE_O_TRACECLONE)


@record
class RestoreOptions:
    """What the caller of restore() asked for."""
    detached: bool = True
    shell_job: bool = False
    pidfile: str | None = None
    skip_file_check: bool = False
    inherit_fd: dict[str, int] = field(default_factory=dict)  # "unix[INO]" -> our fd
    tcp_close: bool = False      # criu's --tcp-close: established TCP comes back closed
    ext_unix_sk: bool = False    # criu's --ext-unix-sk: connect to outside peers by name
    # criu's --orphan-pts-master: such a pts gets a new pty pair, its master
    # handed to the caller with the orphan-pts-master action (criu's RPC)
    orphan_pts_master: bool = False
    verify: bool = True          # compare each task with its images before it runs
    # criu's action scripts (see DumpOptions); orphan-pts-master is called
    # with the new master as a second argument
    action: Callable[..., int] | None = None
    root: str | None = None      # criu's --root: the root file system of a mount namespace
    ext_mount_map: dict[str, str] = field(default_factory=dict)  # external mount key -> path
    ext_mount_auto: bool = False  # criu's --ext-mount-map auto: a key that is a path is the path
    ext_veth: dict[str, str] = field(default_factory=dict)  # veth inside -> its peer's name here
    restore_sibling: bool = False  # criu's --restore-sibling: the root is our parent's child
    # criu's --manage-cgroups MODE (none, props, soft, full, strict, ignore)
    manage_cgroups: str = "soft"
    cgroup_root: tuple[str, ...] = ()  # criu's --cgroup-root [CONTROLLER:]/PATH: move the tree
    # criu's --empty-ns net: a new network namespace, configured by the
    # caller at setup-namespaces; procsnap only brings its loopback back
    empty_ns: int = 0
    # criu's --join-ns KIND:PATH|PID: the tree joins that namespace instead of a new one
    join_ns: dict[str, str] = field(default_factory=dict)
    # criu's restore --lazy-pages: private anonymous memory is left empty
    # and served on fault by the lazy-pages daemon listening at this path
    # (<work dir>/lazy-pages.socket); None: every page is restored at once
    lazy_socket: str | None = None


@record(eq=False, repr=False)
class RestoreThread:
    """One thread of a task being restored."""
    tid: int
    core: Any
    inj: Injector = None  # type: ignore[assignment]


@record(eq=False, repr=False)
class RestoreTask:
    """One task being restored: its images and its puppet."""
    pid: int
    images_dir: str
    pstree: Any
    core: Any = None
    ids: Any = None
    mm: Any = None
    pagemap: list[Any] = field(default_factory=list)
    pages_id: int = 0
    # memory's page lookup (resources/memory._page_runs): the page files of
    # the images and their parents', and the runs found there
    page_files: list[str] = field(default_factory=list)
    page_runs: Any = None
    # indexes in mm.vmas of the VMAs with pages (memory._vmas_with_pages:
    # premap and restore both ask; a pagemap of 600 runs costs 2 ms a walk)
    vmas_with_pages: set[int] | None = None
    # lazy restore (memory.lazy_set): pages the images leave to a page
    # server (criu's PE_LAZY without PE_PRESENT), and the ranges this task
    # registered with its userfaultfd for the lazy-pages daemon
    lazy_only: list[tuple[int, int]] = field(default_factory=list)
    lazy: list[tuple[int, int]] = field(default_factory=list)
    fs: Any = None
    fdinfos: list[Any] = field(default_factory=list)
    threads: list[RestoreThread] = field(default_factory=list)  # [0] is the leader
    zombie: bool = False
    inj: Injector = None  # type: ignore[assignment]
    tramp: int = 0
    tramp_size: int = TRAMP_SIZE
    tty_fd: int | None = None
    pidfds: dict[int, int] = field(default_factory=dict)  # source pid -> pidfd in puppet
    _mounts: dict[int, str] | None = None  # mnt_id -> fstype, as the puppet sees them
    # Set by files.restore while an fd kind opens an fd that must end up
    # close-on-exec: open it so, rather than fix it with one more call.
    open_cloexec: bool = False
    # Its fd table / fs struct is its parent's (the same files_id / fs_id,
    # cloned with CLONE_FILES / CLONE_FS): the parent restores it.
    shares_files: bool = False
    shares_fs: bool = False
    _rctx: Any = None

    def image_name(self, kind: str, ident: int | None = None) -> str:
        if ident is None:
            ident = self.pid
            if kind == "fdinfo":
                ident = self.ids.files_id if self.ids is not None else 0
            elif kind == "pages":
                ident = self.pages_id
        if kind in ("inventory", "pstree", "files"):
            return images.image_path(self.images_dir, kind, None)
        if self._rctx is not None and kind not in ("fdinfo", "pages"):
            ident = self._rctx.image_pid(ident)
        return images.image_path(self.images_dir, kind, ident)

    def open_in_puppet(self, path: str, flags: int,
                       check: Callable[[int], None] | None = None) -> int:
        """Open ``path`` inside the puppet: the file is opened by the process
        that will own it, in its own context (as a FUSE server sees it).
        ``check`` is called with the new fd (regfile: has the file changed
        since the dump?)."""
        inj = self.inj
        ours = (path.startswith(self.images_dir.rstrip("/") + "/")
                or path.startswith(f"/proc/{os.getpid()}/"))
        chan = self._rctx.fd_channel if self._rctx is not None else None
        if ours and chan is not None:
            # a puppet inside a new user namespace is not procsnap's root:
            # procsnap's own files are opened by procsnap and sent over
            return self._open_sent(path, flags, check)
        if ours and self._rctx is not None and self._rctx.puppet_pivoted:
            # procsnap's own files (images, our fds) once the puppet lives
            # under another root: opened here, in procsnap's mount namespace,
            # and handed over.  A path walk from the puppet through a fd on
            # its old root would not cross the mounts on it (/proc, /tmp...):
            # they were detached with that root after the pivot.
            try:
                mine = os.open(path, flags | os.O_CLOEXEC)
            except OSError as exc:
                raise RestoreError(f"{path}: cannot open for pid {self.pid}: "
                                   f"{exc.strerror}") from None
            try:
                fd = self.grab_fd(os.getpid(), mine)
            finally:
                os.close(mine)
            if check is not None:
                check(fd)
            return fd
        try:
            if self.open_cloexec:
                flags |= C.O_CLOEXEC
            fd = inj.call("openat", C.AT_FDCWD & (2**64 - 1), inj.put_str(path), flags, 0)
        except InjectError as exc:
            if chan is not None and exc.errno in (1, 13):
                # EPERM/EACCES inside a new user namespace: a file the task
                # held open from outside it (its stdout, opened by the
                # host's root): the same file, opened by procsnap where
                # the puppet sees it (through its root: its mount tree)
                return self._open_sent(path, flags, check, through_root=True)
            raise RestoreError(f"{path}: cannot open for pid {self.pid}: "
                               f"{os.strerror(exc.errno or 0)}") from None
        if check is not None:
            check(fd)
        inj.reset_scratch()
        return fd

    def _open_sent(self, path: str, flags: int, check: Callable[[int], None] | None = None,
                   through_root: bool = False) -> int:
        """open_in_puppet by procsnap, the fd sent to the puppet (_recv_fd);
        ``through_root``: ``path`` as the puppet sees it, not procsnap."""
        self.inj.reset_scratch()
        where = f"/proc/{self.pid}/root{path}" if through_root and path.startswith("/") else path
        try:
            mine = os.open(where, flags | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RestoreError(f"{path}: cannot open for pid {self.pid}: "
                               f"{exc.strerror}") from None
        try:
            fd = self._recv_fd(mine)
        finally:
            os.close(mine)
        if not self.open_cloexec:
            self.inj.call("fcntl", fd, C.F_SETFD, 0)  # as openat without O_CLOEXEC
        if check is not None:
            check(fd)
        return fd

    def grab_fd(self, src_pid: int, src_fd: int) -> int:
        """A copy of fd ``src_fd`` of process ``src_pid`` (the same open
        file description), in the puppet: pidfd_open + pidfd_getfd."""
        inj = self.inj
        chan = self._rctx.fd_channel if self._rctx is not None else None
        if chan is not None:
            # inside a new user namespace a puppet may not pidfd_getfd from
            # us, nor from a puppet whose credentials are restored already
            # (no longer dumpable, its mm of the host's user namespace):
            # procsnap takes the fd and sends it
            if src_pid == os.getpid():
                return self._recv_fd(src_fd)
            from .kernel.libc import pidfd_getfd
            mine = pidfd_getfd(src_pid, src_fd)
            try:
                return self._recv_fd(mine)
            finally:
                os.close(mine)
        pidfd = self.pidfds.get(src_pid)
        if pidfd is None:
            # Keep it above every fd number the task will own, or placing
            # a later fd (dup3 onto its number) would close it.
            vpid = self._rctx.vpid(src_pid, self.pid)
            if vpid == 0 and os.getpid() in self.pidfds:
                # a task in a pid namespace above the puppet's (nested in
                # the tree): the restorer, which sees every task, opens
                # the pidfd and the puppet takes it through its pidfd of us
                mine = os.pidfd_open(src_pid)
                try:
                    low = inj.call("pidfd_getfd", self.pidfds[os.getpid()], mine, 0)
                finally:
                    os.close(mine)
            else:
                low = inj.call("pidfd_open", vpid, 0)
            pidfd = inj.call("fcntl", low, C.F_DUPFD_CLOEXEC, self._rctx.spare_fd_base)
            inj.call("close", low)
            self.pidfds[src_pid] = pidfd
        return inj.call("pidfd_getfd", pidfd, src_fd, 0)

    def _recv_fd(self, fd: int) -> int:
        """A copy of the restorer's ``fd`` in a puppet inside a new user
        namespace, which may not pidfd_getfd from the restorer (ptrace
        access to a task of the host's user namespace): sent over the
        restorer's socket pair (RestoreContext.fd_channel), whose other
        end the puppet holds where the pidfd of the restorer would be."""
        import socket

        assert self._rctx is not None
        socket.send_fds(self._rctx.fd_channel, [b"f"], [fd])
        inj = self.inj
        buf = inj.put(b"\0" * 8, align=8)
        iov = inj.put(buf.to_bytes(8, "little") + (1).to_bytes(8, "little"), align=8)
        ctl = inj.put(bytes(24), align=8)       # CMSG_SPACE(sizeof(int))
        hdr = inj.put(bytes(16) + iov.to_bytes(8, "little") + (1).to_bytes(8, "little")
                      + ctl.to_bytes(8, "little") + (24).to_bytes(8, "little") + bytes(8),
                      align=8)
        try:
            inj.call("recvmsg", self.pidfds[os.getpid()], hdr, C.MSG_CMSG_CLOEXEC)
            raw = inj.read_mem(ctl, 24)
        finally:
            inj.reset_scratch()
        level, kind = int.from_bytes(raw[8:12], "little"), int.from_bytes(raw[12:16], "little")
        if level != 1 or kind != 1:  # SOL_SOCKET, SCM_RIGHTS
            raise RestoreError(f"pid {self.pid}: no fd came over the restorer's socket")
        return int.from_bytes(raw[16:20], "little")

    def close_pidfds(self) -> None:
        for fd in self.pidfds.values():
            self.inj.call("close", fd)
        self.pidfds.clear()


@record(eq=False, repr=False)
class RestoreContext:
    """The state of one restore, shared by the resource modules."""
    images_dir: str
    opts: RestoreOptions
    files: dict[int, Any] = field(default_factory=dict)
    tasks: list[RestoreTask] = field(default_factory=list)
    by_pid: dict[int, RestoreTask] = field(default_factory=dict)
    placed: dict[int, tuple[int, int]] = field(default_factory=dict)  # file id -> (pid, fd)
    own_fds: list[int] = field(default_factory=list)  # restorer fds to close at the end
    created: list[int] = field(default_factory=list)  # pids this restore made
    spare_fd_base: int = 3  # first fd number no task owns: room for our helper fds
    kind_state: dict[str, Any] = field(default_factory=dict)  # per fd kind, across tasks
    # Once every task is built, before they run (TCP sockets leave repair
    # mode), and once they run (the network lock goes).
    before_detach: list[Callable[[], None]] = field(default_factory=list)
    after_detach: list[Callable[[], None]] = field(default_factory=list)
    # Run once the ghost and link-remap names are gone, tasks still stopped
    # (inotify watches that must not see those names come and go).
    after_names_gone: list[Callable[[], None]] = field(default_factory=list)
    # The dumper's namespace ids (inventory root_ids): the root is restored
    # in a new namespace of each kind whose id differs (resources.namespaces).
    root_ids: Any = None
    # pid or tid (the dumper's view, the images' names) -> its pids at every
    # level, innermost first (a set_tid array); only for a tree restored in
    # a pid namespace of its own.
    nspids: dict[int, list[int]] = field(default_factory=dict)
    # A tree in a pid namespace of its own keeps its pids inside it, but an
    # outer (host) pid still taken -- the dumped container runs on, or its
    # old init is a zombie not reaped yet -- is given up for a free one, as
    # criu does (the host's pids are not the container's state): dumped
    # outside pid -> the host pid it is restored under.  Tasks and threads
    # carry the new pid; image values that name pids reach them through
    # by_pid and nspids, which hold both keys, or through host_pid.
    relabel: dict[int, int] = field(default_factory=dict)
    # dumped outside pid or tid -> the pid its image files are named by,
    # when that differs (a tree in a pid namespace: the inside view, as
    # CRIU writes it and procsnap too since 2026-11-30)
    image_pids: dict[int, int] = field(default_factory=dict)
    # inside pid -> dumped outside pid, when the images name pids as seen
    # inside the tree's pid namespace
    inside_pids: dict[int, int] = field(default_factory=dict)
    # every image names pids as seen inside the tree's pid namespace
    # (CRIU's, and procsnap's own from 2026-11-30; images.pidview)
    all_inside: bool = False
    # The puppets live under another root: a restored mount namespace has
    # pivoted away from procsnap's (namespaces.mnt).
    puppet_pivoted: bool = False
    # The root lives in a new user namespace (namespaces.user): a puppet's
    # clone3 sets every pid level but the host's, which the restorer hints
    # through ns_last_pid (the kernel may give another).
    host_pid_unset: bool = False
    # ... and its puppets take the restorer's fds over this socket
    # (RestoreTask._recv_fd): the restorer's end, a SOCK_DGRAM socket
    fd_channel: Any = None
    # procsnap's O_PATH fd on the root of that restored mount namespace,
    # opened right after the pivot (the puppets chroot later, the fd stays):
    # names as the tree sees them are reached through it (tree_path).
    tree_root_fd: int | None = None
    # process group id -> (the member that forked it, its injector): the
    # short-lived leaders of groups whose leader was gone (restorer)
    group_helpers: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    # (task, pid) -> a function that ends it: a short-lived helper task
    # with that pid, forked by the task (the restorer sets it)
    spawn_helper: Callable[[Any, int], Callable[[], None]] | None = None

    def tree_path(self, path: str) -> str:
        """An absolute ``path`` as the restored tree sees it (a ghost file,
        a FIFO, a socket's directory) as a path procsnap can use: the path
        itself while the tree shares our mount namespace, else the same
        path under the restored namespace's root (which our own root does
        not reach).  /proc/OUR PID rather than /proc/self: a journal line
        with it (tmpnames) names nothing once we are gone."""
        if self.tree_root_fd is None:
            return path
        if not path.startswith("/"):
            path = "/" + path
        return f"/proc/{os.getpid()}/fd/{self.tree_root_fd}{path}"

    @contextlib.contextmanager
    def in_tree_root(self) -> Iterator[None]:
        """procsnap's root and cwd are the restored tree's root for a
        moment: for what must be done under a name as the tree sees it, by
        procsnap itself (a unix socket is bound to exactly the string
        given to bind(), so the string must be the tree's own name).  No
        /proc/self or images path works inside; both are put back, also
        on error.  One thread: procsnap runs no other."""
        if self.tree_root_fd is None:
            yield
            return
        root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(self.tree_root_fd)
            os.chroot(".")
            try:
                yield
            finally:
                os.fchdir(root)
                os.chroot(".")
                os.fchdir(cwd)
        finally:
            os.close(root)
            os.close(cwd)

    def host_pid(self, pid: int) -> int:
        """A dumped outside pid as the restored task's host pid."""
        return self.relabel.get(pid, pid)

    def dumped_pid(self, pid: int) -> int:
        """A restored task's host pid as the dump knew it (the outside pid
        image values name, once outside_pid has mapped them)."""
        for old, new in self.relabel.items():
            if new == pid:
                return old
        return pid

    def outside_pid(self, pid: int) -> int:
        """A pid an image names (a lock's owner, a terminal's session) as
        the dump knew it from outside: for the inside view, mapped."""
        return self.inside_pids.get(pid, pid) if self.all_inside else pid

    def image_pid(self, pid: int) -> int:
        """The pid that names the image files (core-N.img, ...) of the
        task or thread restored as ``pid``."""
        old = self.dumped_pid(pid)
        return self.image_pids.get(old, old)

    def vpid(self, pid: int, caller: int | None = None) -> int:
        """``pid`` (the dumper's view) as the puppet ``caller`` sees it (by
        default one in the root's pid namespace): the number to pass in an
        injected call.  A pid outside the tree is not translated; a task
        the caller cannot see (in a pid namespace above the caller's) is 0."""
        ids = self.nspids.get(pid)
        if not ids:
            return pid
        root = self.tasks[0].pid if self.tasks else pid
        seen_from = len(self.nspids.get(caller if caller is not None else root) or [root])
        # ids run from the innermost namespace out: the caller's level is
        # this many entries from the outermost one
        return ids[len(ids) - seen_from] if len(ids) >= seen_from else 0

    def set_tid(self, pid: int) -> list[int]:
        """The set_tid array that makes ``pid`` at every level."""
        return self.nspids.get(pid) or [pid]

    def payload_entries(self, kind: str) -> list[Any]:
        """Entries (with raw tails) of a shared image; [] if it is absent."""
        if not os.path.exists(images.image_path(self.images_dir, kind, None)):
            return []
        return images.read_entries(self.images_dir, kind)
    stats: dict[str, float] = field(default_factory=dict)

    def all_ids(self) -> set[int]:
        """Every pid and tid this restore creates."""
        return {t.pid for t in self.tasks} | {th.tid for t in self.tasks for th in t.threads}

    def file_entry(self, fid: int) -> Any:
        try:
            return self.files[fid]
        except KeyError:
            raise ImageError(images.image_path(self.images_dir, "files", None),
                             f"no file entry with id {fid}") from None


# ------------------------------------------------------------ collect ----
