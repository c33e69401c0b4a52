"""Dirty-page tracking between a pre-dump and the next dump, without
soft-dirty bits (this kernel has none; criu's pre-dump needs them).

How: userfaultfd write-protection in async mode (UFFD_FEATURE_WP_ASYNC,
Linux 6.7+).  Under the freeze of a pre-dump, after the pages were copied,
each private anonymous VMA of the task is registered for write-protect
tracking with a userfaultfd and write-protected.  The task runs on; its
first write to a protected page faults and the kernel lifts the protection
itself (async: no handler, no thread waits) -- the page's PTE loses its
uffd-wp bit.  The next pass asks PAGEMAP_SCAN for the pages whose PTE has
no uffd-wp bit (PAGE_IS_WRITTEN): those were written since, or are new.
The rest are unchanged since the parent's copy and are saved as
``PE_PARENT`` pagemap entries (criu's in_parent), their bytes left in the
parent images.

The userfaultfd must stay open in the task between the passes (closing
it unregisters the VMAs and drops the protection): it is created *in the
task* (an injected userfaultfd(2): a userfaultfd belongs to the mm of its
creator) and moved to a high fd number with O_CLOEXEC; procsnap works on
it through a pidfd_getfd copy (its ioctls act on the creator's mm).  Its
(pid, fd, inode) go to the images dir's ``memtrack`` file (procsnap's
own, next to criu's images), so the next pass finds it again -- or finds
it gone (closed, replaced, an exec) and copies everything.  The final dump
closes it (in every task of the tree: a child forked since holds a copy)
before the fd table is saved, so the images never contain it.

Why it is exact: every page whose PTE still has the uffd-wp bit is
unchanged since the protection, which happened under the freeze right
after its bytes were copied.  Everything that loses or never had the bit
(a write, a new mapping, a VMA not registered, a child's copy of the
memory, MADV_DONTNEED and a new fault, a page read in after being
absent) counts as written.  A page absent now is absent in the images.
Only pages the parent chain holds at the same address may be taken from
it; any other is copied.
"""
from __future__ import annotations

import fcntl
import json
import os
import resource
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ..errors import DumpError
from ..inject import InjectError
from ..kernel import consts as C
from ..kernel.libc import pidfd_getfd
from ..procfs.pagemap import scan_written

if TYPE_CHECKING:
    from ..tasks import DumpTask

RECORD = "memtrack"   # in the images dir: {"PID": [fd, inode], ...}
UFFD_LINK = "anon_inode:[userfaultfd]"

from ..kernel.uffd import (UFFD_API, UFFD_FEATURE_WP_ASYNC, UFFD_USER_MODE_ONLY, UFFDIO_API,  # noqa: E402
                           UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT,
                           UFFDIO_WRITEPROTECT_MODE_WP)
from ..kernel.uffd import API as _API, REGISTER as _REGISTER, WRITEPROTECT as _WP  # noqa: E402


def load(images_dir: str) -> dict[int, tuple[int, int]]:
    """The tracking record of a pre-dump's images dir: pid -> (fd, inode)."""
    try:
        with open(os.path.join(images_dir, RECORD)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DumpError(f"{images_dir}/{RECORD}: cannot read: {exc}") from None
    return {int(pid): (int(v[0]), int(v[1])) for pid, v in data.items()}


def save(images_dir: str, record: dict[int, tuple[int, int]]) -> str:
    path = os.path.join(images_dir, RECORD)
    with open(path, "w") as f:
        json.dump({str(pid): list(v) for pid, v in sorted(record.items())}, f)
    return path


def valid(pid: int, rec: tuple[int, int] | None) -> bool:
    """Is the recorded userfaultfd still the task's own, at its fd?"""
    if rec is None:
        return False
    fd, ino = rec
    try:
        return (os.readlink(f"/proc/{pid}/fd/{fd}") == UFFD_LINK
                and os.stat(f"/proc/{pid}/fd/{fd}").st_ino == ino)
    except OSError:
        return False


def written(pid: int) -> list[tuple[int, int]]:
    """(address, n_pages) of every page with data written since the last
    protection (all of them where nothing protects), sorted."""
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return scan_written(fd, 0, C.TASK_SIZE)
    finally:
        os.close(fd)


def arm(task: "DumpTask", rec: tuple[int, int] | None,
        vmas: list[tuple[int, int]]) -> tuple[int, int]:
    """Register and write-protect ``vmas`` ((start, end) of private
    anonymous memory) of the frozen task with its userfaultfd, made now if
    ``rec`` is not valid; returns the new record.  Call once the pages
    are copied, before the task runs again."""
    inj = task.need_inj()
    if not valid(task.pid, rec):
        # user mode only: a container's task has no CAP_SYS_PTRACE, and
        # vm.unprivileged_userfaultfd is 0 by default (runc --pre-dump)
        fd = inj.call("userfaultfd", os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
        try:
            soft = resource.prlimit(task.pid, resource.RLIMIT_NOFILE)[0]
            low = max(3, min(soft, 1 << 20) - 64)
            high = inj.call("fcntl", fd, C.F_DUPFD_CLOEXEC, low)
        except (InjectError, OSError):
            high = fd
        if high != fd:
            inj.call("close", fd)
        ours = pidfd_getfd(task.pid, high)
        try:
            api = bytearray(_API.pack(UFFD_API, UFFD_FEATURE_WP_ASYNC, 0))
            fcntl.ioctl(ours, UFFDIO_API, api, True)
        except OSError as exc:
            os.close(ours)
            inj.call("close", high, check=False)
            raise DumpError(f"pid {task.pid}: userfaultfd write-protect tracking "
                            f"(UFFD_FEATURE_WP_ASYNC) is not available: {exc.strerror}") from None
        rec = (high, os.fstat(ours).st_ino)
    else:
        assert rec is not None
        ours = pidfd_getfd(task.pid, rec[0])
    try:
        for start, end in vmas:
            reg = bytearray(_REGISTER.pack(start, end - start, UFFDIO_REGISTER_MODE_WP, 0))
            try:
                fcntl.ioctl(ours, UFFDIO_REGISTER, reg, True)
            except OSError:
                continue  # not trackable (e.g. VM_DROPPABLE): it is copied whole next time
            wp = bytearray(_WP.pack(start, end - start, UFFDIO_WRITEPROTECT_MODE_WP))
            fcntl.ioctl(ours, UFFDIO_WRITEPROTECT, wp, True)
    finally:
        os.close(ours)
    return rec


def disarm(task: "DumpTask", inodes: set[int]) -> None:
    """Close in the frozen task every fd that is one of our userfaultfds
    (``inodes``): its own, or a copy a fork gave it.  Its VMAs are
    unregistered with the last close."""
    if not inodes:
        return
    try:
        fds = os.listdir(f"/proc/{task.pid}/fd")
    except OSError:
        return
    for name in fds:
        path = f"/proc/{task.pid}/fd/{name}"
        try:
            if os.readlink(path) != UFFD_LINK or os.stat(path).st_ino not in inodes:
                continue
        except OSError:
            continue
        task.need_inj().call("close", int(name), check=False)


