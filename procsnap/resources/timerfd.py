"""timerfd (fd kind TIMERFD, inline in files.img as file_entry.tfd).

fdinfo gives the clock, the expirations not yet read ("ticks"), the flags
of the last timerfd_settime() ("settime flags", octal), the time *left*
until the next expiry ("it_value") and the period ("it_interval").  The
image keeps exactly these, as CRIU does: vsec/vnsec are the time left.

Restore, in the order CRIU's restorer uses:
* the fd is created at once (timerfd_create), but armed only in the
  after-all pass, when every fd of the task is in place, so that as little
  of the time left as possible runs out while the task is being rebuilt;
* a relative timer gets its time left; an absolute one (TFD_TIMER_ABSTIME,
  possibly with TFD_TIMER_CANCEL_ON_SET) is armed absolute again, at
  "now on its clock + time left" -- the image has no dump timestamp, so
  the time the task spent dumped is not counted (CRIU's behaviour too);
* the period is set as it was; then the unread ticks are put back with
  TFD_IOC_SET_TICKS (settime clears them).
"""
from __future__ import annotations

import struct
import time
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import DumpError, RestoreError
from ..lazyre import LazyPattern
from ..images.pb import fdinfo_pb2, timerfd_pb2
from ..kernel import consts as C
from . import anonfd
from . import fdaudit

if TYPE_CHECKING:
    from ..tasks import RestoreContext, RestoreTask
    from ..tasks import FdCtx

NAME = "timerfd"
FDINFO = {
    "clockid": fdaudit.saved("timerfd_entry.clockid"),
    "ticks": fdaudit.saved("timerfd_entry.ticks"),
    "settime flags": fdaudit.saved("timerfd_entry.settime_flags"),
    "it_value": fdaudit.saved("timerfd_entry.vsec/vnsec"),
    "it_interval": fdaudit.saved("timerfd_entry.isec/insec"),
}
TYPE = fdinfo_pb2.TIMERFD
NSEC = 1_000_000_000
# The clocks timerfd_create() accepts, and the clock each is read on.
CLOCKS = {0: time.CLOCK_REALTIME, 1: time.CLOCK_MONOTONIC, 7: time.CLOCK_BOOTTIME,
          8: time.CLOCK_REALTIME, 9: time.CLOCK_BOOTTIME}
SETTIME_FLAGS = 0x3  # TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET
_PAIR = LazyPattern(r"^\((\d+),\s*(\d+)\)$")


def matches(fd: "FdCtx") -> bool:
    return anonfd.is_anon(fd, "[timerfd]", "clockid:")


def _pair(fd: "FdCtx", key: str) -> tuple[int, int]:
    assert fd.info is not None
    m = _PAIR.match(fd.info.extra.get(key, ""))
    if m is None:
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: timerfd fdinfo: bad or missing {key}")
    return int(m.group(1)), int(m.group(2))


def dump(fd: "FdCtx", fid: int) -> Any:
    assert fd.info is not None
    extra = fd.info.extra
    flags = anonfd.file_flags(fd, "timerfd")
    try:
        clockid = int(extra["clockid"])
        ticks = int(extra["ticks"])
        settime = int(extra["settime flags"], 8)
    except (KeyError, ValueError) as exc:
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: timerfd fdinfo: {exc}") from None
    if clockid not in CLOCKS:
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: timerfd on clock {clockid}, "
                        "which procsnap does not know")
    if settime & ~SETTIME_FLAGS:
        raise DumpError(f"pid {fd.task.pid}: fd {fd.fd}: timerfd settime flags "
                        f"{settime:#o} are not known")
    vsec, vnsec = _pair(fd, "it_value")
    isec, insec = _pair(fd, "it_interval")
    return fdinfo_pb2.file_entry(
        type=TYPE, id=fid,
        tfd=timerfd_pb2.timerfd_entry(id=fid, flags=flags, fown=anonfd.no_owner(),
                                      clockid=clockid, ticks=ticks, settime_flags=settime,
                                      vsec=vsec, vnsec=vnsec, isec=isec, insec=insec))


def open_fd(rctx: "RestoreContext", rt: "RestoreTask", entry: Any) -> int:
    tfd = entry.tfd
    if tfd.clockid not in CLOCKS:
        raise RestoreError(f"{rt.image_name('fdinfo')}: timerfd {tfd.id}: unknown clock "
                           f"{tfd.clockid}")
    return rt.inj.call("timerfd_create", tfd.clockid, tfd.flags & C.O_NONBLOCK)


def after_all(rctx: "RestoreContext", rt: "RestoreTask", entry: Any, fd: int) -> None:
    tfd = entry.tfd
    value = tfd.vsec * NSEC + tfd.vnsec
    interval = tfd.isec * NSEC + tfd.insec
    if value == 0 and interval and tfd.ticks:
        # A periodic timer that fired and was not read since: its expiry
        # lies in the past (fdinfo shows 0) and the kernel would move it on
        # at the next read.  0 would disarm it; arm it one period ahead and
        # give the unread ticks back below.  (Value 0 with no ticks is a
        # disarmed timer that still remembers a period: left disarmed.)
        value = interval
    if value and tfd.settime_flags & C.TFD_TIMER_ABSTIME:
        value += time.clock_gettime_ns(CLOCKS[tfd.clockid])
    if value or interval:
        spec = struct.pack("<qqqq", interval // NSEC, interval % NSEC,
                           value // NSEC, value % NSEC)
        rt.inj.call("timerfd_settime", fd, tfd.settime_flags, rt.inj.put(spec, align=8), 0)
    if tfd.ticks:
        rt.inj.call("ioctl", fd, C.TFD_IOC_SET_TICKS, anonfd.put_u64(rt, tfd.ticks))
