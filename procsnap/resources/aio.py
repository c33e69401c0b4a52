"""Linux AIO rings: the "/[aio] (deleted)" mapping io_setup() makes
(VMA_AREA_AIORING and an mm_entry.aios entry, as CRIU writes them).

The ring is a page-cache mapping of an aio pseudo-file: a 32-byte header
(id, nr, head, tail, magic, compat and incompat features, header length)
then ``nr`` 32-byte io_events.  The dump checks the header is a ring this
kernel made (CRIU's sane_ring()), that the task itself owns the context
(a child forked after io_setup inherits the mapping but not the context,
and io_setup at restore would give it one it never had: refused), and
saves the ring pages with the task's other pages.

The restore (CRIU's restore_aio_ring()): io_setup() with the nr_req that
grows back to the same ring size, then move the kernel's tail to the saved
one by submitting no-op writes to /dev/null (consuming them by writing
ring->head as io_getevents would) and set head, copy the saved events in,
and mremap() the ring to its old address, which is also the aio_context_t
the program holds (the kernel follows a moved ring).

Not visible from user space, here as in CRIU: requests still in flight at
the dump (submitted, not completed).  Requests on regular files and
/dev/null complete inside io_submit(); a pending IOCB_CMD_POLL or a read
of a pipe or socket would be lost.
"""
from __future__ import annotations

import os
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ..errors import RestoreError, Unsupported
from ..images.pb import mm_pb2
from ..inject import InjectError
from ..kernel import consts as C
from ..procfs.parse import MapEntry

if TYPE_CHECKING:
    from ..tasks import DumpTask
    from ..tasks import RestoreTask

HEADER = struct.Struct("<8I")   # struct aio_ring, include/linux/aio.h (fs/aio.c)
EVENT_SIZE = 32                 # struct io_event
PATH = "/[aio] (deleted)"


def is_ring(m: MapEntry) -> bool:
    return m.path == PATH and m.shared


def _nr_req(ring_len: int) -> int:
    """The io_setup() argument that grows back into a ring of ``ring_len``
    bytes (the kernel doubles the request and adds 2: CRIU's
    aio_estimate_nr_reqs())."""
    k_max = (ring_len - HEADER.size) // EVENT_SIZE
    return (k_max - 2) // 2


def dump_ring(task: "DumpTask", m: MapEntry) -> Any:
    """The aio_ring_entry of one ring mapping, or a refusal."""
    where = f"pid {task.pid}: mapping {m.start:#x}-{m.end:#x} (aio ring)"
    inj = task.need_inj()
    try:
        head = inj.read_mem(m.start, HEADER.size)
    except OSError as exc:
        raise Unsupported(f"{where}: cannot read its header: {exc.strerror}") from None
    _id, nr, _head, _tail, magic, compat, incompat, hlen = HEADER.unpack(head)
    size = m.end - m.start
    if (magic != C.AIO_RING_MAGIC or compat != 1 or incompat != 0 or hlen != HEADER.size
            or nr != (size - HEADER.size) // EVENT_SIZE):
        raise Unsupported(f"{where}: not a ring this kernel made (magic {magic:#x}, nr {nr}, "
                          f"header {hlen}); it cannot be remade with io_setup")
    # io_getevents(ctx, 0, 0, NULL, NULL) only looks the context up: 0 if
    # this task owns it, EINVAL if the mapping was inherited by fork.
    if inj.call("io_getevents", m.start, 0, 0, 0, 0, check=False) != 0:
        raise Unsupported(f"{where}: inherited across fork without its aio context; "
                          "io_setup at restore would give this process a context it never had")
    return mm_pb2.aio_ring_entry(id=m.start, nr_req=_nr_req(size), ring_len=size)


def restore_ring(rt: "RestoreTask", entry: Any, saved: bytes) -> None:
    """Make the ring again and put it at its old address (see the module
    docstring).  ``saved``: the ring's bytes as dumped."""
    inj = rt.inj
    where = f"{rt.image_name('mm')}: aio ring at {entry.id:#x}"
    if len(saved) != entry.ring_len:
        raise RestoreError(f"{where}: {len(saved)} bytes saved for a {entry.ring_len}-byte ring")
    _id, nr, head, tail, *_ = HEADER.unpack_from(saved)
    try:
        ctxp = inj.put(bytes(8), align=8)
        inj.call("io_setup", entry.nr_req, ctxp)
        ctx = int.from_bytes(inj.read_mem(ctxp, 8), "little")
        inj.reset_scratch()
        new_nr = HEADER.unpack(inj.read_mem(ctx, HEADER.size))[1]
        if nr != (entry.ring_len - HEADER.size) // EVENT_SIZE or new_nr != nr \
                or tail >= nr or head >= nr:
            raise RestoreError(f"{where}: io_setup({entry.nr_req}) made a ring of {new_nr} "
                               f"events, the image has {nr} (head {head}, tail {tail})")
        if head or tail:
            _move_tail(rt, ctx, nr, head, tail)
        inj.write_mem(ctx + HEADER.size, saved[HEADER.size:])
        inj.call("mremap", ctx, entry.ring_len, entry.ring_len,
                 C.MREMAP_MAYMOVE | C.MREMAP_FIXED, entry.id)
    except InjectError as exc:
        raise RestoreError(f"{where}: {exc}") from None


def _move_tail(rt: "RestoreTask", ctx: int, nr: int, head: int, tail: int) -> None:
    """Advance the new ring's tail to ``tail`` and its head to ``head`` with
    no-op writes to /dev/null that complete inside io_submit()."""
    inj = rt.inj
    # A full turn first when the tail wrapped, so the kernel's count of
    # completed events is right (as CRIU does).
    count = nr + tail if tail < head else tail
    maxr = min(count, nr - 1)
    fd = rt.open_in_puppet("/dev/null", os.O_WRONLY)
    buf = inj.put(b"\0", align=8)
    iocb = inj.put(struct.pack("<QIIHhIQQqQII", 0, 0, 0, C.IOCB_CMD_PWRITE, 0, fd, buf, 1, 0,
                               0, 0, 0), align=8)
    iocbp = inj.put(struct.pack(f"<{maxr}Q", *([iocb] * maxr)), align=8)
    done = 0
    while done < count:
        n = inj.call("io_submit", ctx, min(count - done, maxr), iocbp)
        if n <= 0:
            raise RestoreError(f"{rt.image_name('mm')}: io_submit on the new aio ring "
                               f"returned {n}")
        done += n
        # Consume what completed, as io_getevents would: the kernel frees
        # request slots by reading ring->head.
        inj.write_mem(ctx + 8, struct.pack("<I", min(done, head)))
    inj.reset_scratch()
    inj.call("close", fd)
