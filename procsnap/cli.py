"""The ``procsnap`` command, with criu's habits.

    procsnap dump -t PID -D DIR [--leave-running] [--shell-job] [--ghost-limit SIZE]
                  [--link-remap] [--external unix[INO]|mnt[MOUNTPOINT]:KEY|tty[RDEV:DEV]]...
                  [--ext-mount-map MOUNTPOINT:KEY|auto]... [--tcp-established]
                  [--tcp-close] [--skip-in-flight] [--sync]
                  [--prev-images-dir DIR] [--track-mem]
                  [--page-server --address A --port P] [-v]
    procsnap pre-dump -t PID -D DIR [--prev-images-dir DIR]
                      [--page-server --address A --port P] [-v]
    procsnap page-server -D DIR --port P [--address A] [-d] [--status-fd FD]
                         [--pidfile FILE] [--prev-images-dir DIR] [--lazy-pages]
    procsnap restore -D DIR [-d] [--pidfile FILE] [--shell-job] [--root DIR]
                     [--external mnt[KEY]:PATH]... [--ext-mount-map KEY:PATH|auto]...
                     [--inherit-fd fd[N]:unix[INO]|tty[RDEV:DEV]]... [--tcp-close]
                     [--tcp-established] [--no-verify] [-v]
    procsnap network-unlock DIR
    procsnap check
    procsnap show DIR [IMAGE]
    procsnap demo
    procsnap cleanup DIR
    procsnap criu ARGS...        (criu's command line; also as a symlink named criu)

Every failure is one line on stderr ("procsnap: ...") and a non-zero exit;
a traceback only with -v, and only for a bug (an error we did not expect).
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import sys
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import NoReturn

from .errors import ProcsnapError

EXIT_ERROR = 1


def _cgroup_args(p: argparse.ArgumentParser, manage_help: str, root_help: str) -> None:
    """criu's --manage-cgroups [MODE] and --cgroup-root [CONTROLLER:]/PATH."""
    from .resources.cgroup import CG_MODES
    p.add_argument("--manage-cgroups", nargs="?", const="soft", default="soft",
                   choices=CG_MODES, metavar="MODE", help=manage_help)
    p.add_argument("--cgroup-root", action="append", default=[],
                   metavar="[CONTROLLER:]/PATH", help=root_help)


def _page_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--page-server", action="store_true",
                   help="send the pagemaps and pages to a page server (procsnap page-server, "
                        "criu page-server) at --address/--port; the other images go to -D")
    p.add_argument("--address", metavar="ADDR", help="the page server's IPv4/IPv6 address")
    p.add_argument("--port", type=int, metavar="PORT", help="the page server's TCP port")


def _page_server(a: argparse.Namespace) -> tuple[str, int] | None:
    if not a.page_server:
        if a.address is not None or a.port is not None:
            raise ProcsnapError("--address/--port are for --page-server")
        return None
    if a.address is None or a.port is None:
        raise ProcsnapError("--page-server needs --address and --port")
    return (a.address, a.port)


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() finds it ($COLUMNS,
    else stdout's terminal, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose help formatter (made at every add_argument)
    is given the width argparse would find with shutil, without importing
    shutil (bz2, lzma, fnmatch...: ~1.5 % of procsnap's start-up)."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_columns() - 2)  # type: ignore[call-arg]


def _translate_once() -> None:
    """argparse translates its messages with gettext.gettext, which looks
    for the message catalog again at every call (locale.normalize, a stat
    per language): six look-ups of a parse were ~4 % of a small restore's
    start-up.  The same catalog (the current text domain's, found as
    gettext.dgettext finds it) is looked up once here and argparse calls
    its gettext and ngettext; where the look-up fails, argparse keeps
    gettext's own (which would fail each time and leave messages as they are)."""
    import gettext
    domain = gettext.textdomain()
    localedir = gettext.bindtextdomain(domain)
    # the languages gettext.find tries: the first of these that is set
    langs = next((v for v in map(os.environ.get, ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"))
                  if v), "")
    if not os.path.isdir(localedir) and os.sep not in langs:
        # No catalog can be found (each is LOCALEDIR/LANG/LC_MESSAGES/DOMAIN.mo):
        # what translation(fallback=True) returns then, without loading
        # locale for the language names' normalization.
        t: gettext.NullTranslations = gettext.NullTranslations()
    else:
        try:
            t = gettext.translation(domain, localedir, fallback=True)
        except OSError:
            return
    argparse._ = t.gettext  # type: ignore[attr-defined]
    argparse.ngettext = t.ngettext  # type: ignore[attr-defined]


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``only``: with the parser of that command alone.
    main asks for the command it runs only (argparse looks up gettext
    catalogs for every parser made: all of them were ~5 % of the
    start-up), and for all of them where the top level may print its help
    or an error listing the commands."""
    p = _Parser(prog="procsnap",
                description="Checkpoint/restore Linux processes (CRIU image format).")
    sub = p.add_subparsers(dest="cmd", required=True)

    if only in (None, "dump"):
        d = sub.add_parser("dump", help="checkpoint a process tree into image files")
        d.add_argument("-t", "--tree", type=int, required=True, metavar="PID",
                       help="root of the process tree to dump")
        d.add_argument("-D", "--images-dir", required=True, metavar="DIR")
        d.add_argument("-R", "--leave-running", action="store_true",
                       help="let the process run on after the dump")
        d.add_argument("-j", "--shell-job", action="store_true",
                       help="the process is a job of a shell: save its terminal as such")
        d.add_argument("--ghost-limit", type=_size, default=1 << 20, metavar="SIZE",
                       help="largest deleted file whose contents are saved (default 1M; K/M/G)")
        d.add_argument("--link-remap", action="store_true",
                       help="allow hard links next to unlinked files the fs has no handles for")
        d.add_argument("--external", action="append", default=[], metavar="unix[INO]",
                       type=_external,
                       help="a resource outside the tree: unix[INO] is our unix socket INO whose "
                            "peer is outside (restore it with --inherit-fd); mnt[MOUNTPOINT]:KEY "
                            "a mount from outside the tree, bound again at restore from the path "
                            "given for KEY; tty[RDEV:DEV] (hex) a terminal whose other end is "
                            "outside (restore it with --inherit-fd fd[N]:tty[RDEV:DEV])")
        d.add_argument("--ext-mount-map", action="append", default=[], metavar="MOUNTPOINT:KEY",
                       type=_ext_mount_map,
                       help="as criu: the same as --external mnt[MOUNTPOINT]:KEY; 'auto': mounts "
                            "from outside the tree found in procsnap's own mounts are external, "
                            "keyed by their path there")
        d.add_argument("--tcp-established", action="store_true",
                       help="dump live TCP connections (TCP_REPAIR); their traffic is held back "
                            "by a network lock until the restore")
        d.add_argument("--tcp-close", action="store_true",
                       help="do not dump TCP connections: they come back closed (as criu)")
        d.add_argument("--skip-in-flight", action="store_true",
                       help="drop connections waiting in a listener's accept queue instead of "
                            "refusing the dump (as criu)")
        d.add_argument("-x", "--ext-unix-sk", action="store_true",
                       help="a dgram unix socket connected to a named socket outside the tree "
                            "is saved and connected to that name again at restore (as criu)")
        d.add_argument("-l", "--file-locks", action="store_true",
                       help="dump file locks and leases (as criu's --file-locks); without it a "
                            "tree holding one is refused")
        _cgroup_args(d,
                     "criu's modes: ignore saves no cgroup; any other saves every task's "
                     "cgroups and the controllers' properties (the default: soft)",
                     "save the cgroup directories from PATH down (of CONTROLLER, or of every"
                     " hierarchy not named)")
        d.add_argument("--prev-images-dir", metavar="DIR",
                       help="the images of a pre-dump of this tree (relative: to the images "
                            "directory, as criu), linked as 'parent': pages not written since "
                            "stay there")
        d.add_argument("--track-mem", action="store_true",
                       help="as criu: accepted; the tree's writes are tracked from a pre-dump "
                            "on, and this dump closes the tracker")
        d.add_argument("--sync", action="store_true",
                       help="wait until the images are on disk before the tree is killed "
                            "(procsnap's own: criu has no such option and, as procsnap by "
                            "default, leaves them in the page cache); with --leave-running "
                            "the tree runs again first")
        _page_server_args(d)
        d.add_argument("-v", "--verbose", action="count", default=0,
                       help="print the stage times, the time the tree was frozen among them")

    if only in (None, "restore"):
        r = sub.add_parser("restore", help="recreate a process tree from image files")
        r.add_argument("-D", "--images-dir", required=True, metavar="DIR")
        r.add_argument("-d", "--restore-detached", action="store_true",
                       help="return once the process runs (default: wait for it to exit)")
        r.add_argument("--pidfile", metavar="FILE", help="write the root's PID here")
        r.add_argument("-j", "--shell-job", action="store_true",
                       help="attach the process to this terminal")
        r.add_argument("--skip-file-check", action="store_true",
                       help="restore files even if their size or mode changed since the dump")
        r.add_argument("--inherit-fd", action="append", default=[], metavar="fd[N]:unix[INO]",
                       type=_inherit_fd,
                       help="use our fd N for the external resource KEY (as criu)")
        r.add_argument("-r", "--root", metavar="DIR",
                       help="the root file system of a tree dumped in a mount namespace of its "
                            "own: its mount tree is built on DIR (as criu's --root)")
        r.add_argument("--external", action="append", default=[], metavar="mnt[KEY]:PATH",
                       type=_restore_external, dest="ext_mount",
                       help="bind PATH where the external mount KEY was; veth[IN]:OUT: the "
                            "veth IN of the tree's network namespace gets its peer OUT here")
        r.add_argument("--veth-pair", action="append", default=[], metavar="IN=OUT",
                       type=_veth_pair, dest="ext_mount",
                       help="as criu: the same as --external veth[IN]:OUT")
        r.add_argument("--ext-mount-map", action="append", default=[], metavar="KEY:PATH",
                       type=_ext_mount_map, dest="ext_mount_map",
                       help="as criu: the same as --external mnt[KEY]:PATH; 'auto': a key that "
                            "is a path (dumped with --ext-mount-map auto) is bound from that path")
        r.add_argument("--tcp-close", action="store_true",
                       help="restore established TCP connections closed (as criu)")
        r.add_argument("-x", "--ext-unix-sk", action="store_true",
                       help="connect sockets dumped with --ext-unix-sk to their outside peer's "
                            "name again (as criu)")
        r.add_argument("--no-verify", dest="verify", action="store_false",
                       help="do not compare the restored tasks with the images before they run")
        r.add_argument("--tcp-established", action="store_true",
                       help="accepted for criu's habits: the images say which connections "
                            "are live")
        _cgroup_args(r,
                     "criu's modes: soft (default): a missing cgroup is made with its saved "
                     "properties; full: existing ones get them too; strict: an existing one "
                     "is an error; props: properties, cgroups must exist; none: they must "
                     "exist, no properties; ignore: tasks stay in the restorer's cgroups",
                     "restore the tree's root cgroup (of CONTROLLER, or of every hierarchy "
                     "not named) at PATH")
        r.add_argument("-J", "--join-ns", action="append", default=[], metavar="net:PATH|PID",
                       type=_join_ns,
                       help="as criu: the tree joins the network namespace of the file PATH "
                            "(or of process PID) instead of a new one; its contents stay as "
                            "they are, its network lock goes once the tree runs")
        r.add_argument("--lazy-pages", action="store_true",
                       help="as criu: private anonymous memory comes on demand from the "
                            "lazy-pages daemon (start it first: lazy-pages -D DIR), which also "
                            "pushes the rest; the tree runs before its memory has arrived")
        r.add_argument("-W", "--work-dir", metavar="DIR",
                       help="where the lazy-pages socket is (default: the images directory)")
        r.add_argument("-v", "--verbose", action="count", default=0)

    if only in (None, "lazy-pages"):
        lp = sub.add_parser("lazy-pages", help="serve the memory of a restore --lazy-pages "
                                               "(criu's lazy-pages daemon)")
        lp.add_argument("-D", "--images-dir", required=True, metavar="DIR")
        lp.add_argument("-W", "--work-dir", metavar="DIR",
                        help="where to listen (lazy-pages.socket; default: the images directory)")
        lp.add_argument("--page-server", action="store_true",
                        help="fetch the pages from a page server (--address, --port) with criu's "
                             "protocol, not from the images")
        lp.add_argument("--address", metavar="ADDR", help="the page server's address")
        lp.add_argument("--port", type=int, metavar="PORT", help="the page server's port")
        lp.add_argument("-v", "--verbose", action="count", default=0)

    if only in (None, "pre-dump"):
        pd = sub.add_parser("pre-dump", help="copy a tree's memory while it runs on, its writes "
                                             "tracked for the next pre-dump or dump")
        pd.add_argument("-t", "--tree", type=int, required=True, metavar="PID")
        pd.add_argument("-D", "--images-dir", required=True, metavar="DIR")
        pd.add_argument("--prev-images-dir", metavar="DIR",
                        help="the previous pre-dump's images (relative: to the images directory)")
        pd.add_argument("--track-mem", action="store_true",
                        help="as criu: accepted, a pre-dump always tracks")
        _page_server_args(pd)
        pd.add_argument("-v", "--verbose", action="count", default=0,
                        help="print the stage times, the time the tree was frozen among them")

    if only in (None, "page-server"):
        ps = sub.add_parser("page-server", help="receive a dump's pages over TCP (criu's "
                                                "page-server: one dump, then exit)")
        ps.add_argument("-D", "--images-dir", required=True, metavar="DIR")
        ps.add_argument("--port", type=int, required=True, metavar="PORT")
        ps.add_argument("--address", metavar="ADDR", help="listen on this address only")
        ps.add_argument("-d", "--daemon", action="store_true",
                        help="return once listening, serve in the background")
        ps.add_argument("--status-fd", type=int, metavar="FD",
                        help="write a zero byte to FD once listening")
        ps.add_argument("--pidfile", metavar="FILE", help="write the server's pid here")
        ps.add_argument("--prev-images-dir", metavar="DIR",
                        help="the server's images of the previous pre-dump (relative: to -D), "
                             "linked as 'parent': pages the dump leaves there")
        ps.add_argument("--lazy-pages", action="store_true",
                        help="serve the pages of the images in -D on demand (PS_IOV_GET), "
                             "for a lazy-pages daemon")
        ps.add_argument("-v", "--verbose", action="count", default=0)

    if only in (None, "check"):
        sub.add_parser("check", help="check that this kernel has what procsnap needs")

    if only in (None, "show"):
        s = sub.add_parser("show", help="decode images to JSON (like crit)")
        s.add_argument("dir", metavar="DIR")
        s.add_argument("image", nargs="?", metavar="IMAGE", help="one image file (name in DIR or path)")

    if only in (None, "demo"):
        sub.add_parser("demo", help="checkpoint and restore a small counter, showing each step")

    if only in (None, "network-unlock"):
        n = sub.add_parser("network-unlock",
                           help="drop the network lock a --tcp-established dump left "
                                "(when its restore is abandoned)")
        n.add_argument("dir", metavar="DIR", help="the images directory of that dump")

    if only in (None, "cleanup"):
        c = sub.add_parser("cleanup", help="remove temporary names an interrupted run left behind")
        c.add_argument("dir", metavar="DIR", help="the images directory of that run")

    return p


def _stats_line(stats: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in stats.items())


def cmd_dump(a: argparse.Namespace) -> int:
    from . import dump
    external = list(a.external) + [f"mnt[{k}]:{v}" for k, v in a.ext_mount_map if k]
    stats = dump(a.tree, a.images_dir, leave_running=a.leave_running, shell_job=a.shell_job,
                 ghost_limit=a.ghost_limit, link_remap=a.link_remap,
                 external=tuple(external), tcp_established=a.tcp_established,
                 file_locks=a.file_locks, tcp_close=a.tcp_close,
                 skip_in_flight=a.skip_in_flight, ext_unix_sk=a.ext_unix_sk,
                 ext_mount_auto=any(not k for k, _ in a.ext_mount_map),
                 manage_cgroups=a.manage_cgroups, cgroup_root=tuple(a.cgroup_root),
                 sync=a.sync, prev_images_dir=a.prev_images_dir,
                 page_server=_page_server(a))
    if a.verbose:
        print(f"procsnap: dumped pid {a.tree} to {a.images_dir}: {_stats_line(stats)}",
              file=sys.stderr)
    return 0


def cmd_pre_dump(a: argparse.Namespace) -> int:
    from . import pre_dump
    stats = pre_dump(a.tree, a.images_dir, prev_images_dir=a.prev_images_dir,
                     page_server=_page_server(a))
    if a.verbose:
        print(f"procsnap: pre-dumped pid {a.tree} to {a.images_dir}: {_stats_line(stats)}",
              file=sys.stderr)
    return 0


def cmd_page_server(a: argparse.Namespace) -> int:
    from . import pagexfer
    try:
        return pagexfer.run_server(a.images_dir, a.address, a.port, daemon=a.daemon,
                                   status_fd=a.status_fd, pidfile=a.pidfile,
                                   lazy=a.lazy_pages, prev_images_dir=a.prev_images_dir)
    except ValueError as exc:   # a bad --address
        raise ProcsnapError(f"page-server: {exc}") from None


def cmd_restore(a: argparse.Namespace) -> int:
    from . import restore
    mounts = dict(a.ext_mount + [(k, v) for k, v in a.ext_mount_map if k])
    veths = {k[5:-1]: mounts.pop(k) for k in list(mounts) if k.startswith("veth[")}
    more = dict(root=a.root, ext_mount_map=mounts, ext_veth=veths,
                ext_mount_auto=any(not k for k, _ in a.ext_mount_map),
                manage_cgroups=a.manage_cgroups, cgroup_root=tuple(a.cgroup_root),
                join_ns=dict(a.join_ns), ext_unix_sk=a.ext_unix_sk,
                lazy_pages=a.lazy_pages, work_dir=a.work_dir)
    if a.restore_detached:
        pid = restore(a.images_dir, detached=True, shell_job=a.shell_job, pidfile=a.pidfile,
                      skip_file_check=a.skip_file_check, inherit_fd=dict(a.inherit_fd),
                      tcp_close=a.tcp_close, verify=a.verify, **more)
        if a.verbose:
            from .restorer import last_stats
            print(f"procsnap: restored pid {pid}: {_stats_line(last_stats)}", file=sys.stderr)
        return 0
    return restore(a.images_dir, detached=False, shell_job=a.shell_job, pidfile=a.pidfile,
                   skip_file_check=a.skip_file_check, inherit_fd=dict(a.inherit_fd),
                   tcp_close=a.tcp_close, verify=a.verify, **more)


def cmd_lazy_pages(a: argparse.Namespace) -> int:
    from .lazypages import main as lazy_main
    server = None
    if a.page_server:
        if not a.address or not a.port:
            print("procsnap: lazy-pages --page-server needs --address and --port",
                  file=sys.stderr)
            return EXIT_ERROR
        server = (a.address, a.port)
    elif a.address or a.port:
        print("procsnap: lazy-pages: --address/--port need --page-server", file=sys.stderr)
        return EXIT_ERROR
    return lazy_main(a.images_dir, a.work_dir, server, bool(a.verbose))


def cmd_show(a: argparse.Namespace) -> int:
    import json
    from .images import show
    if a.image:
        path = a.image if os.sep in a.image else os.path.join(a.dir, a.image)
        out = show.decode_file(path)
    else:
        if not os.path.isdir(a.dir):
            raise ProcsnapError(f"{a.dir}: no such images directory")
        out = show.decode_dir(a.dir)
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from .check import run_checks
    return run_checks()


def _size(text: str) -> int:
    """A size as criu takes it: bytes, or with a K, M or G suffix."""
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    try:
        value = int(text[:-1] if mult > 1 else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return value * mult


def _external(text: str) -> str:
    """criu's --external key; procsnap knows unix[INO], mnt[MOUNTPOINT]:KEY
    and tty[RDEV:DEV] (hex, as criu prints it)."""
    m = re.fullmatch(r"mnt\[(/[^\]]*)\](?::(.+))?", text)
    if m is not None:
        return f"mnt[{m.group(1)}]:{m.group(2) or m.group(1)}"
    m = re.fullmatch(r"tty\[([0-9a-fA-F]+):([0-9a-fA-F]+)\]", text)
    if m is not None:
        return f"tty[{int(m.group(1), 16):x}:{int(m.group(2), 16):x}]"
    m = re.fullmatch(r"unix\[(\d+)\]", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a known external resource: {text!r} "
                                         "(expected unix[INO], mnt[MOUNTPOINT]:KEY or "
                                         "tty[RDEV:DEV])")
    return f"unix[{int(m.group(1))}]"


def _ext_mount_map(text: str) -> tuple[str, str]:
    """criu's --ext-mount-map A:B, or 'auto' (returned as ("", ""))."""
    if text == "auto":
        return "", ""
    key, sep, value = text.partition(":")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"not KEY:VALUE or auto: {text!r}")
    return key, value


def _restore_external(text: str) -> tuple[str, str]:
    """criu's restore-side --external mnt[KEY]:PATH or veth[IN]:OUT[@BRIDGE]
    (a veth key comes back as "veth[IN]")."""
    m = re.fullmatch(r"mnt\[([^\]]+)\]:(.+)", text)
    if m is not None:
        return m.group(1), m.group(2)
    m = re.fullmatch(r"(veth\[[^\]]+\]):(.+)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not mnt[KEY]:PATH or veth[IN]:OUT: {text!r}")
    return m.group(1), m.group(2)


def _join_ns(text: str) -> tuple[str, str]:
    from .resources.namespaces import parse_join
    try:
        return parse_join(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _veth_pair(text: str) -> tuple[str, str]:
    """criu's --veth-pair IN=OUT[@BRIDGE]: --external veth[IN]:OUT."""
    inner, sep, outer = text.partition("=")
    if not sep or not inner or not outer:
        raise argparse.ArgumentTypeError(f"not IN=OUT: {text!r}")
    return f"veth[{inner}]", outer


def _inherit_fd(text: str) -> tuple[str, int]:
    """fd[N]:KEY, as criu's --inherit-fd."""
    m = re.fullmatch(r"fd\[(\d+)\]:(.+)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not fd[N]:KEY: {text!r}")
    return _external(m.group(2)), int(m.group(1))


def cmd_network_unlock(a: argparse.Namespace) -> int:
    from .resources.tcp import network_unlock_dir
    if network_unlock_dir(a.dir):
        print(f"procsnap: {a.dir}: network lock removed", file=sys.stderr)
    else:
        print(f"procsnap: {a.dir}: no network lock was held", file=sys.stderr)
    return 0


def cmd_cleanup(a: argparse.Namespace) -> int:
    from .tmpnames import cleanup
    removed = cleanup(a.dir)
    for path in removed:
        print(f"removed {path}")
    print(f"procsnap: {a.dir}: {len(removed)} temporary name(s) removed", file=sys.stderr)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    return run_demo()


COMMANDS = {"dump": cmd_dump, "pre-dump": cmd_pre_dump, "restore": cmd_restore, "show": cmd_show,
            "check": cmd_check, "demo": cmd_demo, "cleanup": cmd_cleanup,
            "network-unlock": cmd_network_unlock, "page-server": cmd_page_server,
            "lazy-pages": cmd_lazy_pages}


# The modules each command loads first, imported by main with the GC off.
_DRIVERS = {"dump": ("procsnap.dumper",), "pre-dump": ("procsnap.dumper",),
            "restore": ("procsnap.restorer",)}


def run() -> NoReturn:
    """The ``procsnap`` (and ``criu``) console script and ``python3 -m
    procsnap``: main(), then a quick exit (logs.leave)."""
    from .logs import leave
    leave(main())


def main(argv: list[str] | None = None) -> int:
    # Called as "criu" (a symlink to this entry point) or "procsnap criu
    # ...": criu's command line, served by procsnap.criu.
    if argv is None and os.path.basename(sys.argv[0]) == "criu":
        from .criu import main as criu_main
        return criu_main(sys.argv[1:])
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["criu"]:
        from .criu import main as criu_main
        return criu_main(args[1:])
    only = args[0] if args and args[0] in COMMANDS else None
    # The cyclic GC off while the command's modules load: imports make
    # tens of thousands of objects, none of them garbage, and the
    # collections they set off were ~5 ms of a small dump.  Once loaded,
    # those objects are frozen out of every later collection.
    gc.disable()
    try:
        if only in _DRIVERS:
            # Before its parser (which loads message classes already): no
            # dump or restore makes a well-known protobuf type (see there).
            from .images.pb import _runtime
            _runtime.skip_well_known_types()
        _translate_once()
        a = _parser(only).parse_args(args)
        for name in _DRIVERS.get(a.cmd, ()):
            __import__(name)  # not importlib's: -X importtime sees this one
        gc.freeze()
    finally:
        gc.enable()
        if only in _DRIVERS:
            _runtime.end_skip_well_known_types()
    verbose = getattr(a, "verbose", 0)
    from . import progress
    progress.enabled = True  # a bar for long page copies, on a terminal only
    from . import logs  # logging itself is imported at the first message
    logs.configure(level=logs.DEBUG if verbose > 1 else logs.WARNING,
                   format="procsnap: %(message)s")
    try:
        return COMMANDS[a.cmd](a)
    except ProcsnapError as exc:
        print(f"procsnap: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("procsnap: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line unless asked for more
        if verbose:
            raise
        print(f"procsnap: internal error: {type(exc).__name__}: {exc} (run with -v for details)",
              file=sys.stderr)
        return EXIT_ERROR
