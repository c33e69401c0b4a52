"""The words each fd kind uses to classify its /proc/PID/fdinfo/FD lines.

Every fd kind module declares ``FDINFO``: a dict from an fdinfo key (the
text before the first ':' of a line, e.g. "eventfd-count", "tfd",
"inotify wd", "lock") to one rule made here:

* ``saved(what)``      -- the dump saves it and the restore gives it back
                          exactly (``what`` says where it goes);
* ``irrelevant(why)``  -- not state of the task, or derived at restore;
* ``refused(when, message)`` -- the dump fails with one line naming the
                          pid and fd when ``when(value)`` is true; when it
                          is false the line is saved (``saved`` says how).

files.audit_fdinfo checks every line of every fd against the common keys
plus the kind's own dict; a key neither knows is refused, not skipped, so
a kernel that starts printing something new about an fd is noticed.

This module is a leaf: kind modules import it, files.py checks with it.
"""
from __future__ import annotations

from ..record import record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Callable


@record(frozen=True)
class Rule:
    """How one fdinfo/flag value is treated: saved, irrelevant or refused."""
    verdict: str                                   # "saved", "irrelevant", "refused"
    why: str                                       # what/where saved, why irrelevant
    when: Callable[[str], bool] | None = None      # refused: value -> refuse?
    message: str = ""                              # refused: "{value}" is filled in


def saved(what: str) -> Rule:
    return Rule("saved", what)


def irrelevant(why: str) -> Rule:
    return Rule("irrelevant", why)


def refused(when: Callable[[str], bool], message: str, otherwise: str) -> Rule:
    """Refuse when ``when(value)``; else the value is ``otherwise`` (how it is kept)."""
    return Rule("refused", otherwise, when, message)


def nonzero(value: str) -> bool:
    """For counters printed in any base: refuse when not 0."""
    try:
        return int(value.split()[0], 0 if value.startswith("0x") else 10) != 0
    except (ValueError, IndexError):
        return True


def fdinfo_key(line: str) -> str:
    """The key of one fdinfo line: the text before its first ':'."""
    return line.partition(":")[0].strip()
