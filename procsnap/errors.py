"""Exceptions raised by procsnap.

The split follows psutil: a process that vanished, a permission problem and
a malformed input are different failures and callers must be able to tell
them apart without parsing messages.  Every message is one line and names
the pid, fd, file or image involved.
"""
from __future__ import annotations


class ProcsnapError(Exception):
    """Base class of every error procsnap raises on purpose."""


class NoSuchProcess(ProcsnapError):
    """The process (or thread) does not exist, or exited while we looked."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        self.pid = pid
        super().__init__(msg or f"pid {pid}: no such process")


class ZombieProcess(NoSuchProcess):
    """The process exists but is a zombie: it has no memory to dump."""

    def __init__(self, pid: int, msg: str | None = None) -> None:
        super().__init__(pid, msg or f"pid {pid}: is a zombie")


class AccessDenied(ProcsnapError):
    """The kernel refused access (EPERM/EACCES) to a process or file."""

    def __init__(self, pid: int | None, msg: str) -> None:
        self.pid = pid
        super().__init__(msg)


class ParseError(ProcsnapError):
    """Text read from /proc did not have the expected shape."""

    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        super().__init__(f"{path}: {msg}")


class ImageError(ProcsnapError):
    """An image file is missing, damaged, foreign or inconsistent."""

    def __init__(self, path: str, msg: str) -> None:
        self.path = path
        super().__init__(f"{path}: {msg}")


class DumpError(ProcsnapError):
    """The dump could not be completed; the tree was left running."""


class Unsupported(DumpError):
    """The process holds state procsnap cannot save (yet).

    The message names the pid, the fd or address, the path and what kind of
    object it is, so the user knows exactly what blocks the checkpoint.
    """


class RestoreError(ProcsnapError):
    """The restore could not be completed; what was created was killed."""


class ActionScriptFailed(ProcsnapError):
    """A user's action script (criu's --action-script) refused a stage.

    ``status`` is what the script returned; criu exits with it after a
    refused post-dump (the tree runs on, the images stay)."""

    def __init__(self, action: str, status: int, msg: str) -> None:
        self.action = action
        self.status = status
        super().__init__(msg)
