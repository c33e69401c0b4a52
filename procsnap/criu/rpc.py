"""criu's RPC: ``criu swrk FD`` and ``criu service --address PATH``.

runc, crun, Podman (through go-criu), libcriu and pycriu never run criu's
command line: they start ``criu swrk FD`` on one end of a SOCK_SEQPACKET
socketpair (or connect to ``criu service``) and send one ``criu_req``
(images/proto/rpc.proto, CRIU's messages and field numbers), one message
a packet; we answer with ``criu_resp``.  One request a session, as criu
(but VERSION / FEATURE_CHECK with keep_open, and a PRE_DUMP series ending
in its DUMP): runc runs one swrk for VERSION and another for DUMP or
RESTORE.  go-criu's plain VERSION is answered by swrk.py before this
module (and protobuf) is even imported.

DUMP, RESTORE (and PRE_DUMP where procsnap has ``criu pre-dump``) run
the very code of ``criu dump`` / ``criu restore``:
FIELDS translates a criu_opts into the options object (options.Parsed)
the command line builds, then ``procsnap.criu.execute`` runs it.  A field
procsnap cannot honour (its option refused in options.TABLE, or no option
at all) fails the request with its name before anything is frozen; none is
ignored silently.

criu's habits kept: images_dir_fd and work_dir_fd are fds of the client,
opened as /proc/<peer pid>/fd/N (peer pid from SO_PEERCRED); the log file
(default criu.log) is relative to the work directory, which defaults to
the images directory; a restore is always detached; notify_scripts turns
every action-script stage into a NOTIFY message the client answers before
we go on (a failed answer fails the stage: a dump lets the tree run on, a
restore kills what it made); a request we cannot read (garbage, truncated,
an unknown type) gets a failed answer naming what is wrong.
"""
from __future__ import annotations

import array
import errno
import logging
import os
import socket
import sys
from ..record import record
from typing import Any, Callable

from google.protobuf.message import DecodeError

from ..images.pb import rpc_pb2 as R
from . import options as O
from .options import CRIU_VERSION

# procsnap.criu.execute (handed in by procsnap.criu.main: this module is
# below the package's __init__): (parsed, images dir, work dir, log path,
# what, notify=, quiet=) -> an Outcome with status, pid, error, errno
Execute = Callable[..., Any]

log = logging.getLogger("procsnap.criu")

MAX_MSG = 1 << 20      # a criu_req larger than this is refused (criu's own are < 4 KiB)

T = R.criu_req_type
_TYPE_NAMES = {v: k for k, v in T.items()}


class BadRequest(Exception):
    """A request (or one of its fields) we refuse: one line, cr_errno."""

    def __init__(self, msg: str, err: int = errno.EBADRQC) -> None:
        super().__init__(msg)
        self.errno = err


# ------------------------------------------------------- the table ----
#
# criu_opts field -> how it becomes the command line's options.  Kinds:
#   FLAG:   a bool; true gives --OPT, false gives --no-OPT where criu has
#           that form (the RPC overrides config files, as in criu)
#   VALUE:  --OPT str(value) (a repeated field: once per element)
#   CALL:   a function (field value, Request) -> [(option, value)]
#   SETUP:  read by the session itself (images/work dir, log, notify...)
# An option name that is not in options.TABLE (an RPC-only field with no
# command-line spelling yet), or one the table refuses, fails the request
# naming the field.

FLAG, VALUE, CALL, SETUP = "flag", "value", "call", "setup"


@record(frozen=True)
class Field:
    name: str                 # criu_opts field
    kind: str
    opt: str = ""             # options.TABLE name (FLAG, VALUE; CALL: what it maps to)
    call: Callable[[Any, "Request"], list[tuple[str, str]]] | None = None
    note: str = ""            # SETUP: what the session does with it


def _cg_mode(v: int, rq: "Request") -> list[tuple[str, str]]:
    # criu_cg_mode -> criu's --manage-cgroups MODE (CG_MODE_DEFAULT is soft)
    names: dict[int, str] = {R.IGNORE: "ignore", R.CG_NONE: "none", R.PROPS: "props", R.SOFT: "soft",
             R.FULL: "full", R.STRICT: "strict", R.DEFAULT: "soft"}
    return [("manage-cgroups", names[v])]


def _manage_cgroups(v: bool, rq: "Request") -> list[tuple[str, str]]:
    # criu: the old bool means soft or ignore; manage_cgroups_mode overrides it
    if rq.opts.HasField("manage_cgroups_mode"):
        return []
    return [("manage-cgroups", "soft" if v else "ignore")]


def _ext_mnt(v: Any, rq: "Request") -> list[tuple[str, str]]:
    # criu's ext_mount_add(key, val): what --ext-mount-map KEY:VAL gives
    return [("ext-mount-map", f"{v.key}:{v.val}")]


def _cg_root(v: Any, rq: "Request") -> list[tuple[str, str]]:
    ctrl = v.ctrl if v.HasField("ctrl") else ""
    return [("cgroup-root", f"{ctrl}:{v.path}" if ctrl else v.path)]


def _inherit_fd(v: Any, rq: "Request") -> list[tuple[str, str]]:
    # the fd is ours: swrk inherits it from the client (criu: swrk only)
    if not rq.swrk:
        raise BadRequest("criu_opts.inherit_fd is not allowed in standalone service "
                         "(only with criu swrk, whose fds the client chose)")
    return [("inherit-fd", f"fd[{v.fd}]:{v.key}")]


def _unix_sk(v: Any, rq: "Request") -> list[tuple[str, str]]:
    return [("external", f"unix[{v.inode}]")]


def _join_ns(v: Any, rq: "Request") -> list[tuple[str, str]]:
    extra = f",{v.extra_opt}" if v.HasField("extra_opt") and v.extra_opt else ""
    return [("join-ns", f"{v.ns}:{v.ns_file}{extra}")]


def _veth(v: Any, rq: "Request") -> list[tuple[str, str]]:
    return [("veth-pair", f"{v.if_in}={v.if_out}")]


def _empty_ns(v: int, rq: "Request") -> list[tuple[str, str]]:
    # criu takes only CLONE_NEWNET here
    if v & ~0x40000000:
        raise BadRequest(f"criu_opts.empty_ns {v:#x}: criu takes only CLONE_NEWNET "
                         "(0x40000000) here")
    return [("empty-ns", "net")] if v else []


def _pre_dump_mode(v: int, rq: "Request") -> list[tuple[str, str]]:
    names: dict[int, str] = {R.SPLICE: "splice", R.VM_READ: "read"}
    return [("pre-dump-mode", names[v])]


def _network_lock(v: int, rq: "Request") -> list[tuple[str, str]]:
    names: dict[int, str] = {R.IPTABLES: "iptables", R.NFTABLES: "nftables", R.SKIP: "skip"}
    return [("network-lock", names[v])]


def _auto_ext_mnt(v: bool, rq: "Request") -> list[tuple[str, str]]:
    return [("ext-mount-map", "auto")] if v else []


def _cpu_cap(v: int, rq: "Request") -> list[tuple[str, str]]:
    # 0xffffffff is criu_opts' default (what go-criu leaves there): the
    # same as not asking; any other value asks for criu's cpuinfo checks
    return [] if v == 0xffffffff else [("cpu-cap", str(v))]


def _status_fd(v: int, rq: "Request") -> list[tuple[str, str]]:
    # an fd of the client, reopened as criu does; the option gets ours
    # --status-fd closes it once written: not ours to close again
    return [("status-fd", str(rq.open_peer_fd("status_fd", v, os.O_WRONLY, own=False)))]


def _ghost_limit(v: int, rq: "Request") -> list[tuple[str, str]]:
    return [("ghost-limit", str(v))]


def _pid(v: int, rq: "Request") -> list[tuple[str, str]]:
    return [("tree", str(v))]


def _ps(v: Any, rq: "Request") -> list[tuple[str, str]]:
    # criu's setup_opts_from_req: ps asks for the page server at address:port
    # (DUMP, PRE_DUMP) or gives the PAGE_SERVER request its address and port
    out = [("page-server", "")]
    if v.HasField("address"):
        out.append(("address", v.address))
    if v.HasField("port"):
        out.append(("port", str(v.port)))
    if v.HasField("fd"):
        out.append(("ps-socket", str(v.fd)))   # refused, by name
    return out


FIELDS: list[Field] = [
    Field("images_dir_fd", SETUP, note="opened as /proc/<peer>/fd/N: the images directory"),
    Field("images_dir", SETUP, note="the images directory when images_dir_fd is -1"),
    Field("work_dir_fd", SETUP, note="opened as /proc/<peer>/fd/N: the work directory"),
    Field("log_file", SETUP, note="the log, in the work directory (no '/')"),
    Field("log_level", SETUP, note="criu's -vN"),
    Field("log_to_stderr", SETUP, note="the log goes to stderr"),
    Field("notify_scripts", SETUP, note="action-script stages become NOTIFY messages"),
    Field("config_file", SETUP, note="read after the RPC options (it overrides them)"),
    Field("pid", CALL, "tree", _pid),
    Field("leave_running", FLAG, "leave-running"),
    Field("leave_stopped", FLAG, "leave-stopped"),
    Field("ext_unix_sk", FLAG, "ext-unix-sk"),
    Field("unix_sk_ino", CALL, "external", _unix_sk),
    Field("tcp_established", FLAG, "tcp-established"),
    Field("tcp_skip_in_flight", FLAG, "skip-in-flight"),
    Field("tcp_close", FLAG, "tcp-close"),
    Field("evasive_devices", FLAG, "evasive-devices"),
    Field("shell_job", FLAG, "shell-job"),
    Field("file_locks", FLAG, "file-locks"),
    Field("link_remap", FLAG, "link-remap"),
    Field("force_irmap", FLAG, "force-irmap"),
    Field("weak_sysctls", FLAG, "weak-sysctls"),
    Field("skip_file_rwx_check", FLAG, "skip-file-rwx-check"),
    Field("unprivileged", FLAG, "unprivileged"),
    Field("mntns_compat_mode", FLAG, "mntns-compat-mode"),
    Field("display_stats", FLAG, "display-stats"),
    Field("rst_sibling", FLAG, "restore-sibling"),
    Field("orphan_pts_master", FLAG, "orphan-pts-master"),
    Field("track_mem", FLAG, "track-mem"),
    Field("auto_dedup", FLAG, "auto-dedup"),
    Field("lazy_pages", FLAG, "lazy-pages"),
    Field("tls", FLAG, "tls"),
    Field("tls_no_cn_verify", FLAG, "tls-no-cn-verify"),
    Field("ext_sharing", FLAG, "enable-external-sharing"),
    Field("ext_masters", FLAG, "enable-external-masters"),
    Field("root", VALUE, "root"),
    Field("parent_img", VALUE, "prev-images-dir"),
    Field("freeze_cgroup", VALUE, "freeze-cgroup"),
    Field("timeout", VALUE, "timeout"),
    Field("lsm_profile", VALUE, "lsm-profile"),
    Field("lsm_mount_context", VALUE, "lsm-mount-context"),
    Field("cgroup_props", VALUE, "cgroup-props"),
    Field("cgroup_props_file", VALUE, "cgroup-props-file"),
    Field("cgroup_dump_controller", VALUE, "cgroup-dump-controller"),
    Field("cgroup_yard", VALUE, "cgroup-yard"),
    Field("tls_cacert", VALUE, "tls-cacert"),
    Field("tls_cacrl", VALUE, "tls-cacrl"),
    Field("tls_cert", VALUE, "tls-cert"),
    Field("tls_key", VALUE, "tls-key"),
    Field("external", VALUE, "external"),
    Field("skip_mnt", VALUE, "skip-mnt"),
    Field("enable_fs", VALUE, "enable-fs"),
    Field("irmap_scan_paths", VALUE, "irmap-scan-path"),
    Field("exec_cmd", VALUE, "exec-cmd"),
    Field("ghost_limit", CALL, "ghost-limit", _ghost_limit),
    Field("manage_cgroups", CALL, "manage-cgroups", _manage_cgroups),
    Field("manage_cgroups_mode", CALL, "manage-cgroups", _cg_mode),
    Field("cg_root", CALL, "cgroup-root", _cg_root),
    Field("ext_mnt", CALL, "ext-mount-map", _ext_mnt),
    Field("auto_ext_mnt", CALL, "ext-mount-map", _auto_ext_mnt),
    Field("inherit_fd", CALL, "inherit-fd", _inherit_fd),
    Field("join_ns", CALL, "join-ns", _join_ns),
    Field("veths", CALL, "veth-pair", _veth),
    Field("empty_ns", CALL, "empty-ns", _empty_ns),
    Field("pre_dump_mode", CALL, "pre-dump-mode", _pre_dump_mode),
    Field("network_lock", CALL, "network-lock", _network_lock),
    Field("cpu_cap", CALL, "cpu-cap", _cpu_cap),
    Field("status_fd", CALL, "status-fd", _status_fd),
    Field("ps", CALL, "page-server", _ps),
    Field("pidfd_store_sk", CALL, "pidfd-store"),     # no command-line option: refused
]

BY_FIELD = {f.name: f for f in FIELDS}


def _repeated(opts: Any, name: str) -> bool:
    fd = opts.DESCRIPTOR.fields_by_name[name]
    rep = getattr(fd, "is_repeated", None)     # protobuf >= 5.28; label before
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


def _is_set(opts: Any, name: str) -> bool:
    if _repeated(opts, name):
        return len(getattr(opts, name)) > 0
    return opts.HasField(name)


def _spell(f: Field, value: Any) -> str:
    """A field with its value, as a refusal names it."""
    if isinstance(value, bool):
        return f"criu_opts.{f.name}={str(value).lower()}"
    if isinstance(value, str):
        return f"criu_opts.{f.name}={value!r}"
    if isinstance(value, int):
        return f"criu_opts.{f.name}={value}"
    return f"criu_opts.{f.name}"


def translate(opts: Any, rq: "Request") -> list[tuple[O.Opt, str, bool]]:
    """criu_opts -> options.Parsed.given entries, in the table's order.
    Raises BadRequest naming the first field procsnap cannot honour."""
    given: list[tuple[O.Opt, str, bool]] = []
    for fd in opts.DESCRIPTOR.fields:
        if fd.name not in BY_FIELD:
            # a field this table does not know (a newer criu_opts)
            if _is_set(opts, fd.name):
                raise BadRequest(f"criu_opts.{fd.name} is not supported by procsnap")
    for f in FIELDS:
        if f.kind == SETUP or not _is_set(opts, f.name):
            continue
        raw = getattr(opts, f.name)
        values = list(raw) if _repeated(opts, f.name) else [raw]
        for value in values:
            if f.kind == FLAG:
                o = _option(f, value)
                if value:
                    assert o is not None      # _option refused it otherwise
                    given.append((o, "", False))
                elif o is not None and o.boolean:
                    given.append((o, "", True))     # --no-NAME: off, over a config file
                continue
            if f.kind == VALUE:
                pairs = [(f.opt, str(value))]
            else:
                if f.call is None:
                    raise BadRequest(f"{_spell(f, value)} is not supported by procsnap")
                pairs = f.call(value, rq)
            for name, v in pairs:
                o = _option(f, value, name)
                assert o is not None
                given.append((o, v, False))
    return given


def _option(f: Field, value: Any, name: str | None = None) -> O.Opt | None:
    """The command line's option for a field, or BadRequest naming the field
    (an option procsnap refuses, or none at all).  A false flag is never
    refused: it asks for nothing."""
    o = O.BY_NAME.get(name or f.opt)
    if f.kind == FLAG and not value:
        return o
    if o is None:
        raise BadRequest(f"{_spell(f, value)} is not supported by procsnap: it has no "
                         f"{name or f.opt} yet")
    if o.how == O.REFUSE:
        raise BadRequest(f"{_spell(f, value)} (criu's --{o.name}) is not supported by "
                         f"procsnap: {o.note}")
    return o


# ----------------------------------------------------- the session ----

class Request:
    """One request's context: the socket, the client, the fds we opened."""

    def __init__(self, sk: socket.socket, swrk: bool) -> None:
        self.sk = sk
        self.swrk = swrk
        self.opts: Any = R.criu_opts()
        self.fds: list[int] = []
        try:
            cred = sk.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            self.peer_pid = int.from_bytes(cred[:4], sys.byteorder, signed=True)
        except OSError:
            self.peer_pid = 0
        self.notify_error: str | None = None
        self.log_path: str | None = None     # known: a refusal goes there too

    def open_peer_fd(self, field: str, n: int, flags: int, own: bool = True) -> int:
        """The client's fd n, opened through /proc as criu does; closed with
        the request unless ``own`` is False (the option it goes to closes it)."""
        path = f"/proc/{self.peer_pid}/fd/{n}"
        try:
            fd = os.open(path, flags | os.O_CLOEXEC)
        except OSError as exc:
            raise BadRequest(f"criu_opts.{field}={n}: cannot open the client's fd "
                             f"({path}): {exc.strerror}") from None
        if own:
            self.fds.append(fd)
        return fd

    def dir_path(self, field: str, n: int) -> str:
        """A path for the client's directory fd n: its real path when that
        names the same directory (logs and messages read better), else the
        /proc path of our own fd (kept open for the whole request)."""
        fd = self.open_peer_fd(field, n, os.O_RDONLY | os.O_DIRECTORY)
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            a, b = os.stat(real), os.fstat(fd)
            if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                return real
        except OSError:
            pass
        return f"/proc/{os.getpid()}/fd/{fd}"

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    # -- messages

    def send(self, resp: Any, fd: int | None = None) -> None:
        data = resp.SerializeToString()
        if fd is None:
            self.sk.sendmsg([data], [], socket.MSG_NOSIGNAL)
        else:
            self.sk.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", [fd]).tobytes())], socket.MSG_NOSIGNAL)

    def recv(self) -> Any:
        """One criu_req; None when the client closed the socket.  BadRequest
        for what is not one (naming what is wrong)."""
        data, _, flags, _ = self.sk.recvmsg(MAX_MSG)
        if not data and not flags & socket.MSG_TRUNC:
            return None
        if flags & socket.MSG_TRUNC:
            raise BadRequest(f"request larger than {MAX_MSG} bytes")
        req = R.criu_req()
        try:
            req.ParseFromString(data)
        except DecodeError as exc:
            raise BadRequest(f"malformed criu_req ({len(data)} bytes): {exc}") from None
        if not req.HasField("type"):
            t = _raw_type(data)
            if t is not None:
                raise BadRequest(f"unknown request type {t}", errno.EOPNOTSUPP)
            raise BadRequest(f"malformed criu_req ({len(data)} bytes): no type")
        if not req.IsInitialized():
            raise BadRequest("malformed criu_req: missing "
                             + ", ".join(req.FindInitializationErrors()))
        unknown = _unknown_fields(data)
        if unknown:
            raise BadRequest(f"{', '.join(unknown)} unknown to procsnap (a newer criu's "
                             "option?): not supported", errno.EOPNOTSUPP)
        return req

    def notify(self, action: str, pid: int | None, fd: int | None) -> int:
        """An action-script stage as criu's NOTIFY: the client answers with
        a NOTIFY request whose notify_success says go on (0) or stop (1)."""
        resp = R.criu_resp(type=T.Value("NOTIFY"), success=True,
                           notify=R.criu_notify(script=action))
        if pid is not None:
            resp.notify.pid = pid
        log.debug("RPC notify %s%s", action, f" pid {pid}" if pid is not None else "")
        try:
            self.send(resp, fd)
            ans = self.recv()
        except (OSError, BadRequest) as exc:
            self.notify_error = f"notify {action}: {exc}"
            log.error("RPC %s", self.notify_error)
            return 1
        if ans is None:
            self.notify_error = f"notify {action}: the client closed the socket"
        elif ans.type != T.Value("NOTIFY"):
            self.notify_error = (f"notify {action}: the client answered with a "
                                 f"{_TYPE_NAMES.get(ans.type, ans.type)} request")
        elif not ans.notify_success:
            self.notify_error = f"notify {action}: the client answered failure"
        elif action == "query-ext-files" and ans.HasField("opts") and ans.opts.external:
            self.notify_error = (f"notify {action}: external resources named in the answer "
                                 f"({', '.join(ans.opts.external)}) are not supported by "
                                 "procsnap: name them in criu_opts.external")
        else:
            return 0
        log.error("RPC %s", self.notify_error)
        return 1


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """The top-level fields of an encoded message: (number, wire type,
    value: an int, or the bytes of a length-delimited one).  IndexError
    when truncated."""
    out: list[tuple[int, int, Any]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        num, wt = key >> 3, key & 7
        v: Any
        if wt == 0:
            v, i = _varint(data, i)
        elif wt == 2:
            n, i = _varint(data, i)
            v, i = data[i:i + n], i + n
            if i > len(data):
                raise IndexError(i)
        elif wt == 1:
            v, i = data[i:i + 8], i + 8
        elif wt == 5:
            v, i = data[i:i + 4], i + 4
        else:
            raise IndexError(i)
        out.append((num, wt, v))
    return out


def _raw_type(data: bytes) -> int | None:
    """Field 1 (type) of a message whose type the schema does not know."""
    try:
        return next((v for num, wt, v in _fields(data) if num == 1 and wt == 0), None)
    except IndexError:
        return None


def _unknown_fields(data: bytes) -> list[str]:
    """Fields of a criu_req (and of its criu_opts) that our rpc.proto does
    not have: a newer client's options, which must not be dropped."""
    known_req = R.criu_req.DESCRIPTOR.fields_by_number
    known_opts = R.criu_opts.DESCRIPTOR.fields_by_number
    out = []
    for num, wt, v in _fields(data):
        if num not in known_req:
            out.append(f"criu_req field {num}")
        elif num == 2 and wt == 2:
            out.extend(f"criu_opts field {n}" for n, _, _ in _fields(v) if n not in known_opts)
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7f) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def _fail(rq: Request, typ: Any, msg: str, err: int = 0, **extra: Any) -> None:
    if rq.log_path is None:
        log.error("%s", msg)        # no log of our own: stderr, as criu before its log
    resp = R.criu_resp(type=typ, success=False, cr_errmsg=msg, **extra)
    if err:
        resp.cr_errno = err
    rq.send(resp)


# request types procsnap does not serve, and why
UNSUPPORTED = {
    "PRE_DUMP": "procsnap has no pre-dump (memory tracking)",
    "SINGLE_PRE_DUMP": "procsnap has no pre-dump (memory tracking)",
    "CPUINFO_DUMP": "procsnap does not save cpuinfo images",
    "CPUINFO_CHECK": "procsnap does not save cpuinfo images",
}
KEEP_OPEN = ("VERSION", "FEATURE_CHECK")   # criu: requests that may be followed by more


def session(sk: socket.socket, swrk: bool, run: Execute) -> int:
    """Serve one client: requests until one that ends the session (criu:
    one, unless keep_open on VERSION / FEATURE_CHECK).  Returns criu's exit
    status (0: the last request succeeded)."""
    while True:
        rq = Request(sk, swrk)
        try:
            try:
                req = rq.recv()
            except BadRequest as exc:
                _fail(rq, T.Value("EMPTY"), str(exc), exc.errno)
                return 1
            if req is None:
                return 1         # the client went away before asking anything
            name = _TYPE_NAMES.get(req.type, str(req.type))
            if req.keep_open and name not in KEEP_OPEN:
                _fail(rq, req.type, f"keep_open is not supported for {name} requests "
                      f"(only {', '.join(KEEP_OPEN)})", errno.EBADRQC, **_empty(name))
                return 1
            try:
                ok = serve(rq, req, name, run)
            except BadRequest as exc:
                _fail(rq, req.type, str(exc), exc.errno, **_empty(name))
                ok = False
            except Exception as exc:   # a bug: answered, not a dead socket
                if isinstance(exc, OSError) and exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    raise
                log.debug("traceback", exc_info=True)
                _fail(rq, req.type, f"internal error: {type(exc).__name__}: {exc}",
                      **_empty(name))
                ok = False
            if not (ok and req.keep_open):
                return 0 if ok else 1
        except OSError as exc:   # the client is gone: nothing to answer to
            log.error("RPC socket: %s", exc.strerror or exc)
            return 1
        finally:
            rq.close()


def serve(rq: Request, req: Any, name: str, run: Execute) -> bool:
    """Answer one request; True when it succeeded."""
    if name == "VERSION":
        # go-criu reads major*10000 + minor*100 + sublevel, and counts a
        # gitid as the next minor: a release answers 40200 (runc wants >= 31100)
        major, minor = (int(x) for x in CRIU_VERSION.split(".")[:2])
        rq.send(R.criu_resp(type=req.type, success=True,
                            version=R.criu_version(major_number=major, minor_number=minor,
                                                   name="procsnap")))
        return True
    if name == "FEATURE_CHECK":
        rq.send(R.criu_resp(type=req.type, success=True, features=_features(req)))
        return True
    if name == "CHECK":
        return _check(rq, req)
    if name in ("DUMP", "RESTORE"):
        return _dump_restore(rq, req, name, run)
    if name in ("PRE_DUMP", "SINGLE_PRE_DUMP") and "pre-dump" in O.COMMANDS:
        return _pre_dump_loop(rq, req, name, run)
    if name in ("PAGE_SERVER", "PAGE_SERVER_CHLD"):
        return _page_server(rq, req, name)
    if name == "WAIT_PID":
        return _wait_pid(rq, req)
    if name == "NOTIFY":
        _fail(rq, req.type, "a NOTIFY request answers a notification; nothing was notified",
              errno.EBADRQC)
        return False
    if name in UNSUPPORTED:
        _fail(rq, req.type, f"request {name} is not supported by procsnap: "
              f"{UNSUPPORTED[name]}", errno.EOPNOTSUPP)
        return False
    _fail(rq, req.type, f"request {name} is not supported by procsnap", errno.EOPNOTSUPP)
    return False


def _features(req: Any) -> Any:
    """criu's FEATURE_CHECK: each feature asked for is answered (criu sets
    all three, false unless asked and there): mem_track as ``criu check
    --feature mem_dirty_track`` answers for procsnap, lazy_pages as
    ``--feature uffd-noncoop`` (restore with lazy_pages and a lazy-pages
    daemon); the pidfd store procsnap has not."""
    from .features import check_feature
    asked = req.features if req.HasField("features") else R.criu_features()
    feat = R.criu_features(mem_track=False, lazy_pages=False, pidfd_store=False)
    if asked.mem_track and "pre-dump" in O.COMMANDS:
        feat.mem_track = check_feature("mem_dirty_track")[0]
    if asked.lazy_pages:
        feat.lazy_pages = check_feature("uffd-noncoop")[0]
    return feat


def _pre_dump_loop(rq: Request, req: Any, name: str, run: Execute) -> bool:
    """criu's pre-dump session: PRE_DUMP requests, each answered, until a
    DUMP (the last of the series, served as any DUMP) or the client's end
    (runc's --pre-dump: one PRE_DUMP, then it closes); SINGLE_PRE_DUMP is
    one pre-dump and the end."""
    while True:
        if not _dump_restore(rq, req, name, run):
            return False
        if name == "SINGLE_PRE_DUMP":
            return True
        try:
            nxt = rq.recv()
        except BadRequest as exc:
            _fail(rq, T.Value("EMPTY"), str(exc), exc.errno)
            return False
        if nxt is None:
            return False        # as criu: the series ended without its DUMP
        nname = _TYPE_NAMES.get(nxt.type, str(nxt.type))
        if nname == "DUMP":
            return _dump_restore(rq, nxt, nname, run)
        if nname != "PRE_DUMP":
            _fail(rq, T.Value("EMPTY"), f"Bad req seq: {nname} after PRE_DUMP (only "
                  "PRE_DUMP or DUMP)", errno.EBADRQC)
            return False
        req = nxt


def _check(rq: Request, req: Any) -> bool:
    from .. import check as pcheck
    for cname, why, probe in pcheck.CHECKS:
        try:
            probe()
        except OSError as exc:
            _fail(rq, req.type, f"{cname}: {exc.strerror or exc} -- needed for {why}",
                  exc.errno or 0)
            return False
    rq.send(R.criu_resp(type=req.type, success=True))
    return True


def _wait_pid(rq: Request, req: Any) -> bool:
    try:
        _, status = os.waitpid(req.pid, 0)
    except OSError as exc:
        _fail(rq, req.type, f"WAIT_PID {req.pid}: {exc.strerror}", exc.errno or 0)
        return False
    rq.send(R.criu_resp(type=req.type, success=True, status=status))
    return True


def build(rq: Request, req: Any, command: str) -> tuple[O.Parsed, str, str, str | None]:
    """criu_req -> (the options, images dir, work dir, log path), as criu's
    setup_opts_from_req: config files, the RPC's fields, then config_file."""
    opts = req.opts if req.HasField("opts") else R.criu_opts()
    rq.opts = opts
    # criu's default config files first (criu swrk reads them at start)
    try:
        p = O.parse([], env=dict(os.environ))
    except O.UsageError as exc:
        raise BadRequest(f"criu's config files: {exc}") from None
    p.command = command
    # A refused field is answered once the log is open, so that it is in
    # the log too (runc tells its user to read the log)
    refusal: BadRequest | None = None
    try:
        p.given.extend(translate(opts, rq))
        if command in ("dump", "pre-dump") and not opts.HasField("pid"):
            raise BadRequest("criu_opts.pid is not set: dumping the client itself is not "
                             "supported by procsnap (name the tree's root in criu_opts.pid)")
    except BadRequest as exc:
        refusal = exc
    if command == "restore" and not p.flag("restore-detached"):
        # criu: "we can't restore processes under arbitrary task yet",
        # an RPC restore is always detached
        p.given.append((O.BY_NAME["restore-detached"], "", False))
    if opts.HasField("log_level"):
        p.log_level = opts.log_level
    elif p.log_level == 2:
        p.log_level = opts.log_level       # criu_opts' default, 2
    if opts.HasField("config_file"):
        # criu reads it if it is there; its options override the RPC's
        try:
            words = O.read_config(opts.config_file)
        except FileNotFoundError:
            words = None
        except OSError as exc:
            raise BadRequest(f"criu_opts.config_file={opts.config_file!r}: "
                             f"{exc.strerror}") from None
        except O.UsageError as exc:
            raise BadRequest(f"criu_opts.config_file: {exc}") from None
        if words is not None:
            try:
                O.parse_words(words, p, argv=False)
            except O.UsageError as exc:
                raise BadRequest(f"criu_opts.config_file={opts.config_file!r}: {exc}") from None
            p.config_files.append(opts.config_file)
    # the images directory: the client's fd, else a path
    if opts.images_dir_fd != -1:
        images_dir = rq.dir_path("images_dir_fd", opts.images_dir_fd)
    elif opts.HasField("images_dir"):
        images_dir = os.path.abspath(opts.images_dir)
    else:
        raise BadRequest("neither criu_opts.images_dir_fd nor criu_opts.images_dir was "
                         "passed by the RPC client")
    if p.last("images-dir"):             # from the config file, as criu's rpc conf
        images_dir = os.path.abspath(p.last("images-dir"))
    if p.last("work-dir"):
        work_dir = os.path.abspath(p.last("work-dir"))
    elif opts.HasField("work_dir_fd"):
        work_dir = rq.dir_path("work_dir_fd", opts.work_dir_fd)
    else:
        work_dir = images_dir
    try:
        os.chdir(work_dir)               # criu works in the work directory
    except OSError as exc:
        raise BadRequest(f"work directory {work_dir}: {exc.strerror}") from None
    logfile = p.last("log-file")
    if logfile is None and opts.HasField("log_file"):
        if "/" in opts.log_file:
            raise BadRequest(f"criu_opts.log_file={opts.log_file!r}: no subdirectories are "
                             "allowed in the log file's name (use work_dir_fd)")
        logfile = opts.log_file
    if logfile is None:
        logfile = None if opts.log_to_stderr else "criu.log"
    log_path = os.path.join(work_dir, logfile) if logfile and logfile != "-" else None
    if refusal is not None:
        rq.log_path = log_path
        raise refusal
    return p, images_dir, work_dir, log_path


COMMAND = {"DUMP": "dump", "RESTORE": "restore", "PRE_DUMP": "pre-dump",
           "SINGLE_PRE_DUMP": "pre-dump", "PAGE_SERVER": "page-server",
           "PAGE_SERVER_CHLD": "page-server"}


def _dump_restore(rq: Request, req: Any, name: str, run: Execute) -> bool:
    """DUMP, RESTORE and PRE_DUMP: criu_opts to the command line's options,
    run as the command line runs them, answered."""
    command = COMMAND[name]
    rq.notify_error = None
    try:
        p, images_dir, work_dir, log_path = build(rq, req, command)
    except BadRequest as exc:
        if rq.log_path is not None:
            from .log import CriuLog
            try:
                clog = CriuLog(rq.log_path, 2, False)
            except OSError:
                pass
            else:
                log.error("%s", exc)
                clog.close()
        _fail(rq, req.type, str(exc), exc.errno, **_empty(name))
        return False
    notify = rq.notify if rq.opts.notify_scripts else None
    out = run(p, images_dir, work_dir, log_path,
              f"criu {'swrk' if rq.swrk else 'service'}: {name} request from pid "
              f"{rq.peer_pid}", notify=notify, quiet=True)
    if out.status != 0:
        msg = out.error or f"{command} failed ({out.status})"
        if rq.notify_error and rq.notify_error not in msg:
            msg = f"{msg} ({rq.notify_error})"
        resp = R.criu_resp(type=req.type, success=False, cr_errmsg=msg, **_empty(name))
        if out.errno:
            resp.cr_errno = out.errno
        rq.send(resp)
        return False
    if name == "DUMP":
        rq.send(R.criu_resp(type=req.type, success=True,
                            dump=R.criu_dump_resp(restored=False)))
    elif command == "pre-dump":
        rq.send(R.criu_resp(type=req.type, success=True))
    else:
        assert out.pid is not None
        rq.send(R.criu_resp(type=req.type, success=True,
                            restore=R.criu_restore_resp(pid=out.pid)))
    return True


def _page_server(rq: Request, req: Any, name: str) -> bool:
    """criu's start_page_server_req(): a page server on criu_opts.ps's
    address and port (0: any, answered) for the images dir, in a process
    of its own that serves one connection; the answer carries its pid and
    port."""
    from .. import pagexfer
    try:
        p, images_dir, work_dir, log_path = build(rq, req, "page-server")
        refusal = O.refused(p)
        if refusal is not None:
            raise BadRequest(refusal, errno.EBADRQC)
        port = p.last("port")
        pagexfer.prepare_dir(images_dir, p.last("prev-images-dir"))
        lsk = pagexfer.listen(p.last("address"), int(port) if port else 0)
    except (BadRequest, pagexfer.PageServerError, ValueError) as exc:
        _fail(rq, req.type, str(exc), getattr(exc, "errno", 0) or 0)
        return False
    port_n = lsk.getsockname()[1]
    pid = os.fork()
    if pid == 0:   # the page server: serves, exits
        status = 1
        try:
            os.setsid()
            rq.sk.close()
            # a daemon, as criu's: the client's pipes are not held open
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            sk = pagexfer.accept_one(lsk)
            pagexfer.PageServer(images_dir, lazy=p.has("lazy-pages")).serve(sk)
            status = 0
        except BaseException as exc:   # its own process: one line in the log, an exit status
            log.error("%s", exc)
        finally:
            os._exit(status)
    lsk.close()
    rq.send(R.criu_resp(type=req.type, success=True,
                        ps=R.criu_page_server_info(pid=pid, port=port_n)))
    return True


def _empty(name: str) -> dict[str, Any]:
    """The sub-message criu always fills in a failed DUMP / RESTORE answer."""
    if name == "DUMP":
        return {"dump": R.criu_dump_resp(restored=False)}
    if name == "RESTORE":
        return {"restore": R.criu_restore_resp(pid=-1)}
    return {}


# ------------------------------------------------- the commands ----

def main(argv: list[str], p: O.Parsed | None, run: Execute) -> int:
    """``criu swrk FD`` and ``criu service [--address PATH] [-d] [--pidfile F]``."""
    _stdio()
    if argv[0] == "swrk":
        if len(argv) != 2 or not argv[1].isdigit():
            print("Usage: criu swrk <fd>", file=sys.stderr)
            return 1
        try:
            sk = socket.socket(fileno=int(argv[1]))
        except OSError as exc:
            print(f"criu: swrk {argv[1]}: not a socket: {exc.strerror}", file=sys.stderr)
            return 1
        try:
            return session(sk, swrk=True, run=run)
        finally:
            sk.close()
    if p is None:
        try:
            p = O.parse(argv)
        except O.UsageError as exc:
            print(f"criu: {exc}", file=sys.stderr)
            return 1
    return service(p, run)


def _stdio() -> None:
    """pycriu and libcriu start swrk with fds 0-2 closed: /dev/null there,
    so that no file we open later lands on them (and a probe or a print
    that uses them finds a harmless file)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def service(p: O.Parsed, run: Execute) -> int:
    """criu's service: a unix SOCK_SEQPACKET listener, one forked worker a
    connection (each serves one session; a worker's failure never takes
    the service down)."""
    import signal
    from .log import CriuLog
    addr = p.last("address") or "criu_service.socket"   # criu's default, in the cwd
    logfile = p.last("log-file")
    clog = CriuLog(os.path.abspath(logfile) if logfile and logfile != "-" else None,
                   p.log_level, p.flag("log-pid"))
    try:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.unlink(addr)
        except FileNotFoundError:
            pass
        srv.bind(addr)
        os.chmod(addr, 0o666)            # as criu: anyone may connect
        srv.listen(16)
    except OSError as exc:
        log.error("service socket %s: %s", addr, exc.strerror or exc)
        print(f"criu: service socket {addr}: {exc.strerror or exc}", file=sys.stderr)
        clog.close()
        return 1
    log.info("The service socket is bound to %s", addr)
    if p.flag("daemon") or p.flag("restore-detached"):
        if os.fork():
            os._exit(0)
        os.setsid()
    if p.last("pidfile"):
        with open(p.last("pidfile"), "w") as f:
            f.write(f"{os.getpid()}\n")
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    try:
        while True:
            try:
                sk, _ = srv.accept()
            except InterruptedError:
                continue
            log.info("Connected.")
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    srv.close()
                    clog.close()
                    status = session(sk, swrk=False, run=run)
                finally:
                    os._exit(status)
            sk.close()
    except KeyboardInterrupt:
        return 0
    finally:
        srv.close()
        clog.close()


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        log.info("Worker(pid %d) exited with %d", pid, os.waitstatus_to_exitcode(status))
