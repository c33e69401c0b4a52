"""criu's action scripts (--action-script FILE, several allowed).

Each script is executed (not through a shell) at each stage with criu's
environment: CRTOOLS_SCRIPT_ACTION (the stage), CRTOOLS_IMAGE_DIR
(/proc/<our pid>/fd/<fd of the images directory>, as criu gives it) and,
once the root task's pid is known, CRTOOLS_INIT_PID.  Like criu, the
script given last runs first (criu adds each one at the head of its list)
and a stage's status is the OR of the scripts' statuses.

Stages procsnap runs: pre-dump, network-lock, post-dump, network-unlock
(dump); pre-restore, post-restore, network-unlock, pre-resume,
post-resume (restore).  network-lock/-unlock run, as in criu, only for a
tree in its own network namespace; setup-namespaces and post-setup-namespaces
(restore) around a new root's namespaces, where the caller configures them.
orphan-pts-master and status-ready belong to criu's RPC mode.

criu's RPC (rpc.py, criu_opts.notify_scripts): each stage is first sent to
the client as a NOTIFY message (``notify``), which answers before we go
on; a failed answer fails the stage as a failing script does.  Scripts
from config files then run too, as criu runs them after the client.
query-ext-files and orphan-pts-master exist only as notifications.
"""
from __future__ import annotations

import logging
import os
import subprocess
from typing import Callable, Optional

log = logging.getLogger("procsnap.criu")

# criu's RPC notification: (stage, the root's pid where criu sends it,
# an fd to pass with it) -> 0 when the client answered success
Notify = Callable[[str, Optional[int], Optional[int]], int]

# stages criu sends only to an RPC client, never to shell scripts
RPC_ONLY = ("query-ext-files", "orphan-pts-master")
# stages whose notification carries the root's pid (criu: send_criu_rpc_script)
WITH_PID = ("setup-namespaces", "post-restore")


class ActionScripts:
    def __init__(self, paths: list[str], images_dir: str, root_pid: int | None = None,
                 notify: Notify | None = None) -> None:
        self.paths = list(reversed(paths))
        self.notify = notify
        self.images_dir = images_dir
        self.root_pid = root_pid
        self.dir_fd = -1
        self.ran: list[str] = []

    def __enter__(self) -> "ActionScripts":
        if self.paths:
            self.dir_fd = os.open(self.images_dir, os.O_RDONLY | os.O_DIRECTORY)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __call__(self, action: str, fd: int | None = None) -> int:
        """Run every script for this stage; returns their statuses ORed.
        ``fd``: passed to an RPC client with the notification."""
        log.debug("Running %s scripts", action)
        if self.notify is not None:
            log.debug("\tRPC")
            status = self.notify(action, self.root_pid if action in WITH_PID else None, fd)
            if status:
                log.error("RPC client reported script error at %s", action)
                log.error("One of more action scripts failed")
                return status
        if not self.paths or action in RPC_ONLY:
            return 0
        self.ran.append(action)
        env = dict(os.environ)
        env["CRTOOLS_SCRIPT_ACTION"] = action
        env["CRTOOLS_IMAGE_DIR"] = f"/proc/{os.getpid()}/fd/{self.dir_fd}"
        if self.root_pid is not None:
            env["CRTOOLS_INIT_PID"] = str(self.root_pid)
        status = 0
        for path in self.paths:
            log.debug("\t[%s]", path)
            try:
                rc = subprocess.call([path], env=env, pass_fds=(self.dir_fd,))
            except OSError as exc:
                log.error("Can't run script %s: %s", path, exc.strerror or exc)
                rc = 1
            if rc < 0:          # killed by a signal
                rc = 128 - rc
            if rc:
                log.error("Script %s exited with %d", path, rc)
            status |= rc
        if status:
            log.error("One of more action scripts failed")
        return status
