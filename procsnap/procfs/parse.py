"""Pure parsers for the text (and bytes) the kernel prints under /proc/PID.

Nothing here touches the file system: every function takes what was read
and returns frozen records (procsnap.record), so the parsers can be tested on recorded
files and the reader stays a thin layer of I/O and errno handling.

Every parser takes a ``path`` argument that is used only in the
``ParseError`` it raises on malformed input; callers pass the real path so
the message says which file of which process was bad.

Field names follow the kernel (proc(5), fs/proc/array.c, fs/proc/task_mmu.c)
where it has names, so the code reads against the documentation.

Text is expected to be decoded with ``errors="surrogateescape"`` (as
``os.fsdecode`` does): paths are bytes to the kernel and may not be UTF-8,
and surrogate escapes let them round-trip back to ``os`` calls unchanged.
"""
from __future__ import annotations

from ..lazyre import LazyPattern
from ..record import record

from procsnap.errors import ParseError

__all__ = [
    "PROT_NONE", "PROT_READ", "PROT_WRITE", "PROT_EXEC", "RLIM_INFINITY",
    "LIMIT_RESOURCES",
    "MapEntry", "Stat", "Status", "FdInfo", "MountInfo", "PosixTimer",
    "parse_maps", "parse_stat", "parse_status", "parse_fdinfo",
    "fdinfo_records", "parse_mountinfo", "parse_limits", "parse_auxv",
    "parse_timers", "unescape_octal", "parse_smaps",
]

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

# /proc/PID/limits prints RLIM_INFINITY as "unlimited"; the value is the
# kernel's (unsigned long)~0, not Python's resource.RLIM_INFINITY (-1).
RLIM_INFINITY = 2**64 - 1

# Row titles of /proc/PID/limits (fs/proc/base.c lnames[]) → RLIMIT_*
# numbers of asm-generic/resource.h.  Literal because the resource module
# lacks RLIMIT_LOCKS; they are kernel ABI and the rows come in this order.
LIMIT_RESOURCES: dict[str, int] = {
    "Max cpu time": 0,  # RLIMIT_CPU
    "Max file size": 1,  # RLIMIT_FSIZE
    "Max data size": 2,  # RLIMIT_DATA
    "Max stack size": 3,  # RLIMIT_STACK
    "Max core file size": 4,  # RLIMIT_CORE
    "Max resident set": 5,  # RLIMIT_RSS
    "Max processes": 6,  # RLIMIT_NPROC
    "Max open files": 7,  # RLIMIT_NOFILE
    "Max locked memory": 8,  # RLIMIT_MEMLOCK
    "Max address space": 9,  # RLIMIT_AS
    "Max file locks": 10,  # RLIMIT_LOCKS
    "Max pending signals": 11,  # RLIMIT_SIGPENDING
    "Max msgqueue size": 12,  # RLIMIT_MSGQUEUE
    "Max nice priority": 13,  # RLIMIT_NICE
    "Max realtime priority": 14,  # RLIMIT_RTPRIO
    "Max realtime timeout": 15,  # RLIMIT_RTTIME
}


def _lines(text: str) -> list[str]:
    """Split on newlines only.

    ``str.splitlines`` also splits on \\v, \\f, \\x1c..\\x1e, \\x85 and
    U+2028, all of which are legal in file names the kernel prints raw
    (maps only escapes '\\n'), so it would cut a path in two.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


_OCTAL_ESCAPE = LazyPattern(r"\\([0-7]{3})")


def unescape_octal(s: str) -> str:
    """Decode the kernel's ``\\ooo`` escapes (mangle() in fs/proc_namespace.c).

    mountinfo escapes space, tab, newline and backslash this way; the
    decoded characters are all ASCII, so a plain ``chr`` is right.
    """
    if "\\" not in s:
        return s
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), s)


# --------------------------------------------------------------------------
# /proc/PID/maps
# --------------------------------------------------------------------------

@record(frozen=True, slots=True)
class MapEntry:
    """One line of /proc/PID/maps (show_map_vma() in fs/proc/task_mmu.c).

    ``path`` is the name exactly as printed: "" for anonymous memory,
    "[heap]", "[stack]", "[vdso]", "[anon:NAME]", "/memfd:NAME (deleted)",
    or a file path.  A " (deleted)" suffix is kept because it cannot be told
    apart from a file really named "x (deleted)" here: the caller decides
    by looking at the file (see criu/files-reg.c check_path_remap).  The
    kernel escapes only '\\n' (as "\\012") in this path, and not backslash,
    so the escape cannot be reversed reliably and is left in place.
    """

    start: int
    end: int
    perms: str
    prot: int
    shared: bool
    pgoff: int
    dev_major: int
    dev_minor: int
    ino: int
    path: str
    # Only from /proc/PID/smaps (parse_smaps): the two-letter VmFlags
    # mnemonics (show_smap_vma_flags()) and the x86 protection key.
    vmflags: tuple[str, ...] = ()
    pkey: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start


# The fixed part of a maps line: "start-end perms pgoff major:minor ino ".
_MAPS_HEAD = LazyPattern(
    r"([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) "
    r"([0-9a-f]+):([0-9a-f]+) ([0-9]+)(?: |$)"
)


def parse_maps(text: str, path: str = "/proc/PID/maps") -> list[MapEntry]:
    """Parse /proc/PID/maps into one ``MapEntry`` per VMA, in address order."""
    entries: list[MapEntry] = []
    head = _MAPS_HEAD.compiled.match
    for lineno, line in enumerate(_lines(text), 1):
        m = head(line)
        if m is None:
            raise ParseError(path, f"line {lineno}: not a maps line: {line!r}")
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        if end < start:
            raise ParseError(path, f"line {lineno}: end before start: {line!r}")
        perms = m.group(3)
        prot = ((PROT_READ if perms[0] == "r" else 0)
                | (PROT_WRITE if perms[1] == "w" else 0)
                | (PROT_EXEC if perms[2] == "x" else 0))
        # The name is padded to a column with spaces.  Kernel-made names
        # start with '/', '[' or "anon_inode:", never with a space, so
        # stripping leading spaces only removes padding; trailing spaces
        # belong to the name and are kept.
        name = line[m.end():].lstrip(" ")
        entries.append(MapEntry(
            start=start, end=end, perms=perms, prot=prot,
            shared=perms[3] == "s", pgoff=int(m.group(4), 16),
            dev_major=int(m.group(5), 16), dev_minor=int(m.group(6), 16),
            ino=int(m.group(7)), path=name,
        ))
    return entries


def maps_ranges(text: str, path: str = "/proc/PID/maps") -> list[tuple[int, int]]:
    """Only the (start, end) of each VMA of /proc/PID/maps, in address
    order: what a caller looking for a free range needs, for a tenth of
    parse_maps' cost (a puppet, a copy of the restorer's interpreter, has
    some 160 VMAs: 3 ms of every restore through parse_maps)."""
    out: list[tuple[int, int]] = []
    for lineno, line in enumerate(_lines(text), 1):
        a, dash, rest = line.partition("-")
        b = rest.partition(" ")[0]
        try:
            start, end = int(a, 16), int(b, 16)
        except ValueError:
            start = end = -1
        if not dash or end < start or start < 0:
            raise ParseError(path, f"line {lineno}: not a maps line: {line!r}")
        out.append((start, end))
    return out


def parse_maps_named(text: str, names: tuple[str, ...],
                     path: str = "/proc/PID/maps") -> list[MapEntry]:
    """parse_maps of the lines whose name is one of ``names`` (the kernel's
    special mappings, say): the others are not parsed at all, and those
    are split by hand (parse_maps' pattern costs more to compile, at its
    first use in a process, than this whole function)."""
    out: list[MapEntry] = []
    for line in _lines(text):
        if not line.endswith(names):
            continue
        parts = line.split(None, 5)
        if len(parts) != 6 or parts[5] not in names or len(parts[1]) != 4:
            out += parse_maps(line, path)   # says what is wrong, or a file so named
            continue
        rng, perms, off, dev, ino, name = parts
        a, _, b = rng.partition("-")
        major, _, minor = dev.partition(":")
        try:
            start, end = int(a, 16), int(b, 16)
            nums = (int(off, 16), int(major, 16), int(minor, 16), int(ino))
        except ValueError:
            start = end = -1
        if end < start or start < 0:
            out += parse_maps(line, path)
            continue
        prot = ((PROT_READ if perms[0] == "r" else 0) | (PROT_WRITE if perms[1] == "w" else 0)
                | (PROT_EXEC if perms[2] == "x" else 0))
        out.append(MapEntry(start=start, end=end, perms=perms, prot=prot,
                            shared=perms[3] == "s", pgoff=nums[0], dev_major=nums[1],
                            dev_minor=nums[2], ino=nums[3], path=name))
    return [m for m in out if m.path in names]


# --------------------------------------------------------------------------
# /proc/PID/stat
# --------------------------------------------------------------------------

@record(frozen=True, slots=True)
class Stat:
    """/proc/PID/stat, fields 1..52 of proc(5), with proc(5)'s names.

    Fields 45..52 (start_data..exit_code, Linux 3.3/3.5) read as 0 when the
    kernel does not print them, and the kernel itself prints 0 for the
    address fields when the reader may not ptrace the process.
    """

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    tty_nr: int
    tpgid: int
    flags: int
    minflt: int
    cminflt: int
    majflt: int
    cmajflt: int
    utime: int
    stime: int
    cutime: int
    cstime: int
    priority: int
    nice: int
    num_threads: int
    itrealvalue: int
    starttime: int
    vsize: int
    rss: int
    rsslim: int
    startcode: int
    endcode: int
    startstack: int
    kstkesp: int
    kstkeip: int
    signal: int
    blocked: int
    sigignore: int
    sigcatch: int
    wchan: int
    nswap: int
    cnswap: int
    exit_signal: int
    processor: int
    rt_priority: int
    policy: int
    delayacct_blkio_ticks: int
    guest_time: int
    cguest_time: int
    start_data: int = 0
    end_data: int = 0
    start_brk: int = 0
    arg_start: int = 0
    arg_end: int = 0
    env_start: int = 0
    env_end: int = 0
    exit_code: int = 0


# Numeric fields after "state", in file order (fields 4..52).
_STAT_NUMERIC = [
    "ppid", "pgrp", "session", "tty_nr", "tpgid", "flags", "minflt",
    "cminflt", "majflt", "cmajflt", "utime", "stime", "cutime", "cstime",
    "priority", "nice", "num_threads", "itrealvalue", "starttime", "vsize",
    "rss", "rsslim", "startcode", "endcode", "startstack", "kstkesp",
    "kstkeip", "signal", "blocked", "sigignore", "sigcatch", "wchan",
    "nswap", "cnswap", "exit_signal", "processor", "rt_priority", "policy",
    "delayacct_blkio_ticks", "guest_time", "cguest_time",
    "start_data", "end_data", "start_brk", "arg_start", "arg_end",
    "env_start", "env_end", "exit_code",
]
# Everything up to cguest_time (Linux 2.6.24) must be there; a shorter
# line is a broken read, not an old kernel we support.
_STAT_REQUIRED = _STAT_NUMERIC.index("cguest_time") + 1


def parse_stat(text: str, path: str = "/proc/PID/stat") -> Stat:
    """Parse /proc/PID/stat.

    comm is printed raw between parentheses and may itself contain spaces,
    parentheses and even a newline (prctl(PR_SET_NAME) allows all of them),
    so it runs from the first '(' to the *last* ')'.
    """
    text = text.rstrip("\n")
    lpar = text.find(" (")
    rpar = text.rfind(")")
    if lpar < 0 or rpar < lpar:
        raise ParseError(path, f"no '(comm)' in {text[:80]!r}")
    rest = text[rpar + 1:].split()
    if len(rest) < 1 + _STAT_REQUIRED:
        raise ParseError(
            path, f"{len(rest) + 2} fields, need at least {_STAT_REQUIRED + 3}")
    try:
        pid = int(text[:lpar])
        numbers = [int(v) for v in rest[1:1 + len(_STAT_NUMERIC)]]
    except ValueError as err:
        raise ParseError(path, f"bad number: {err}") from None
    state = rest[0]
    if len(state) != 1:
        raise ParseError(path, f"bad state {state!r}")
    # Shorter on old kernels: the missing trailing fields keep their 0.
    # (Positional: a record's keyword arguments cost twice as much, and
    # the dump and the restore check parse one stat a thread.)
    return Stat(pid, text[lpar + 2:rpar], state, *numbers)


# --------------------------------------------------------------------------
# /proc/PID/status
# --------------------------------------------------------------------------

@record(frozen=True, slots=True)
class Status:
    """/proc/PID/status (proc_pid_status() in fs/proc/array.c).

    Fields the kernel may not print are None (umask before 4.7, cap_amb
    before 4.3, no_new_privs before 4.10, seccomp without CONFIG_SECCOMP).
    ``raw`` holds every line, value as printed, for the fields not lifted.
    """

    name: str
    umask: int | None
    state: str
    tgid: int
    pid: int
    ppid: int
    tracer_pid: int
    uids: tuple[int, int, int, int]
    gids: tuple[int, int, int, int]
    groups: list[int]
    nstgid: list[int]
    nspid: list[int]
    nspgid: list[int]
    nssid: list[int]
    threads: int
    sig_q: tuple[int, int]
    sig_pnd: int
    shd_pnd: int
    sig_blk: int
    sig_ign: int
    sig_cgt: int
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int | None
    no_new_privs: int | None
    seccomp: int | None
    raw: dict[str, str]


_NAME_ESCAPE = LazyPattern(r"\\(.)")


def _unescape_name(s: str) -> str:
    # Name is printed with '\n' as "\n" and '\' as "\\" (proc_task_name()
    # escapes only those two); nothing else is escaped.
    if "\\" not in s:
        return s
    return _NAME_ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), s)


def parse_status(text: str, path: str = "/proc/PID/status") -> Status:
    """Parse /proc/PID/status."""
    raw: dict[str, str] = {}
    for lineno, line in enumerate(_lines(text), 1):
        key, sep, value = line.partition(":")
        if not sep:
            raise ParseError(path, f"line {lineno}: no ':' in {line!r}")
        # One tab follows the colon; the rest (even trailing spaces of a
        # task name) is the value.
        raw[key] = value[1:] if value.startswith("\t") else value.strip()

    def field(key: str) -> str:
        try:
            return raw[key]
        except KeyError:
            raise ParseError(path, f"no {key!r} line") from None

    def ints(key: str, base: int = 10) -> list[int]:
        if key not in raw:
            return []
        try:
            return [int(v, base) for v in raw[key].split()]
        except ValueError:
            raise ParseError(path, f"bad {key!r} value {raw[key]!r}") from None

    def one(key: str, base: int = 10) -> int:
        field(key)  # raise if the line is missing
        values = ints(key, base)
        if len(values) != 1:
            raise ParseError(path, f"bad {key!r} value {raw[key]!r}")
        return values[0]

    def optional(key: str, base: int = 10) -> int | None:
        return one(key, base) if key in raw else None

    def quad(key: str) -> tuple[int, int, int, int]:
        field(key)
        values = ints(key)
        if len(values) != 4:
            raise ParseError(path, f"bad {key!r} value {raw[key]!r}")
        return (values[0], values[1], values[2], values[3])

    sig_q = field("SigQ").split("/")
    if len(sig_q) != 2 or not all(v.isdigit() for v in sig_q):
        raise ParseError(path, f"bad 'SigQ' value {raw['SigQ']!r}")
    state = field("State").split(" ", 1)[0]
    if len(state) != 1:
        raise ParseError(path, f"bad 'State' value {raw['State']!r}")
    return Status(
        name=_unescape_name(field("Name")),
        umask=optional("Umask", 8),
        state=state,
        tgid=one("Tgid"),
        pid=one("Pid"),
        ppid=one("PPid"),
        tracer_pid=one("TracerPid"),
        uids=quad("Uid"),
        gids=quad("Gid"),
        groups=ints("Groups"),
        nstgid=ints("NStgid"),
        nspid=ints("NSpid"),
        nspgid=ints("NSpgid"),
        nssid=ints("NSsid"),
        threads=one("Threads"),
        sig_q=(int(sig_q[0]), int(sig_q[1])),
        sig_pnd=one("SigPnd", 16),
        shd_pnd=one("ShdPnd", 16),
        sig_blk=one("SigBlk", 16),
        sig_ign=one("SigIgn", 16),
        sig_cgt=one("SigCgt", 16),
        cap_inh=one("CapInh", 16),
        cap_prm=one("CapPrm", 16),
        cap_eff=one("CapEff", 16),
        cap_bnd=one("CapBnd", 16),
        cap_amb=optional("CapAmb", 16),
        no_new_privs=optional("NoNewPrivs"),
        seccomp=optional("Seccomp"),
        raw=raw,
    )


# --------------------------------------------------------------------------
# /proc/PID/fdinfo/FD
# --------------------------------------------------------------------------

@record(frozen=True, slots=True)
class FdInfo:
    """/proc/PID/fdinfo/FD.

    ``flags`` is printed in octal and holds the open(2) flags including
    O_CLOEXEC.  ``mnt_id`` (3.15) and ``ino`` (5.14) are None when absent.
    ``extra`` maps each other key to its first value; kinds that repeat a
    key (epoll "tfd:", inotify, fanotify, file locks) must be read from
    ``lines``, e.g. with ``fdinfo_records``.
    """

    pos: int
    flags: int
    mnt_id: int | None
    ino: int | None
    extra: dict[str, str]
    lines: list[str]


def parse_fdinfo(text: str, path: str = "/proc/PID/fdinfo/FD") -> FdInfo:
    """Parse /proc/PID/fdinfo/FD."""
    lines = _lines(text)
    known: dict[str, str] = {}
    extra: dict[str, str] = {}
    for lineno, line in enumerate(lines, 1):
        key, sep, value = line.partition(":")
        if not sep:
            raise ParseError(path, f"line {lineno}: no ':' in {line!r}")
        value = value.strip()
        if key in ("pos", "flags", "mnt_id", "ino") and key not in known:
            known[key] = value
        else:
            extra.setdefault(key, value)
    try:
        pos = int(known["pos"])
        flags = int(known["flags"], 8)
        mnt_id = int(known["mnt_id"]) if "mnt_id" in known else None
        ino = int(known["ino"]) if "ino" in known else None
    except KeyError as err:
        raise ParseError(path, f"no {err.args[0]!r} line") from None
    except ValueError as err:
        raise ParseError(path, f"bad number: {err}") from None
    return FdInfo(pos, flags, mnt_id, ino, extra, lines)


_RECORD_PAIR = LazyPattern(r"([\w-]+):\s*(\S+)")


def fdinfo_records(info: FdInfo, key: str) -> list[dict[str, str]]:
    """The ``name:value`` pairs of every fdinfo line starting with ``key``.

    For example ``fdinfo_records(info, "tfd")`` on an epoll fd gives one
    dict per watched fd with keys tfd, events, data, pos, ino, sdev, and
    ``fdinfo_records(info, "inotify")`` one per watch (wd, ino, sdev, mask,
    ...).  Values stay strings: the kernel prints them in mixed bases
    (epoll "events" and inotify "ino" are hex, "tfd" and "pos" decimal).
    """
    prefix_colon, prefix_space = key + ":", key + " "
    return [
        dict(_RECORD_PAIR.findall(line))
        for line in info.lines
        if line.startswith(prefix_colon) or line.startswith(prefix_space)
    ]


# --------------------------------------------------------------------------
# /proc/PID/mountinfo
# --------------------------------------------------------------------------

@record(frozen=True, slots=True)
class MountInfo:
    """One line of /proc/PID/mountinfo (show_mountinfo(), proc(5)).

    root, mount_point and source have their octal escapes decoded.
    ``optional`` holds the propagation tags ("shared:1", "master:2", ...).
    """

    mnt_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    mount_options: str
    optional: list[str]
    fstype: str
    source: str
    super_options: str


def parse_mountinfo(text: str, path: str = "/proc/PID/mountinfo") -> list[MountInfo]:
    """Parse /proc/PID/mountinfo."""
    mounts: list[MountInfo] = []
    for lineno, line in enumerate(_lines(text), 1):
        # Split on single spaces: the kernel escapes spaces inside fields,
        # and an empty source prints as an empty field between two spaces.
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            sep = -1
        if sep < 0 or len(fields) < sep + 4:
            raise ParseError(path, f"line {lineno}: not a mountinfo line: {line!r}")
        major, colon, minor = fields[2].partition(":")
        try:
            mnt_id, parent_id = int(fields[0]), int(fields[1])
            dev = (int(major), int(minor)) if colon else None
        except ValueError:
            dev = None
        if dev is None:
            raise ParseError(path, f"line {lineno}: not a mountinfo line: {line!r}")
        mounts.append(MountInfo(
            mnt_id=mnt_id, parent_id=parent_id, major=dev[0], minor=dev[1],
            root=unescape_octal(fields[3]),
            mount_point=unescape_octal(fields[4]),
            mount_options=fields[5],
            optional=fields[6:sep],
            fstype=unescape_octal(fields[sep + 1]),
            source=unescape_octal(fields[sep + 2]),
            # Some file systems print super options with spaces of their own.
            super_options=" ".join(fields[sep + 3:]),
        ))
    return mounts


# --------------------------------------------------------------------------
# /proc/PID/limits
# --------------------------------------------------------------------------

_LIMIT_ROW = LazyPattern(r"(\S.*?)\s+(unlimited|[0-9]+)\s+(unlimited|[0-9]+)(?:\s+\S+)?\s*")


def parse_limits(text: str, path: str = "/proc/PID/limits") -> dict[str, tuple[int, int]]:
    """Parse /proc/PID/limits into {row title: (soft, hard)}.

    "unlimited" becomes ``RLIM_INFINITY``; ``LIMIT_RESOURCES`` maps the
    titles to RLIMIT_* numbers.
    """
    lines = _lines(text)
    if not lines or not lines[0].startswith("Limit "):
        raise ParseError(path, "no 'Limit' header line")
    limits: dict[str, tuple[int, int]] = {}

    def value(s: str) -> int:
        return RLIM_INFINITY if s == "unlimited" else int(s)

    def number(s: str) -> bool:
        return s == "unlimited" or s.isdigit()

    for lineno, line in enumerate(lines[1:], 2):
        # By hand first (the pattern's compile costs more than the whole
        # file, once per process): title, soft, hard[, units]; titles are
        # words one space apart.  Anything else is the pattern's to judge.
        words = line.split()
        k = 2 if len(words) >= 3 and number(words[-1]) and number(words[-2]) else 3
        if len(words) > k and number(words[-k]) and number(words[-k + 1]) and \
                (k == 2 or not number(words[-1])) and \
                line.startswith(title := " ".join(words[:-k])) and \
                not number(words[-k - 1]):
            limits[title] = (value(words[-k]), value(words[-k + 1]))
            continue
        m = _LIMIT_ROW.fullmatch(line)
        if m is None:
            raise ParseError(path, f"line {lineno}: not a limits row: {line!r}")
        limits[m.group(1)] = (value(m.group(2)), value(m.group(3)))
    return limits


# --------------------------------------------------------------------------
# /proc/PID/auxv
# --------------------------------------------------------------------------

AT_NULL = 0


def parse_auxv(data: bytes, path: str = "/proc/PID/auxv") -> list[int]:
    """Parse /proc/PID/auxv into a flat [type, value, ...] list.

    The list ends with the AT_NULL pair, as CRIU's mm image stores it.
    Entries are native-endian unsigned longs; procsnap targets 64-bit
    hosts, so they are read as 8-byte words.  Empty input
    (no mm: a kernel thread or zombie) gives an empty list.
    """
    if not data:
        return []
    word = 8
    if len(data) % (2 * word):
        raise ParseError(path, f"length {len(data)} is not a multiple of {2 * word}")
    words = memoryview(data).cast("Q").tolist()
    for i in range(0, len(words), 2):
        if words[i] == AT_NULL:
            return words[:i + 2]
    raise ParseError(path, "no AT_NULL entry")


# --------------------------------------------------------------------------
# /proc/PID/timers
# --------------------------------------------------------------------------

SIGEV_SIGNAL = 0
SIGEV_NONE = 1
SIGEV_THREAD = 2
SIGEV_THREAD_ID = 4
_NOTIFY_NAMES = {"signal": SIGEV_SIGNAL, "none": SIGEV_NONE, "thread": SIGEV_THREAD}


@record(frozen=True, slots=True)
class PosixTimer:
    """One POSIX timer from /proc/PID/timers (show_timer() in fs/proc/base.c).

    The file gives no expiry or interval: those come from timer_gettime()
    inside the process.  ``sigev_value`` is the raw pointer-sized value.
    """

    id: int
    signo: int
    sigev_value: int
    notify: str        # "signal", "none" or "thread"
    notify_tid: bool   # SIGEV_THREAD_ID: delivered to thread ``notify_pid``
    notify_pid: int
    clock_id: int

    @property
    def sigev_notify(self) -> int:
        """The sigevent.sigev_notify value that created this timer."""
        return _NOTIFY_NAMES[self.notify] | (SIGEV_THREAD_ID if self.notify_tid else 0)


_TIMER_BLOCK = LazyPattern(
    r"ID: (-?[0-9]+)\n"
    r"signal: ([0-9]+)/([0-9a-fA-Fx]+)\n"
    r"notify: (signal|none|thread)/(pid|tid)\.([0-9]+)\n"
    r"ClockID: (-?[0-9]+)\n"
)


def parse_timers(text: str, path: str = "/proc/PID/timers") -> list[PosixTimer]:
    """Parse /proc/PID/timers (four lines per timer)."""
    timers: list[PosixTimer] = []
    pos = 0
    if text and not text.endswith("\n"):
        text += "\n"
    while pos < len(text):
        m = _TIMER_BLOCK.match(text, pos)
        if m is None:
            line = text[pos:].split("\n", 1)[0]
            raise ParseError(path, f"bad timer entry at {line!r}")
        timers.append(PosixTimer(
            id=int(m.group(1)), signo=int(m.group(2)),
            sigev_value=int(m.group(3), 16), notify=m.group(4),
            notify_tid=m.group(5) == "tid", notify_pid=int(m.group(6)),
            clock_id=int(m.group(7)),
        ))
        pos = m.end()
    return timers


@record
class LockLine:
    """One lock as /proc/locks or an fdinfo ``lock:`` line shows it
    (fs/locks.c lock_get_status): ``kind`` POSIX, OFDLCK, FLOCK, LEASE,
    DELEG, ACCESS...; ``mode`` ADVISORY, ACTIVE, BREAKING, BREAKER...;
    ``type`` READ, WRITE or UNLCK; ``end`` None for EOF."""

    kind: str
    mode: str
    type: str
    pid: int
    dev: str
    ino: int
    start: int
    end: int | None


_LOCK_LINE = LazyPattern(
    r"^(?:lock:\s*)?\d+:\s+(?:->\s+)?(\S+)\s+(\S+)\s+(READ|WRITE|UNLCK)\s+(-?\d+)\s+"
    r"(\S+):(\d+)\s+(\d+)\s+(\d+|EOF)\s*$")


def parse_lock_line(line: str, path: str = "/proc/PID/fdinfo/FD") -> LockLine:
    """Parse one ``lock:`` line of fdinfo (or one line of /proc/locks)."""
    m = _LOCK_LINE.match(line.strip())
    if m is None:
        raise ParseError(path, f"lock line not understood: {line!r}")
    kind, mode, typ, pid, dev, ino, start, end = m.groups()
    return LockLine(kind, mode, typ, int(pid), dev, int(ino), int(start),
                    None if end == "EOF" else int(end))
# --------------------------------------------------------------------------
# /proc/PID/smaps
# --------------------------------------------------------------------------

_HEX1 = frozenset("0123456789abcdef")


def parse_smaps(text: str, path: str = "/proc/PID/smaps") -> list[MapEntry]:
    """Parse /proc/PID/smaps: the maps line of each VMA with its ``VmFlags``
    and ``ProtectionKey`` (every other key is a statistic and is skipped).

    A header line is recognised by its fixed part (start-end perms ...);
    a key line ("Rss:   4 kB") can never match it.  A VMA without a
    VmFlags line (kernels before 3.8) gets an empty tuple.
    """
    entries: list[MapEntry] = []
    head: list[str] = []
    flags: dict[int, tuple[str, ...]] = {}
    pkeys: dict[int, int] = {}
    match = _MAPS_HEAD.compiled.match
    for lineno, line in enumerate(_lines(text), 1):
        # (a key line starts with a capital: only a hex digit can begin a
        # header, so the regex is not tried on the ~20 key lines of a VMA)
        if line[:1] in _HEX1 and match(line):
            head.append(line)
            continue
        key, sep, value = line.partition(":")
        if not sep or not head:
            raise ParseError(path, f"line {lineno}: not a smaps line: {line!r}")
        if key == "VmFlags":
            flags[len(head) - 1] = tuple(value.split())
        elif key == "ProtectionKey":
            try:
                pkeys[len(head) - 1] = int(value)
            except ValueError:
                raise ParseError(path, f"line {lineno}: bad ProtectionKey: {line!r}") from None
    for i, m in enumerate(parse_maps("\n".join(head), path)):
        entries.append(MapEntry(
            start=m.start, end=m.end, perms=m.perms, prot=m.prot, shared=m.shared,
            pgoff=m.pgoff, dev_major=m.dev_major, dev_minor=m.dev_minor, ino=m.ino,
            path=m.path, vmflags=flags.get(i, ()), pkey=pkeys.get(i, 0)))
    return entries
