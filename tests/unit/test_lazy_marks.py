"""The dump's PE_LAZY marks (memory.lazy_ranges / _mark_lazy): present
pages inside the lazy ranges get PE_LAZY|PE_PRESENT, an entry is split
where a range begins or ends, parent holes and the rest stay as they are."""
from __future__ import annotations

from types import SimpleNamespace

from procsnap.images.magic import PE_LAZY, PE_PARENT, PE_PRESENT
from procsnap.kernel import consts as C
from procsnap.resources import memory

P = 4096
LP = PE_LAZY | PE_PRESENT


def test_mark_lazy_splits_at_range_edges() -> None:
    marked = [(0x10000, 4, PE_PRESENT),            # before any range
              (0x20000, 8, PE_PRESENT),            # straddles the start of one
              (0x30000, 2, PE_PARENT),             # a parent hole inside: unmarked
              (0x40000, 16, PE_PRESENT)]           # holds a whole range and the gap
    lazy = [(0x22000, 0x31000), (0x41000, 0x42000), (0x44000, 0x46000)]
    assert memory._mark_lazy(marked, lazy) == [
        (0x10000, 4, PE_PRESENT),
        (0x20000, 2, PE_PRESENT), (0x22000, 6, LP),
        (0x30000, 2, PE_PARENT),
        (0x40000, 1, PE_PRESENT), (0x41000, 1, LP), (0x42000, 2, PE_PRESENT),
        (0x44000, 2, LP), (0x46000, 10, PE_PRESENT)]
    assert memory._mark_lazy(marked, []) == marked


def _vma(start: int, end: int, *, flags: int = C.MAP_PRIVATE | C.MAP_ANONYMOUS,
         status: int = memory.VMA_AREA_REGULAR | memory.VMA_ANON_PRIVATE,
         prot: int = C.PROT_READ | C.PROT_WRITE) -> object:
    from procsnap.images.pb import vma_pb2
    return vma_pb2.vma_entry(start=start, end=end, pgoff=0, shmid=0, prot=prot, flags=flags,
                             status=status, fd=-1)


def test_lazy_ranges_are_the_vmas_procsnap_s_lazy_restore_leaves() -> None:
    """The marks follow lazy_vmas(): not the VMA a thread's stack pointer
    is in, not mlocked or PROT_NONE memory."""
    mm = SimpleNamespace(vmas=[
        _vma(0x100000, 0x200000),                                    # lazy
        _vma(0x200000, 0x201000, flags=C.MAP_PRIVATE | C.MAP_ANONYMOUS | C.MAP_LOCKED),
        _vma(0x300000, 0x301000, prot=0),                            # PROT_NONE
        _vma(0x7f0000, 0x800000)])                                   # the stack pointer's
    th = SimpleNamespace(regs=SimpleNamespace(rsp=0x7ff000 + 8), core=None)
    task = SimpleNamespace(threads=[th])
    assert memory.lazy_ranges(mm, task) == [(0x100000, 0x200000)]
