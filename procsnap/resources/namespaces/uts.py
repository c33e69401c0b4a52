"""The uts namespace: hostname and domainname (CRIU's utsns-ID.img)."""
from __future__ import annotations

TYPE_CHECKING = False  # typing is for mypy only: not imported at run time

from ... import images
from ...images.pb import utsns_pb2
from ...kernel import consts as C

if TYPE_CHECKING:
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "uts"
CLONE_FLAG = C.CLONE_NEWUTS

_FIELD = 65  # struct new_utsname: six char[65] fields


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    # Asked from inside (uname in the task): /proc/sys/kernel/hostname would
    # answer for procsnap's own namespace.
    inj = task.need_inj()
    addr = inj.put(bytes(6 * _FIELD), align=8)
    inj.call("uname", addr)
    raw = inj.read_mem(addr, 6 * _FIELD)
    inj.reset_scratch()

    def field(n: int) -> str:
        return raw[n * _FIELD:(n + 1) * _FIELD].split(b"\0", 1)[0].decode(errors="surrogateescape")

    ctx.add_shared("utsns", utsns_pb2.utsns_entry(nodename=field(1), domainname=field(5)), ns_id)


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    e = images.read_one(rctx.images_dir, "utsns", ns_id)
    inj = rt.inj
    for call, value in (("sethostname", e.nodename), ("setdomainname", e.domainname)):
        raw = value.encode(errors="surrogateescape")
        inj.call(call, inj.put(raw), len(raw))
    inj.reset_scratch()
