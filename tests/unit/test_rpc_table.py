"""criu's RPC: the criu_opts -> command-line options table (procsnap.criu.rpc).

No process is touched: criu_opts messages are translated into the options
object the command line builds (options.Parsed.given), and refusals are
checked to name the field.
"""
from __future__ import annotations

import socket
from typing import Any

import pytest

from procsnap.criu import options as O
from procsnap.criu import rpc
from procsnap.images.pb import rpc_pb2 as R


class _Rq(rpc.Request):
    def __init__(self, swrk: bool = True, opts: Any = None) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._keep = (a, b)
        super().__init__(a, swrk)
        if opts is not None:
            self.opts = opts


def words(opts: Any, swrk: bool = True) -> list[str]:
    """The command line a criu_opts stands for, spelled as criu's argv."""
    rq = _Rq(swrk, opts)
    try:
        out = []
        for o, v, neg in rpc.translate(opts, rq):
            out.append(f"--{'no-' if neg else ''}{o.name}" + (f"={v}" if v else ""))
        return out
    finally:
        rq.close()
        for s in rq._keep:
            s.close()


def refusal(opts: Any, swrk: bool = True) -> str:
    with pytest.raises(rpc.BadRequest) as ei:
        words(opts, swrk)
    return str(ei.value)


def test_every_criu_opts_field_is_in_the_table() -> None:
    names = {f.name for f in R.criu_opts.DESCRIPTOR.fields}
    assert names == set(rpc.BY_FIELD), names ^ set(rpc.BY_FIELD)
    assert len(rpc.FIELDS) == len(rpc.BY_FIELD)      # no field twice
    for f in rpc.FIELDS:
        if f.kind in (rpc.FLAG, rpc.VALUE):
            assert f.opt, f
        if f.kind == rpc.SETUP:
            assert f.note, f


def test_mapped_options_are_the_command_lines() -> None:
    """Every option a field maps to is criu's spelling in options.TABLE, but
    for RPC-only fields whose option procsnap has not got (refused by name)."""
    rpc_only = {"orphan-pts-master", "pidfd-store"}
    for f in rpc.FIELDS:
        if f.opt and f.opt not in rpc_only:
            assert f.opt in O.BY_NAME, f


def test_runc_dump_options() -> None:
    """What runc 1.1.5 sends for a checkpoint (shared/runc/criu-rpc-runc-1.1.5.txt),
    without the fields procsnap refuses (below)."""
    opts = R.criu_opts(images_dir_fd=8, pid=1234, log_level=4, log_file="dump.log",
                       notify_scripts=True, root="/var/tmp/runc-ck/bundle/rootfs",
                       ext_mnt=[R.ext_mount_map(key="/out", val="/out"),
                                R.ext_mount_map(key="/proc/keys", val="/dev/null")],
                       manage_cgroups=True, manage_cgroups_mode=R.IGNORE,
                       ghost_limit=1048576, freeze_cgroup="/sys/fs/cgroup/freezer/ck1",
                       config_file="/etc/criu/runc.conf", pre_dump_mode=R.SPLICE)
    assert words(opts) == [
        "--tree=1234", "--root=/var/tmp/runc-ck/bundle/rootfs",
        "--freeze-cgroup=/sys/fs/cgroup/freezer/ck1", "--ghost-limit=1048576",
        "--manage-cgroups=ignore",          # the mode overrides the old bool
        "--ext-mount-map=/out:/out", "--ext-mount-map=/proc/keys:/dev/null",
        "--pre-dump-mode=splice"]


def test_runc_restore_options() -> None:
    opts = R.criu_opts(images_dir_fd=8, log_level=4, log_file="restore.log",
                       notify_scripts=True, root="/run/runc/ck1/criu-root",
                       ext_mnt=[R.ext_mount_map(key="/out", val="/var/tmp/runc-ck/out")],
                       manage_cgroups=True, manage_cgroups_mode=R.IGNORE,
                       cg_root=[R.cgroup_root(ctrl="cpu", path="/ck1"),
                                R.cgroup_root(ctrl="", path="/ck1"),
                                R.cgroup_root(path="/top")],
                       rst_sibling=True)
    assert words(opts) == [
        "--restore-sibling", "--root=/run/runc/ck1/criu-root", "--manage-cgroups=ignore",
        "--cgroup-root=cpu:/ck1", "--cgroup-root=/ck1", "--cgroup-root=/top",
        "--ext-mount-map=/out:/var/tmp/runc-ck/out"]


@pytest.mark.parametrize("opts, named", [
    # criu has them and procsnap refuses them on its command line too
    (R.criu_opts(images_dir_fd=8, lsm_profile="apparmor:x"), "criu_opts.lsm_profile"),
    (R.criu_opts(images_dir_fd=8, track_mem=True), "criu_opts.track_mem"),
    (R.criu_opts(images_dir_fd=8, parent_img="../prev"), "criu_opts.parent_img"),
    (R.criu_opts(images_dir_fd=8, lazy_pages=True), "criu_opts.lazy_pages"),
    (R.criu_opts(images_dir_fd=8, ps=R.criu_page_server_info(port=1)), "criu_opts.ps"),
    (R.criu_opts(images_dir_fd=8, leave_stopped=True), "criu_opts.leave_stopped"),
    (R.criu_opts(images_dir_fd=8, ext_unix_sk=True), "criu_opts.ext_unix_sk"),
    (R.criu_opts(images_dir_fd=8, join_ns=[R.join_namespace(ns="net", ns_file="/x")]),
     "criu_opts.join_ns"),
    (R.criu_opts(images_dir_fd=8, veths=[R.criu_veth_pair(if_in="a", if_out="b")]),
     "criu_opts.veths"),
    (R.criu_opts(images_dir_fd=8, exec_cmd=["true"]), "criu_opts.exec_cmd"),
    (R.criu_opts(images_dir_fd=8, pidfd_store_sk=5), "criu_opts.pidfd_store_sk"),
    (R.criu_opts(images_dir_fd=8, cpu_cap=1), "criu_opts.cpu_cap"),
    (R.criu_opts(images_dir_fd=8, empty_ns=0x20000), "criu_opts.empty_ns 0x20000"),
])
def test_unhonoured_fields_are_refused_by_name(opts: Any, named: str) -> None:
    field = rpc.BY_FIELD[named.split()[0].split(".")[1]]
    o = O.BY_NAME.get(field.opt)
    if o is not None and o.how != O.REFUSE and named.count(" ") == 0:
        # procsnap's command line has it now (e.g. pre-dump's options):
        # the field maps to it, as the table says
        assert any(w.startswith(f"--{o.name}") for w in words(opts)), words(opts)
        return
    msg = refusal(opts)
    assert msg.startswith(named), msg
    assert "not supported by procsnap" in msg or "criu takes only" in msg, msg


def test_false_and_default_values_ask_for_nothing() -> None:
    """A flag sent false asks for nothing (a boolean option is turned off
    over a config file: --no-NAME); criu_opts' defaults as go-criu leaves
    them (cpu_cap 0xffffffff) are no request."""
    opts = R.criu_opts(images_dir_fd=8, leave_running=False, orphan_pts_master=False,
                       evasive_devices=False, track_mem=False, shell_job=False,
                       tcp_established=False, cpu_cap=0xffffffff, empty_ns=0)
    assert words(opts) == ["--no-tcp-established", "--no-evasive-devices", "--no-shell-job",
                           "--no-orphan-pts-master", "--no-track-mem"]
    assert words(R.criu_opts(images_dir_fd=8)) == []


def test_fields_mapped_one_to_one() -> None:
    opts = R.criu_opts(images_dir_fd=8, leave_running=True, tcp_established=True,
                       shell_job=True, file_locks=True, link_remap=True, tcp_close=True,
                       tcp_skip_in_flight=True, force_irmap=True, display_stats=True,
                       external=["unix[12]", "mnt[/a]:k"], unix_sk_ino=[R.unix_sk(inode=7)],
                       inherit_fd=[R.inherit_fd(key="unix[5]", fd=4)], auto_ext_mnt=True,
                       ext_sharing=True, ext_masters=True, enable_fs=["hugetlbfs"],
                       timeout=10, network_lock=R.NFTABLES, irmap_scan_paths=["/x"],
                       manage_cgroups_mode=R.DEFAULT)
    assert words(opts) == [
        "--leave-running", "--external=unix[7]", "--tcp-established", "--skip-in-flight",
        "--tcp-close", "--shell-job", "--file-locks", "--link-remap", "--force-irmap",
        "--display-stats", "--enable-external-sharing", "--enable-external-masters",
        "--timeout=10", "--external=unix[12]", "--external=mnt[/a]:k",
        "--enable-fs=hugetlbfs", "--irmap-scan-path=/x", "--manage-cgroups=soft",
        "--ext-mount-map=auto", "--inherit-fd=fd[4]:unix[5]", "--network-lock=nftables"]
    # inherit_fd names fds of criu's own process: swrk only, as criu
    assert "standalone service" in refusal(
        R.criu_opts(images_dir_fd=8, inherit_fd=[R.inherit_fd(key="unix[5]", fd=4)]),
        swrk=False)


def test_a_new_command_line_option_serves_its_field() -> None:
    """The contract with the container work (branch runc): once options.TABLE
    has an option an RPC-only field maps to, the field is honoured with no
    change here."""
    assert words(R.criu_opts(images_dir_fd=8, orphan_pts_master=True)) == [
        "--orphan-pts-master"]
    assert words(R.criu_opts(images_dir_fd=8, empty_ns=0x40000000)) == ["--empty-ns=net"]


def test_unknown_fields_are_found_by_number() -> None:
    known = R.criu_req(type=R.DUMP, opts=R.criu_opts(images_dir_fd=3, pid=9))
    assert rpc._unknown_fields(known.SerializeToString()) == []
    inner = b"\x08\x03" + b"\xf8\x07\x01"            # images_dir_fd=3, field 127 = 1
    raw = b"\x08\x01" + b"\x12" + bytes([len(inner)]) + inner + b"\xa0\x01\x05"  # req field 20
    assert rpc._unknown_fields(raw) == ["criu_opts field 127", "criu_req field 20"]
    assert rpc._raw_type(b"\x08\x63") == 99
    assert rpc._raw_type(b"\x12") is None             # truncated


def test_notify_passes_an_fd_and_reads_the_answer() -> None:
    """criu's orphan-pts-master sends an fd with its NOTIFY (SCM_RIGHTS);
    the client's answer decides: success goes on, failure stops."""
    import array
    import os
    import threading
    client, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rq = rpc.Request(ours, True)
    r, w = os.pipe()
    got: list[Any] = []

    def serve_client() -> None:
        for ok in (True, False):
            data, anc, _, _ = client.recvmsg(1 << 16, socket.CMSG_SPACE(4))
            resp = R.criu_resp.FromString(data)
            fds = [array.array("i", c[2])[0] for c in anc if c[1] == socket.SCM_RIGHTS]
            got.append((resp.type, resp.notify.script, resp.notify.HasField("pid"), fds))
            for fd in fds:
                os.close(fd)
            client.send(R.criu_req(type=R.NOTIFY, notify_success=ok).SerializeToString())
    th = threading.Thread(target=serve_client)
    th.start()
    try:
        assert rq.notify("orphan-pts-master", None, w) == 0
        assert rq.notify("post-restore", 77, None) == 1
        assert rq.notify_error == "notify post-restore: the client answered failure"
    finally:
        th.join(10)
        for fd in (r, w):
            os.close(fd)
        client.close()
        ours.close()
    assert [(g[0], g[1], g[2], len(g[3])) for g in got] == [
        (R.NOTIFY, "orphan-pts-master", False, 1), (R.NOTIFY, "post-restore", True, 0)]


def test_fast_version_answer_is_rpc_pys() -> None:
    """swrk answers go-criu's plain VERSION before importing protobuf: its
    bytes must be exactly what rpc.py's VERSION answer serializes to."""
    from procsnap.criu import swrk
    client, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        rq = rpc.Request(ours, True)
        rpc.serve(rq, R.criu_req(type=R.VERSION), "VERSION", lambda *a, **k: None)
        assert client.recv(4096) == swrk.VERSION_RESP
        assert R.criu_req(type=R.VERSION).SerializeToString() == swrk.VERSION_REQ
        # the fast path answers only the plain request, and leaves others queued
        client.send(R.criu_req(type=R.VERSION, keep_open=True).SerializeToString())
        assert not swrk.fast_version(ours.fileno())
        assert ours.recv(4096) == R.criu_req(type=R.VERSION, keep_open=True).SerializeToString()
        client.send(swrk.VERSION_REQ)
        assert swrk.fast_version(ours.fileno())
        assert R.criu_resp.FromString(client.recv(4096)).version.minor_number == 2
    finally:
        client.close()
        ours.close()


def _runc_request(restore: bool) -> Any:
    """Every criu_opts field runc 1.1.5 sets (container_linux.go), falses and
    zeros included, for its default container."""
    o = R.criu_opts(images_dir_fd=8, log_level=4, root="/rootfs", manage_cgroups=True,
                    notify_scripts=True, shell_job=False, tcp_established=False,
                    ext_unix_sk=False, file_locks=False, empty_ns=0x40000000,
                    orphan_pts_master=True, auto_dedup=False, lazy_pages=False,
                    manage_cgroups_mode=R.IGNORE, config_file="/etc/criu/runc.conf",
                    ext_mnt=[R.ext_mount_map(key="/out", val="/out")])
    if restore:
        o.evasive_devices = True
        o.rst_sibling = True
        o.log_file = "restore.log"
        o.cg_root.add(ctrl="cpu", path="/ck1")
        o.inherit_fd.add(key="pipe:[123]", fd=1)
    else:
        o.pid = 1234
        o.leave_running = False
        o.log_file = "dump.log"
        o.freeze_cgroup = "/sys/fs/cgroup/freezer/ck1"
    return o


def _refused_fields(opts: Any) -> set[str]:
    out = set()
    for fd, value in opts.ListFields():
        one = R.criu_opts(images_dir_fd=8)
        if fd.name == "images_dir_fd":
            continue
        if rpc._repeated(opts, fd.name):
            getattr(one, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(one, fd.name).CopyFrom(value)
        else:
            setattr(one, fd.name, value)
        try:
            words(one)
        except rpc.BadRequest:
            out.add(fd.name)
    return out


@pytest.mark.parametrize("restore", [False, True], ids=["dump", "restore"])
def test_what_runc_sends_is_honoured_or_refused_by_name(restore: bool) -> None:
    """Everything runc sends maps onto procsnap's command line (branch runc
    added orphan-pts-master, empty-ns and evasive-devices to options.TABLE).
    (The inherit_fd of a pipe is checked where the command line checks it:
    --inherit-fd.)"""
    assert _refused_fields(_runc_request(restore)) == set()
