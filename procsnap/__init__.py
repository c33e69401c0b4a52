"""procsnap: checkpoint/restore of Linux processes in pure Python.

    import procsnap
    procsnap.dump(pid, "/tmp/ckpt")             # freeze, save, kill
    pid = procsnap.restore("/tmp/ckpt")         # same PID, runs on

Images are CRIU's (same file names, magics and protobuf fields).
"""
from __future__ import annotations

from .errors import (AccessDenied, DumpError, ImageError, NoSuchProcess, ParseError,
                     ProcsnapError, RestoreError, Unsupported, ZombieProcess)

__version__ = "0.1.0"


def dump(pid: int, images_dir: str, *, leave_running: bool = False,
         shell_job: bool = False, ghost_limit: int = 1 << 20,
         link_remap: bool = False) -> dict[str, float]:
    """Checkpoint the process ``pid`` (and, later, its tree) into ``images_dir``.

    The process is killed after a complete dump unless ``leave_running``.
    Returns stage timings in seconds.  Raises a :class:`ProcsnapError`; on
    failure the process runs on untouched and no image is left behind.
    """
    from .dump import dump as _dump
    return _dump(pid, images_dir, leave_running=leave_running, shell_job=shell_job,
                 ghost_limit=ghost_limit, link_remap=link_remap)


def restore(images_dir: str, *, detached: bool = True, shell_job: bool = False,
            pidfile: str | None = None, skip_file_check: bool = False) -> int:
    """Recreate the process saved in ``images_dir`` under its old PID.

    Returns its PID (``detached``, the default) or waits for it and returns
    its exit status.  On failure nothing created is left alive.
    """
    from .restore import restore as _restore
    return _restore(images_dir, detached=detached, shell_job=shell_job, pidfile=pidfile,
                    skip_file_check=skip_file_check)


__all__ = ["dump", "restore", "ProcsnapError", "NoSuchProcess", "ZombieProcess",
           "AccessDenied", "ParseError", "ImageError", "DumpError", "Unsupported",
           "RestoreError", "__version__"]
