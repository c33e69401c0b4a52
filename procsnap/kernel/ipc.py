"""System V IPC and POSIX message queue calls (x86_64 ABI), for
resources.sysvipc and resources.namespaces.ipc.

Raw system calls, not glibc's wrappers: they act on the ipc namespace of
the calling *thread*, which the callers switch with setns() for a moment
(see ``in_ipc_ns``), and the uid switches below (``acting_as``) must stay
in the calling thread too -- glibc's seteuid() would change every thread.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Iterator

from . import consts as C
from .libc import syscall

NR = {"shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semctl": 66,
      "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
      "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243,
      "mq_getsetattr": 245, "fsopen": 430, "fsconfig": 431, "fsmount": 432}

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
IPC_SET = 1
IPC_STAT = 2
SHM_RDONLY = 0o10000
SHM_EXEC = 0o100000
SHM_LOCK = 11
SHM_STAT = 13
SHM_INFO = 14
SHM_DEST = 0o1000     # shm_perm.mode: removed (IPC_RMID), alive while attached
SHM_LOCKED = 0o2000   # shm_perm.mode: SHM_LOCK
SEM_STAT = 18
SEM_INFO = 19
GETALL = 13
SETALL = 17
MSG_STAT = 11
MSG_INFO = 12
MSG_COPY = 0o40000    # msgrcv: copy the n-th message, leave it queued
SEMMSL_MAX = 32000


class IpcPerm(ctypes.Structure):
    _fields_ = [("key", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("cuid", ctypes.c_uint32), ("cgid", ctypes.c_uint32), ("mode", ctypes.c_uint16),
                ("_pad1", ctypes.c_uint16), ("seq", ctypes.c_uint16), ("_pad2", ctypes.c_uint16),
                ("_unused1", ctypes.c_ulong), ("_unused2", ctypes.c_ulong)]


class ShmidDs(ctypes.Structure):
    _fields_ = [("perm", IpcPerm), ("segsz", ctypes.c_size_t), ("atime", ctypes.c_long),
                ("dtime", ctypes.c_long), ("ctime", ctypes.c_long), ("cpid", ctypes.c_int32),
                ("lpid", ctypes.c_int32), ("nattch", ctypes.c_ulong),
                ("_unused4", ctypes.c_ulong), ("_unused5", ctypes.c_ulong)]


class SemidDs(ctypes.Structure):
    _fields_ = [("perm", IpcPerm), ("otime", ctypes.c_long), ("_unused1", ctypes.c_ulong),
                ("ctime", ctypes.c_long), ("_unused2", ctypes.c_ulong), ("nsems", ctypes.c_ulong),
                ("_unused3", ctypes.c_ulong), ("_unused4", ctypes.c_ulong)]


class MsqidDs(ctypes.Structure):
    _fields_ = [("perm", IpcPerm), ("stime", ctypes.c_long), ("rtime", ctypes.c_long),
                ("ctime", ctypes.c_long), ("cbytes", ctypes.c_ulong), ("qnum", ctypes.c_ulong),
                ("qbytes", ctypes.c_ulong), ("lspid", ctypes.c_int32), ("lrpid", ctypes.c_int32),
                ("_unused4", ctypes.c_ulong), ("_unused5", ctypes.c_ulong)]


class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("_pad", ctypes.c_long * 4)]


def _addr(obj: ctypes._CData) -> int:  # type: ignore[name-defined]
    return ctypes.addressof(obj)


# ------------------------------------------------------------- stat/ids ----

def shm_stat(shmid: int, cmd: int = IPC_STAT) -> tuple[int, ShmidDs]:
    """(id, shmid_ds); with SHM_STAT ``shmid`` is an index and id the object's id."""
    ds = ShmidDs()
    return syscall(NR["shmctl"], shmid, cmd, _addr(ds)), ds


def sem_stat(semid: int, cmd: int = IPC_STAT) -> tuple[int, SemidDs]:
    ds = SemidDs()
    return syscall(NR["semctl"], semid, 0, cmd, _addr(ds)), ds


def msg_stat(msqid: int, cmd: int = IPC_STAT) -> tuple[int, MsqidDs]:
    ds = MsqidDs()
    return syscall(NR["msgctl"], msqid, cmd, _addr(ds)), ds


def all_ids(kind: str) -> list[int]:
    """The ids of every object of one kind ("shm", "sem", "msg") of the
    calling thread's ipc namespace, as CRIU finds them: *_INFO gives the
    highest index in use, *_STAT on each index the object's id."""
    info = (ctypes.c_ulong * 16)()
    call, info_cmd, stat_cmd, ds = {
        "shm": ("shmctl", SHM_INFO, SHM_STAT, ShmidDs()),
        "sem": ("semctl", SEM_INFO, SEM_STAT, SemidDs()),
        "msg": ("msgctl", MSG_INFO, MSG_STAT, MsqidDs()),
    }[kind]

    def ctl(idx: int, cmd: int, buf: int) -> int:
        if call == "semctl":
            return syscall(NR[call], idx, 0, cmd, buf)
        return syscall(NR[call], idx, cmd, buf)

    maxidx = ctl(0, info_cmd, _addr(info))
    out = []
    for idx in range(maxidx + 1):
        try:
            out.append(ctl(idx, stat_cmd, _addr(ds)))
        except OSError as exc:
            if exc.errno != 22:  # EINVAL: a free index
                raise
    return out


# ------------------------------------------------------------------ shm ----

def shmget(key: int, size: int, flags: int) -> int:
    return syscall(NR["shmget"], key, size, flags)


def shmat(shmid: int, addr: int, flags: int) -> int:
    return syscall(NR["shmat"], shmid, addr, flags)


def shmdt(addr: int) -> None:
    syscall(NR["shmdt"], addr)


def shmctl(shmid: int, cmd: int, ds: ShmidDs | None = None) -> int:
    return syscall(NR["shmctl"], shmid, cmd, _addr(ds) if ds is not None else 0)


def punch_hole(fd: int, length: int) -> None:
    """Drop every page of a shmem file (reads as zeroes after)."""
    syscall(285, fd, 0x01 | 0x02, 0, length)  # fallocate(KEEP_SIZE | PUNCH_HOLE)


# ------------------------------------------------------------------ sem ----

def semget(key: int, nsems: int, flags: int) -> int:
    return syscall(NR["semget"], key, nsems, flags)


def sem_values(semid: int, nsems: int) -> list[int]:
    vals = (ctypes.c_uint16 * max(nsems, 1))()
    syscall(NR["semctl"], semid, 0, GETALL, _addr(vals))
    return list(vals[:nsems])


def sem_setall(semid: int, values: list[int]) -> None:
    vals = (ctypes.c_uint16 * max(len(values), 1))(*values)
    syscall(NR["semctl"], semid, 0, SETALL, _addr(vals))


def semctl_set(semid: int, ds: SemidDs) -> None:
    syscall(NR["semctl"], semid, 0, IPC_SET, _addr(ds))


# ------------------------------------------------------------------ msg ----

def msgget(key: int, flags: int) -> int:
    return syscall(NR["msgget"], key, flags)


def msg_copy(msqid: int, index: int, maxsize: int) -> tuple[int, bytes]:
    """(mtype, text) of the ``index``-th message, left in the queue."""
    buf = ctypes.create_string_buffer(8 + maxsize)
    n = syscall(NR["msgrcv"], msqid, _addr(buf), maxsize, index, IPC_NOWAIT | MSG_COPY)
    mtype = ctypes.c_long.from_buffer(buf).value
    return mtype, buf.raw[8:8 + n]


def msgsnd(msqid: int, mtype: int, text: bytes) -> None:
    buf = ctypes.create_string_buffer(ctypes.c_long(mtype).value.to_bytes(8, "little", signed=True)
                                      + text, 8 + len(text))
    syscall(NR["msgsnd"], msqid, _addr(buf), len(text), IPC_NOWAIT)


def msgctl(msqid: int, cmd: int, ds: MsqidDs | None = None) -> int:
    return syscall(NR["msgctl"], msqid, cmd, _addr(ds) if ds is not None else 0)


# --------------------------------------------------------------- mqueue ----

def mq_open(name: str, flags: int, mode: int = 0, attr: MqAttr | None = None) -> int:
    raw = ctypes.create_string_buffer(name.encode(errors="surrogateescape"))
    return syscall(NR["mq_open"], _addr(raw), flags, mode, _addr(attr) if attr is not None else 0)


def mq_getattr(mqd: int) -> MqAttr:
    attr = MqAttr()
    syscall(NR["mq_getsetattr"], mqd, 0, _addr(attr))
    return attr


def mq_receive(mqd: int, msgsize: int) -> tuple[int, bytes]:
    """(priority, text) of the first message (the queue is O_NONBLOCK)."""
    buf = ctypes.create_string_buffer(max(msgsize, 1))
    prio = ctypes.c_uint()
    n = syscall(NR["mq_timedreceive"], mqd, _addr(buf), msgsize, _addr(prio), 0)
    return prio.value, buf.raw[:n]


def mq_send(mqd: int, prio: int, text: bytes) -> None:
    buf = ctypes.create_string_buffer(text, max(len(text), 1))
    syscall(NR["mq_timedsend"], mqd, _addr(buf), len(text), prio, 0)


def mqueue_fs() -> int:
    """A detached mount of the calling thread's ipc namespace's mqueue
    file system (fsopen/fsmount: nothing appears in any mount table);
    list it through /proc/self/fd/N."""
    name = ctypes.create_string_buffer(b"mqueue")  # alive across the call
    fs = syscall(NR["fsopen"], _addr(name), 1)  # FSOPEN_CLOEXEC
    try:
        syscall(NR["fsconfig"], fs, 6, 0, 0, 0)  # FSCONFIG_CMD_CREATE
        return syscall(NR["fsmount"], fs, 1, 0)  # FSMOUNT_CLOEXEC
    finally:
        os.close(fs)


# ------------------------------------------------------ thread context ----

@contextmanager
def in_ipc_ns(pid: int | None) -> Iterator[None]:
    """Run the block in the ipc namespace of ``pid`` (None: stay), this
    thread only, and come back to ours whatever happens."""
    if pid is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscall(C.NR["setns"], target, C.CLONE_NEWIPC)
        finally:
            os.close(target)
        try:
            yield
        finally:
            syscall(C.NR["setns"], own, C.CLONE_NEWIPC)
    finally:
        os.close(own)


@contextmanager
def acting_as(uid: int, gid: int) -> Iterator[None]:
    """Effective uid/gid of this thread only for the block: an object's
    creator (cuid/cgid) is whoever creates it.  Root's real and saved ids
    stay 0, so the way back is allowed (and brings the capabilities back)."""
    if uid == 0 and gid == 0:
        yield
        return
    syscall(C.NR["setresgid"], -1, gid, -1)
    try:
        syscall(C.NR["setresuid"], -1, uid, -1)
        try:
            yield
        finally:
            syscall(C.NR["setresuid"], -1, 0, -1)
    finally:
        syscall(C.NR["setresgid"], -1, 0, -1)
