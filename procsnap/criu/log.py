"""criu's log: "(SS.UUUUUU) message" lines, seconds since the start.

Errors are written "Error (procsnap): ...", warnings "Warn  (procsnap): ...",
as criu writes "Error (file:line): ...": LXC and zdtm.py grep the log for
"Error" (and "Warn").  With --log-pid each line carries procsnap's pid
after the time.  Levels are criu's: 0 nothing, 1 errors, 2 warnings
(the default), 3 info, 4 debug.  Without -o the log goes to stderr.

procsnap's own modules log to the "procsnap" logger; the handler installed
here puts their records into this log at the chosen level.
"""
from __future__ import annotations

import logging
import os
import sys
import time
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import TextIO

_LEVELS = {0: logging.CRITICAL + 10, 1: logging.ERROR, 2: logging.WARNING,
           3: logging.INFO}


def py_level(criu_level: int) -> int:
    return _LEVELS.get(criu_level, logging.DEBUG) if criu_level < 4 else logging.DEBUG


class CriuFormatter(logging.Formatter):
    def __init__(self, start: float, log_pid: bool) -> None:
        super().__init__()
        self.start = start
        self.log_pid = log_pid

    def format(self, record: logging.LogRecord) -> str:
        t = max(record.created - self.start, 0.0)
        head = f"({int(t):02d}.{int((t % 1) * 1e6):06d}) "
        if self.log_pid:
            head += f"{os.getpid():6d}: "
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            msg = f"Error (procsnap): {msg}"
        elif record.levelno >= logging.WARNING:
            msg = f"Warn  (procsnap): {msg}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return head + msg


class CriuLog:
    """The log of one criu command: a file (or stderr) and its logger."""

    def __init__(self, path: str | None, level: int, log_pid: bool) -> None:
        self.path = path
        self.start = time.time()
        self.stream: TextIO
        if path is None:
            self.stream = sys.stderr
        else:
            # criu truncates the log of a new run (O_TRUNC)
            self.stream = open(path, "w", buffering=1)
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(CriuFormatter(self.start, log_pid))
        self.handler.setLevel(py_level(level))
        self.logger = logging.getLogger("procsnap")
        self.logger.addHandler(self.handler)
        self.logger.setLevel(py_level(level))
        self.logger.propagate = False
        self.log = logging.getLogger("procsnap.criu")

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.flush()
        if self.stream is not sys.stderr:
            self.stream.close()
