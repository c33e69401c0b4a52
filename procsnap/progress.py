"""A progress bar for long page copies, on a terminal only.

    bar = Progress("dump", total_bytes)
    bar.update(done_bytes)      # cheap: call it after every large copy
    bar.close()

Nothing is drawn unless the command line turned it on (``enabled``: the
library itself never writes to stderr uninvited), stderr is a terminal,
and the copy has already taken ``DELAY`` seconds -- a quick dump stays
silent, a slow one says how far it is and how fast it goes.
"""
from __future__ import annotations

import sys
import time
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["Progress", "enabled", "DELAY"]

# Set by the CLI; the API stays quiet.
enabled = False
# Only copies lasting longer than this show a bar.
DELAY = 1.0
# Redraw at most this often: a terminal write per injected call would be
# wasted work on a fast copy.
_REDRAW = 0.1
_WIDTH = 30
_PAGE = 4096


class Progress:
    def __init__(self, what: str, total: int, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = max(total, 0)
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn = False
        self._on = enabled and self.total > 0 and _isatty(self.stream)

    def update(self, done: int) -> None:
        if not self._on:
            return
        now = time.monotonic()
        if now - self.start < DELAY or now - self._last < _REDRAW:
            return
        self._last = now
        self._draw(done, now)

    def _draw(self, done: int, now: float) -> None:
        done = min(done, self.total)
        filled = _WIDTH * done // self.total
        rate = done / max(now - self.start, 1e-6) / 1e6
        line = (f"\rprocsnap {self.what}: [{'#' * filled}{'.' * (_WIDTH - filled)}] "
                f"{done // _PAGE}/{self.total // _PAGE} pages {rate:7.0f} MB/s")
        self.stream.write(line)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Finish the line if a bar was drawn (at 100%), else stay silent."""
        if self._drawn:
            self._draw(self.total, time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
        self._on = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
