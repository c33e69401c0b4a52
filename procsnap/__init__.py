"""procsnap: checkpoint/restore of Linux processes in pure Python.

    import procsnap
    procsnap.dump(pid, "/tmp/ckpt")             # freeze, save, kill
    pid = procsnap.restore("/tmp/ckpt")         # same PID, runs on

Images are CRIU's (same file names, magics and protobuf fields).
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Callable

from .errors import (AccessDenied, ActionScriptFailed, DumpError, ImageError, NoSuchProcess, ParseError,
                     ProcsnapError, RestoreError, Unsupported, ZombieProcess)

__version__ = "0.1.0"


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

    The process is killed after a complete dump unless ``leave_running``.
    ``external``: criu's --external keys (``"unix[INO]"``: our unix socket
    INO has its peer outside the tree).  ``tcp_established``: dump live
    TCP connections with TCP_REPAIR behind an nftables network lock.
    ``file_locks``: save file locks and leases (criu's --file-locks);
    without it a tree holding one is refused.  ``tcp_close``: connections
    are not dumped but come back closed (criu's dump --tcp-close);
    ``skip_in_flight``: connections not yet accepted are dropped (criu's
    --skip-in-flight), instead of refusing the dump.  ``ext_unix_sk`` (criu's
    --ext-unix-sk): a datagram unix socket connected to a named one outside
    the tree is saved and connected to that name again at restore.
    A tree in a mount namespace of its own: ``external`` names its mounts
    from outside the tree, ``"mnt[MOUNTPOINT]:KEY"``; ``ext_mount_auto``
    (criu's --ext-mount-map auto) finds the others in procsnap's own mounts.
    ``manage_cgroups`` (criu's --manage-cgroups): "ignore" records no
    cgroup; any other mode records every task's cgroups and the controllers'
    properties (cgroup.img).  ``cgroup_root`` (criu's --cgroup-root
    "[CONTROLLER:]/PATH"): the directories saved are those from PATH down.
    ``empty_ns`` (criu's --empty-ns net: ``CLONE_NEWNET``): the tree's network
    namespace is the caller's to make again; only its loopback is saved.
    ``sync``: wait until the images are on disk before the tree is killed
    (by default, as criu, they are complete in the page cache when this
    returns); with ``leave_running`` the tree runs again before the wait.
    ``prev_images_dir`` (criu's --prev-images-dir): the images of a
    :func:`pre_dump` of this tree (relative: to ``images_dir``), linked as
    ``parent``; pages not written since stay there, so the tree is frozen
    only while the rest is copied.
    ``orphan_pts_master`` (criu's --orphan-pts-master, runc's terminal): a
    pts whose master is outside the tree is saved as such (restored with a
    new master handed to the caller, see :func:`restore`).
    ``page_server`` (criu's --page-server --address A --port P): ``(A, P)``;
    the pagemaps and pages go to that page server (``procsnap page-server``
    or criu's), which writes them into its images dir; the other images
    are written to ``images_dir``.
    Returns stage timings in seconds (``"frozen"``: how long the tree was
    held, freeze to release).  Raises a :class:`ProcsnapError`; on
    failure the process runs on untouched and no image is left behind.
    """
    from .dumper import dump as _dump
    return _dump(pid, images_dir, leave_running=leave_running, shell_job=shell_job,
                 ghost_limit=ghost_limit, link_remap=link_remap, external=external,
                 tcp_established=tcp_established, file_locks=file_locks,
                 tcp_close=tcp_close, skip_in_flight=skip_in_flight, ext_unix_sk=ext_unix_sk,
                 action=action, ext_mount_auto=ext_mount_auto,
                 manage_cgroups=manage_cgroups, cgroup_root=tuple(cgroup_root),
                 empty_ns=empty_ns, sync=sync, prev_images_dir=prev_images_dir,
                 orphan_pts_master=orphan_pts_master,
                 page_server=page_server)


def pre_dump(pid: int, images_dir: str, *, prev_images_dir: str | None = None,
             page_server: tuple[str, int] | None = None) -> dict[str, float]:
    """criu's pre-dump: save the tree's private memory into ``images_dir``
    while it is frozen, then let it run on with its writes tracked, so that
    a later pre-dump or :func:`dump` given this directory as
    ``prev_images_dir`` copies only the pages written since.  The tree
    holds a userfaultfd (a high fd, close-on-exec) until that dump.
    ``page_server``: as for :func:`dump` (the server needs its own
    ``--prev-images-dir`` for the pages left in its parent images).
    Returns stage timings in seconds."""
    from .dumper import pre_dump as _pre_dump
    return _pre_dump(pid, images_dir, prev_images_dir=prev_images_dir,
                     page_server=page_server)


def restore(images_dir: str, *, detached: bool = True, shell_job: bool = False,
            pidfile: str | None = None, skip_file_check: bool = False,
            inherit_fd: dict[str, int] | None = None, tcp_close: bool = False,
            ext_unix_sk: bool = False,
            verify: bool = True, action: Callable[..., int] | None = None,
            root: str | None = None, ext_mount_map: dict[str, str] | None = None,
            ext_mount_auto: bool = False, ext_veth: dict[str, str] | None = None,
            restore_sibling: bool = False,
            manage_cgroups: str = "soft", cgroup_root: tuple[str, ...] = (),
            empty_ns: int = 0, join_ns: dict[str, str] | None = None,
            orphan_pts_master: bool = False,
            lazy_pages: bool = False, work_dir: str | None = None) -> int:
    """Recreate the process saved in ``images_dir`` under its old PID.

    Returns its PID (``detached``, the default) or waits for it and returns
    its exit status.  On failure nothing created is left alive.
    ``inherit_fd`` maps an external key (``"unix[INO]"``) to an fd of this
    process that stands in for it, as criu's --inherit-fd.  ``tcp_close``:
    established TCP connections come back closed (criu's --tcp-close).
    ``ext_unix_sk`` (criu's --ext-unix-sk): sockets dumped with it connect
    again to their outside peer's name (refused without it).
    ``verify``: before the tree runs, compare each task with its images
    (maps, fds, credentials, signals...); a difference fails the restore
    with one line naming the pid and the field.  ``action``: as for dump,
    at pre-restore, post-restore, network-unlock, pre-resume, post-resume.
    ``root`` (criu's --root): the root file system a tree dumped in a mount
    namespace of its own is restored on; ``ext_mount_map`` maps the key of
    each external mount to the path bound there (criu's --ext-mount-map
    KEY:PATH); ``ext_mount_auto``: a key recorded as a path is that path.
    ``ext_veth`` maps a veth of the tree's network namespace whose peer was
    outside to the name its new peer gets here (criu's --external
    veth[IN]:OUT, --veth-pair IN=OUT).  ``restore_sibling`` (criu's
    --restore-sibling): the root is made a child of this process's parent,
    which waits for it (LXC's monitor); implies ``detached``.
    ``manage_cgroups`` (criu's --manage-cgroups MODE): soft (the default)
    makes a missing cgroup with its saved properties and leaves an existing
    one as it is; full also writes the properties of existing ones; strict
    refuses an existing one; props writes them but requires every cgroup to
    exist; none requires them and writes nothing; ignore leaves the tasks in
    the restorer's cgroups.  ``cgroup_root`` ("[CONTROLLER:]/PATH", criu's
    --cgroup-root) moves the saved tree's root (of that controller, or of
    every one not named) to PATH.  ``empty_ns`` (criu's --empty-ns net):
    the root gets a new, empty network namespace which the caller sets up
    at the setup-namespaces action; then its loopback is brought back as
    it was (criu leaves it down).  ``join_ns`` (criu's --join-ns): kind ->
    path of a namespace file (or a pid) the tree joins instead of a new
    namespace of that kind; only "net" (its contents are left as they are,
    its network lock is removed once the tree runs).
    ``orphan_pts_master`` (criu's --orphan-pts-master): a pts dumped with
    its master outside the tree gets a new pty pair in the tree's devpts;
    the slave is the tree's, the master goes to ``action`` as
    ``action("orphan-pts-master", fd)`` (criu's RPC sends it to the client).  ``lazy_pages``
    (criu's --lazy-pages): private anonymous memory is served on fault by
    the lazy-pages daemon listening in ``work_dir`` (default: the images
    directory; see procsnap.lazypages), and pushed by it in the background.
    """
    from .restorer import restore as _restore
    return _restore(images_dir, detached=detached, shell_job=shell_job, pidfile=pidfile,
                    skip_file_check=skip_file_check, inherit_fd=inherit_fd,
                    tcp_close=tcp_close, verify=verify, action=action, fs_root=root,
                    ext_unix_sk=ext_unix_sk, orphan_pts_master=orphan_pts_master,
                    ext_mount_map=ext_mount_map, ext_mount_auto=ext_mount_auto,
                    ext_veth=ext_veth, restore_sibling=restore_sibling,
                    manage_cgroups=manage_cgroups, cgroup_root=tuple(cgroup_root),
                    empty_ns=empty_ns, join_ns=join_ns, lazy_pages=lazy_pages, work_dir=work_dir)


def network_unlock(images_dir: str) -> bool:
    """Drop the network lock a ``tcp_established`` dump of ``images_dir``
    left, when its restore is abandoned.  True if a lock was removed."""
    from .resources.tcp import network_unlock_dir
    return network_unlock_dir(images_dir)


# The drivers live in procsnap.dumper and procsnap.restorer: a submodule
# named procsnap.dump would, once imported, replace the function above.
__all__ = ["dump", "pre_dump", "restore", "network_unlock", "ProcsnapError", "NoSuchProcess", "ZombieProcess",
           "AccessDenied", "ParseError", "ImageError", "DumpError", "Unsupported",
           "RestoreError", "ActionScriptFailed", "__version__"]
