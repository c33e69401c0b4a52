"""criu's command line: its option table, read the way criu reads it.

criu parses with getopt_long (short options "dSsRt:hD:o:v::x::Vr:jJ:lW:L:M:",
long options with "--name value", "--name=value", a unique prefix of a
name, and "--no-NAME" for its boolean options; the command may stand
anywhere among them) over, in order: /etc/criu/default.conf,
$HOME/.criu/default.conf (both skipped with --no-default-config or
--config), $CRIU_CONFIG_FILE, the --config FILE, then argv.  A config file
holds one option a line, without the dashes ("tcp-established",
"ghost-limit 10M"), # starting a comment.

Every option of criu is in TABLE with what procsnap does with it:
- MAP: done as criu does it (the runner maps it onto procsnap's API);
- ACCEPT: accepted because it is procsnap's behaviour already (the note says
  how; --help prints it);
- REFUSE: "criu: option --NAME is not supported by procsnap: WHY", exit 1,
  before anything is frozen or created.
Nothing is ignored silently.
"""
from __future__ import annotations

import os
import shlex
from ..record import field, record
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from .basics import CRIU_VERSION, GLOBAL_CONFIG, USER_CONFIG  # noqa: F401 (re-exported)

MAP, ACCEPT, REFUSE = "map", "accept", "refuse"
NONE, REQ, OPT = 0, 1, 2          # no argument, required, optional (only as -xARG / --x=ARG)

COMMANDS = ("dump", "pre-dump", "restore", "check", "page-server")
# criu lazy-pages -D DIR [--page-server --address A --port P]: procsnap.lazypages
DAEMONS = ("lazy-pages",)
LATER_COMMANDS = ("dedup",
                  "cpuinfo", "exec", "show")


class UsageError(Exception):
    """A bad command line: one line, exit 1, nothing done."""


@record(frozen=True)
class Opt:
    name: str                # long name, without dashes
    short: str = ""          # one letter, or ""
    arg: int = NONE
    how: str = MAP
    note: str = ""           # ACCEPT: how procsnap already does it; REFUSE: why not
    boolean: bool = False    # criu's BOOL_OPT: --no-NAME exists too
    metavar: str = ""
    help: str = ""
    multi: bool = False      # may be given several times (values are listed)


_MNT = "mount namespaces are not restored by this command line yet"
_NOT_YET = "not implemented by procsnap"

TABLE: list[Opt] = [
    # what to dump, where, how to talk
    Opt("tree", "t", REQ, metavar="PID", help="dump the tree rooted at PID"),
    Opt("images-dir", "D", REQ, metavar="DIR", help="images directory"),
    Opt("work-dir", "W", REQ, metavar="DIR",
        help="directory for the log and relative --pidfile (default: the images directory)"),
    Opt("log-file", "o", REQ, metavar="FILE", help="log file, relative to the work directory"),
    Opt("verbosity", "v", OPT, metavar="N",
        help="log level: 0 none, 1 errors, 2 warnings (default), 3 info, 4 debug; -v adds one"),
    Opt("log-pid", boolean=True, help="prefix each log line with procsnap's pid"),
    Opt("pidfile", arg=REQ, metavar="FILE",
        help="restore: write the root's pid here (relative: to the work directory)"),
    Opt("config", arg=REQ, metavar="FILE",
        help="read options from FILE (and not the default config files)"),
    Opt("no-default-config", help="do not read /etc/criu/default.conf nor ~/.criu/default.conf"),
    Opt("action-script", arg=REQ, multi=True, metavar="FILE",
        help="run FILE at each stage, with CRTOOLS_SCRIPT_ACTION set to the stage"),
    Opt("status-fd", arg=REQ, metavar="FD",
        help="write a zero byte to FD when the restore (or dump) is done"),
    Opt("display-stats", boolean=True, help="print the dump/restore statistics"),
    Opt("sync", boolean=True,
        help="dump: procsnap's own, criu has no such option: wait until the images are "
             "on disk before the tree is killed (without it, as criu, they are complete "
             "in the page cache); with --leave-running the tree runs again first"),
    Opt("help", "h", help="this text"),
    Opt("version", "V", help="print criu's version line"),
    # what happens to the tree
    Opt("leave-running", "R", help="dump: let the tree run on after the dump"),
    Opt("restore-detached", "d", boolean=True,
        help="restore: return once the tree runs (otherwise wait for it to exit)"),
    Opt("daemon", boolean=True, help="as --restore-detached"),
    Opt("shell-job", "j", boolean=True,
        help="the tree is a job of a shell: its terminal is the caller's"),
    Opt("timeout", arg=REQ, how=ACCEPT, metavar="SEC",
        note="procsnap's freeze does not wait on a timer: it interrupts every thread "
             "with PTRACE_INTERRUPT and gives up after 100 walks of a changing tree"),
    Opt("freeze-cgroup", arg=REQ, how=ACCEPT, metavar="PATH",
        note="procsnap freezes the tree with ptrace, walking it again until no task "
             "is new; the freezer cgroup is not needed and not touched"),
    Opt("leave-stopped", "s", how=REFUSE, note=_NOT_YET + " (tasks are killed or left running)"),
    Opt("restore-sibling", "S", boolean=True,
        help="restore: the root is made a child of procsnap's parent (CLONE_PARENT), "
             "not of procsnap; implies --restore-detached"),
    # files, sockets, locks
    Opt("tcp-established", boolean=True,
        help="dump live TCP connections (TCP_REPAIR, behind a network lock); "
             "on restore they are restored from the images without it"),
    Opt("tcp-close", boolean=True,
        help="dump: established TCP connections are not kept and come back closed; "
             "restore: established ones come back closed"),
    Opt("skip-in-flight", boolean=True,
        help="dump: connections waiting in a listener's accept queue are dropped "
             "(without it such a dump is refused, naming them)"),
    Opt("file-locks", "l", boolean=True,
        help="dump file locks and leases (without it a tree holding one is refused)"),
    Opt("link-remap", boolean=True,
        help="dump: hard-link unlinked files the fs has no handle for back under a new name"),
    Opt("ghost-limit", arg=REQ, metavar="SIZE",
        help="dump: largest deleted file whose contents are saved (K/M/G)"),
    Opt("force-irmap", boolean=True, how=ACCEPT,
        note="procsnap saves an inotify/fanotify watch by its file handle and reopens it "
             "through the handle; a watch it cannot reopen refuses the dump"),
    Opt("external", arg=REQ, multi=True, metavar="KEY",
        help="dump: unix[INO]: a unix socket of the tree whose peer is outside it; "
             "mnt[MOUNTPOINT]:KEY: an external mount; tty[RDEV:DEV] (hex): a terminal "
             "whose other end is outside the tree (LXC's console), saved as criu's "
             "EXT_TTY, its place taken at restore by --inherit-fd fd[N]:tty[RDEV:DEV]. "
             "restore: "
             "mnt[KEY]:PATH binds PATH for KEY; KEY:PATH as --ext-mount-map KEY:PATH "
             "(LXC's habit); other kinds of KEY are refused"),
    Opt("inherit-fd", arg=REQ, multi=True, metavar="fd[N]:KEY",
        help="restore: our fd N stands for the external resource KEY (unix[INO]; "
             "pipe:[INO], a container's stdio pipe; tty[RDEV:DEV], a terminal dumped "
             "with --external tty[RDEV:DEV]: the tree's fds and controlling terminal "
             "become this one, with the saved termios, window size and queued input)"),
    Opt("network-lock", arg=REQ, metavar="METHOD",
        help="nftables (procsnap's, the default) or iptables (the same lock: procsnap's "
             "nftables table, on the hooks iptables uses); skip is refused"),
    Opt("manage-cgroups", arg=OPT, metavar="MODE",
        help="dump: ignore saves no cgroup, any other mode every task's cgroups and the "
             "controllers' properties; restore: soft (the default, also without MODE) makes "
             "a missing cgroup with its properties, full writes them to existing ones too, "
             "strict refuses an existing one, props/none require them to exist, ignore "
             "leaves the tasks in criu's cgroups"),
    Opt("ext-unix-sk", "x", boolean=True,
        help="dump: a datagram unix socket connected to a named socket outside the tree is "
             "saved; restore: it is connected to that name again (criu's older form; "
             "--external unix[INO] with --inherit-fd hands in an fd instead)"),
    Opt("orphan-pts-master", boolean=True,
        help="dump: a pts whose master is outside the tree (runc's terminal) is saved; "
             "restore: it gets a new pty pair in the tree's devpts, the master sent to "
             "the RPC client with the orphan-pts-master notification (criu's RPC field, "
             "which runc sends for every container)"),
    Opt("evasive-devices", boolean=True, how=ACCEPT,
        note="criu's permission to reopen a device file by another path when its own is "
             "gone; procsnap reopens a device only at its dumped path and never searches "
             "for another: a missing one fails the restore, naming it"),
    Opt("skip-file-rwx-check", boolean=True, how=REFUSE, note=_NOT_YET),
    Opt("file-validation", arg=REQ, how=REFUSE, note=_NOT_YET),
    Opt("ghost-fiemap", boolean=True, how=ACCEPT,
        note="procsnap always saves a ghost file's data extents only (SEEK_DATA/SEEK_HOLE), "
             "holes included, whatever this says"),
    Opt("close", arg=REQ, how=REFUSE, note=_NOT_YET),
    # namespaces, mounts, cgroups, LSM
    Opt("root", "r", REQ, metavar="DIR",
        help="restore: the root file system a tree dumped in a mount namespace of its "
             "own is restored on"),
    Opt("ext-mount-map", "M", REQ, multi=True, metavar="KEY:VAL",
        help="dump: MOUNTPOINT:KEY names an external mount; 'auto': mounts found in "
             "procsnap's own mount tree are external, keyed by their path. restore: "
             "KEY:PATH binds PATH where the mount KEY was; 'auto': a key that is a "
             "path is bound from that path"),
    Opt("enable-external-sharing", how=ACCEPT,
        note="accepted for LXC, which always passes it; procsnap does not rebuild a peer "
             "group reaching outside the namespace: an external mount sharing one with "
             "the host refuses the dump, naming it"),
    Opt("enable-external-masters", how=ACCEPT,
        note="accepted for LXC, which always passes it; procsnap does not rebuild a master "
             "outside the namespace: an external mount that is a slave of the host's "
             "refuses the dump, naming it"),
    Opt("enable-fs", arg=REQ, multi=True, how=ACCEPT, metavar="FS[,FS]",
        note="procsnap mounts anew at restore the kinds it knows (proc, sysfs, devpts, "
             "mqueue, cgroup, tracefs, tmpfs with its files...); a mount of another kind "
             "(hugetlbfs...) that is not external refuses the dump, naming it"),
    Opt("skip-mnt", arg=REQ, how=REFUSE, note=_MNT),
    Opt("mntns-compat-mode", boolean=True, how=ACCEPT,
        note="criu's choice between its two mount engines, which build the same tree; "
             "procsnap has one (namespaces.mnt), used with or without it"),
    Opt("join-ns", "J", REQ, multi=True, metavar="net:PID|NS_FILE",
        help="restore: the tree joins that network namespace instead of a new one (its "
             "contents stay as they are; the network lock the dump set in it goes once "
             "the tree runs); other kinds are refused"),
    Opt("empty-ns", arg=REQ, metavar="net",
        help="the tree's network namespace is the caller's (runc, Podman): dump saves "
             "only its loopback; restore makes an empty one for the caller to set up at "
             "setup-namespaces, then brings the loopback back as it was (criu leaves it "
             "down); only 'net' exists"),
    Opt("veth-pair", arg=REQ, how=REFUSE, note=_NOT_YET),
    Opt("cgroup-root", arg=REQ, multi=True, metavar="[CONTROLLER:]/PATH",
        help="dump: save the cgroup directories from PATH down; restore: the tree's root "
             "cgroup (of CONTROLLER, or of every hierarchy not named) is PATH"),
    Opt("cgroup-props", arg=REQ, how=REFUSE,
        note="procsnap saves criu's built-in list of properties only"),
    Opt("cgroup-props-file", arg=REQ, how=REFUSE,
        note="procsnap saves criu's built-in list of properties only"),
    Opt("cgroup-dump-controller", arg=REQ, how=REFUSE,
        note="procsnap saves every hierarchy a task of the tree is in"),
    Opt("cgroup-yard", arg=REQ, how=REFUSE, note=_NOT_YET),
    Opt("lsm-profile", arg=REQ, how=REFUSE, note=_NOT_YET),
    Opt("lsm-mount-context", arg=REQ, how=REFUSE, note=_NOT_YET),
    Opt("unprivileged", boolean=True, how=REFUSE, note="procsnap runs as root"),
    Opt("allow-uprobes", boolean=True, how=REFUSE, note=_NOT_YET),
    Opt("weak-sysctls", boolean=True, how=REFUSE, note=_NOT_YET),
    Opt("cpu-cap", arg=OPT, how=REFUSE, note=_NOT_YET),
    Opt("deprecated", boolean=True, how=REFUSE, note=_NOT_YET),
    # memory tracking, page server, streaming
    Opt("prev-images-dir", arg=REQ, metavar="DIR",
        help="pre-dump, dump: the images of the previous pre-dump (relative: to the images "
             "directory), linked as 'parent'; pages not written since stay there"),
    Opt("track-mem", boolean=True,
        help="track the tree's writes for the next pass (userfaultfd write-protect and "
             "PAGEMAP_SCAN: this kernel has no soft-dirty bits); pre-dump always does; "
             "dump: accepted, except with --leave-running (refused: the tracker is "
             "closed by every dump)"),
    Opt("pre-dump-mode", arg=REQ, how=ACCEPT, metavar="MODE",
        note="procsnap's pre-dump copies memory the one way it has (the frozen task "
             "writes its pages to the image itself), whatever the mode"),
    Opt("auto-dedup", boolean=True, how=REFUSE,
        note="the parent images' pages are not punched out (deduplicated) after a dump"),
    Opt("page-server", boolean=True,
        help="lazy-pages: fetch the pages from that page server; dump, pre-dump: send the pagemaps and pages to the page server at "
             "--address/--port (criu page-server, procsnap's or criu's); the other "
             "images go to -D"),
    Opt("address", arg=REQ, metavar="ADDR",
        help="dump --page-server: the page server's IPv4/IPv6 address; page-server: "
             "listen on it only (criu service --address PATH: its unix socket)"),
    Opt("port", arg=REQ, metavar="PORT",
        help="dump --page-server: the page server's TCP port; page-server: listen on it"),
    Opt("ps-socket", arg=REQ, how=REFUSE,
        note="an inherited connected page server socket is not supported; use "
             "--address and --port"),
    Opt("lazy-pages", help="restore: private anonymous memory comes on demand from the "
        "lazy-pages daemon (criu lazy-pages -D DIR, started first), which pushes the rest; "
        "page-server: serve the pages of an images dir on demand"),
    Opt("stream", boolean=True, how=REFUSE, note="no image streamer yet"),
    Opt("tls", boolean=True, how=REFUSE,
        note="the page server speaks CRIU's protocol without TLS only"),
    Opt("tls-cacert", arg=REQ, how=REFUSE, note="no TLS for the page server"),
    Opt("tls-cacrl", arg=REQ, how=REFUSE, note="no TLS for the page server"),
    Opt("tls-cert", arg=REQ, how=REFUSE, note="no TLS for the page server"),
    Opt("tls-key", arg=REQ, how=REFUSE, note="no TLS for the page server"),
    Opt("tls-no-cn-verify", how=REFUSE, note="no TLS for the page server"),
    Opt("ms", how=REFUSE, note=_NOT_YET),
    Opt("libdir", "L", REQ, how=REFUSE, note="procsnap has no plugins"),
    Opt("exec-cmd", how=REFUSE, note=_NOT_YET),
    Opt("irmap-scan-path", arg=REQ, how=ACCEPT, metavar="PATH",
        note="procsnap reopens watched files by their file handle and never scans paths "
             "for an inode; a watch it cannot reopen refuses the dump"),
    # check
    Opt("feature", arg=REQ, metavar="NAME", help="check: is feature NAME there (criu's names)"),
    Opt("all", help="check: every feature"),
    Opt("extra", boolean=True, help="check: the extra features too"),
    Opt("experimental", boolean=True, help="check: the experimental features too"),
]

BY_NAME = {o.name: o for o in TABLE}
BY_SHORT = {o.short: o for o in TABLE if o.short}
_LONG_NAMES = sorted(list(BY_NAME) + [f"no-{o.name}" for o in TABLE if o.boolean])


@record
class Parsed:
    command: str | None = None
    # (option, value, negated) in the order seen; value is "" for no argument
    given: list[tuple[Opt, str, bool]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)   # positional words after the command
    log_level: int = 2
    config_files: list[str] = field(default_factory=list)

    def last(self, name: str, default: Any = None) -> Any:
        """The last value given for a valued option (config, then argv)."""
        value = default
        for o, v, neg in self.given:
            if o.name == name:
                value = v
        return value

    def flag(self, name: str) -> bool:
        """A boolean option, with --no-NAME turning it off again."""
        on = False
        for o, _, neg in self.given:
            if o.name == name:
                on = not neg
        return on

    def values(self, name: str) -> list[str]:
        return [v for o, v, _ in self.given if o.name == name]

    def has(self, name: str) -> bool:
        return any(o.name == name for o, _, _ in self.given)


def _long(word: str) -> tuple[str, bool]:
    """The option a --word names (exact, else a unique prefix, as getopt_long)."""
    if word in BY_NAME:
        return word, False
    if word.startswith("no-") and word[3:] in BY_NAME and BY_NAME[word[3:]].boolean:
        return word[3:], True
    cands = [n for n in _LONG_NAMES if n.startswith(word)]
    if len(cands) == 1:
        return _long(cands[0])
    if not cands:
        raise UsageError(f"unrecognized option '--{word}'")
    raise UsageError(f"option '--{word}' is ambiguous ({', '.join('--' + c for c in cands)})")


def _verbosity(p: Parsed, value: str | None) -> None:
    """criu's -v: -v adds one, -vvv adds three, -vN / --verbosity=N sets N
    (atoi: "-verbosity=0", which zdtm.py passes, is level 0)."""
    if value is None:
        p.log_level += 1
    elif value.startswith("v"):
        p.log_level += len(value) + 1
    else:
        digits = ""
        for ch in value:
            if not ch.isdigit():
                break
            digits += ch
        p.log_level = int(digits or "0")


def parse_words(words: list[str], p: Parsed, *, argv: bool) -> None:
    """Parse one source of options (a config file's words or argv) into p."""
    i = 0
    only_positional = False
    while i < len(words):
        w = words[i]
        i += 1
        if only_positional or not w.startswith("-") or w == "-":
            if not argv:
                raise UsageError(f"config file: unexpected word {w!r}")
            if p.command is None:
                p.command = w
            else:
                p.extra.append(w)
            continue
        if w == "--":
            only_positional = True
            continue
        if w.startswith("--"):
            name, _, value = w[2:].partition("=")
            has_value = "=" in w
            long, neg = _long(name)
            o = BY_NAME[long]
            if o.arg == NONE and has_value:
                raise UsageError(f"option '--{long}' doesn't allow an argument")
            if o.arg == REQ and not has_value:
                if i >= len(words):
                    raise UsageError(f"option '--{long}' requires an argument")
                value = words[i]
                i += 1
            _add(p, o, value if (has_value or o.arg == REQ) else None, neg)
            continue
        # a cluster of short options: -jR, -t123, -t 123, -v4, -vvv
        j = 1
        while j < len(w):
            ch = w[j]
            j += 1
            o2 = BY_SHORT.get(ch)
            if o2 is None:
                raise UsageError(f"invalid option -- '{ch}'")
            if o2.arg == NONE:
                _add(p, o2, None, False)
                continue
            rest = w[j:]
            if o2.arg == REQ and not rest:
                if i >= len(words):
                    raise UsageError(f"option requires an argument -- '{ch}'")
                rest = words[i]
                i += 1
            _add(p, o2, rest if rest or o2.arg == REQ else None, False)
            break


def _add(p: Parsed, o: Opt, value: str | None, neg: bool) -> None:
    if o.name == "verbosity":
        _verbosity(p, value)
    p.given.append((o, value if value is not None else "", neg))


# ------------------------------------------------------------ config ----

def read_config(path: str) -> list[str]:
    """A criu config file as command-line words: "name value" -> --name value."""
    words: list[str] = []
    with open(path) as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                parts = shlex.split(line, comments=True)
            except ValueError as exc:
                raise UsageError(f"{path}:{n}: {exc}") from None
            if not parts:
                continue
            if len(parts) > 2:
                raise UsageError(f"{path}:{n}: unsupported configuration file format "
                                 f"(one option and at most one value a line): {line!r}")
            name = parts[0].lstrip("-")
            words.append(("--" if len(name) > 1 else "-") + name)
            words.extend(parts[1:])
    return words


def _pre_scan(argv: list[str]) -> tuple[bool, str | None]:
    """--no-default-config and --config FILE, seen before anything is parsed
    (as criu's pre_parse: they decide which files are read)."""
    no_default = False
    cfg = None
    for n, w in enumerate(argv):
        if w == "--no-default-config":
            no_default = True
        elif w == "--config":
            cfg = argv[n + 1] if n + 1 < len(argv) else None
            no_default = True
        elif w.startswith("--config="):
            cfg = w[len("--config="):]
            no_default = True
    return no_default, cfg


def parse(argv: list[str], env: dict[str, str] | None = None) -> Parsed:
    """criu's whole option reading: config files in criu's order, then argv."""
    env = dict(os.environ) if env is None else env
    p = Parsed()
    no_default, cfg = _pre_scan(argv)
    files: list[str] = []
    if not no_default:
        files.append(GLOBAL_CONFIG)
        if env.get("HOME"):
            files.append(os.path.join(env["HOME"], USER_CONFIG))
    if env.get("CRIU_CONFIG_FILE"):
        files.append(env["CRIU_CONFIG_FILE"])
    if cfg is not None:
        files.append(cfg)
    for path in files:
        explicit = path == cfg
        try:
            words = read_config(path)
        except FileNotFoundError:
            if explicit:
                raise UsageError(f"--config {path}: no such file") from None
            continue  # a default file that is not there (criu: the same)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None
        p.config_files.append(path)
        parse_words(words, p, argv=False)
    parse_words(argv, p, argv=True)
    return p


# Options done for some commands only: name -> (those commands, why not
# with the others).  criu's dump --lazy-pages leaves the tree frozen with a
# page server serving its memory: procsnap does not do that one.
ONLY_FOR: dict[str, tuple[tuple[str, ...], str]] = {
    "lazy-pages": (("restore", "lazy-pages", "page-server"),
                   "only restore --lazy-pages (with the lazy-pages daemon) and page-server "
                   "--lazy-pages are done; a dump that leaves the tree frozen to serve its "
                   "pages is not (dump, then restore --lazy-pages)"),
    # (page-server itself: criu's RPC PAGE_SERVER hands its address and
    # port in the same criu_opts.ps field that makes a dump use one)
    "page-server": (("lazy-pages", "dump", "pre-dump", "page-server"),
                    "a page server is used by dump, pre-dump and lazy-pages"),
}


def refused(p: Parsed) -> str | None:
    """The first refused option given, as criu's users will read it."""
    for o, v, neg in p.given:
        if o.name == "lazy-pages" and p.command == "page-server":
            continue   # page-server --lazy-pages: serving an images dir's pages is done
        spelled = f"--{o.name}" + (f" {v}" if v else "")
        if o.how == REFUSE and not neg:
            return f"option {spelled} is not supported by procsnap: {o.note}"
        only = ONLY_FOR.get(o.name)
        if only is not None and not neg and p.command not in only[0]:
            return f"option {spelled} is not supported by procsnap with {p.command}: {only[1]}"
    return None


def help_text() -> str:
    out = ["Usage:",
           "  criu dump -t PID -D DIR [<options>]",
           "  criu pre-dump -t PID -D DIR [--prev-images-dir DIR]",
           "  criu restore -D DIR [<options>]",
           "  criu page-server -D DIR --port PORT [--address ADDR] [-d] [--status-fd FD]",
           "                   [--prev-images-dir DIR] [--lazy-pages]",
           "  criu check [--feature NAME | --all]",
           "  criu lazy-pages -D DIR [--page-server --address ADDR --port PORT]",
           "  criu swrk FD                  (criu's RPC on an inherited socket: runc, Podman)",
           "  criu service [--address PATH] [-d] [--pidfile FILE]   (criu's RPC server)",
           "  criu --version",
           "",
           "procsnap in place of criu: criu's options, each done as criu does it,",
           "accepted because it is procsnap's behaviour already, or refused",
           "(one line naming it, exit 1, nothing frozen).",
           "",
           "Options done as in criu:"]

    def spell(o: Opt) -> str:
        s = (f"-{o.short}, " if o.short else "    ") + f"--{o.name}"
        if o.arg == REQ:
            s += f" {o.metavar or 'ARG'}"
        elif o.arg == OPT:
            s += f"[={o.metavar or 'ARG'}]"
        return s

    for o in TABLE:
        if o.how == MAP:
            out.append(f"  {spell(o):32} {o.help}")
    out += ["", "Accepted, already procsnap's behaviour:"]
    for o in TABLE:
        if o.how == ACCEPT:
            out.append(f"  {spell(o):32} {o.note}")
    out += ["", "Refused (criu options procsnap does not have):"]
    for o in TABLE:
        if o.how == REFUSE:
            out.append(f"  {spell(o):32} {o.note}")
    out += ["", f"Config files: {GLOBAL_CONFIG}, $HOME/{USER_CONFIG}, $CRIU_CONFIG_FILE, "
                "--config FILE (one option a line, without the dashes)."]
    return "\n".join(out) + "\n"
