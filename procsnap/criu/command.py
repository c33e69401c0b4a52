"""criu's command line (the body of ``procsnap.criu``, whose __init__
answers ``criu --version`` alone before importing this)."""
from __future__ import annotations

import logging
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any
import os
import re
import sys

from ..record import record
from errno import EBADRQC, ESRCH

from .. import ActionScriptFailed, ProcsnapError
from ..errors import NoSuchProcess
from . import options as O
from .log import CriuLog
from .scripts import Notify

from .options import CRIU_VERSION  # noqa: E402  (re-exported)

log = logging.getLogger("procsnap.criu")


def _err(msg: str, clog: CriuLog | None = None, quiet: bool = False) -> int:
    """One line on stderr, and an Error line in the log if there is one.
    ``quiet`` (criu's RPC): the log only; the client gets the line in its
    answer, and our stderr may be the restored container's."""
    if clog is not None:
        log.error("%s", msg)
        if clog.path is None:
            return 1          # the log is stderr already
    if not quiet:
        print(f"criu: {msg}", file=sys.stderr)
    return 1


def _size(text: str) -> int:
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    try:
        value = int(text[:-1] if mult > 1 else text)
    except ValueError:
        raise O.UsageError(f"--ghost-limit: not a size: {text!r}") from None
    return value * mult


def _external(value: str, opt: str) -> str:
    """A dump's --external KEY: unix[INO], mnt[MOUNTPOINT](:KEY), tty[RDEV:DEV]."""
    m = re.fullmatch(r"unix\[(\d+)\]", value)
    if m is not None:
        return f"unix[{int(m.group(1))}]"
    m = re.fullmatch(r"mnt\[(/[^\]]*)\](?::(.+))?", value)
    if m is not None and opt == "external":
        return f"mnt[{m.group(1)}]:{m.group(2) or m.group(1)}"
    m = re.fullmatch(r"tty\[([0-9a-fA-F]+):([0-9a-fA-F]+)\]", value)
    if m is not None:
        return f"tty[{int(m.group(1), 16):x}:{int(m.group(2), 16):x}]"
    raise O.UsageError(f"option --{opt} {value} is not supported by procsnap: of criu's "
                       "external resources it knows unix[INO], mnt[MOUNTPOINT]:KEY and "
                       "tty[RDEV:DEV]")


def _inherit(value: str) -> tuple[str, int]:
    m = re.fullmatch(r"fd\[(\d+)\]:(.+)", value)
    if m is None:
        raise O.UsageError(f"--inherit-fd {value}: not fd[N]:KEY")
    pipe = re.fullmatch(r"pipe:\[(\d+)\]", m.group(2))
    if pipe is not None:  # a container's stdio pipe (runc, Podman)
        return f"pipe:[{int(pipe.group(1))}]", int(m.group(1))
    return _external(m.group(2), "inherit-fd"), int(m.group(1))


def _pair(value: str, opt: str) -> tuple[str, str]:
    key, sep, val = value.partition(":")
    if not sep or not key or not val:
        raise O.UsageError(f"--{opt} {value}: not KEY:VALUE")
    return key, val


def _dump_mounts(p: O.Parsed) -> tuple[list[str], bool]:
    """--ext-mount-map at dump: MOUNTPOINT:KEY pairs and 'auto'."""
    named, auto = [], False
    for v in p.values("ext-mount-map"):
        if v == "auto":
            auto = True
            continue
        mp, key = _pair(v, "ext-mount-map")
        named.append(f"mnt[{mp}]:{key}")
    return named, auto


def _restore_mounts(p: O.Parsed) -> tuple[dict[str, str], bool]:
    """--ext-mount-map KEY:PATH and --external mnt[KEY]:PATH at restore (and
    LXC's bare --external KEY:PATH, which repeats an --ext-mount-map)."""
    maps: dict[str, str] = {}
    auto = False
    for v in p.values("ext-mount-map"):
        if v == "auto":
            auto = True
            continue
        key, path = _pair(v, "ext-mount-map")
        maps[key] = path
    for v in p.values("external"):
        m = re.fullmatch(r"mnt\[([^\]]+)\]:(.+)", v)
        if m is not None:
            maps[m.group(1)] = m.group(2)
            continue
        key, sep, path = v.partition(":")
        if sep and "[" not in key and maps.get(key) == path:
            continue
        raise O.UsageError(f"option --external {v} is not supported by procsnap at restore: "
                           "it takes mnt[KEY]:PATH (or KEY:PATH repeating an "
                           "--ext-mount-map KEY:PATH)")
    return maps, auto


def _cgroup_opts(p: O.Parsed) -> dict[str, Any]:
    """--manage-cgroups[=MODE] and --cgroup-root as procsnap's arguments."""
    mode = p.last("manage-cgroups")
    return {"manage_cgroups": mode or "soft", "cgroup_root": tuple(p.values("cgroup-root"))}


def empty_ns(p: O.Parsed) -> int:
    """--empty-ns net (several times: the same) as CLONE_* flags."""
    from ..kernel import consts as C
    flags = 0
    for v in p.values("empty-ns"):
        if v != "net":
            raise O.UsageError(f"Unsupported empty namespace: {v}")
        flags |= C.CLONE_NEWNET
    return flags


def _check_values(p: O.Parsed) -> None:
    """Values procsnap takes only some of (the rest refused by name)."""
    from ..resources.cgroup import CG_MODES, parse_cgroup_root
    from ..resources.namespaces import parse_join
    mode = p.last("manage-cgroups")
    if mode not in (None, "") and mode not in CG_MODES:
        raise O.UsageError(f"Unknown cgroups mode `{mode}' selected")
    for v in p.values("cgroup-root"):
        try:
            parse_cgroup_root(v)
        except ValueError as exc:
            raise O.UsageError(f"--cgroup-root {v}: {exc}") from None
    empty_ns(p)
    lock = p.last("network-lock")
    if lock not in (None, "nftables", "iptables"):
        raise O.UsageError(f"option --network-lock {lock} is not supported by procsnap: "
                           "its network lock is nftables")
    for v in p.values("join-ns"):
        try:
            parse_join(v)
        except ValueError as exc:
            raise O.UsageError(str(exc)) from None
    if p.values("inherit-fd") and p.command != "restore":
        raise O.UsageError("--inherit-fd is restore-only option")


@record
class Outcome:
    """What one dump/restore/check run came to (for criu's RPC answer)."""
    status: int = 0
    pid: int | None = None          # restore: the root's pid
    error: str | None = None        # the line that said why it failed
    errno: int = 0                  # criu's cr_errno for it (0: none)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "swrk" and argv[1].isdigit():
        from .swrk import fast_version
        if fast_version(int(argv[1])):
            return 0        # go-criu's version check, answered without the RPC's imports
    if argv[:1] in (["swrk"], ["service"]):
        # criu's RPC: "criu swrk FD" is not parsed as options (as criu)
        from . import rpc
        return rpc.main(argv, None, execute)
    try:
        p = O.parse(argv)
    except O.UsageError as exc:
        return _err(str(exc))
    if p.has("help"):
        sys.stdout.write(O.help_text())
        return 0
    if p.has("version"):
        print(f"Version: {CRIU_VERSION}")
        return 0
    if p.command is None:
        return _err("command is required (dump, pre-dump, restore, check; criu --help)")
    if p.command in ("swrk", "service"):
        from . import rpc
        return rpc.main([p.command, *p.extra], p, execute)
    if p.command in O.DAEMONS:
        return _lazy_pages(p)
    if p.command in O.LATER_COMMANDS:
        return _err(f"command {p.command} is not supported by procsnap "
                    "(it has dump, pre-dump, restore, check, swrk and service)")
    if p.command not in O.COMMANDS:
        return _err(f"unknown command: {p.command}")
    if p.extra:
        return _err(f"unexpected argument: {p.extra[0]}")

    # The images and work directories, then the log, as criu: -D defaults
    # to ".", -W to the images directory, -o is relative to -W.
    images_dir = os.path.abspath(p.last("images-dir") or ".")
    work_dir = os.path.abspath(p.last("work-dir") or images_dir)
    logfile = p.last("log-file")
    log_path = os.path.join(work_dir, logfile) if logfile and logfile != "-" else None
    return execute(p, images_dir, work_dir, log_path, "criu " + " ".join(argv)).status


def execute(p: O.Parsed, images_dir: str, work_dir: str, log_path: str | None,
            what: str, notify: "Notify | None" = None, quiet: bool = False) -> Outcome:
    """Run a parsed dump, restore or check: the one path the command line
    and criu's RPC (rpc.py, which builds ``p`` from a criu_opts) share.
    ``notify``: RPC mode, the action-script stages go to the client;
    ``quiet``: RPC mode, errors go to the log and the Outcome only."""
    out = Outcome()

    def fail(msg: str, clog: CriuLog | None = None, status: int = 1,
             errno: int = 0) -> Outcome:
        _err(msg, clog, quiet)
        out.status, out.error, out.errno = status, msg, errno
        return out

    # A refused option is refused before anything is created or frozen;
    # its line goes into the log too when the log's directory is there.
    try:
        refusal = O.refused(p)
        if refusal is None:
            _check_values(p)
    except O.UsageError as exc:
        refusal = str(exc)
    if refusal is None and p.command in ("dump", "pre-dump"):
        try:
            os.makedirs(images_dir, exist_ok=True)
        except OSError as exc:
            return fail(f"Can't open images directory {images_dir}: {exc.strerror}")
    if log_path is not None and not os.path.isdir(os.path.dirname(log_path)):
        return fail(refusal or f"Can't open log file {log_path}: no such directory",
                    errno=EBADRQC if refusal else 0)
    try:
        clog = CriuLog(log_path, p.log_level, p.flag("log-pid"))
    except OSError as exc:
        return fail(refusal or f"Can't open log file {log_path}: {exc.strerror}",
                    errno=EBADRQC if refusal else 0)
    try:
        log.info("Version: %s (procsnap %s)", CRIU_VERSION, _version())
        log.info("%s", what)
        for path in p.config_files:
            log.debug("Parsed config file %s", path)
        if refusal is not None:
            return fail(refusal, clog, errno=EBADRQC)
        for o, v, _ in p.given:
            if o.how == O.ACCEPT:
                log.info("--%s%s: accepted: %s", o.name, f" {v}" if v else "", o.note)
        try:
            if p.command == "check":
                out.status = _check(p)
            elif p.command == "dump":
                out.status = _dump(p, images_dir, work_dir, notify)
            elif p.command == "pre-dump":
                out.status = _pre_dump(p, images_dir, work_dir)
            elif p.command == "page-server":
                out.status = _page_server_cmd(p, images_dir, work_dir)
            else:
                out.status, out.pid = _restore(p, images_dir, work_dir, notify)
            return out
        except O.UsageError as exc:
            return fail(str(exc), clog, errno=EBADRQC)
        except ActionScriptFailed as exc:
            return fail(str(exc), clog, exc.status if exc.action == "post-dump" else 1)
        except NoSuchProcess as exc:
            return fail(str(exc), clog, errno=ESRCH)
        except ProcsnapError as exc:
            return fail(str(exc), clog)
        except KeyboardInterrupt:
            return fail("interrupted", clog)
        except Exception as exc:  # a bug: one line, the traceback in the log at -v4
            log.debug("traceback", exc_info=True)
            return fail(f"internal error: {type(exc).__name__}: {exc}", clog)
    finally:
        clog.close()


def _lazy_pages(p: O.Parsed) -> int:
    """criu lazy-pages -D DIR [-W DIR] [--page-server --address A --port P]:
    the daemon of restore --lazy-pages (procsnap.lazypages), until every
    page is delivered."""
    from ..lazypages import main as lazy_main
    refusal = O.refused(p)
    if refusal is not None:
        return _err(refusal)
    if p.extra:
        return _err(f"unexpected argument: {p.extra[0]}")
    images_dir = os.path.abspath(p.last("images-dir") or ".")
    work_dir = os.path.abspath(p.last("work-dir") or images_dir)
    server = None
    if p.flag("page-server"):
        addr, port = p.last("address"), p.last("port")
        if not addr or not port or not port.isdigit():
            return _err("lazy-pages --page-server needs --address ADDR and --port PORT")
        server = (addr, int(port))
    elif p.has("address") or p.has("port"):
        return _err("lazy-pages: --address and --port go with --page-server")
    return lazy_main(images_dir, work_dir, server, p.log_level >= 3)


def _version() -> str:
    from .. import __version__
    return __version__


def _check(p: O.Parsed) -> int:
    from .. import check as pcheck
    from . import features
    feat = p.last("feature")
    if feat:
        ok, line = features.check_feature(feat)
        if ok:
            print(line)
            return 0
        return _err(line)
    for name, why, probe in pcheck.CHECKS:
        try:
            probe()
        except OSError as exc:
            _err(f"{name}: {exc.strerror or exc} -- needed for {why}")
            return 1
    missing = 0
    if p.flag("extra") or p.flag("experimental") or p.has("all"):
        for name in features.EXTRA:
            ok, line = features.check_feature(name)
            if not ok:
                missing += 1
                print(f"Warn: {line}")
    if missing:
        print("Looks good but some kernel features are missing\n"
              "which, depending on your process tree, may cause\n"
              "dump or restore failure.")
        return 1
    print("Looks good.")
    return 0


def _status_fd(p: O.Parsed) -> None:
    fd = p.last("status-fd")
    if fd is None:
        return
    try:
        os.write(int(fd), b"\0")
        os.close(int(fd))
    except (ValueError, OSError) as exc:
        raise ProcsnapError(f"--status-fd {fd}: {exc}") from None


def _tree(p: O.Parsed) -> int:
    tree = p.last("tree")
    if tree is None:
        raise O.UsageError(f"{p.command}: the tree's root is required (-t PID)")
    try:
        pid = int(tree)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise O.UsageError(f"-t {tree}: not a pid")
    return pid


def _port(p: O.Parsed) -> int | None:
    port = p.last("port")
    if port is None:
        return None
    try:
        n = int(port)
    except ValueError:
        n = -1
    if not 0 <= n <= 65535:
        raise O.UsageError(f"--port {port}: not a TCP port")
    return n


def _page_server(p: O.Parsed) -> tuple[str, int] | None:
    """dump/pre-dump --page-server --address A --port P, or None."""
    port = _port(p)
    if not p.flag("page-server"):
        if p.has("address") or port is not None:
            raise O.UsageError("option --address/--port: only with --page-server (or the "
                               "page-server command)")
        return None
    if not p.last("address") or not port:
        raise O.UsageError("option --page-server needs --address and --port")
    return (p.last("address"), port)


def _page_server_cmd(p: O.Parsed, images_dir: str, work_dir: str) -> int:
    """criu page-server: one dump's pages received (or, with --lazy-pages,
    an images dir's pages served), then exit (procsnap.pagexfer)."""
    from .. import pagexfer
    port = _port(p)
    if port is None:
        raise O.UsageError("page-server: --port is required")
    pidfile = p.last("pidfile")
    if pidfile:
        pidfile = os.path.join(work_dir, pidfile)
    status_fd = p.last("status-fd")
    try:
        return pagexfer.run_server(
            images_dir, p.last("address"), port,
            daemon=p.flag("restore-detached") or p.flag("daemon"),
            status_fd=int(status_fd) if status_fd is not None else None, pidfile=pidfile,
            lazy=p.has("lazy-pages"), prev_images_dir=p.last("prev-images-dir"))
    except ValueError as exc:
        raise O.UsageError(f"page-server: {exc}") from None


def _pre_dump(p: O.Parsed, images_dir: str, work_dir: str) -> int:
    import procsnap
    pid = _tree(p)
    log.info("Pre-dumping processes (pid: %d)", pid)
    st = procsnap.pre_dump(pid, images_dir, prev_images_dir=p.last("prev-images-dir"),
                           page_server=_page_server(p))
    return _dumped(p, images_dir, work_dir, st, "Pre-dumping")


def _dump(p: O.Parsed, images_dir: str, work_dir: str,
          notify: "Notify | None" = None) -> int:
    import procsnap
    from .scripts import ActionScripts
    pid = _tree(p)
    if p.flag("track-mem") and p.has("leave-running"):
        raise O.UsageError("option --track-mem with --leave-running is not supported by "
                           "procsnap: every dump closes the tracker; pre-dump again instead")
    named, auto = _dump_mounts(p)
    external = tuple(_external(v, "external") for v in p.values("external")) + tuple(named)
    ghost_limit = _size(p.last("ghost-limit")) if p.last("ghost-limit") else 1 << 20
    log.info("Dumping processes (pid: %d)", pid)
    with ActionScripts(p.values("action-script"), images_dir, root_pid=pid,
                       notify=notify) as scripts:
        st = procsnap.dump(pid, images_dir, leave_running=p.has("leave-running"),
                           shell_job=p.flag("shell-job"), ghost_limit=ghost_limit,
                           link_remap=p.flag("link-remap"), external=external,
                           tcp_established=p.flag("tcp-established"),
                           file_locks=p.flag("file-locks"), tcp_close=p.flag("tcp-close"),
                           skip_in_flight=p.flag("skip-in-flight"), action=scripts,
                           ext_unix_sk=p.flag("ext-unix-sk"),
                           orphan_pts_master=p.flag("orphan-pts-master"),
                           ext_mount_auto=auto, empty_ns=empty_ns(p), sync=p.flag("sync"),
                           prev_images_dir=p.last("prev-images-dir"),
                           page_server=_page_server(p), **_cgroup_opts(p))
    return _dumped(p, images_dir, work_dir, st, "Dumping")


def _dumped(p: O.Parsed, images_dir: str, work_dir: str, st: dict[str, float],
            what: str) -> int:
    """criu's end of a dump or pre-dump: stage times in the log,
    stats-dump, --display-stats, the status fd."""
    from . import stats
    for k, v in st.items():
        log.debug("stage %s: %.1f ms", k, v * 1000)
    entry = stats.write_dump_stats(images_dir, st, work_dir)
    log.info("%s finished successfully", what)
    if p.flag("display-stats"):
        sys.stdout.write(stats.display(entry))
    _status_fd(p)
    return 0


def _join_ns(p: O.Parsed) -> dict[str, str]:
    from ..resources.namespaces import parse_join
    return dict(parse_join(v) for v in p.values("join-ns"))


def _restore(p: O.Parsed, images_dir: str, work_dir: str,
             notify: "Notify | None" = None) -> tuple[int, int]:
    """Returns (exit status, the root's pid)."""
    import procsnap
    from ..images import pidview, read_image
    from ..restorer import current, last_stats, wait_exit
    current.clear()
    from . import stats
    from .scripts import ActionScripts
    if not os.path.isdir(images_dir):
        raise ProcsnapError(f"Can't open images directory {images_dir}: no such directory")
    if p.has("tree"):
        log.warning("Using -t with criu restore is obsoleted")
    pidfile = p.last("pidfile")
    if pidfile:
        pidfile = os.path.join(work_dir, pidfile)
    inherit = dict(_inherit(v) for v in p.values("inherit-fd"))
    maps, auto = _restore_mounts(p)
    sibling = p.flag("restore-sibling")
    detached = p.flag("restore-detached") or p.flag("daemon") or sibling
    if p.flag("orphan-pts-master") and notify is None:
        # criu's own fallback (the restoring shell's terminal) is --shell-job's
        raise O.UsageError("--orphan-pts-master: the new pty master goes to the client of "
                           "criu's RPC (swrk); on the command line use --shell-job")
    root = p.last("root")
    if root is not None and not os.path.isdir(root):
        raise O.UsageError(f"--root {root}: no such directory")
    with ActionScripts(p.values("action-script"), images_dir, notify=notify) as scripts:
        def action(name: str, fd: int | None = None) -> int:
            # criu knows the root's pid once its tasks exist (not at pre-restore)
            if name != "pre-restore" and scripts.root_pid is None:
                root_pid = current.get("root_pid")   # the live root, once made
                if root_pid is None:
                    tree = read_image(images_dir, "pstree")
                    if pidview.is_inside_form(tree):
                        pidview.to_outside(tree)  # a pid namespace's root: its outside pid
                    root_pid = tree[0].pid
                scripts.root_pid = root_pid
            return scripts(name, fd)
        pid = procsnap.restore(images_dir, detached=True, shell_job=p.flag("shell-job"),
                               pidfile=pidfile, inherit_fd=inherit,
                               tcp_close=p.flag("tcp-close"), action=action,
                               ext_unix_sk=p.flag("ext-unix-sk"),
                               orphan_pts_master=p.flag("orphan-pts-master"),
                               root=root, ext_mount_map=maps, ext_mount_auto=auto,
                               restore_sibling=sibling, empty_ns=empty_ns(p),
                               join_ns=_join_ns(p),
                               lazy_pages=p.flag("lazy-pages"), work_dir=work_dir,
                               **_cgroup_opts(p))
    entry = stats.write_restore_stats(images_dir, dict(last_stats), work_dir)
    log.info("Restore finished successfully. Tasks resumed.")
    if p.flag("display-stats"):
        sys.stdout.write(stats.display(entry))
    _status_fd(p)
    if not detached:
        # criu stays the tree's parent until it exits, then exits 0
        wait_exit(pid)
    return 0, pid
