"""The table of image kinds: file name, magic number and message of each.

Every image CRIU writes starts with a header of one or two little-endian
u32 words, followed by framed entries (see framing.py):

* most images: ``IMG_COMMON_MAGIC`` then the image's own magic;
* service files (``stats-dump``, ``irmap-cache``): ``IMG_SERVICE_MAGIC``
  then the image's own magic;
* ``inventory.img``: its own magic alone (it is what tells a reader which
  image version the rest uses, so it cannot depend on it);
* raw images (``pages-N.img``): no header and no framing at all.

Magic values are CRIU's (criu/include/magic.h), file name patterns are
CRIU's (criu/image-desc.c; ``%u``, ``%lu``, ``%d`` take a decimal id, ``%x``
a hex one).  ``magic_name`` is the name crit prints in ``"magic"``.

Adding an image kind is one ``_kind(...)`` line in ``KINDS``.

Entry classes are named in the table ("core_pb2.core_entry"), not imported
by it: a kind's generated module is loaded when that kind is first read or
written (importing all ~60 of them was a sixth of every start of the
command line, for a dump that writes a dozen kinds).
"""
from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Literal

from google.protobuf.message import Message

# Image format version stored in inventory_entry.img_version.
CRTOOLS_IMAGES_V1 = 1
CRTOOLS_IMAGES_V1_1 = 2  # every image but inventory carries a prefix magic

RAW_IMAGE_MAGIC = 0x0
IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940

# pagemap_entry.flags bits (criu/include/pagemap.h)
PE_PARENT = 1 << 0  # pages live in the parent (pre-dump) image set
PE_LAZY = 1 << 1  # pages may be fetched lazily on restore
PE_PRESENT = 1 << 2  # pages are stored in this set's pages-N.img

if TYPE_CHECKING:
    Header = Literal["common", "service", "bare", "raw"]
MessageClass = type[Message]

# Given a decoded entry, how many raw bytes follow it in the file.  None
# means "everything up to the end of the file".
TailFn = Callable[[Message], int | None]


@functools.lru_cache(maxsize=None)
def message_class(qualname: str) -> MessageClass:
    """The class "MODULE_pb2.message" of procsnap.images.pb, imported on first use."""
    module, _, name = qualname.partition(".")
    full = f"procsnap.images.pb.{module}"
    __import__(full)  # not importlib's: -X importtime sees this one
    return getattr(sys.modules[full], name)  # type: ignore[no-any-return]


class ImageKind:
    """One kind of image file (immutable once in KINDS).

    A plain class, not a dataclass: ~90 of them are made at every start."""

    __slots__ = ("name", "pattern", "magic_name", "magic", "header", "_message", "_head",
                 "tail", "pick")

    def __init__(self, name: str, pattern: str, magic_name: str, magic: int, header: Header,
                 message: str | None, head: str | None = None, tail: TailFn | None = None,
                 pick: Callable[[bytes], MessageClass] | None = None) -> None:
        self.name = name  # our short name: "core", "pagemap", "pages", ...
        self.pattern = pattern  # CRIU's file name: "core-%u.img", "inventory.img"
        self.magic_name = magic_name  # crit's name for the magic: "CORE"
        self.magic = magic  # CRIU's magic number, RAW_IMAGE_MAGIC for raw images
        self.header = header  # which header words precede the entries
        self._message = message  # "module_pb2.class" of the entries (None: raw)
        self._head = head  # of the first entry, if different
        self.tail = tail  # raw bytes following an entry
        # Images whose entry classes follow their contents (ipcns-msg: a queue,
        # then its messages): the class of an entry, given its encoded bytes.
        self.pick = pick

    def __repr__(self) -> str:
        return f"ImageKind({self.name!r}, {self.pattern!r}, {self.magic_name!r})"

    @property
    def message(self) -> MessageClass | None:
        """The class of the entries (None: a raw image)."""
        return None if self._message is None else message_class(self._message)

    @property
    def head(self) -> MessageClass | None:
        """The class of the first entry, if different."""
        return None if self._head is None else message_class(self._head)

    @property
    def _regex(self) -> re.Pattern[str]:
        return _name_regex(self.pattern)

    @property
    def has_ident(self) -> bool:
        return "%" in self.pattern

    @property
    def prefix(self) -> int | None:
        """The word written before the magic, or None."""
        if self.header == "common":
            return IMG_COMMON_MAGIC
        if self.header == "service":
            return IMG_SERVICE_MAGIC
        return None

    @property
    def header_bytes(self) -> int:
        return {"common": 8, "service": 8, "bare": 4, "raw": 0}[self.header]

    def file_name(self, ident: int | None = None) -> str:
        if not self.has_ident:
            if ident is not None:
                raise ValueError(f"image kind {self.name!r} ({self.pattern}) takes no id")
            return self.pattern
        if ident is None:
            raise ValueError(f"image kind {self.name!r} ({self.pattern}) needs an id")
        if ident < 0:
            raise ValueError(f"image kind {self.name!r}: negative id {ident}")
        # re.sub(r"%l?[ud]", ...) without compiling a regex at every start
        # ("%lu" and "%ld" first: "%u" and "%d" are their tails)
        text = str(ident)
        return (self.pattern.replace("%lu", text).replace("%ld", text).replace("%u", text)
                .replace("%d", text).replace("%x", format(ident, "x")))

    def match_name(self, filename: str) -> int | None | Literal[False]:
        """The id encoded in filename (None if the pattern has none), or False."""
        m = self._regex.match(filename)
        if m is None:
            return False
        if not m.groups():
            return None
        return int(m.group(1), 16 if "%x" in self.pattern else 10)

    def entry_class(self, index: int) -> MessageClass | None:
        """Message class of the index-th entry (0-based)."""
        if index == 0 and self.head is not None:
            return self.head
        return self.message


def _pipe_tail(m: Message) -> int:
    return int(m.bytes)  # type: ignore[attr-defined]


def _sk_queue_tail(m: Message) -> int:
    return int(m.length)  # type: ignore[attr-defined]


def _tcp_tail(m: Message) -> int:
    return int(m.inq_len) + int(m.outq_len)  # type: ignore[attr-defined]


def _ghost_tail(m: Message) -> int | None:
    # The ghost_file_entry is followed by the whole contents unless they are
    # stored as chunks; each ghost_chunk_entry is followed by its bytes.
    if isinstance(m, message_class("ghost_file_pb2.ghost_chunk_entry")):
        return int(m.len)
    return 0 if m.chunks else None  # type: ignore[attr-defined]


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _sem_tail(m: Message) -> int:
    # the semaphores' values, u16 each, padded to 8 bytes (CRIU's layout)
    return _round8(2 * int(m.nsems))  # type: ignore[attr-defined]


def _msg_tail(m: Message) -> int:
    # a message's text, padded to 8 bytes; a queue entry has none
    if isinstance(m, message_class("ipc_msg_pb2.ipc_msg")):
        return _round8(int(m.msize))
    return 0


def _msg_pick(raw: bytes) -> MessageClass:
    # ipc_msg_entry starts with field 1 length-delimited (desc, tag 0x0a),
    # ipc_msg with field 1 a varint (mtype, tag 0x08): what crit's handler
    # learns from counting qnum, the first byte says.
    return message_class("ipc_msg_pb2.ipc_msg_entry" if raw[:1] == b"\x0a" else "ipc_msg_pb2.ipc_msg")


def _mq_tail(m: Message) -> int:
    return int(m.msize) if isinstance(m, message_class("ipc_mqueue_pb2.ipc_mqueue_msg")) else 0  # type: ignore[attr-defined]


def _mq_pick(raw: bytes) -> MessageClass:
    # ipc_mqueue_entry starts with field 1 a string (0x0a), a message with a varint (0x08)
    return message_class("ipc_mqueue_pb2.ipc_mqueue_entry" if raw[:1] == b"\x0a"
                         else "ipc_mqueue_pb2.ipc_mqueue_msg")


@functools.lru_cache(maxsize=None)
def _name_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a file name pattern, compiled on first use (compiling
    all ~90 at import was 3 ms of every run of the command line)."""
    parts = re.split(r"(%l?[udx]|%s)", pattern)
    rx = "".join(
        ("([0-9a-f]+)" if p == "%x" else "([0-9]+)") if p.startswith("%") else re.escape(p)
        for p in parts
    )
    return re.compile(rx + r"\Z")


def _kind(
    name: str,
    pattern: str,
    magic_name: str,
    magic: int,
    message: str | None,
    header: Header = "common",
    head: str | None = None,
    tail: TailFn | None = None,
    pick: Callable[[bytes], MessageClass] | None = None,
) -> ImageKind:
    return ImageKind(name, pattern, magic_name, magic, header, message, head, tail, pick)


# fmt: off
KINDS: tuple[ImageKind, ...] = (
    # name             file name                 crit name         magic       entries
    _kind("inventory",     "inventory.img",          "INVENTORY",      0x58313116, "inventory_pb2.inventory_entry", header="bare"),
    _kind("pstree",        "pstree.img",             "PSTREE",         0x50273030, "pstree_pb2.pstree_entry"),
    _kind("core",          "core-%u.img",            "CORE",           0x55053847, "core_pb2.core_entry"),
    _kind("ids",           "ids-%u.img",             "IDS",            0x54432030, "core_pb2.task_kobj_ids_entry"),
    _kind("mm",            "mm-%u.img",              "MM",             0x57492820, "mm_pb2.mm_entry"),
    _kind("pagemap",       "pagemap-%lu.img",        "PAGEMAP",        0x56084025, "pagemap_pb2.pagemap_entry", head="pagemap_pb2.pagemap_head"),
    _kind("shmem-pagemap", "pagemap-shmem-%lu.img",  "PAGEMAP",        0x56084025, "pagemap_pb2.pagemap_entry", head="pagemap_pb2.pagemap_head"),
    _kind("pages",         "pages-%u.img",           "PAGES",          RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("fs",            "fs-%u.img",              "FS",             0x51403912, "fs_pb2.fs_entry"),
    _kind("files",         "files.img",              "FILES",          0x56303138, "fdinfo_pb2.file_entry"),
    _kind("fdinfo",        "fdinfo-%u.img",          "FDINFO",         0x56213732, "fdinfo_pb2.fdinfo_entry"),
    _kind("tty-info",      "tty-info.img",           "TTY_INFO",       0x59453036, "tty_pb2.tty_info_entry"),
    _kind("tty-data",      "tty-data.img",           "TTY_DATA",       0x59413026, "tty_pb2.tty_data_entry"),
    _kind("ghost-file",    "ghost-file-%x.img",      "GHOST_FILE",     0x52583605, "ghost_file_pb2.ghost_chunk_entry", head="ghost_file_pb2.ghost_file_entry", tail=_ghost_tail),
    _kind("remap-fpath",   "remap-fpath.img",        "REMAP_FPATH",    0x59133954, "remap_file_path_pb2.remap_file_path_entry"),
    _kind("pipes-data",    "pipes-data.img",         "PIPES_DATA",     0x56453709, "pipe_data_pb2.pipe_data_entry", tail=_pipe_tail),
    _kind("fifo-data",     "fifo-data.img",          "FIFO_DATA",      0x59333054, "pipe_data_pb2.pipe_data_entry", tail=_pipe_tail),
    _kind("unixsk",        "unixsk.img",             "UNIXSK",         0x54373943, "sk_unix_pb2.unix_sk_entry"),
    _kind("inetsk",        "inetsk.img",             "INETSK",         0x56443851, "sk_inet_pb2.inet_sk_entry"),
    _kind("sk-queues",     "sk-queues.img",          "SK_QUEUES",      0x56264026, "sk_packet_pb2.sk_packet_entry", tail=_sk_queue_tail),
    _kind("tcp-stream",    "tcp-stream-%x.img",      "TCP_STREAM",     0x51465506, "tcp_stream_pb2.tcp_stream_entry", tail=_tcp_tail),
    _kind("memfd",         "memfd.img",              "MEMFD_INODE",    0x48453499, "memfd_pb2.memfd_inode_entry"),
    _kind("eventpoll-tfd", "eventpoll-tfd.img",      "EVENTPOLL_TFD",  0x44433746, "eventpoll_pb2.eventpoll_tfd_entry"),
    _kind("inotify-wd",    "inotify-wd.img",         "INOTIFY_WD",     0x54562009, "fsnotify_pb2.inotify_wd_entry"),
    _kind("fanotify-mark", "fanotify-mark.img",      "FANOTIFY_MARK",  0x56506035, "fsnotify_pb2.fanotify_mark_entry"),
    _kind("filelocks",     "filelocks.img",          "FILE_LOCKS",     0x54323616, "file_lock_pb2.file_lock_entry"),
    _kind("seccomp",       "seccomp.img",            "SECCOMP",        0x64413049, "seccomp_pb2.seccomp_entry"),
    _kind("cgroup",        "cgroup.img",             "CGROUP",         0x59383330, "cgroup_pb2.cgroup_entry"),
    _kind("utsns",         "utsns-%u.img",           "UTSNS",          0x54473203, "utsns_pb2.utsns_entry"),
    _kind("ipcns-var",     "ipcns-var-%u.img",       "IPC_VAR",        0x53115007, "ipc_var_pb2.ipc_var_entry"),
    _kind("ipcns-shm",     "ipcns-shm-%u.img",       "IPCNS_SHM",      0x46283044, "ipc_shm_pb2.ipc_shm_entry"),
    _kind("ipcns-sem",     "ipcns-sem-%u.img",       "IPCNS_SEM",      0x59573019, "ipc_sem_pb2.ipc_sem_entry", tail=_sem_tail),
    _kind("ipcns-msg",     "ipcns-msg-%u.img",       "IPCNS_MSG",      0x55453737, "ipc_msg_pb2.ipc_msg_entry", tail=_msg_tail, pick=_msg_pick),
    # procsnap's own (CRIU saves no POSIX message queues)
    _kind("ipcns-mq",      "ipcns-mq-%u.img",        "IPCNS_MQ",       0x50534D51, "ipc_mqueue_pb2.ipc_mqueue_entry", tail=_mq_tail, pick=_mq_pick),
    _kind("pidns",         "pidns-%u.img",           "PIDNS",          0x61157326, "pidns_pb2.pidns_entry"),
    _kind("userns",        "userns-%u.img",          "USERNS",         0x55474906, "userns_pb2.userns_entry"),
    _kind("timens",        "timens-%u.img",          "TIMENS",         0x43114433, "timens_pb2.timens_entry"),
    _kind("mountpoints",   "mountpoints-%u.img",     "MNTS",           0x55563928, "mnt_pb2.mnt_entry"),
    # CRIU appends ".img" to every FD_ENTRY name, this one too
    _kind("tmpfs-dev",     "tmpfs-dev-%u.tar.gz.img", "TMPFS_DEV",      RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("netdev",        "netdev-%u.img",          "NETDEV",         0x57373951, "netdev_pb2.net_device_entry"),
    _kind("netns",         "netns-%u.img",           "NETNS",          0x55933752, "netdev_pb2.netns_entry"),
    # iproute2's "ip ... save" output (its own magic, then rtnetlink messages)
    _kind("ifaddr",        "ifaddr-%u.img",          "IFADDR",         RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("route",         "route-%u.img",           "ROUTE",          RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("route6",        "route6-%u.img",          "ROUTE6",         RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("rule",          "rule-%u.img",            "RULE",           RAW_IMAGE_MAGIC, None, header="raw"),
    # procsnap's: the v6 rules (criu's rule image holds "ip rule save", v4 only)
    _kind("rule6",         "rule6-%u.img",           "RULE6",          RAW_IMAGE_MAGIC, None, header="raw"),
    # iptables-save / ip6tables-save text, and nft's "list ruleset" text
    _kind("iptables",      "iptables-%u.img",        "IPTABLES",       RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("ip6tables",     "ip6tables-%u.img",       "IP6TABLES",      RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("nftables",      "nftables-%u.img",        "NFTABLES",       RAW_IMAGE_MAGIC, None, header="raw"),
    _kind("stats",         "stats-dump",             "STATS",          0x57093306, "stats_pb2.stats_entry", header="service"),
    _kind("stats-restore", "stats-restore",          "STATS",          0x57093306, "stats_pb2.stats_entry", header="service"),
    _kind("irmap-cache",   "irmap-cache",            "IRMAP_CACHE",    0x57004059, "fh_pb2.irmap_cache_entry", header="service"),
    # Images CRIU 4.x still reads but no longer writes: the same data now
    # lives inside files.img, core-N.img or mm-N.img.
    _kind("reg-files",     "reg-files.img",          "REG_FILES",      0x50363636, "regfile_pb2.reg_file_entry"),
    _kind("pipes",         "pipes.img",              "PIPES",          0x56513555, "pipe_pb2.pipe_entry"),
    _kind("fifo",          "fifo.img",               "FIFO",           0x58364939, "fifo_pb2.fifo_entry"),
    _kind("tty-files",     "tty.img",                "TTY_FILES",      0x59433025, "tty_pb2.tty_file_entry"),
    _kind("eventfd",       "eventfd.img",            "EVENTFD_FILE",   0x44523722, "eventfd_pb2.eventfd_file_entry"),
    _kind("eventpoll",     "eventpoll.img",          "EVENTPOLL_FILE", 0x45023858, "eventpoll_pb2.eventpoll_file_entry"),
    _kind("signalfd",      "signalfd.img",           "SIGNALFD",       0x57323820, "signalfd_pb2.signalfd_entry"),
    _kind("timerfd",       "timerfd.img",            "TIMERFD",        0x50493712, "timerfd_pb2.timerfd_entry"),
    _kind("inotify",       "inotify.img",            "INOTIFY_FILE",   0x48424431, "fsnotify_pb2.inotify_file_entry"),
    _kind("fanotify",      "fanotify.img",           "FANOTIFY_FILE",  0x55096122, "fsnotify_pb2.fanotify_file_entry"),
    _kind("ns-files",      "ns-files.img",           "NS_FILES",       0x61394011, "ns_pb2.ns_file_entry"),
    _kind("ext-files",     "ext-files.img",          "EXT_FILES",      0x59255641, "ext_file_pb2.ext_file_entry"),
    _kind("packetsk",      "packetsk.img",           "PACKETSK",       0x60454618, "packet_sock_pb2.packet_sock_entry"),
    _kind("netlinksk",     "netlinksk.img",          "NETLINK_SK",     0x58005614, "sk_netlink_pb2.netlink_sk_entry"),
    _kind("tunfile",       "tunfile.img",            "TUNFILE",        0x57143751, "tun_pb2.tunfile_entry"),
    _kind("vmas",          "vmas-%u.img",            "VMAS",           0x54123737, "vma_pb2.vma_entry"),
    _kind("creds",         "creds-%u.img",           "CREDS",          0x54023547, "creds_pb2.creds_entry"),
    _kind("sigacts",       "sigacts-%u.img",         "SIGACT",         0x55344201, "sa_pb2.sa_entry"),
    _kind("itimers",       "itimers-%u.img",         "ITIMERS",        0x57464056, "timer_pb2.itimer_entry"),
    _kind("posix-timers",  "posix-timers-%u.img",    "POSIX_TIMERS",   0x52603957, "timer_pb2.posix_timer_entry"),
    _kind("rlimit",        "rlimit-%u.img",          "RLIMIT",         0x57113925, "rlimit_pb2.rlimit_entry"),
    _kind("signal-s",      "signal-s-%u.img",        "SIGNAL",         0x59255647, "siginfo_pb2.signal_queue_entry"),
    _kind("signal-p",      "signal-p-%u.img",        "SIGNAL",         0x59255647, "siginfo_pb2.signal_queue_entry"),
)
# fmt: on

BY_NAME: dict[str, ImageKind] = {k.name: k for k in KINDS}

# Several kinds share a magic (pagemap and shmem pagemap, stats-dump and
# stats-restore, signal-s and signal-p); the first one listed stands for
# the magic.  Raw images have no magic and are not in this map.
BY_MAGIC: dict[int, ImageKind] = {}
for _k in KINDS:
    if _k.header != "raw":
        BY_MAGIC.setdefault(_k.magic, _k)
del _k

if len(BY_NAME) != len(KINDS):
    raise RuntimeError("procsnap.images.magic: duplicate image kind name")


def kind(name: str) -> ImageKind:
    """The kind called name; ValueError for a name not in the table."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown image kind {name!r}") from None


def kind_by_magic(magic: int) -> ImageKind | None:
    return BY_MAGIC.get(magic)


def kind_by_file_name(filename: str) -> ImageKind | None:
    """The kind whose CRIU file name pattern filename matches, if any."""
    for k in KINDS:
        if k.match_name(filename) is not False:
            return k
    return None
