"""System V IPC objects: shared memory segments, semaphore sets and
message queues, in CRIU's ipcns-shm/ipcns-sem/ipcns-msg-ID.img (ID = the
ipc namespace's inode), segment contents in pagemap-shmem-SHMID.img with
``in_pagemaps`` as CRIU 3.x+ writes them.

Two settings:

* **The tree has an ipc namespace of its own** (namespaces.ipc): every
  object of the namespace is the tree's.  All are saved and made again in
  the new namespace under the same ids (kernel.{shm,sem,msg}_next_id is
  written before each create), with their keys, modes, owners, creators,
  sizes, contents, values and messages.
* **The tree lives in the host's ipc namespace** (where CRIU refuses the
  dump): only the shm segments *attached* by the tree are the tree's own
  state -- they are saved (this module's ``finish``) and made again under
  their old id when that id is free, or taken over when the segment is
  still there, unattached, with the same key, size and creator (what a
  dump that killed the tree leaves behind: PostgreSQL's segment).  A
  segment the tree does not attach, and the host's semaphores and message
  queues, are not the tree's and are not saved: the tree finds them again
  by key (or misses them) as any new process would.

Not restored, by nature: the times (shm_atime/dtime/ctime, sem_otime,
msg_stime/rtime), the last pids (shm_lpid, sempid, msg_lspid/lrpid) and
shm_cpid -- the kernel sets them and offers no call to write them (CRIU
neither); verify.py does not compare them.  Semaphore undo lists
(semop(SEM_UNDO)) have no view in /proc or any call: a task's pending
adjustments cannot be seen, so they cannot be saved nor the dump refused;
after a restore they are not applied at the task's exit.  CRIU loses them
the same way.  This is written down in the README.

An attached segment is a VMA "/SYSV<key> (deleted)" whose inode is the
segment's id (newseg() sets i_ino to it): memory.py records it with
status VMA_AREA_SYSVIPC and shmid = the id, and ``map_vma`` attaches it
again at its address with shmat(), then sets each VMA's protection.
"""
from __future__ import annotations

import ctypes
import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .. import images
from ..images import parent as parent_pages
from ..errors import RestoreError, Unsupported
from ..images.pb import ipc_desc_pb2, ipc_msg_pb2, ipc_sem_pb2, ipc_shm_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel import ipc as K
from ..procfs.parse import MapEntry
from . import shmem

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "sysvipc"
PAGE = C.PAGE_SIZE
VMA_AREA_SYSVIPC = 1 << 10  # criu/include/image.h


def is_sysv(m: MapEntry) -> bool:
    """A System V shm attachment (shmat): "/SYSV%08x (deleted)" on the
    kernel's internal shm mount (device 0:1), shared."""
    return m.shared and m.path.startswith("/SYSV") and m.dev_major == 0


def _key_of(m: MapEntry) -> int:
    return int(m.path[5:13], 16)


# (uid, gid) the ipc sysctls are written as: (0, 0), procsnap itself, but
# for an ipc namespace of a new user namespace its root's (namespaces.ipc
# sets it while it restores one: procsnap's root is "other" to its sysctls,
# which are writable by their namespace's root only)
sysctl_owner: tuple[int, int] = (0, 0)


def _sysctl(name: str, value: int | str | None = None) -> str:
    """Read or write /proc/sys/kernel/NAME (or fs/mqueue/...) of the calling
    thread's ipc namespace: the ipc sysctls are looked up by the opener's
    namespace."""
    path = "/proc/sys/" + (name if "/" in name else "kernel/" + name)
    if value is None:
        with open(path) as f:
            return f.read().strip()
    # the *_next_id ones are writable with CAP_CHECKPOINT_RESTORE over the
    # namespace instead: as procsnap (acting as another uid drops it)
    owner = (0, 0) if name.endswith("_next_id") else sysctl_owner
    with K.acting_as(*owner), open(path, "w") as f:
        f.write(f"{value}\n")
    return str(value)


def _desc(ident: int, perm: K.IpcPerm) -> Any:
    return ipc_desc_pb2.ipc_desc_entry(key=perm.key & 0xFFFFFFFF, uid=perm.uid, gid=perm.gid,
                                       cuid=perm.cuid, cgid=perm.cgid, mode=perm.mode, id=ident)


def _signed(key: int) -> int:
    return key - (1 << 32) if key & 0x80000000 else key


# ------------------------------------------------------------------ dump ----

def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    """Note the segments ``task`` attaches, and check each attachment is
    whole: the restore attaches the whole segment at once."""
    seen: dict[int, list[MapEntry]] = {}
    for m in task.maps:
        if is_sysv(m):
            seen.setdefault(m.ino, []).append(m)
    if not seen:
        return
    attached = ctx.kind_state.setdefault(NAME, {})
    with K.in_ipc_ns(task.pid):  # its ids are its namespace's
        for shmid, vmas in seen.items():
            _check_whole(task, attached, shmid, vmas)


def _check_whole(task: "DumpTask", attached: dict[int, Any], shmid: int,
                 vmas: list[MapEntry]) -> None:
    attached.setdefault(shmid, (task.pid, vmas[0], _key_of(vmas[0])))
    for base in (m.start - m.pgoff for m in vmas if m.pgoff == 0):
        _, ds = _stat_or_refuse(task.pid, shmid, vmas[0])
        end = base + (ds.segsz + PAGE - 1) // PAGE * PAGE
        pos = base
        for m in sorted((m for m in vmas if base <= m.start < end), key=lambda m: m.start):
            if m.start != pos or m.start - m.pgoff != base:
                break
            pos = m.end
        if pos != end:
            raise Unsupported(f"pid {task.pid}: System V shm segment {shmid} attached at "
                              f"{base:#x} is partly unmapped (mapped up to {pos:#x} of "
                              f"{end:#x}); only whole attachments are restored")
    if not any(m.pgoff == 0 for m in vmas):
        raise Unsupported(f"pid {task.pid}: System V shm segment {shmid} at {vmas[0].start:#x}: "
                          "its first page is unmapped; only whole attachments are restored")


def _stat_or_refuse(pid: int, shmid: int, m: MapEntry) -> tuple[int, K.ShmidDs]:
    try:
        return K.shm_stat(shmid)
    except OSError as exc:
        raise Unsupported(f"pid {pid}: System V shm segment {shmid} at {m.start:#x}: cannot be "
                          f"read from the dumper's ipc namespace ({exc.strerror})") from None


def finish(ctx: "DumpContext") -> None:
    """Host ipc namespace: save the segments the tree attaches (in a
    namespace of its own, namespaces.ipc saves all of them instead)."""
    attached = ctx.kind_state.get(NAME)
    if not attached:
        return
    root = ctx.tasks[0]
    own = os.stat("/proc/self/ns/ipc").st_ino
    ns_id = os.stat(f"/proc/{root.pid}/ns/ipc").st_ino
    if ns_id != own:
        return
    entries = []
    for shmid, (pid, m, key) in sorted(attached.items()):
        _, ds = _stat_or_refuse(pid, shmid, m)
        if ds.perm.key & 0xFFFFFFFF != key:
            raise Unsupported(f"pid {pid}: System V shm segment {shmid} at {m.start:#x}: key "
                              f"{ds.perm.key & 0xFFFFFFFF:#x} is not the mapping's {key:#x}")
        entries.append(dump_segment(ctx, shmid, ds, pid))
    write_image(ctx, "ipcns-shm", ns_id, [(e, b"") for e in entries])


def dump_segment(ctx: "DumpContext", shmid: int, ds: K.ShmidDs, pid: int) -> Any:
    """The entry of one segment of the calling thread's ipc namespace; its
    populated pages (SEEK_DATA on the segment's shmem file, reached
    through our own read-only attachment) go to pagemap-shmem-SHMID."""
    e = ipc_shm_pb2.ipc_shm_entry(desc=_desc(shmid, ds.perm), size=ds.segsz, in_pagemaps=True)
    addr = K.shmat(shmid, 0, K.SHM_RDONLY)
    try:
        length = (ds.segsz + PAGE - 1) // PAGE * PAGE
        fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + length:x}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_blksize > PAGE:
                raise Unsupported(f"pid {pid}: System V shm segment {shmid} (key "
                                  f"{ds.perm.key & 0xFFFFFFFF:#x}) uses huge pages "
                                  "(SHM_HUGETLB), which procsnap does not save yet")
            shmem.save_object(ctx, shmid, fd, ds.segsz, pid)
        finally:
            os.close(fd)
    finally:
        K.shmdt(addr)
    return e


def dump_sem(semid: int, ds: K.SemidDs) -> tuple[Any, bytes]:
    e = ipc_sem_pb2.ipc_sem_entry(desc=_desc(semid, ds.perm), nsems=ds.nsems)
    vals = K.sem_values(semid, ds.nsems)
    raw = b"".join(v.to_bytes(2, "little") for v in vals)
    return e, raw + bytes(-len(raw) % 8)


def dump_msg(msqid: int, ds: K.MsqidDs, msgmax: int) -> list[tuple[Any, bytes]]:
    """The queue's entry and each message (MSG_COPY: left queued), in order."""
    out: list[tuple[Any, bytes]] = [(ipc_msg_pb2.ipc_msg_entry(
        desc=_desc(msqid, ds.perm), qbytes=ds.qbytes, qnum=ds.qnum), b"")]
    for n in range(ds.qnum):
        mtype, text = K.msg_copy(msqid, n, max(msgmax, ds.qbytes))
        out.append((ipc_msg_pb2.ipc_msg(mtype=mtype, msize=len(text)),
                    text + bytes(-len(text) % 8)))
    return out


def write_image(ctx: "DumpContext", kind: str, ident: int, pairs: list[tuple[Any, bytes]]) -> None:
    ctx.created.append(images.image_path(ctx.images_dir, kind, ident))
    with images.ImageWriter(ctx.images_dir, kind, ident) as w:
        for msg, data in pairs:
            w.write(msg)
            if data:
                w.write_raw(data)


# --------------------------------------------------------------- restore ----

def _next_id(kind: str, ident: int) -> None:
    _sysctl(f"{kind}_next_id", ident)


def _create(rctx: "RestoreContext", what: str, desc: Any, make: Any) -> int:
    """Create one object under its old id: *_next_id, then the call as its
    creator (cuid/cgid), then owner and mode as root."""
    kind = {"shm": "shm", "semaphore": "sem", "message": "msg"}[what.split()[0]]
    _next_id(kind, desc.id)
    try:
        with K.acting_as(desc.cuid, desc.cgid):
            got = make(_signed(desc.key), K.IPC_CREAT | K.IPC_EXCL | (desc.mode & 0o777))
    except OSError as exc:
        raise RestoreError(f"System V {what} {desc.id} (key {desc.key:#x}): cannot be made "
                           f"again: {exc.strerror}"
                           + (" (its key is taken)" if exc.errno == 17 else "")) from None
    finally:
        try:
            _next_id(kind, -1)  # a failed create leaves it set
        except OSError:
            pass
    if got != desc.id:
        _remove(kind, got)
        raise RestoreError(f"System V {what} {desc.id} (key {desc.key:#x}) came back as id {got}")
    return got


def _remove(kind: str, ident: int) -> None:
    try:
        if kind == "shm":
            K.shmctl(ident, K.IPC_RMID)
        elif kind == "sem":
            K.sem_stat(ident, K.IPC_RMID)
        else:
            K.msgctl(ident, K.IPC_RMID)
    except OSError:
        pass


def _set_perm(perm: K.IpcPerm, desc: Any) -> None:
    perm.uid, perm.gid, perm.mode = desc.uid, desc.gid, desc.mode & 0o777


def restore_segment(rctx: "RestoreContext", e: Any, host: bool) -> bool:
    """Make segment ``e`` in the calling thread's ipc namespace (or, in the
    host's, take over the one the dumped tree left behind); True if made."""
    d = e.desc
    made = True
    try:
        _, ds = K.shm_stat(d.id)
    except OSError:
        ds = None
    if ds is not None:
        if not (host and ds.perm.key & 0xFFFFFFFF == d.key and ds.segsz == e.size
                and ds.perm.cuid == d.cuid and ds.perm.cgid == d.cgid and ds.nattch == 0
                and not ds.perm.mode & K.SHM_DEST):
            raise RestoreError(
                f"System V shm segment {d.id} (key {d.key:#x}, {e.size} bytes): the id is taken "
                f"by a segment with key {ds.perm.key & 0xFFFFFFFF:#x}, {ds.segsz} bytes, "
                f"{ds.nattch} attached; remove it (ipcrm -m {d.id}) or free the id")
        made = False  # left behind by the dumped tree: its contents are rewritten
    else:
        _create(rctx, "shm segment", d, lambda key, fl: K.shmget(key, e.size, fl))
        _, ds = K.shm_stat(d.id)
    _set_perm(ds.perm, d)
    K.shmctl(d.id, K.IPC_SET, ds)
    addr = K.shmat(d.id, 0, 0)
    keep = False
    try:
        _fill(rctx, d.id, addr, e.size, clear=not made)
        if d.mode & K.SHM_LOCKED:
            K.shmctl(d.id, K.SHM_LOCK)
        if d.mode & K.SHM_DEST:
            # Removed but attached: our own attachment keeps it alive until
            # every task has attached it again (shmat by id still works on
            # a removed segment, in Linux); it goes before the tree runs.
            K.shmctl(d.id, K.IPC_RMID)
            keep = True
            rctx.before_detach.append(lambda: K.shmdt(addr))
    finally:
        if not keep:
            K.shmdt(addr)
    return made


def _fill(rctx: "RestoreContext", shmid: int, addr: int, size: int, clear: bool) -> None:
    """Write the saved pages through our attachment (writing the shmem file
    could grow it past the segment's size)."""
    length = (size + PAGE - 1) // PAGE * PAGE
    if clear:
        fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + length:x}", os.O_RDWR | os.O_CLOEXEC)
        try:  # a segment taken over: what the image does not hold is zero
            K.punch_hole(fd, length)
        finally:
            os.close(fd)
    path = images.image_path(rctx.images_dir, "shmem-pagemap", shmid)
    if not os.path.exists(path):
        return
    pm = images.read_image(rctx.images_dir, "shmem-pagemap", shmid)
    parent_pages.all_present(path, pm[1:])
    pages = images.image_path(rctx.images_dir, "pages", pm[0].pages_id)
    src = os.open(pages, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = 0
        for pe in pm[1:]:
            n = pe.nr_pages * PAGE
            if pe.vaddr + n > length:
                raise RestoreError(f"{path}: pages past the end of segment {shmid}")
            data = os.pread(src, n, offset)
            if len(data) != n:
                raise RestoreError(f"{pages}: short read at offset {offset}")
            ctypes.memmove(addr + pe.vaddr, data, n)
            offset += n
    finally:
        os.close(src)


def restore_sem(rctx: "RestoreContext", e: Any, raw: bytes) -> None:
    d = e.desc
    _create(rctx, "semaphore set", d, lambda key, fl: K.semget(key, e.nsems, fl))
    vals = [int.from_bytes(raw[2 * i:2 * i + 2], "little") for i in range(e.nsems)]
    K.sem_setall(d.id, vals)
    _, ds = K.sem_stat(d.id)
    _set_perm(ds.perm, d)
    K.semctl_set(d.id, ds)


def restore_msg(rctx: "RestoreContext", e: Any, msgs: list[tuple[Any, bytes]]) -> None:
    """A queue and its messages, in order.  Its qbytes is the namespace's
    msgmnb at creation (raising it by IPC_SET needs CAP_SYS_RESOURCE, which
    this machine's root lacks), and a message bigger than msgmax cannot be
    sent: both sysctls are raised for the moment (the caller writes the
    saved ones back after)."""
    d = e.desc
    need = max([len(t) for _, t in msgs] + [0])
    if int(_sysctl("msgmax")) < need:
        _sysctl("msgmax", need)
    _sysctl("msgmnb", e.qbytes)
    _create(rctx, "message queue", d, lambda key, fl: K.msgget(key, fl))
    for m, text in msgs:
        try:
            K.msgsnd(d.id, m.mtype, text)
        except OSError as exc:
            raise RestoreError(f"System V message queue {d.id} (key {d.key:#x}): a message "
                               f"cannot be queued again: {exc.strerror}") from None
    _, ds = K.msg_stat(d.id)
    _set_perm(ds.perm, d)
    K.msgctl(d.id, K.IPC_SET, ds)


def read_msgs(rctx: "RestoreContext", ns_id: int) -> list[tuple[Any, list[tuple[Any, bytes]]]]:
    out: list[tuple[Any, list[tuple[Any, bytes]]]] = []
    path = images.image_path(rctx.images_dir, "ipcns-msg", ns_id)
    if not os.path.exists(path):
        return out
    for ent in images.iter_entries(path, "ipcns-msg"):
        if isinstance(ent.msg, ipc_msg_pb2.ipc_msg_entry):
            out.append((ent.msg, []))
        elif out:
            out[-1][1].append((ent.msg, ent.payload[:ent.msg.msize]))
        else:
            raise RestoreError(f"{path}: a message before any queue")
    return out


def read_entries(rctx: "RestoreContext", kind: str, ns_id: int) -> list[tuple[Any, bytes]]:
    path = images.image_path(rctx.images_dir, kind, ns_id)
    if not os.path.exists(path):
        return []
    return [(e.msg, e.payload) for e in images.iter_entries(path, kind)]


# ---- the host's ipc namespace ----

def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    """Before the first task's memory.restore attaches anything: the tree's
    segments of the host ipc namespace exist again (once)."""
    _host_segments(rctx)


def _host_segments(rctx: "RestoreContext") -> None:
    """Make the tree's segments in the host ipc namespace, once, before the
    first task attaches one."""
    state = rctx.kind_state.setdefault(NAME, {"done": False, "made": []})
    if state["done"]:
        return
    state["done"] = True
    root = rctx.tasks[0]
    if rctx.root_ids is None or root.ids is None:
        return
    ns_id = root.ids.ipc_ns_id
    if ns_id != rctx.root_ids.ipc_ns_id:
        return  # namespaces.ipc made them in the tree's own namespace
    for e, _ in read_entries(rctx, "ipcns-shm", ns_id):
        if restore_segment(rctx, e, host=True):
            state["made"].append(e.desc.id)


def restore_failed(rctx: "RestoreContext") -> None:
    """A failed restore removes the host segments it made (not one it took over)."""
    for shmid in rctx.kind_state.get(NAME, {}).get("made", []):
        try:
            K.shmctl(shmid, K.IPC_RMID)
        except OSError:
            pass


def map_vma(rctx: "RestoreContext", rt: "RestoreTask", v: Any) -> None:
    """Attach segment ``v.shmid`` in the puppet: the whole segment at the
    VMA of page offset 0, then each VMA's own protection."""
    _host_segments(rctx)
    if v.pgoff == 0:
        # fdflags: O_RDWR when the attachment may be written (VM_MAYWRITE:
        # not SHM_RDONLY); CRIU's images lack it, its prot decides then.
        writable = (v.fdflags & os.O_ACCMODE == os.O_RDWR if v.HasField("fdflags")
                    else v.prot & C.PROT_WRITE)
        flags = 0 if writable else K.SHM_RDONLY
        if v.prot & C.PROT_EXEC:
            flags |= K.SHM_EXEC
        try:
            got = rt.inj.call("shmat", v.shmid, v.start, flags)
        except InjectError as exc:
            raise RestoreError(f"pid {rt.pid}: System V shm segment {v.shmid} cannot be attached "
                               f"at {v.start:#x}: {os.strerror(exc.errno or 0)}") from None
        if got != v.start:
            raise RestoreError(f"pid {rt.pid}: System V shm segment {v.shmid} attached at "
                               f"{got:#x}, not {v.start:#x}")
    rt.inj.call("mprotect", v.start, v.end - v.start, v.prot)
