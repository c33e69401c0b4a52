"""procsnap.images: the kind table, framing, errors, show, and crit compatibility.

The crit tests run Debian's ``crit`` (package ``criu``) on images we wrote
and check that it decodes them and sees the values we put in.  crit is
required: without it those tests fail and say so.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from procsnap.errors import ImageError
from procsnap.images import (
    IMG_COMMON_MAGIC,
    IMG_SERVICE_MAGIC,
    KINDS,
    PE_PRESENT,
    ImageWriter,
    decode_dir,
    decode_file,
    image_path,
    iter_entries,
    kind,
    kind_by_file_name,
    kind_by_magic,
    open_pages_writer,
    read_entries,
    read_image,
    read_one,
    write_image,
    write_one,
)
from procsnap.images.pb import (
    cgroup_pb2,
    core_pb2,
    creds_pb2,
    eventfd_pb2,
    eventpoll_pb2,
    ext_file_pb2,
    fdinfo_pb2,
    fh_pb2,
    fifo_pb2,
    file_lock_pb2,
    fs_pb2,
    fsnotify_pb2,
    ghost_file_pb2,
    inventory_pb2,
    ipc_mqueue_pb2,
    ipc_msg_pb2,
    ipc_sem_pb2,
    ipc_shm_pb2,
    ipc_var_pb2,
    memfd_pb2,
    mm_pb2,
    mnt_pb2,
    ns_pb2,
    packet_sock_pb2,
    pagemap_pb2,
    pidns_pb2,
    pipe_data_pb2,
    pipe_pb2,
    pstree_pb2,
    regfile_pb2,
    remap_file_path_pb2,
    rlimit_pb2,
    sa_pb2,
    seccomp_pb2,
    siginfo_pb2,
    signalfd_pb2,
    sk_inet_pb2,
    sk_netlink_pb2,
    sk_packet_pb2,
    sk_unix_pb2,
    stats_pb2,
    tcp_stream_pb2,
    timens_pb2,
    timer_pb2,
    timerfd_pb2,
    tty_pb2,
    tun_pb2,
    userns_pb2,
    utsns_pb2,
    netdev_pb2,
    vma_pb2,
)

CRIT = "/usr/bin/crit"
REPO = Path(__file__).resolve().parents[2]


def M(cls: type[Message], **fields: Any) -> Message:
    """Build a message from field names (nested dicts, enum names allowed)."""
    return json_format.ParseDict(fields, cls())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------
# realistic samples, one per kind with a message

FOWN = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}
SK_OPTS = {
    "so_sndbuf": 212992,
    "so_rcvbuf": 212992,
    "so_snd_tmo_sec": 0,
    "so_snd_tmo_usec": 0,
    "so_rcv_tmo_sec": 0,
    "so_rcv_tmo_usec": 0,
}
GPREGS = {
    n: 0
    for n in (
        "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss "
        "fs_base gs_base ds es fs gs"
    ).split()
}
GPREGS.update(ip=0x401136, sp=0x7FFC0DE0F6A8, cs=0x33, ss=0x2B, flags=0x246, orig_ax=0xE6, fs_base=0x7F11D4A3B740)
FPREGS = {
    "cwd": 0x37F,
    "swd": 0,
    "twd": 0,
    "fop": 0,
    "rip": 0,
    "rdp": 0,
    "mxcsr": 0x1F80,
    "mxcsr_mask": 0xFFFF,
    "st_space": [0] * 32,
    "xmm_space": [0] * 64,
    "xsave": {"xstate_bv": 0x7, "ymmh_space": [0] * 64},
}
TIMEVAL0 = {"isec": 0, "iusec": 0, "vsec": 0, "vusec": 0}
CORE = M(
    core_pb2.core_entry,
    mtype="X86_64",
    thread_info={"clear_tid_addr": 0x7F11D4A3BA10, "gpregs": GPREGS, "fpregs": FPREGS},
    tc={
        "task_state": 1,
        "exit_code": 0,
        "personality": 0,
        "flags": 0x400100,
        "blk_sigset": 0,
        "comm": "sleeper",
        "timers": {"real": TIMEVAL0, "virt": TIMEVAL0, "prof": TIMEVAL0},
        "rlimits": {"rlimits": [{"cur": 8388608, "max": 18446744073709551615}]},
        "sigactions": [{"sigaction": 0, "flags": 0, "restorer": 0, "mask": 0}],
        "child_subreaper": False,
        "stop_signo": 0,
    },
    ids={"vm_id": 1, "files_id": 2, "fs_id": 3, "sighand_id": 4, "pid_ns_id": 5},
    thread_core={
        "futex_rla": 0x7F11D4A3BA20,
        "futex_rla_len": 24,
        "sched_nice": 0,
        "sched_policy": 0,
        "creds": {
            "uid": 1000, "gid": 1000, "euid": 1000, "egid": 1000, "suid": 1000,
            "sgid": 1000, "fsuid": 1000, "fsgid": 1000,
            "cap_inh": [0, 0], "cap_prm": [0, 0], "cap_eff": [0, 0], "cap_bnd": [0xFFFFFFFF, 0x1FF],
            "secbits": 0, "groups": [1000],
        },
        "seccomp_mode": "disabled",
        "comm": "sleeper",
        "rseq_entry": {"rseq_abi_pointer": 0x7F11D4A3BE00, "rseq_abi_size": 32, "signature": 0x53053053},
    },
)
VMA = {
    "start": 0x400000, "end": 0x401000, "pgoff": 0, "shmid": 0,
    "prot": 5, "flags": 2, "status": 0x41, "fd": -1,
}
REG = {
    "id": 3, "flags": 0x8002, "pos": 0, "fown": FOWN, "name": "/tmp/data.txt",
    "mnt_id": 25, "size": 42, "mode": 0o100644,
}
PIPE = {"id": 5, "pipe_id": 123456, "flags": 0, "fown": FOWN}
TTY_INFO = {
    "id": 7, "type": "PTY", "locked": False, "exclusive": False, "packet_mode": False,
    "sid": 100, "pgrp": 100, "rdev": 0x8800,
    "termios": {
        "c_iflag": 0x500, "c_oflag": 5, "c_cflag": 0xBF, "c_lflag": 0x8A3B, "c_line": 0,
        "c_ispeed": 15, "c_ospeed": 15, "c_cc": [3, 28, 127, 21, 4, 0, 1, 0, 17, 19, 26, 0, 18, 15, 23, 22, 0, 0, 0],
    },
    "winsize": {"ws_row": 24, "ws_col": 80, "ws_xpixel": 0, "ws_ypixel": 0},
    "pty": {"index": 3},
}
DUMP_STATS = {
    "freezing_time": 120, "frozen_time": 5400, "memdump_time": 800, "memwrite_time": 300,
    "pages_scanned": 512, "pages_skipped_parent": 0, "pages_written": 77, "pages_lazy": 0,
}
FH = {"bytes": 8, "type": 1, "handle": [0x1234, 0] + [0] * 14}

# kind -> (entries as (message, raw tail)), (crit probe: path into entries, value)
Sample = tuple[list[tuple[Message, bytes]], tuple[tuple[Any, ...], Any]]
IPC_DESC = {"key": 0x1234, "uid": 1000, "gid": 1000, "cuid": 0, "cgid": 0, "mode": 0o640, "id": 32769}

SAMPLES: dict[str, Sample] = {
    "inventory": (
        [(M(inventory_pb2.inventory_entry, img_version=2, fdinfo_per_id=True, ns_per_id=True,
            root_ids={"vm_id": 1, "files_id": 2, "fs_id": 3, "sighand_id": 4},
            lsmtype="NO_LSM", dump_uptime=123456789, network_lock_method=1), b"")],
        ((0, "img_version"), 2),
    ),
    "pstree": (
        [(M(pstree_pb2.pstree_entry, pid=4242, ppid=1, pgid=4242, sid=4242, threads=[4242, 4243]), b"")],
        ((0, "threads", 1), 4243),
    ),
    "core": ([(CORE, b"")], ((0, "thread_info", "gpregs", "ip"), 0x401136)),
    "ids": (
        [(M(core_pb2.task_kobj_ids_entry, vm_id=1, files_id=2, fs_id=3, sighand_id=4, mnt_ns_id=9), b"")],
        ((0, "mnt_ns_id"), 9),
    ),
    "mm": (
        [(M(mm_pb2.mm_entry, mm_start_code=0x400000, mm_end_code=0x401000, mm_start_data=0x403000,
            mm_end_data=0x404000, mm_start_stack=0x7FFC0DE10000, mm_start_brk=0x1F4D000,
            mm_brk=0x1F6E000, mm_arg_start=0x7FFC0DE11000, mm_arg_end=0x7FFC0DE11010,
            mm_env_start=0x7FFC0DE11010, mm_env_end=0x7FFC0DE11FE0, exe_file_id=3,
            mm_saved_auxv=[33, 0x7FFC0DF9A000, 0, 0], dumpable=1,
            vmas=[VMA, dict(VMA, start=0x401000, end=0x402000, prot=7, status=0x205, shmid=3, fd=3)]), b"")],
        ((0, "vmas", 1, "end"), 0x402000),
    ),
    "pagemap": (
        [(M(pagemap_pb2.pagemap_head, pages_id=1), b""),
         (M(pagemap_pb2.pagemap_entry, vaddr=0x400000, nr_pages=1, flags=PE_PRESENT), b""),
         (M(pagemap_pb2.pagemap_entry, vaddr=0x7FFC0DE0F000, nr_pages=3, flags=PE_PRESENT), b"")],
        ((2, "nr_pages"), 3),
    ),
    "shmem-pagemap": (
        [(M(pagemap_pb2.pagemap_head, pages_id=2), b""),
         (M(pagemap_pb2.pagemap_entry, vaddr=0, nr_pages=4, flags=PE_PRESENT), b"")],
        ((1, "nr_pages"), 4),
    ),
    "fs": ([(M(fs_pb2.fs_entry, cwd_id=10, root_id=11, umask=0o22), b"")], ((0, "umask"), 0o22)),
    "files": (
        [(M(fdinfo_pb2.file_entry, type="REG", id=3, reg=REG), b""),
         (M(fdinfo_pb2.file_entry, type="PIPE", id=5, pipe=PIPE), b"")],
        ((0, "reg", "name"), "/tmp/data.txt"),
    ),
    "fdinfo": (
        [(M(fdinfo_pb2.fdinfo_entry, id=3, flags=0, type="REG", fd=0), b""),
         (M(fdinfo_pb2.fdinfo_entry, id=5, flags=1, type="PIPE", fd=7), b"")],
        ((1, "fd"), 7),
    ),
    "tty-info": ([(M(tty_pb2.tty_info_entry, **TTY_INFO), b"")], ((0, "winsize", "ws_col"), 80)),
    "tty-data": ([(M(tty_pb2.tty_data_entry, tty_id=7, data=b64(b"ls\n")), b"")], ((0, "tty_id"), 7)),
    "ghost-file": (
        [(M(ghost_file_pb2.ghost_file_entry, uid=0, gid=0, mode=0o100600, dev=2049, ino=131,
            size=11, atim={"tv_sec": 1700000000, "tv_usec": 0},
            mtim={"tv_sec": 1700000000, "tv_usec": 5}), b"hello ghost")],
        ((0, "ino"), 131),
    ),
    "remap-fpath": (
        [(M(remap_file_path_pb2.remap_file_path_entry, orig_id=3, remap_id=0x80000001, remap_type="GHOST"), b"")],
        ((0, "remap_id"), 0x80000001),
    ),
    "pipes-data": (
        [(M(pipe_data_pb2.pipe_data_entry, pipe_id=123456, bytes=6, size=65536), b"queued"),
         (M(pipe_data_pb2.pipe_data_entry, pipe_id=123457, bytes=0), b"")],
        ((0, "pipe_id"), 123456),
    ),
    "fifo-data": (
        [(M(pipe_data_pb2.pipe_data_entry, pipe_id=99, bytes=3), b"abc")],
        ((0, "bytes"), 3),
    ),
    "unixsk": (
        [(M(sk_unix_pb2.unix_sk_entry, id=8, ino=33445, type=1, state=7, flags=0, uflags=0,
            backlog=5, peer=0, fown=FOWN, opts=SK_OPTS, name=b64(b"/tmp/sock"),
            file_perms={"mode": 0o140755, "uid": 0, "gid": 0}), b"")],
        ((0, "ino"), 33445),
    ),
    "inetsk": (
        [(M(sk_inet_pb2.inet_sk_entry, id=9, ino=5566, family=2, type=1, proto=6, state=10,
            src_port=8080, dst_port=0, flags=0x800, backlog=128, src_addr=[0x0100007F],
            fown=FOWN, opts=dict(SK_OPTS, reuseaddr=True)), b"")],
        ((0, "src_port"), 8080),
    ),
    "sk-queues": (
        [(M(sk_packet_pb2.sk_packet_entry, id_for=8, length=5), b"hello")],
        ((0, "id_for"), 8),
    ),
    "tcp-stream": (
        [(M(tcp_stream_pb2.tcp_stream_entry, inq_len=2, inq_seq=1000, outq_len=3, outq_seq=2000,
            opt_mask=0x7, snd_wscale=7, mss_clamp=65483, rcv_wscale=7, timestamp=12345,
            nodelay=True, unsq_len=0), b"inout")],
        ((0, "mss_clamp"), 65483),
    ),
    "memfd": (
        [(M(memfd_pb2.memfd_inode_entry, name="memfd:buf", uid=0, gid=0, size=4096, shmid=77,
            seals=0, inode_id=1), b"")],
        ((0, "name"), "memfd:buf"),
    ),
    "eventpoll-tfd": (
        [(M(eventpoll_pb2.eventpoll_tfd_entry, id=12, tfd=4, events=1, data=4), b"")],
        ((0, "tfd"), 4),
    ),
    "inotify-wd": (
        [(M(fsnotify_pb2.inotify_wd_entry, id=13, i_ino=1234, mask=0x100, ignored_mask=0,
            s_dev=2049, wd=1, f_handle=FH), b"")],
        ((0, "i_ino"), 1234),
    ),
    "fanotify-mark": (
        [(M(fsnotify_pb2.fanotify_mark_entry, id=14, type="INODE", mflags=0, mask=0x20,
            ignored_mask=0, s_dev=2049, ie={"i_ino": 77, "f_handle": FH}), b"")],
        ((0, "mask"), 0x20),
    ),
    "filelocks": (
        [(M(file_lock_pb2.file_lock_entry, flag=1, type=1, pid=4242, fd=3, start=0, len=0), b"")],
        ((0, "pid"), 4242),
    ),
    "seccomp": (
        [(M(seccomp_pb2.seccomp_entry, seccomp_filters=[{"filter": b64(b"\x06\x00\x00\x00\x00\x00\xff\x7f"), "flags": 0}]), b"")],
        ((0, "seccomp_filters", 0, "flags"), 0),
    ),
    "cgroup": (
        [(M(cgroup_pb2.cgroup_entry, sets=[{"id": 1, "ctls": [{"name": "", "path": "/user.slice"}]}],
            controllers=[{"cnames": [""], "dirs": [{"dir_name": "user.slice"}]}]), b"")],
        ((0, "sets", 0, "ctls", 0, "path"), "/user.slice"),
    ),
    "ipcns-var": (
        [(M(ipc_var_pb2.ipc_var_entry, sem_ctls=[32000, 1024000000, 500, 32000], msg_ctlmax=8192,
            msg_ctlmnb=16384, msg_ctlmni=32000, auto_msgmni=0, shm_ctlmax=1 << 40, shm_ctlall=1 << 40,
            shm_ctlmni=4096, shm_rmid_forced=0, mq_queues_max=256, mq_msg_max=10,
            mq_msgsize_max=8192, shm_next_id=7), b"")],
        ((0, "msg_ctlmnb"), 16384),
    ),
    "ipcns-shm": (
        [(M(ipc_shm_pb2.ipc_shm_entry, desc=IPC_DESC, size=8192, in_pagemaps=True), b"")],
        ((0, "size"), 8192),
    ),
    "ipcns-sem": (
        [(M(ipc_sem_pb2.ipc_sem_entry, desc=IPC_DESC, nsems=3), b"\x01\x00\x02\x00\x07\x00\x00\x00")],
        ((0, "nsems"), 3),
    ),
    "ipcns-msg": (
        [(M(ipc_msg_pb2.ipc_msg_entry, desc=IPC_DESC, qbytes=16384, qnum=2), b""),
         (M(ipc_msg_pb2.ipc_msg, mtype=1, msize=5), b"hello\0\0\0"),
         (M(ipc_msg_pb2.ipc_msg, mtype=7, msize=8), b"worlds!!")],
        ((0, "qnum"), 2),
    ),
    "ipcns-mq": (
        [(M(ipc_mqueue_pb2.ipc_mqueue_entry, name="q", uid=0, gid=0, mode=0o600, maxmsg=10,
            msgsize=64, curmsgs=1), b""),
         (M(ipc_mqueue_pb2.ipc_mqueue_msg, prio=3, msize=2), b"hi")],
        ((0, "name"), "q"),
    ),
    "userns": (
        [(M(userns_pb2.userns_entry, uid_map=[{"first": 0, "lower_first": 100000, "count": 65536}],
            gid_map=[{"first": 0, "lower_first": 100000, "count": 65536}]), b"")],
        ((0, "uid_map", 0, "lower_first"), 100000),
    ),
    "utsns": ([(M(utsns_pb2.utsns_entry, nodename="box", domainname="(none)"), b"")], ((0, "nodename"), "box")),
    "mountpoints": (
        [(M(mnt_pb2.mnt_entry, fstype=5, mnt_id=63, root_dev=39, parent_mnt_id=43, flags=0x200000,
            root="/", mountpoint="/tmp/t", source="tmpfs", options="size=1024k,mode=750",
            shared_id=1, master_id=0, fsname="tmpfs", sb_flags=0), b"")],
        ((0, "mountpoint"), "/tmp/t"),
    ),
    "netdev": (
        [(M(netdev_pb2.net_device_entry, type="LOOPBACK", ifindex=1, mtu=16384, flags=0x10049,
            name="lo", conf4=[{"type": "CTL_32", "iarg": 1}]), b"")],
        ((0, "mtu"), 16384),
    ),
    "netns": (
        [(M(netdev_pb2.netns_entry, unix_conf=[{"type": "CTL_32", "iarg": 10}],
            procsnap_sysctls=[{"path": "ipv4/ip_default_ttl", "value": "77"}]), b"")],
        ((0, "unix_conf", 0, "iarg"), 10),
    ),
    "pidns": ([(M(pidns_pb2.pidns_entry, ext_key="pidns-ext"), b"")], ((0, "ext_key"), "pidns-ext")),
    "timens": (
        [(M(timens_pb2.timens_entry, monotonic={"tv_sec": 10, "tv_nsec": 0}, boottime={"tv_sec": 20, "tv_nsec": 5}), b"")],
        ((0, "boottime", "tv_sec"), 20),
    ),
    "stats": ([(M(stats_pb2.stats_entry, dump=DUMP_STATS), b"")], ((0, "dump", "pages_written"), 77)),
    "stats-restore": (
        [(M(stats_pb2.stats_entry, restore={"pages_compared": 0, "pages_skipped_cow": 0, "forking_time": 3, "restore_time": 900}), b"")],
        ((0, "restore", "restore_time"), 900),
    ),
    "irmap-cache": (
        [(M(fh_pb2.irmap_cache_entry, dev=2049, inode=5151, path="/etc/hosts"), b"")],
        ((0, "path"), "/etc/hosts"),
    ),
    "reg-files": ([(M(regfile_pb2.reg_file_entry, **REG), b"")], ((0, "size"), 42)),
    "pipes": ([(M(pipe_pb2.pipe_entry, **PIPE), b"")], ((0, "pipe_id"), 123456)),
    "fifo": ([(M(fifo_pb2.fifo_entry, id=6, pipe_id=55, regf_id=3), b"")], ((0, "regf_id"), 3)),
    "tty-files": (
        [(M(tty_pb2.tty_file_entry, id=7, tty_info_id=7, flags=0x8002, fown=FOWN), b"")],
        ((0, "tty_info_id"), 7),
    ),
    "eventfd": (
        [(M(eventfd_pb2.eventfd_file_entry, id=10, flags=0x800, fown=FOWN, counter=3), b"")],
        ((0, "counter"), 3),
    ),
    "eventpoll": (
        [(M(eventpoll_pb2.eventpoll_file_entry, id=11, flags=2, fown=FOWN,
            tfd=[{"id": 11, "tfd": 4, "events": 1, "data": 4}]), b"")],
        ((0, "tfd", 0, "tfd"), 4),
    ),
    "signalfd": (
        [(M(signalfd_pb2.signalfd_entry, id=15, flags=0x800, fown=FOWN, sigmask=1 << 9), b"")],
        ((0, "sigmask"), 512),
    ),
    "timerfd": (
        [(M(timerfd_pb2.timerfd_entry, id=16, flags=2, fown=FOWN, clockid=1, ticks=0,
            settime_flags=0, vsec=1, vnsec=0, isec=1, insec=0), b"")],
        ((0, "clockid"), 1),
    ),
    "inotify": (
        [(M(fsnotify_pb2.inotify_file_entry, id=13, flags=0x800, fown=FOWN,
            wd=[{"id": 13, "i_ino": 1234, "mask": 0x100, "ignored_mask": 0, "s_dev": 2049, "wd": 1, "f_handle": FH}]), b"")],
        ((0, "wd", 0, "wd"), 1),
    ),
    "fanotify": (
        [(M(fsnotify_pb2.fanotify_file_entry, id=14, flags=2, fown=FOWN, faflags=0, evflags=0), b"")],
        ((0, "id"), 14),
    ),
    "ns-files": (
        [(M(ns_pb2.ns_file_entry, id=17, ns_id=3, ns_cflag=0x20000000, flags=0), b"")],
        ((0, "ns_cflag"), 0x20000000),
    ),
    "ext-files": ([(M(ext_file_pb2.ext_file_entry, id=18, fown=FOWN), b"")], ((0, "id"), 18)),
    "packetsk": (
        [(M(packet_sock_pb2.packet_sock_entry, id=19, type=3, protocol=768, flags=2, ifindex=1,
            fown=FOWN, opts=SK_OPTS, version=0, reserve=0, aux_data=False, orig_dev=False,
            vnet_hdr=False, loss=False, timestamp=0, copy_thresh=0), b"")],
        ((0, "protocol"), 768),
    ),
    "netlinksk": (
        [(M(sk_netlink_pb2.netlink_sk_entry, id=20, ino=777, protocol=0, state=0, flags=2,
            portid=1234, dst_portid=0, dst_group=0, fown=FOWN, opts=SK_OPTS), b"")],
        ((0, "portid"), 1234),
    ),
    "tunfile": ([(M(tun_pb2.tunfile_entry, id=21, netdev="tun0"), b"")], ((0, "netdev"), "tun0")),
    "vmas": ([(M(vma_pb2.vma_entry, **VMA), b"")], ((0, "start"), 0x400000)),
    "creds": (
        [(M(creds_pb2.creds_entry, uid=1, gid=2, euid=1, egid=2, suid=1, sgid=2, fsuid=1, fsgid=2, secbits=0), b"")],
        ((0, "gid"), 2),
    ),
    "sigacts": (
        [(M(sa_pb2.sa_entry, sigaction=0x401000, flags=0x4000000, restorer=0x7F0000001000, mask=0), b"")],
        ((0, "sigaction"), 0x401000),
    ),
    "itimers": ([(M(timer_pb2.itimer_entry, isec=1, iusec=0, vsec=0, vusec=5), b"")], ((0, "vusec"), 5)),
    "posix-timers": (
        [(M(timer_pb2.posix_timer_entry, it_id=0, clock_id=1, si_signo=14, it_sigev_notify=0,
            sival_ptr=0, overrun=0, isec=0, insec=0, vsec=2, vnsec=0), b"")],
        ((0, "si_signo"), 14),
    ),
    "rlimit": ([(M(rlimit_pb2.rlimit_entry, cur=1024, max=4096), b"")], ((0, "max"), 4096)),
    "signal-s": (
        [(M(siginfo_pb2.signal_queue_entry, signals=[{"siginfo": b64(bytes(128))}]), b"")],
        ((0, "signals", 0, "siginfo"), None),
    ),
    "signal-p": ([(M(siginfo_pb2.signal_queue_entry), b"")], ((), None)),
}

# crit 3.17 (Debian bookworm) has no handler for the SIGNAL magic, so it
# cannot decode signal-s/signal-p images at all (neither CRIU's nor ours).
CRIT_CANNOT = {"signal-s": "crit 3.17 has no SIGNAL handler", "signal-p": "crit 3.17 has no SIGNAL handler",
               "ipcns-sem": "crit shows the values as a list (test_crit_decodes_ipc)",
               "ipcns-msg": "crit nests the messages in their queue (test_crit_decodes_ipc)",
               "ipcns-mq": "procsnap's own image: CRIU saves no POSIX message queues"}

FRAMED = [k.name for k in KINDS if k.message is not None]


def _write_sample(d: Path, name: str, ident: int | None = None) -> str:
    k = kind(name)
    if ident is None and k.has_ident:
        ident = 1 if "%x" not in k.pattern else 0x1F
    with ImageWriter(str(d), name, ident) as w:
        for msg, tail in SAMPLES[name][0]:
            w.write(msg)
            if tail:
                w.write_raw(tail)
    return w.path


# --------------------------------------------------------------------------
# the table


def test_every_framed_kind_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(FRAMED)


def test_prefix_rule() -> None:
    for k in KINDS:
        if k.name == "inventory":
            assert (k.header, k.prefix) == ("bare", None)
        elif k.name in ("pages", "tmpfs-dev", "ifaddr", "route", "route6", "rule", "rule6",
                        "iptables", "ip6tables", "nftables"):  # raw page data, a tmpfs's tar.gz, tools' output
            assert (k.header, k.magic, k.message) == ("raw", 0, None)
        elif k.name in ("stats", "stats-restore", "irmap-cache"):
            assert k.prefix == IMG_SERVICE_MAGIC
        else:
            assert k.prefix == IMG_COMMON_MAGIC, k.name


def test_magics_are_criu_values() -> None:
    # A few spot checks against criu/include/magic.h.
    assert kind("inventory").magic == 0x58313116
    assert kind("core").magic == 0x55053847
    assert kind("pagemap").magic == 0x56084025
    assert kind("files").magic == 0x56303138
    assert kind("stats").magic == 0x57093306
    assert kind_by_magic(0x55053847) is kind("core")
    assert kind_by_magic(0x56084025) is kind("pagemap")  # shared with shmem-pagemap
    shared = {("pagemap", "shmem-pagemap"), ("stats", "stats-restore"), ("signal-s", "signal-p")}
    seen: dict[int, str] = {}
    for k in KINDS:
        if k.header == "raw":
            continue  # no magic at all
        if k.magic in seen:
            assert (seen[k.magic], k.name) in shared, k.name
        seen.setdefault(k.magic, k.name)


def test_image_path_follows_criu_names(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert image_path(d, "core", 42) == os.path.join(d, "core-42.img")
    assert image_path(d, "pagemap", 7) == os.path.join(d, "pagemap-7.img")
    assert image_path(d, "pages", 1) == os.path.join(d, "pages-1.img")
    assert image_path(d, "ghost-file", 31) == os.path.join(d, "ghost-file-1f.img")
    assert image_path(d, "tcp-stream", 0xABC) == os.path.join(d, "tcp-stream-abc.img")
    assert image_path(d, "inventory") == os.path.join(d, "inventory.img")
    assert image_path(d, "stats") == os.path.join(d, "stats-dump")
    with pytest.raises(ValueError):
        image_path(d, "core")
    with pytest.raises(ValueError):
        image_path(d, "inventory", 1)
    with pytest.raises(ValueError):
        image_path(d, "no-such-kind")


def test_kind_by_file_name() -> None:
    assert kind_by_file_name("core-42.img") is kind("core")
    assert kind_by_file_name("pagemap-shmem-3.img") is kind("shmem-pagemap")
    assert kind_by_file_name("pages-1.img") is kind("pages")
    assert kind_by_file_name("ghost-file-1f.img") is kind("ghost-file")
    assert kind_by_file_name("dump.log") is None


# --------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("name", FRAMED)
def test_round_trip(tmp_path: Path, name: str) -> None:
    path = _write_sample(tmp_path, name)
    k = kind(name)
    raw = Path(path).read_bytes()
    if k.prefix is not None:
        assert raw[:8] == k.prefix.to_bytes(4, "little") + k.magic.to_bytes(4, "little")
    else:
        assert raw[:4] == k.magic.to_bytes(4, "little")
    got = list(iter_entries(path))
    want = SAMPLES[name][0]
    assert [e.msg for e in got] == [m for m, _ in want]
    assert [e.payload for e in got] == [t for _, t in want]
    assert list(iter_entries(path, name)) == got
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_read_helpers(tmp_path: Path) -> None:
    d = str(tmp_path)
    write_one(d, "core", CORE, ident=4242)
    assert read_one(d, "core", 4242) == CORE
    assert read_image(d, "core", 4242) == [CORE]
    msgs = [m for m, _ in SAMPLES["pagemap"][0]]
    write_image(d, "pagemap", msgs, ident=1)
    assert read_image(d, "pagemap", 1) == msgs
    with pytest.raises(ImageError, match="expected exactly one entry, found 3"):
        read_one(d, "pagemap", 1)
    _write_sample(tmp_path, "pipes-data")
    entries = read_entries(d, "pipes-data")
    assert [(e.msg.pipe_id, e.payload) for e in entries] == [(123456, b"queued"), (123457, b"")]
    assert entries[0].offset == 8


def test_pages_are_raw(tmp_path: Path) -> None:
    data = bytes(range(256)) * 32  # two 4 KiB pages
    with open_pages_writer(str(tmp_path), 1) as w:
        w.write_raw(data[:4096])
        w.write_raw(data[4096:])
        with pytest.raises(TypeError):
            w.write(M(pagemap_pb2.pagemap_head, pages_id=1))
    assert Path(w.path).read_bytes() == data
    shown = decode_file(w.path)
    assert shown["magic"] == "PAGES"
    assert shown["size"] == 8192
    assert shown["pages"] == 8192 // shown["page_size"]
    assert "entries" in shown and shown["entries"] == []


def test_ghost_file_in_chunks(tmp_path: Path) -> None:
    head = M(ghost_file_pb2.ghost_file_entry, uid=0, gid=0, mode=0o100644, chunks=True, size=8192)
    c1 = M(ghost_file_pb2.ghost_chunk_entry, len=3, off=0)
    c2 = M(ghost_file_pb2.ghost_chunk_entry, len=2, off=4096)
    with ImageWriter(str(tmp_path), "ghost-file", 2) as w:
        w.write(head)
        w.write(c1)
        w.write_raw(b"abc")
        w.write(c2)
        w.write_raw(b"de")
    got = list(iter_entries(w.path))
    assert [(e.msg, e.payload) for e in got] == [(head, b""), (c1, b"abc"), (c2, b"de")]


# --------------------------------------------------------------------------
# writer safety


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with ImageWriter(str(tmp_path), "core", 1) as w:
            w.write(CORE)
            raise RuntimeError("dump failed")
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_old_image(tmp_path: Path) -> None:
    path = write_one(str(tmp_path), "core", CORE, ident=1)
    before = Path(path).read_bytes()
    with pytest.raises(RuntimeError):
        with ImageWriter(str(tmp_path), "core", 1) as w:
            w.write_raw(b"garbage")
            raise RuntimeError("dump failed")
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["core-1.img"]


def test_unfinished_image_is_not_visible(tmp_path: Path) -> None:
    w = ImageWriter(str(tmp_path), "core", 1)
    w.write(CORE)
    assert not os.path.exists(w.path)
    w.close()
    assert os.path.exists(w.path)
    assert [p for p in os.listdir(tmp_path) if p.endswith(".part")] == []


def test_missing_required_fields_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="lacks required field"):
        with ImageWriter(str(tmp_path), "core", 1) as w:
            w.write(core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64, tc={"comm": "x"}))
    assert os.listdir(tmp_path) == []


def test_wrong_message_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must be pagemap_head"):
        with ImageWriter(str(tmp_path), "pagemap", 1) as w:
            w.write(M(pagemap_pb2.pagemap_entry, vaddr=0, nr_pages=1))
    with pytest.raises(TypeError, match="must be core_entry"):
        with ImageWriter(str(tmp_path), "core", 1) as w:
            w.write(M(pstree_pb2.pstree_entry, pid=1, ppid=0, pgid=1, sid=1))
    assert os.listdir(tmp_path) == []


def test_writer_into_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ImageError) as ei:
        ImageWriter(str(missing), "core", 1)
    assert str(missing / "core-1.img") in str(ei.value)


# --------------------------------------------------------------------------
# reader errors: always ImageError, naming the file


def _err(fn: Any, *args: Any) -> ImageError:
    with pytest.raises(ImageError) as ei:
        fn(*args)
    return ei.value


def test_error_missing(tmp_path: Path) -> None:
    e = _err(read_image, str(tmp_path), "core", 1)
    assert e.path == str(tmp_path / "core-1.img")
    assert str(e) == f"{e.path}: no such image"


def test_error_empty(tmp_path: Path) -> None:
    (tmp_path / "core-1.img").write_bytes(b"")
    e = _err(read_image, str(tmp_path), "core", 1)
    assert str(e) == f"{tmp_path / 'core-1.img'}: empty file"


def test_error_wrong_magic(tmp_path: Path) -> None:
    src = write_one(str(tmp_path), "mm", SAMPLES["mm"][0][0][0], ident=1)
    os.rename(src, tmp_path / "core-1.img")
    e = _err(read_image, str(tmp_path), "core", 1)
    assert str(tmp_path / "core-1.img") in str(e)
    assert "magic 0x57492820 is not CRIU's core image (0x55053847)" in str(e)


def test_error_unknown_magic(tmp_path: Path) -> None:
    p = tmp_path / "core-1.img"
    p.write_bytes(b"\x01\x02\x03\x04\x00\x00\x00\x00")
    assert "unknown magic 0x04030201" in str(_err(decode_file, str(p)))
    assert str(p) in str(_err(lambda: list(iter_entries(str(p)))))


def test_error_truncated_header(tmp_path: Path) -> None:
    p = tmp_path / "core-1.img"
    p.write_bytes(IMG_COMMON_MAGIC.to_bytes(4, "little") + b"\x47")
    e = _err(read_image, str(tmp_path), "core", 1)
    assert str(p) in str(e) and "truncated header" in str(e)


def test_error_truncated_entry(tmp_path: Path) -> None:
    path = write_one(str(tmp_path), "core", CORE, ident=1)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-10])
    size = len(data) - 8 - 4
    e = _err(read_image, str(tmp_path), "core", 1)
    assert str(e) == f"{path}: truncated at offset 8: entry of {size} bytes, {size - 10} left"


@pytest.mark.parametrize("cut", [1, 3])
def test_error_truncated_by_a_few_bytes(tmp_path: Path, cut: int) -> None:
    # fewer bytes missing than a size word: still the entry's own check
    path = write_one(str(tmp_path), "core", CORE, ident=1)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-cut])
    size = len(data) - 8 - 4
    for read in (read_image, read_one):
        e = _err(read, str(tmp_path), "core", 1)
        assert str(e) == f"{path}: truncated at offset 8: entry of {size} bytes, {size - cut} left"


def test_error_truncated_size_word(tmp_path: Path) -> None:
    path = write_one(str(tmp_path), "core", CORE, ident=1)
    with open(path, "ab") as f:
        f.write(b"\x05\x00")
    e = _err(read_image, str(tmp_path), "core", 1)
    assert path in str(e) and "truncated at offset" in str(e)


def test_error_truncated_tail(tmp_path: Path) -> None:
    with ImageWriter(str(tmp_path), "pipes-data") as w:
        w.write(M(pipe_data_pb2.pipe_data_entry, pipe_id=1, bytes=100))
        w.write_raw(b"short")
    e = _err(read_image, str(tmp_path), "pipes-data")
    assert str(e) == f"{w.path}: truncated at offset 16: pipe_data_entry announces 100 raw bytes, 5 left"


def test_error_undecodable(tmp_path: Path) -> None:
    p = tmp_path / "core-1.img"
    junk = b"\xff\xff\xff\xff\x0f"
    header = IMG_COMMON_MAGIC.to_bytes(4, "little") + kind("core").magic.to_bytes(4, "little")
    p.write_bytes(header + len(junk).to_bytes(4, "little") + junk)
    e = _err(read_image, str(tmp_path), "core", 1)
    assert str(p) in str(e) and "cannot decode core_entry" in str(e)


def test_error_missing_required_on_read(tmp_path: Path) -> None:
    p = tmp_path / "pstree.img"
    body = M(pstree_pb2.pstree_entry, pid=1, ppid=0, pgid=1, sid=1).SerializeToString()[:2]  # pid only
    header = IMG_COMMON_MAGIC.to_bytes(4, "little") + kind("pstree").magic.to_bytes(4, "little")
    p.write_bytes(header + len(body).to_bytes(4, "little") + body)
    e = _err(read_image, str(tmp_path), "pstree")
    assert str(p) in str(e) and ("lacks required" in str(e) or "cannot decode" in str(e))


def test_error_directory(tmp_path: Path) -> None:
    (tmp_path / "core-1.img").mkdir()
    e = _err(read_image, str(tmp_path), "core", 1)
    assert str(tmp_path / "core-1.img") in str(e)


def test_reads_images_without_prefix(tmp_path: Path) -> None:
    # CRIU readers accept v1 images that carry only the kind's magic.
    p = tmp_path / "pstree.img"
    body = M(pstree_pb2.pstree_entry, pid=1, ppid=0, pgid=1, sid=1).SerializeToString()
    p.write_bytes(kind("pstree").magic.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body)
    assert read_one(str(tmp_path), "pstree").pid == 1


# --------------------------------------------------------------------------
# show


def test_decode_file_uses_the_magic_not_the_name(tmp_path: Path) -> None:
    path = _write_sample(tmp_path, "core")
    odd = tmp_path / "whatever.bin"
    os.rename(path, odd)
    shown = decode_file(str(odd))
    assert shown["magic"] == "CORE"
    assert shown["entries"][0]["tc"]["comm"] == "sleeper"
    json.dumps(shown)


def test_decode_dir(tmp_path: Path) -> None:
    for name in ("inventory", "core", "pipes-data", "stats"):
        _write_sample(tmp_path, name)
    with open_pages_writer(str(tmp_path), 1) as w:
        w.write_raw(bytes(4096))
    (tmp_path / "dump.log").write_text("not an image\n")
    (tmp_path / ".core-9.img.x.part").write_bytes(b"partial")
    shown = decode_dir(str(tmp_path))
    assert sorted(shown) == ["core-1.img", "inventory.img", "pages-1.img", "pipes-data.img", "stats-dump"]
    assert shown["inventory.img"]["entries"][0]["img_version"] == 2
    assert shown["pipes-data.img"]["entries"][0]["extra"] == b64(b"queued")
    assert shown["stats-dump"]["magic"] == "STATS"
    json.dumps(shown)


def test_decode_dir_missing(tmp_path: Path) -> None:
    e = _err(decode_dir, str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e)


# --------------------------------------------------------------------------
# crit compatibility


def _crit() -> str:
    if not os.access(CRIT, os.X_OK):
        pytest.fail(f"{CRIT} not found: install Debian's 'criu' package (it provides crit)")
    return CRIT


def _crit_decode(path: str) -> dict[str, Any]:
    r = subprocess.run(
        [_crit(), "decode", "-i", path], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, f"crit decode {path} failed ({r.returncode}): {r.stderr.strip()}"
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _dig(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


@pytest.mark.parametrize("name", [n for n in FRAMED if n not in CRIT_CANNOT])
def test_crit_decodes_our_image(tmp_path: Path, name: str) -> None:
    path = _write_sample(tmp_path, name)
    img = _crit_decode(path)
    assert img["magic"] == kind(name).magic_name
    entries, (probe, value) = SAMPLES[name]
    assert len(img["entries"]) == len(entries)
    assert _dig(img["entries"], probe) == value
    for (_, tail), got in zip(entries, img["entries"]):
        if tail:
            got_extra = got["extra"]
            if isinstance(got_extra, dict):  # tcp-stream: inq then outq
                got_bytes = base64.b64decode(got_extra["inq"]) + base64.b64decode(got_extra["outq"])
            else:
                got_bytes = base64.b64decode(got_extra)
            assert got_bytes == tail


def test_crit_decodes_ipc(tmp_path: Path) -> None:
    """crit reads our semaphore values and message queues as CRIU's."""
    img = _crit_decode(_write_sample(tmp_path, "ipcns-sem"))
    assert img["entries"][0]["extra"] == [1, 2, 7]
    img = _crit_decode(_write_sample(tmp_path, "ipcns-msg"))
    assert len(img["entries"]) == 1
    extra = img["entries"][0]["extra"]
    assert [m["mtype"] for m in extra[0::2]] == [1, 7]
    assert [base64.b64decode(t) for t in extra[1::2]] == [b"hello", b"worlds!!"]


@pytest.mark.parametrize("name", ["inventory", "core", "mm", "pagemap", "files", "fdinfo", "pstree", "pipes-data", "tty-info"])
def test_we_read_what_crit_encodes(tmp_path: Path, name: str) -> None:
    """crit re-encodes our image with CRIU's own schema; we must read it back."""
    path = _write_sample(tmp_path, name)
    as_json = tmp_path / "img.json"
    r = subprocess.run([_crit(), "decode", "-i", path, "-o", str(as_json)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    again = tmp_path / "again"
    again.mkdir()
    target = again / os.path.basename(path)
    r = subprocess.run([_crit(), "encode", "-i", str(as_json), "-o", str(target)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [(e.msg, e.payload) for e in iter_entries(str(target), name)]
    want = SAMPLES[name][0]
    assert len(got) == len(want)
    for (gm, gp), (wm, wp) in zip(got, want):
        assert gp == wp
        # crit's 3.17 schema drops fields CRIU added later; everything it
        # kept must come back identical.
        gd = json_format.MessageToDict(gm, preserving_proto_field_name=True)
        wd = json_format.MessageToDict(wm, preserving_proto_field_name=True)
        _assert_subset(gd, wd)


def _assert_subset(small: Any, big: Any, where: str = "") -> None:
    if isinstance(small, dict):
        for k, v in small.items():
            assert k in big, f"{where}.{k} not in original"
            _assert_subset(v, big[k], f"{where}.{k}")
    elif isinstance(small, list):
        assert len(small) == len(big), where
        for i, (a, b) in enumerate(zip(small, big)):
            _assert_subset(a, b, f"{where}[{i}]")
    else:
        assert small == big, where


def test_generated_code_loads_on_crits_protobuf() -> None:
    """crit's interpreter has Debian's protobuf (4.21): our pb modules must load there."""
    with open(_crit()) as f:
        interp = f.readline()[2:].strip().split()[0]
    code = (
        "import google.protobuf as g, pkgutil, importlib, procsnap.images.pb as pb\n"
        "[importlib.import_module('procsnap.images.pb.' + m.name) for m in pkgutil.iter_modules(pb.__path__)]\n"
        "from procsnap.images.pb import core_pb2\n"
        "print(g.__version__, core_pb2.core_entry.DESCRIPTOR.fields_by_name['thread_core'].number)\n"
    )
    r = subprocess.run(
        [interp, "-c", code], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 0, r.stderr
    version, number = r.stdout.split()
    assert number == "5"
    assert int(version.split(".")[0]) >= 4


def test_gen_protos_is_up_to_date(tmp_path: Path) -> None:
    """pb/ must be what scripts/gen-protos makes from proto/ (needs grpcio-tools)."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is only needed to regenerate pb/")
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "procsnap" / "images", copy / "procsnap" / "images",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "scripts", copy / "scripts")
    r = subprocess.run([str(copy / "scripts" / "gen-protos")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for f in sorted((REPO / "procsnap" / "images" / "pb").glob("*_pb2.py*")):
        assert (copy / "procsnap" / "images" / "pb" / f.name).read_text() == f.read_text(), f.name
