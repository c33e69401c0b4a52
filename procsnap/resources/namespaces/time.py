"""The time namespace: the CLOCK_MONOTONIC and CLOCK_BOOTTIME offsets
(CRIU's timens-ID.img).

As CRIU, the image holds the two clocks as the tree read them at the dump,
and the restore chooses offsets that make them go on from there: a
restored task sees no jump of its monotonic clock, whatever the host's
clocks did meanwhile (on the same boot the offsets come back smaller by
the time the tree spent on disk).

A time namespace's offsets can be written only before any task has
entered it, so the root's clone3 does not create it (BY_CLONE): the root
puppet unshares CLONE_NEWTIME (a new namespace for its children), the
restorer writes the offsets to /proc/ROOT/timens_offsets, and the puppet
enters the namespace with setns(time_for_children) before it forks any
child.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ... import images
from ...errors import RestoreError
from ...images.pb import timens_pb2
from ...inject import InjectError
from ...kernel import consts as C

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "time"
CLONE_FLAG = C.CLONE_NEWTIME
BY_CLONE = False

NSEC = 1_000_000_000


def read_offsets(pid: int | str) -> dict[int, int]:
    """clock id -> offset in ns of the time namespace ``pid``'s children get."""
    out = {C.CLOCK_MONOTONIC: 0, C.CLOCK_BOOTTIME: 0}
    try:
        with open(f"/proc/{pid}/timens_offsets") as f:
            text = f.read()
    except FileNotFoundError:
        return out  # a kernel without time namespaces
    for line in text.splitlines():
        name, sec, nsec = line.split()
        clock = {"monotonic": C.CLOCK_MONOTONIC, "boottime": C.CLOCK_BOOTTIME}.get(name)
        if clock is None:
            clock = int(name)
        out[clock] = int(sec) * NSEC + int(nsec)
    return out


def _host_now(clock: int) -> int:
    """The clock as the host (the initial time namespace) reads it."""
    return time_ns(clock) - read_offsets("self")[clock]


def time_ns(clock: int) -> int:
    import time as _time
    return _time.clock_gettime_ns(clock)


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    # The task's time == its time_for_children (the audit refuses others),
    # so /proc/PID/timens_offsets are the offsets of the namespace it is in.
    offs = read_offsets(task.pid)
    m = _host_now(C.CLOCK_MONOTONIC) + offs[C.CLOCK_MONOTONIC]
    b = _host_now(C.CLOCK_BOOTTIME) + offs[C.CLOCK_BOOTTIME]
    ctx.add_shared("timens", timens_pb2.timens_entry(
        monotonic=timens_pb2.timespec(tv_sec=m // NSEC, tv_nsec=m % NSEC),
        boottime=timens_pb2.timespec(tv_sec=b // NSEC, tv_nsec=b % NSEC)), ns_id)


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    e = images.read_one(rctx.images_dir, "timens", ns_id)
    inj = rt.inj
    try:
        inj.call("unshare", C.CLONE_NEWTIME)
    except InjectError as exc:
        raise RestoreError(f"pid {rt.pid}: cannot create a time namespace: "
                           f"{os.strerror(exc.errno or 0)}") from None
    lines = []
    for clock, ts in ((C.CLOCK_MONOTONIC, e.monotonic), (C.CLOCK_BOOTTIME, e.boottime)):
        off = ts.tv_sec * NSEC + ts.tv_nsec - _host_now(clock)
        lines.append(f"{clock} {off // NSEC} {off % NSEC}\n")
    try:
        with open(f"/proc/{rt.pid}/timens_offsets", "w") as f:
            for line in lines:  # one clock a write: the kernel takes them so
                f.write(line)
                f.flush()
    except OSError as exc:
        raise RestoreError(f"pid {rt.pid}: cannot set the time namespace's offsets "
                           f"({' '.join(lines).strip()}): {exc.strerror}") from None
    fd = inj.call("openat", C.AT_FDCWD & (2**64 - 1),
                  inj.put_str("/proc/self/ns/time_for_children"), C.O_RDONLY | C.O_CLOEXEC, 0)
    try:
        inj.call("setns", fd, C.CLONE_NEWTIME)
    except InjectError as exc:
        raise RestoreError(f"pid {rt.pid}: cannot enter its new time namespace: "
                           f"{os.strerror(exc.errno or 0)}") from None
    finally:
        inj.call("close", fd)
        inj.reset_scratch()
