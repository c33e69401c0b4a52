"""Working directory, root and umask (fs-PID.img).

A cwd or root that was deleted (rmdir while a task sits in it) is saved as
a ghost directory, as CRIU does: at restore it is made again under its own
name (regfile._ghost_path), the task chdirs/chroots into it, and the name
is removed once the tree is restored, so /proc/PID/cwd reads "DIR
(deleted)" as before.  A cwd in /proc/N of a process gone (unhashed) is
entered while a helper task with pid N exists, which then exits (in the
tree's own pid namespace, N is its pid there: the tree's own /proc shows
that namespace).  A cwd outside the task's root (chroot without chdir) is
kept too: names are the restorer's -- for a tree with a mount namespace
of its own, that namespace's, from its root (regfile.name_prefix) -- and
the chdir comes before the chroot.
"""
from __future__ import annotations

import os
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ..errors import ImageError, Unsupported
from ..images.pb import fs_pb2
from . import regfile

if TYPE_CHECKING:
    from ..tasks import DumpContext, DumpTask
    from ..tasks import RestoreContext, RestoreTask

NAME = "fs"


def dump(ctx: "DumpContext", task: "DumpTask") -> None:
    ids = []
    for what, link in (("cwd", task.proc.cwd()), ("root", task.proc.root())):
        real = os.stat(f"/proc/{task.pid}/{what}")
        fid = ctx.new_file_id()
        ctx.files.append(regfile.describe_path(task, link, real, fid,
                                               os.O_RDONLY | os.O_DIRECTORY, 0, what=what,
                                               ctx=ctx, source=f"/proc/{task.pid}/{what}",
                                               ghost_only=True))
        ids.append(fid)
    status = task.status
    assert status is not None
    if status.umask is None:
        raise Unsupported(f"pid {task.pid}: /proc/{task.pid}/status has no Umask line "
                          "(kernel too old)")
    entry = fs_pb2.fs_entry(cwd_id=ids[0], root_id=ids[1], umask=status.umask)
    task.extra_images.append(("fs", task.pid, [entry]))


def restore(rctx: "RestoreContext", rt: "RestoreTask") -> None:
    if rt.shares_fs:
        return  # cloned with CLONE_FS: its parent's chdir/chroot/umask are its own
    inj = rt.inj
    fs = rt.fs
    # node_path: the name, or the ghost directory made again
    root = regfile.node_path(rctx, rctx.file_entry(fs.root_id))
    cwd = regfile.node_path(rctx, rctx.file_entry(fs.cwd_id))
    dead = regfile.dead_pid(rctx, fs.cwd_id)
    if dead is not None:
        # /proc/N of a process that was gone: a helper with pid N lives
        # for the chdir, then dies and is reaped (as CRIU's TASK_HELPER).
        if rctx.nspids and not rctx.puppet_pivoted:
            # the host's /proc: N is a host pid, and a helper cannot be
            # given a host pid without one inside, which is not known
            raise ImageError(rt.image_name("fs"), f"pid {rt.pid}: cwd {cwd} of a dead "
                             "process, in the host's /proc, for a tree in a pid namespace "
                             "of its own")
        assert rctx.spawn_helper is not None
        end = rctx.spawn_helper(rt, dead)
        try:
            inj.call("chdir", inj.put_str(cwd))
        finally:
            end()
    else:
        inj.call("chdir", inj.put_str(cwd))
    if root != "/":
        inj.call("chroot", inj.put_str(root))
    if fs.umask != _umask_now(rt.pid):
        inj.call("umask", fs.umask)
    inj.reset_scratch()


def _umask_now(pid: int) -> int | None:
    """The puppet's umask (the restorer's, inherited), from its status:
    no injected call when it is the image's already."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None
