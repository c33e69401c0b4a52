"""``criu check --feature NAME``, answered for procsnap.

zdtm.py skips a test whose feature criu lacks, so a feature is "supported"
here only where procsnap saves and restores what the feature is for and
this kernel gives what procsnap needs for it; otherwise the answer is no,
with the reason (a test that would fail is skipped, not run).  The names
are criu's (criu/cr-check.c: feature_list), in its order; a name criu
does not know is an error, as in criu.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable

from .. import check as pcheck

Probe = Callable[[], None]


def _ok() -> None:
    return None


def _fdinfo_has(word: str) -> Probe:
    def probe() -> None:
        with open("/proc/self/fdinfo/%d" % _any_fd()) as f:
            if word not in f.read():
                raise OSError(0, f"/proc/PID/fdinfo has no {word}")
    return probe


def _uffd(features: int) -> None:
    """userfaultfd works here (features 0), or grants what lazy restore
    needs (-1: kernel.uffd.LAZY_FEATURES) -- criu's kdat.has_uffd and
    uffd_noncooperative()."""
    from ..kernel import uffd
    want = uffd.LAZY_FEATURES if features < 0 else features
    fd = uffd.userfaultfd()
    try:
        got = uffd.api(fd, want)
    finally:
        os.close(fd)
    if got & want != want:
        raise OSError(0, "userfaultfd lacks the fork/remap/remove/unmap events"
                      if features < 0 else "userfaultfd lacks async write-protect")


def _pagemap_scan() -> None:
    """PAGEMAP_SCAN answers on /proc/self/pagemap (Linux 6.7+): how procsnap
    finds the pages written since a pre-dump."""
    import ctypes
    import mmap

    from ..procfs import pagemap
    m = mmap.mmap(-1, mmap.PAGESIZE)
    view = ctypes.c_char.from_buffer(m)
    start = ctypes.addressof(view)
    del view
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pagemap.scan_written(fd, start, start + mmap.PAGESIZE)
    finally:
        os.close(fd)
        m.close()


def _mem_track() -> None:
    """criu's kdat.has_dirty_track, for procsnap's way of tracking: a
    pre-dump write-protects the tree's memory with userfaultfd in async
    mode (UFFD_FEATURE_WP_ASYNC) and the next pass asks PAGEMAP_SCAN which
    pages were written (resources/memtrack.py) -- soft-dirty bits are not
    needed."""
    _uffd(_WP_ASYNC)
    _pagemap_scan()


_WP_ASYNC = 1 << 15   # kernel.uffd.UFFD_FEATURE_WP_ASYNC (not imported: check stays light)


def _memfd_hugetlb() -> None:
    """criu's kdat.has_memfd_hugetlb: memfd_create(MFD_HUGETLB) works."""
    os.close(os.memfd_create("criu-check", os.MFD_CLOEXEC | 4))  # MFD_HUGETLB


def _any_fd() -> int:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            return fd
        except OSError:
            continue
    return os.open("/", os.O_RDONLY)  # left open: this process ends soon


def _nft() -> None:
    if shutil.which("nft") is None:
        raise OSError(2, "the nft command is not installed")


def _ipt_legacy() -> None:
    for tool in ("iptables-legacy", "iptables-legacy-save", "iptables-legacy-restore"):
        if shutil.which(tool) is None:
            raise OSError(0, f"{tool} is not installed")
    _nft()


def _ns_file(kind: str) -> Probe:
    """procsnap saves and restores this kind (resources.namespaces)."""
    def probe() -> None:
        if not os.path.exists(f"/proc/self/ns/{kind}"):
            raise OSError(2, f"this kernel has no {kind} namespaces")
    return probe


def _status_has(word: str) -> Probe:
    def probe() -> None:
        with open("/proc/self/status") as f:
            if word not in f.read():
                raise OSError(0, f"/proc/PID/status has no {word}")
    return probe


def _no(why: str) -> Probe:
    def probe() -> None:
        raise OSError(0, why)
    return probe


def _cgroupns() -> None:
    if not os.path.exists("/proc/self/ns/cgroup"):
        raise OSError(2, "this kernel has no cgroup namespaces")

FEATURES: dict[str, Probe] = {
    "mnt_id": _fdinfo_has("mnt_id"),
    # pre-dump with --track-mem works: criu tracks with soft-dirty bits,
    # procsnap with userfaultfd write-protect and PAGEMAP_SCAN (this kernel
    # has no soft-dirty); zdtm.py --pre, runc and Podman ask this first
    "mem_dirty_track": _mem_track,
    "aio_remap": _ok,                      # AIO rings remade and moved (memory.aio)
    "timerfd": _ok,                        # timerfds restored with their ticks
    "tun": _no("tun devices are not saved"),
    "tun_ns": _no("tun devices are not saved"),
    "userns": _ns_file("user"),            # saved and made anew (namespaces.user)
    "fdinfo_lock": _ok,                    # locks and leases saved (resources.file_lock)
    "seccomp_suspend": _ok,                # PTRACE_O_SUSPEND_SECCOMP is used
    "seccomp_filters": _ok,                # filter chains saved (PTRACE_SECCOMP_GET_FILTER)
    "loginuid": _ok,                       # restored (audit.py: loginuid)
    "cgroupns": _cgroupns,                 # saved and made anew (namespaces.cgroup)
    "autofs": _no("autofs mounts are not saved"),
    "tcp_half_closed": _ok,                 # every TCP state restored (sockets.tcp)
    "compat_cr": _no("32-bit tasks are not supported"),
    "uffd": lambda: _uffd(0),             # restore --lazy-pages (procsnap.lazypages)
    "uffd-noncoop": lambda: _uffd(-1),    # ... with fork/remap/remove/unmap events
    "can_map_vdso": _ok,
    "sk_ns": _ns_file("net"),   # SIOCGSKNS: procsnap finds a socket's namespace with it
    "sk_unix_file": _no("unix sockets bound in other mount namespaces are not saved"),
    "net_diag_raw": _ok,                    # raw IP sockets saved (sock_kinds)
    "nsid": _no("network namespace ids (NETNSA_NSID) are not saved"),
    "link_nsid": _no("a link's peer network namespace id is not saved"),
    "kcmp_epoll": pcheck._kcmp,
    "timens": _ns_file("time"),
    "external_net_ns": _no("--external net[...] is not supported"),
    "clone3_set_tid": pcheck._clone3_set_tid,
    "newifindex": _no("IFLA_NEW_IFINDEX is not used"),
    "nftables": _no("nftables of a network namespace are not saved"),
    # criu's has_ipt_legacy: iptables-legacy is there (zdtm's ipt tests set
    # legacy rules in a network namespace, which procsnap saves with
    # iptables-legacy-save; its lock is nftables, which --network-lock
    # iptables also means)
    "has_ipt_legacy": _ipt_legacy,
    "pidfd_store": _no("no RPC pidfd store"),
    "ns_pid": _status_has("NSpid:"),
    "apparmor_stacking": _no("LSM profiles are not restored"),
    "network_lock_nftables": _nft,
    "sockopt_buf_lock": _ok,               # SO_BUF_LOCK saved among socket options
    "memfd_hugetlb": _memfd_hugetlb,       # MFD_HUGETLB memfds saved (resources/memfd.py)
    "move_mount_set_group": _no("mount sharing groups are not set with MOVE_MOUNT_SET_GROUP"),
    "openat2": _ok,
    "get_rseq_conf": _ok,                  # rseq areas saved (PTRACE_GET_RSEQ_CONFIGURATION)
    "ipv6_freebind": _ok,                   # saved among socket options (sockopts)
    "pagemap_scan": _pagemap_scan,         # finds the pages written since a pre-dump
    "timer_cr_ids": _ok,                   # PR_TIMER_CREATE_RESTORE_IDS is used
    "overlayfs_maps": _no("files mapped from overlayfs are not checked"),
    "breakpoints": _no("hardware breakpoints are not saved"),
    "pagemap_scan_guard_pages": _ok,       # guard regions saved (memory)
}

# what `criu check --all` adds to the base check: all of the above
EXTRA = list(FEATURES)


def check_feature(name: str) -> tuple[bool, str]:
    """(supported, the line criu prints)."""
    probe = FEATURES.get(name)
    if probe is None:
        return False, f"Unknown feature {name}"
    try:
        probe()
    except OSError as exc:
        return False, f"{name} is not supported by procsnap: {exc.strerror or exc}"
    return True, f"{name} is supported"
