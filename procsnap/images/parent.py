"""Pages kept in a parent image set (CRIU's pre-dump chains).

A dump made after a pre-dump (``criu dump --prev-images-dir``) writes in
its pagemap, for pages unchanged since the parent, an entry with
``PE_PARENT`` (older CRIU: ``in_parent = true``) and no bytes: they are in
the parent set's pages file, found through the ``parent`` symlink in the
images directory, under the same pid -- or further up, if the parent says
PE_PARENT again.  The restore of private memory reads them there
(resources.memory._page_runs); these are the entry rules it and the
shared-memory readers share.
"""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from procsnap.errors import ImageError
from procsnap.images.magic import PE_LAZY, PE_PARENT, PE_PRESENT


def flags_of(e: Any) -> int:
    """An entry's flags, from the old ``in_parent`` field when it has none
    (criu/pagemap.c reads them the same way)."""
    if e.HasField("flags"):
        return int(e.flags)
    if e.HasField("in_parent") and e.in_parent:
        return PE_PARENT
    return PE_PRESENT


def needs_parent(entries: list[Any]) -> bool:
    return any(not flags_of(e) & PE_PRESENT for e in entries)


def all_present(path: str, entries: list[Any]) -> None:
    """For the readers of shared-memory pagemaps (shmem, System V), which
    take every entry's bytes from this set: an entry in the parent set, or
    lazy, is an error naming it rather than pages read from the wrong place."""
    for e in entries:
        f = flags_of(e)
        if not f & PE_PRESENT:
            raise ImageError(path, f"pages at offset {e.vaddr:#x} are "
                             f"{'in the parent image set' if f & PE_PARENT else 'lazy'} "
                             f"(flags {f:#x}); procsnap reads shared memory pages only "
                             "from the set itself")



__all__ = ["all_present", "flags_of", "needs_parent", "PE_LAZY"]


_PAGE = 4096


def intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pages in both sorted run lists, as (address, n_pages) runs (what a
    parent holds of what is asked: the dump's in_parent marks, a page
    server's parent holes)."""
    out: list[tuple[int, int]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        a0, a1 = a[i][0], a[i][0] + a[i][1] * _PAGE
        b0, b1 = b[j][0], b[j][0] + b[j][1] * _PAGE
        lo, hi = max(a0, b0), min(a1, b1)
        if lo < hi:
            out.append((lo, (hi - lo) // _PAGE))
        if a1 <= b1:
            i += 1
        else:
            j += 1
    return out


def merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted (address, n_pages) runs with touching neighbours joined."""
    out: list[tuple[int, int]] = []
    for a, n in runs:
        if out and out[-1][0] + out[-1][1] * _PAGE == a:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((a, n))
    return out
