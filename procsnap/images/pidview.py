"""Which pids pstree.img names, for a tree in a pid namespace of its own.

CRIU records such a tree by the pids seen inside its namespace (the root is
1), names the per-task images by them (core-1.img, mm-1.img, ...) and
refuses to restore a namespace without its init.  procsnap works with the
dumper's (outside) view: each task's pids at every level are in its own
pstree fields ``ns_pid``/``ns_threads`` (outside first, as /proc's NSpid).

So procsnap writes CRIU's form -- inside pids in pid/ppid/pgid/sid/threads
and in the image names -- and keeps every level in ns_pid, and the restore
turns any of the three forms back into the outside view it works with:

* procsnap's own (from 2026-11-30): the root's pid is the last of its ns_pid;
* procsnap's older images: the pid is the first of ns_pid (nothing to do);
* CRIU's: no ns_pid at all (the restorer picks outside pids: see
  restorer._from_inside_view).

Every other pid an image names is written inside too, as CRIU does: file
entries (SIGIO owners, pidfds: ``map_file_pids``), file lock owners,
terminals' sessions and foreground groups, POSIX timers' target threads
(``map_pids``); the restore takes them back through
RestoreContext.outside_pid.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from procsnap.images.pb import pstree_pb2

# Per-task images named by the task's (or thread's) pid.
PER_PID_KINDS = frozenset({"core", "ids", "mm", "fs", "pagemap", "creds", "sigacts",
                           "itimers", "posix-timers", "rlimit", "signal-p"})


def inside_names(entries: list[Any]) -> dict[int, int]:
    """outside pid/tid -> inside pid/tid, for entries that carry ns_pid
    (empty: the tree shares the dumper's pid namespace)."""
    names: dict[int, int] = {}
    if not entries or not entries[0].ns_pid:
        return names
    # the level of the root's own namespace: a task in a pid namespace
    # nested inside is named by its pid in the root's, as criu names it
    lvl = len(entries[0].ns_pid) - 1
    for e in entries:
        n = len(e.ns_pid)
        if n <= lvl:
            continue
        names[e.pid] = e.ns_pid[lvl]
        for i, tid in enumerate(e.threads):
            chunk = list(e.ns_threads[i * n:(i + 1) * n])
            if len(chunk) == n:
                names[tid] = chunk[lvl]
    return names


def to_inside(entries: list[Any], groups: dict[int, int] | None = None
              ) -> tuple[list[Any], dict[int, int]]:
    """(copies of the entries in CRIU's inside view, outside -> inside) --
    the entries unchanged and {} when the tree has no pid namespace.
    ``groups``: outside -> inside pgid of groups whose leader is gone (no
    entry says its inside pid)."""
    names = inside_names(entries)
    if not names:
        return entries, {}
    out = []
    for e in entries:
        c = pstree_pb2.pstree_entry()
        c.CopyFrom(e)
        c.pid = names.get(e.pid, e.pid)
        # the root's parent, group or session outside the namespace: CRIU
        # writes 0 for a parent it does not dump
        c.ppid = names.get(e.ppid, 0)
        c.pgid = names.get(e.pgid, (groups or {}).get(e.pgid, e.pgid))
        c.sid = names.get(e.sid, e.sid)
        c.threads[:] = [names.get(t, t) for t in e.threads]
        out.append(c)
    return out, names


def is_inside_form(entries: list[Any]) -> bool:
    """procsnap's images from 2026-11-30 on: the inside view plus ns_pid."""
    root = entries[0] if entries else None
    return bool(root is not None and len(root.ns_pid) > 1 and root.pid == root.ns_pid[-1]
                and root.pid != root.ns_pid[0])


def to_outside(entries: list[Any]) -> dict[int, int]:
    """Rewrite procsnap's inside-form entries (in place) to the outside view
    the restore works with; returns outside pid/tid -> inside (the names of
    their image files)."""
    outside: dict[int, int] = {}  # inside -> outside
    for e in entries:
        n = len(e.ns_pid)
        outside[e.pid] = e.ns_pid[0]
        for i, tid in enumerate(e.threads):
            chunk = list(e.ns_threads[i * n:(i + 1) * n])
            if len(chunk) == n:
                outside[tid] = chunk[0]
    for e in entries:
        e.pid = outside.get(e.pid, e.pid)
        e.ppid = outside.get(e.ppid, e.ppid)
        e.pgid = outside.get(e.pgid, e.pgid)
        e.sid = outside.get(e.sid, e.sid)
        e.threads[:] = [outside.get(t, t) for t in e.threads]
    return {o: i for i, o in outside.items() if o != i}


def map_file_pids(f: Any, mapping: dict[int, int]) -> Any:
    """The pids a files.img entry names -- its SIGIO owner (fown.pid; a
    process group's id is its leader's pid: the same mapping) and a
    pidfd's pid -- through ``mapping``; the entry itself when none
    changes, else a changed copy."""
    out = f
    for fd, sub in f.ListFields():
        if fd.message_type is None:
            continue
        new_owner = new_pidfd = None
        if "fown" in sub.DESCRIPTOR.fields_by_name and sub.HasField("fown") \
                and sub.fown.pid > 0 and mapping.get(sub.fown.pid, sub.fown.pid) != sub.fown.pid:
            new_owner = mapping[sub.fown.pid]
        if sub.DESCRIPTOR.name == "pidfd_entry" and sub.nspid > 0 \
                and mapping.get(sub.nspid, sub.nspid) != sub.nspid:
            new_pidfd = mapping[sub.nspid]
        if new_owner is None and new_pidfd is None:
            continue
        if out is f:
            out = type(f)()
            out.CopyFrom(f)
        target = getattr(out, fd.name)
        if new_owner is not None:
            target.fown.pid = new_owner
        if new_pidfd is not None:
            target.nspid = new_pidfd
    return out


# pid fields of shared images, by image kind
_PID_FIELDS = {"filelocks": ("pid",), "tty-info": ("sid", "pgrp")}


def map_pids(kind: str, msg: Any, mapping: dict[int, int]) -> Any:
    """``msg`` of image ``kind`` with its pid fields (lock owner; a
    terminal's session and foreground group) through ``mapping``; the
    message itself when nothing changes, else a changed copy."""
    fields = _PID_FIELDS.get(kind, ())
    new = {f: mapping[getattr(msg, f)] for f in fields
           if msg.HasField(f) and getattr(msg, f) in mapping}
    if not new:
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    for f, v in new.items():
        setattr(out, f, v)
    return out


def map_core_pids(core: Any, mapping: dict[int, int]) -> Any:
    """A core entry with its POSIX timers' target threads
    (SIGEV_THREAD_ID) through ``mapping``; a copy when one changes."""
    if not core.HasField("tc") or not any(
            t.HasField("notify_thread_id") and t.notify_thread_id in mapping
            for t in core.tc.timers.posix):
        return core
    out = type(core)()
    out.CopyFrom(core)
    for t in out.tc.timers.posix:
        if t.HasField("notify_thread_id"):
            t.notify_thread_id = mapping.get(t.notify_thread_id, t.notify_thread_id)
    return out
