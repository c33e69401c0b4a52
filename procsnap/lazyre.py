"""Regular expressions compiled at their first use, not at import.

Python's ``re`` compiles a pattern in pure Python (parser and compiler):
about a million instructions each.  The parsers' patterns, compiled at
import, were ~5 % of the instructions of a CLI dump or restore of a
small process, most of them for files such a process never has (timers,
locks, limits...).  ``LazyPattern`` holds the pattern and compiles it the
first time a method is called; a hot loop takes ``.compiled`` once.
"""
from __future__ import annotations

import re
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any, Iterator


class LazyPattern:
    """``re.compile(pattern, flags)``, done at the first call."""

    __slots__ = ("pattern", "flags", "_re")

    def __init__(self, pattern: Any, flags: int = 0) -> None:
        self.pattern = pattern
        self.flags = flags
        self._re: re.Pattern[Any] | None = None

    @property
    def compiled(self) -> re.Pattern[Any]:
        r = self._re
        if r is None:
            r = self._re = re.compile(self.pattern, self.flags)
        return r

    def match(self, *args: Any) -> re.Match[Any] | None:
        return self.compiled.match(*args)

    def fullmatch(self, *args: Any) -> re.Match[Any] | None:
        return self.compiled.fullmatch(*args)

    def search(self, *args: Any) -> re.Match[Any] | None:
        return self.compiled.search(*args)

    def sub(self, *args: Any) -> Any:
        return self.compiled.sub(*args)

    def findall(self, *args: Any) -> list[Any]:
        return self.compiled.findall(*args)

    def finditer(self, *args: Any) -> Iterator[re.Match[Any]]:
        return self.compiled.finditer(*args)

    def __repr__(self) -> str:
        return f"LazyPattern({self.pattern!r}, {self.flags})"
