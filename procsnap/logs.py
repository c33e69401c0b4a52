"""procsnap's loggers, with the logging module imported at the first message.

A dump or restore logs nothing unless asked (-vv) or something rare
happens, yet importing logging (traceback, threading, string, weakref...)
was ~5 % of the instructions of procsnap's start-up.  So the modules
log through ``Logger(name)``, which hands each message to
``logging.getLogger(name)``, importing logging then; the command line's
``logging.basicConfig`` is kept by ``configure`` until that moment (or
done at once if logging is loaded already).  A module that needs logging
itself (a library's logger, a log file) gets it from ``real()``, which
applies the pending configuration first.  Through the API, the caller's
own logging configuration sees every message as before.
"""
from __future__ import annotations

import sys
from types import ModuleType
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, NoReturn

_pending: dict[str, Any] | None = None

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's levels


def real() -> ModuleType:
    """The logging module, with the configuration configure() kept."""
    global _pending
    import logging
    if _pending is not None:
        cfg, _pending = _pending, None
        logging.basicConfig(**cfg)
    return logging


def configure(**kwargs: Any) -> None:
    """logging.basicConfig(**kwargs), at the first message if logging is
    not loaded yet."""
    global _pending
    _pending = kwargs
    if "logging" in sys.modules:
        real()


class Logger:
    """The few methods of logging.Logger procsnap uses, forwarded to
    logging.getLogger(name) at the first call."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _logger(self) -> Any:
        return real().getLogger(self.name)

    def isEnabledFor(self, level: int) -> bool:
        return bool(self._logger().isEnabledFor(level))

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().debug(msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().info(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger().error(msg, *args, **kwargs)


def leave(rc: object) -> NoReturn:
    """End a command-line process with status ``rc`` (main()'s return)
    without Python's finalization: freeing every module and object of a
    restore cost 40-110 ms, which a caller waiting for ``restore -d`` (a
    test, runc, LXC) waits for.  procsnap's commands register nothing at
    exit and join the threads they start (the memory fill's); stdio and logging's handlers (criu's log
    file) are flushed first.  If flushing fails, the normal exit reports
    it."""
    import os
    code = rc if isinstance(rc, int) else (0 if rc is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        if "logging" in sys.modules:
            sys.modules["logging"].shutdown()
    except BaseException:
        raise SystemExit(rc)
    os._exit(code)
