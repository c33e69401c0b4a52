"""The ipc namespace: its sysctls (CRIU's ipcns-var-ID.img), every System V
object in it (ipcns-shm/-sem/-msg-ID.img, see resources.sysvipc) and its
POSIX message queues (procsnap's own ipcns-mq-ID.img: CRIU saves none).

Both halves work from procsnap's own process, one thread entering the
namespace for a moment (setns: the ipc sysctls, the *_STAT calls, shmat,
msgrcv(MSG_COPY), mq_open all act on the calling thread's namespace):
at dump the namespace of the root task, at restore the new one the root
puppet was cloned into.  Objects come back under their old ids
(kernel.{shm,sem,msg}_next_id written before each create) with their
keys, owners, creators, modes, sizes, contents, values and messages; the
*_next_id values the namespace had are written last.

POSIX message queues are listed through a detached mount of the
namespace's mqueue file system (fsopen/fsmount: no mount table changes)
and read by receiving every message and sending it back in the same
order with the same priority (the tree is frozen; there is no call that
reads a message in place).  Refused, by name: a queue with a notification
registered (mq_notify: the registration belongs to a task and cannot be
made again from here), and a full queue (receiving from it would let a
sender blocked in mq_send complete while it is frozen).  Not restored:
the queue files' times.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ... import images
from ...errors import RestoreError, Unsupported
from ...images.pb import ipc_mqueue_pb2, ipc_var_pb2
from ...kernel import consts as C
from ...kernel import ipc as K
from .. import sysvipc
from ..sysvipc import _sysctl

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "ipc"
CLONE_FLAG = C.CLONE_NEWIPC

# ipc_var_entry field -> sysctl (CRIU's ipc_sysctl_req table, same order)
_VARS = [("msg_ctlmax", "msgmax"), ("msg_ctlmnb", "msgmnb"), ("msg_ctlmni", "msgmni"),
         ("auto_msgmni", "auto_msgmni"), ("shm_ctlmax", "shmmax"), ("shm_ctlall", "shmall"),
         ("shm_ctlmni", "shmmni"), ("shm_rmid_forced", "shm_rmid_forced"),
         ("mq_queues_max", "fs/mqueue/queues_max"), ("mq_msg_max", "fs/mqueue/msg_max"),
         ("mq_msgsize_max", "fs/mqueue/msgsize_max"),
         ("mq_msg_default", "fs/mqueue/msg_default"),
         ("mq_msgsize_default", "fs/mqueue/msgsize_default")]
_NEXT = [("msg_next_id", "msg_next_id"), ("sem_next_id", "sem_next_id"),
         ("shm_next_id", "shm_next_id")]


# ------------------------------------------------------------------ dump ----

def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    with K.in_ipc_ns(task.pid):
        var = _dump_var()
        shm = [(sysvipc.dump_segment(ctx, i, K.shm_stat(i)[1], task.pid), b"")
               for i in K.all_ids("shm")]
        sem = [sysvipc.dump_sem(i, K.sem_stat(i)[1]) for i in K.all_ids("sem")]
        msg = [p for i in K.all_ids("msg")
               for p in sysvipc.dump_msg(i, K.msg_stat(i)[1], var.msg_ctlmax)]
        mq = _dump_mqueues(task.pid)
    sysvipc.write_image(ctx, "ipcns-var", ns_id, [(var, b"")])
    sysvipc.write_image(ctx, "ipcns-shm", ns_id, shm)
    sysvipc.write_image(ctx, "ipcns-sem", ns_id, sem)
    sysvipc.write_image(ctx, "ipcns-msg", ns_id, msg)
    if mq:
        sysvipc.write_image(ctx, "ipcns-mq", ns_id, mq)


def _dump_var() -> Any:
    var = ipc_var_pb2.ipc_var_entry(sem_ctls=[int(x) for x in _sysctl("sem").split()],
                                    msg_ctlmax=0, msg_ctlmnb=0, msg_ctlmni=0, auto_msgmni=0,
                                    shm_ctlmax=0, shm_ctlall=0, shm_ctlmni=0, shm_rmid_forced=0,
                                    mq_queues_max=0, mq_msg_max=0, mq_msgsize_max=0)
    for field, name in _VARS:
        try:
            setattr(var, field, int(_sysctl(name)))
        except FileNotFoundError:
            pass  # auto_msgmni is gone from newer kernels (it was a no-op since 3.19)
    for field, name in _NEXT:
        value = int(_sysctl(name))
        if value != -1:  # -1 (the initial value) cannot be written back
            setattr(var, field, value)
    return var


def _dump_mqueues(pid: int) -> list[tuple[Any, bytes]]:
    out: list[tuple[Any, bytes]] = []
    mnt = K.mqueue_fs()
    try:
        root = f"/proc/self/fd/{mnt}"
        for name in sorted(os.listdir(root)):
            st = os.stat(f"{root}/{name}")
            with open(f"{root}/{name}") as f:
                info = dict(w.split(":", 1) for w in f.read().split())
            if int(info.get("NOTIFY_PID", "0")):
                raise Unsupported(f"pid {pid}: POSIX message queue /{name}: pid "
                                  f"{info['NOTIFY_PID']} registered a notification (mq_notify); "
                                  "procsnap cannot register it again")
            mqd = K.mq_open(name, os.O_RDWR | os.O_NONBLOCK)
            try:
                attr = K.mq_getattr(mqd)
                if attr.curmsgs and attr.curmsgs >= attr.maxmsg:
                    raise Unsupported(f"pid {pid}: POSIX message queue /{name} is full "
                                      f"({attr.curmsgs} messages): reading it would let a "
                                      "sender blocked in mq_send go on")
                msgs = [K.mq_receive(mqd, attr.msgsize) for _ in range(attr.curmsgs)]
                for prio, text in msgs:  # back in, in the order they came out
                    K.mq_send(mqd, prio, text)
            finally:
                os.close(mqd)
            out.append((ipc_mqueue_pb2.ipc_mqueue_entry(
                name=name, uid=st.st_uid, gid=st.st_gid, mode=st.st_mode & 0o7777,
                maxmsg=attr.maxmsg, msgsize=attr.msgsize, curmsgs=len(msgs)), b""))
            out += [(ipc_mqueue_pb2.ipc_mqueue_msg(prio=p, msize=len(t)), t) for p, t in msgs]
    finally:
        os.close(mnt)
    return out


# --------------------------------------------------------------- restore ----

def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    from . import user

    var = images.read_one(rctx.images_dir, "ipcns-var", ns_id)
    # a namespace's sysctls are writable by root of the user namespace
    # owning it only (procsnap's root is "other" to one of a new user ns)
    sysvipc.sysctl_owner = user.root_ids(rt.pid)
    try:
        _restore_in(rctx, ns_id, rt, var)
    finally:
        sysvipc.sysctl_owner = (0, 0)


def _restore_in(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask", var: Any) -> None:
    with K.in_ipc_ns(rt.pid):
        _write_var(var)
        for e, _ in sysvipc.read_entries(rctx, "ipcns-shm", ns_id):
            sysvipc.restore_segment(rctx, e, host=False)
        for e, raw in sysvipc.read_entries(rctx, "ipcns-sem", ns_id):
            sysvipc.restore_sem(rctx, e, raw)
        for e, msgs in sysvipc.read_msgs(rctx, ns_id):
            sysvipc.restore_msg(rctx, e, msgs)
        _restore_mqueues(rctx, ns_id)
        # restore_msg raises msgmax/msgmnb for its queues: the saved ones
        # again, then where the next ids stood
        _write_var(var)
        for field, name in _NEXT:
            if var.HasField(field):
                _sysctl(name, getattr(var, field))


def _write_var(var: Any) -> None:
    _sysctl("sem", " ".join(str(x) for x in var.sem_ctls))
    for field, name in _VARS:
        if field == "auto_msgmni" or not var.HasField(field):
            continue  # auto_msgmni: a no-op the kernel keeps at 0
        try:
            _sysctl(name, getattr(var, field))
        except OSError as exc:
            raise RestoreError(f"ipc namespace: kernel sysctl {name} = {getattr(var, field)} "
                               f"cannot be set: {exc.strerror}") from None


def _restore_mqueues(rctx: "RestoreContext", ns_id: int) -> None:
    path = images.image_path(rctx.images_dir, "ipcns-mq", ns_id)
    if not os.path.exists(path):
        return
    queue: Any = None
    mqd = -1
    try:
        for ent in images.iter_entries(path, "ipcns-mq"):
            m = ent.msg
            if isinstance(m, ipc_mqueue_pb2.ipc_mqueue_entry):
                if mqd >= 0:
                    os.close(mqd)
                    mqd = -1
                queue = m
                attr = K.MqAttr(maxmsg=m.maxmsg, msgsize=m.msgsize)
                try:
                    with K.acting_as(m.uid, m.gid):
                        mqd = K.mq_open(m.name, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NONBLOCK,
                                        m.mode & 0o777, attr)
                    os.fchmod(mqd, m.mode & 0o7777)  # mq_open applied our umask
                except OSError as exc:
                    raise RestoreError(f"POSIX message queue /{m.name} cannot be made again: "
                                       f"{exc.strerror}") from None
            elif queue is None:
                raise RestoreError(f"{path}: a message before any queue")
            else:
                K.mq_send(mqd, m.prio, ent.payload[:m.msize])
    finally:
        if mqd >= 0:
            os.close(mqd)
