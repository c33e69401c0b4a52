"""The network namespace: its links, addresses, routes, rules, sysctls and
firewall (CRIU's netdev-ID.img, netns-ID.img, ifaddr/route/route6/rule-ID.img,
nftables-ID.img / iptables-ID.img / ip6tables-ID.img).

What is saved, and how:
- links (netdev-ID.img; read with one RTM_GETLINK, kernel/rtnl.py; made with
  pyroute2, a loopback alone with ioctls): the loopback and veth
  devices, each with its name, index, mtu, flags (up/down), hardware
  address and its per-device ipv4/ipv6 conf (CRIU's conf4/conf6).  Any
  other kind of device (macvlan, vxlan, tun, bridge, a physical one...)
  refuses the dump by name: it would come back missing.  A veth whose peer
  lives outside the namespace comes back with its peer created in
  procsnap's own namespace under the name the user gives, as criu:
  ``--external veth[IN]:OUT`` or ``--veth-pair IN=OUT``; without it the
  restore is refused by name.  A veth pair with both ends inside is made
  again as a pair.
- addresses, routes (v4 and v6, every table) and rules: iproute2's own
  ``ip ... save`` stream, exactly CRIU's images, and ``ip ... restore``;
  the v6 rules in rule6-ID.img, procsnap's (criu saves none: its restore
  keeps a new namespace's defaults, as procsnap's does of criu's images).
  ip is not run for a stream that would change nothing (no address or
  route saved; the rules a new namespace starts with).
  (The kernel adds lo's 127.0.0.1/::1 and the local routes by itself once
  lo is up; restoring them again fails with EEXIST, which ip ignores.)
- sysctls (netns-ID.img): every readable, writable file under
  /proc/sys/net as the namespace shows it, per-device ones included; CRIU's
  fields (default/all conf4/conf6, unix max_dgram_qlen, ping_group_range)
  are filled too.  At restore each value that differs from the new
  namespace's is written (globals first, then conf/all, conf/default and
  the devices: a global write such as ip_forward resets the others) and
  then every value is read back: a value the kernel does not take is a
  restore error naming it.
- the firewall: the nftables ruleset (``nft list ruleset``, which holds
  iptables-nft's rules too) and, when the legacy xtables are in use, the
  ``iptables-legacy-save`` / ``ip6tables-legacy-save`` text.

All of it is read and written from inside the namespace (kernel.netns: the
calling thread's setns), and the restore leaves procsnap's thread inside
the tree's namespace until the tasks are built, so the sockets the
restorer makes for them (resources.inetsk, unixsk) belong to it.  It goes
back before the tree is let go (``leave``).

With criu's ``--empty-ns net`` (what runc and Podman always ask: the
runtime owns the container's network) the namespace is neither saved nor
restored, as criu: the restore creates an empty one and the caller
configures it at the setup-namespaces action.  criu then leaves the
loopback DOWN with no address although it was UP with 127.0.0.1 (criu
issue 590); procsnap saves the loopback alone (netdev-ID.img with its one
entry, ifaddr-ID.img with its addresses only) and, once the caller's
setup-namespaces action ran, brings it back: its mtu, UP if it was, and
its addresses.  Nothing else of the namespace is looked at: devices,
routes, sysctls and firewall are the caller's, which --empty-ns says.

Not compared by procsnap.verify: the restore reads every sysctl back
itself, and links/addresses/routes are the kernel's answer to the very
messages ip saved.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
TYPE_CHECKING = False  # typing is for mypy only: not imported at run time
if TYPE_CHECKING:
    from typing import Any

from ... import images
from ...errors import DumpError, RestoreError, Unsupported
from ...images.pb import netdev_pb2, sysctl_pb2
from ...kernel import consts as C
from ...kernel import netns, rtnl
from ...kernel.libc import syscall

if TYPE_CHECKING:
    import subprocess
    from ...tasks import DumpContext, DumpTask, RestoreContext, RestoreTask

NAME = "net"
CLONE_FLAG = C.CLONE_NEWNET

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
SYSCTL_ROOT = "/proc/sys/net"

# CRIU's lists (criu/net.c): conf4/conf6 entries are positional.
DEVCONFS4 = (
    "accept_local", "accept_redirects", "accept_source_route", "arp_accept", "arp_announce",
    "arp_filter", "arp_ignore", "arp_notify", "bootp_relay", "disable_policy", "disable_xfrm",
    "force_igmp_version", "forwarding", "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval", "log_martians", "medium_id", "promote_secondaries",
    "proxy_arp", "proxy_arp_pvlan", "route_localnet", "rp_filter", "secure_redirects",
    "send_redirects", "shared_media", "src_valid_mark", "tag", "ignore_routes_with_linkdown",
    "drop_gratuitous_arp", "drop_unicast_in_l2_multicast",
)
DEVCONFS6 = (
    "accept_dad", "accept_ra", "accept_ra_defrtr", "accept_ra_from_local",
    "accept_ra_min_hop_limit", "accept_ra_mtu", "accept_ra_pinfo", "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref", "accept_redirects", "accept_source_route", "autoconf",
    "dad_transmits", "disable_ipv6", "drop_unicast_in_l2_multicast", "drop_unsolicited_na",
    "force_mld_version", "force_tllao", "forwarding", "hop_limit",
    "ignore_routes_with_linkdown", "keep_addr_on_down", "max_addresses", "max_desync_factor",
    "mldv1_unsolicited_report_interval", "mldv2_unsolicited_report_interval", "mtu",
    "ndisc_notify", "optimistic_dad", "proxy_ndp", "regen_max_retry", "router_probe_interval",
    "router_solicitation_delay", "router_solicitation_interval", "router_solicitations",
    "stable_secret", "suppress_frag_ndisc", "temp_prefered_lft", "temp_valid_lft",
    "use_oif_addrs_only", "use_optimistic", "use_tempaddr",
)
STR_CONFS = {"stable_secret"}

# (image kind, ip's arguments) of iproute2's save streams, in restore order
# (rule6 is procsnap's: criu saves the v4 rules alone, and its restore
# leaves a new namespace's default v6 rules as they are)
IP_IMAGES = (("ifaddr", ["addr"]), ("route", ["route"]), ("route6", ["-6", "route"]),
             ("rule", ["rule"]), ("rule6", ["-6", "rule"]))
_SAVE_TAIL = {"ifaddr": [], "route": ["table", "all"], "route6": ["table", "all"], "rule": [],
              "rule6": []}
# the first 4 bytes of each stream (iproute2's ifa_dump_magic,
# route_dump_magic, rule_dump_magic)
IP_MAGIC = {"ifaddr": 0x47361222, "route": 0x45311224, "route6": 0x45311224,
            "rule": 0x71706986, "rule6": 0x71706986}


def _where(pid: int, ns_id: int) -> str:
    return f"pid {pid}: net namespace {ns_id}"


def _tool(name: str) -> str | None:
    import shutil  # here: bz2, lzma... are not imported for a tree without a netns
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}")
                                       if os.path.exists(p)), None)


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; ``stdin``: a file to read (ip's restore seeks in it).
    Forked by this thread, it starts in the namespace the thread is in."""
    import subprocess  # here: a tree without a network namespace of its own never runs one
    if stdin is None:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    with open(stdin, "rb") as f:
        return subprocess.run(argv, stdin=f, capture_output=True, timeout=60)


# ------------------------------------------------------------------ dump ----

def _link_kind(link: Any) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="surrogateescape").rstrip("\n")
    except OSError:
        return None  # EIO for an unset stable_secret, EPERM/EINVAL for odd ones


def _conf_entries(family: str, dev: str, keys: tuple[str, ...]) -> list[Any]:
    out = []
    for key in keys:
        value = _read_sysctl(f"{SYSCTL_ROOT}/{family}/conf/{dev}/{key}")
        if key in STR_CONFS:
            e = sysctl_pb2.sysctl_entry(type=sysctl_pb2.CTL_STR)
            if value is not None:
                e.sarg = value
        else:
            e = sysctl_pb2.sysctl_entry(type=sysctl_pb2.CTL_32)
            if value is not None:
                try:
                    e.iarg = int(value)
                except ValueError:
                    pass
        out.append(e)
    return out


def _all_sysctls() -> list[tuple[str, str]]:
    """(path under /proc/sys/net, value) of every readable and writable file."""
    out = []
    for top, dirs, files in os.walk(SYSCTL_ROOT):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode) or not mode & stat.S_IWUSR or not mode & stat.S_IRUSR:
                continue
            value = _read_sysctl(path)
            if value is not None:
                out.append((os.path.relpath(path, SYSCTL_ROOT), value))
    return out


def _links(pid: int, ns_id: int) -> list[Any]:
    out = []
    for link in rtnl.links():   # RTM_GETLINK in this thread's namespace: no pyroute2
        name, kind, flags = link.name, link.kind, link.flags
        nde = netdev_pb2.net_device_entry(
            ifindex=link.index, mtu=link.mtu, flags=flags, name=name)
        if flags & IFF_LOOPBACK and kind is None:
            nde.type = netdev_pb2.LOOPBACK
        elif kind == "veth":
            nde.type = netdev_pb2.VETH
            if link.link:
                nde.peer_ifindex = link.link
            if link.link_netnsid is not None:
                nde.peer_nsid = link.link_netnsid  # the peer lives in another namespace
        else:
            raise Unsupported(f"{_where(pid, ns_id)}: device {name} ({kind or 'no kind'}"
                              f", ifindex {link.index}) cannot be restored; procsnap "
                              "restores only the loopback and veth devices")
        if link.address:
            nde.address = link.address
        if link.master:
            raise Unsupported(f"{_where(pid, ns_id)}: device {name} is enslaved to ifindex "
                              f"{link.master}; procsnap cannot restore that")
        nde.conf4.extend(_conf_entries("ipv4", name, DEVCONFS4))
        nde.conf6.extend(_conf_entries("ipv6", name, DEVCONFS6))
        out.append(nde)
    return out


def _firewall(ctx: "DumpContext", ns_id: int, pid: int) -> None:
    nft = _tool("nft")
    if nft is not None:
        res = _run([nft, "list", "ruleset"])
        if res.returncode != 0:
            raise DumpError(f"{_where(pid, ns_id)}: nft list ruleset: "
                            f"{res.stderr.decode(errors='replace').strip()}")
        if res.stdout.strip():
            _write_raw(ctx, "nftables", ns_id, res.stdout)
    elif os.path.exists(f"{SYSCTL_ROOT}/netfilter"):
        raise Unsupported(f"{_where(pid, ns_id)}: its nftables ruleset cannot be read: "
                          "nft is not installed (apt-get install nftables)")
    # The legacy xtables are a separate set of tables nft does not show;
    # they exist only once their module is loaded.
    for kind, tool, names in (("iptables", "iptables-legacy-save", "/proc/net/ip_tables_names"),
                              ("ip6tables", "ip6tables-legacy-save",
                               "/proc/net/ip6_tables_names")):
        thread_names = names.replace("/proc/net/", "/proc/thread-self/net/")
        try:
            with open(thread_names) as f:
                tables = f.read().split()
        except OSError:
            tables = []
        if not tables:
            continue
        path = _tool(tool)
        if path is None:
            raise Unsupported(f"{_where(pid, ns_id)}: legacy {kind} tables {tables} are set "
                              f"and {tool} is not installed")
        res = _run([path])
        if res.returncode != 0:
            raise DumpError(f"{_where(pid, ns_id)}: {tool}: "
                            f"{res.stderr.decode(errors='replace').strip()}")
        _write_raw(ctx, kind, ns_id, res.stdout)


RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
RTNH_F_STATE = 0x1 | 0x10  # RTNH_F_DEAD | RTNH_F_LINKDOWN


def _without_kernel_local(data: bytes) -> bytes:
    """An ``ip route save`` stream without the kernel's own routes of the
    local table and without the link-state route flags: they come back with their addresses, and restored again
    the IPv6 ones would be added twice (at metric 1024 beside the kernel's
    metric 0).  The stream: ip's 4-byte magic, then rtnetlink messages,
    each 4-byte aligned (nlmsghdr, then struct rtmsg)."""
    out = [data[:4]]
    pos = 4
    while pos + 16 <= len(data):
        length = struct.unpack_from("=I", data, pos)[0]
        if length < 16:
            break
        msg = data[pos:pos + length]
        # struct rtmsg: family, dst_len, src_len, tos, table, protocol, ...
        table, proto = (msg[20], msg[21]) if len(msg) >= 24 else (0, 0)
        if not (table == RT_TABLE_LOCAL and proto == RTPROT_KERNEL):
            if len(msg) >= 28:
                # rtm_flags: DEAD and LINKDOWN are the link's state (the
                # kernel refuses them in a new route), not the route's
                flags = struct.unpack_from("=I", msg, 24)[0] & ~RTNH_F_STATE
                msg = msg[:24] + struct.pack("=I", flags) + msg[28:]
            out.append(msg + bytes(-length % 4))
        pos += (length + 3) & ~3
    return b"".join(out)


def _write_raw(ctx: "DumpContext", kind: str, ns_id: int, data: bytes) -> None:
    path = images.image_path(ctx.images_dir, kind, ns_id)
    ctx.created.append(path)
    with open(path, "wb") as f:
        f.write(data)


SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFMTU, SIOCSIFMTU, SIOCGIFINDEX = (
    0x8913, 0x8914, 0x8921, 0x8922, 0x8933)
LO = "lo"


def _ifreq(sock: Any, req: int, name: str, value: int = 0) -> int:
    """One struct ifreq ioctl on the loopback: its int field (flags are
    a short; mtu and ifindex an int) read back."""
    import fcntl
    fmt = "16sh14x" if req in (SIOCGIFFLAGS, SIOCSIFFLAGS) else "16si12x"
    res = fcntl.ioctl(sock, req, struct.pack(fmt, name.encode(), value))
    return int(struct.unpack(fmt, res)[1])


def _dump_loopback(ctx: "DumpContext", ns_id: int, pid: int) -> None:
    """--empty-ns net: the loopback's entry and addresses, nothing else
    (read with ioctls on a socket made in the namespace: no pyroute2)."""
    import socket
    with netns.inside(pid):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = _ifreq(s, SIOCGIFFLAGS, LO) & 0xFFFF
            mtu = _ifreq(s, SIOCGIFMTU, LO)
            index = _ifreq(s, SIOCGIFINDEX, LO)
        ctx.add_shared("netdev", netdev_pb2.net_device_entry(
            type=netdev_pb2.LOOPBACK, ifindex=index, mtu=mtu, flags=flags, name=LO), ns_id)
        ip = _tool("ip")
        if ip is None:
            raise Unsupported(f"{_where(pid, ns_id)}: saving its loopback's addresses needs "
                              "iproute2's ip (apt-get install iproute2)")
        res = _run([ip, "addr", "save", "dev", LO])
        if res.returncode != 0:
            raise DumpError(f"{_where(pid, ns_id)}: ip addr save dev lo: "
                            f"{res.stderr.decode(errors='replace').strip()}")
        _write_raw(ctx, "ifaddr", ns_id, res.stdout)


def dump(ctx: "DumpContext", ns_id: int, task: "DumpTask") -> None:
    pid = task.pid
    if ctx.opts.empty_ns & CLONE_FLAG:
        _dump_loopback(ctx, ns_id, pid)
        return
    ip = _tool("ip")
    if ip is None:
        raise Unsupported(f"{_where(pid, ns_id)}: saving it needs iproute2's ip "
                          "(apt-get install iproute2)")
    with netns.inside(pid):
        for nde in _links(pid, ns_id):
            ctx.add_shared("netdev", nde, ns_id)
        values = _all_sysctls()
        ne = netdev_pb2.netns_entry(
            def_conf4=_conf_entries("ipv4", "default", DEVCONFS4),
            all_conf4=_conf_entries("ipv4", "all", DEVCONFS4),
            def_conf6=_conf_entries("ipv6", "default", DEVCONFS6),
            all_conf6=_conf_entries("ipv6", "all", DEVCONFS6))
        by_path = dict(values)
        if "unix/max_dgram_qlen" in by_path:
            ne.unix_conf.add(type=sysctl_pb2.CTL_32, iarg=int(by_path["unix/max_dgram_qlen"]))
        if "ipv4/ping_group_range" in by_path:
            ne.ipv4_sysctl.add(type=sysctl_pb2.CTL_STR, sarg=by_path["ipv4/ping_group_range"])
        for path, value in values:
            ne.procsnap_sysctls.add(path=path, value=value)
        ctx.add_shared("netns", ne, ns_id)
        for kind, args in IP_IMAGES:
            res = _run([ip, *args, "save", *_SAVE_TAIL[kind]])
            if res.returncode != 0:
                raise DumpError(f"{_where(pid, ns_id)}: ip {' '.join(args)} save: "
                                f"{res.stderr.decode(errors='replace').strip()}")
            data = res.stdout
            if kind in ("route", "route6"):
                data = _without_kernel_local(data)
            _write_raw(ctx, kind, ns_id, data)
        _firewall(ctx, ns_id, pid)


# --------------------------------------------------------------- restore ----

def _veth_peer_name(rctx: "RestoreContext", name: str) -> str | None:
    """The host end's name given as criu's --external veth[IN]:OUT[@BRIDGE]
    or --veth-pair IN=OUT[@BRIDGE]."""
    value = rctx.opts.ext_veth.get(name)
    if value and "@" in value:
        raise RestoreError(f"--external veth[{name}]:{value}: attaching the peer to a "
                           "bridge (@BRIDGE) is not supported yet")
    return value or None


def _set_loopback(sock: Any, lo: Any) -> None:
    """The loopback's mtu and UP flag as its image says, with ioctls on
    ``sock`` (a socket of the namespace)."""
    if lo.mtu and _ifreq(sock, SIOCGIFMTU, lo.name) != lo.mtu:
        _ifreq(sock, SIOCSIFMTU, lo.name, lo.mtu)
    now = _ifreq(sock, SIOCGIFFLAGS, lo.name) & 0xFFFF
    if (now ^ lo.flags) & IFF_UP:
        _ifreq(sock, SIOCSIFFLAGS, lo.name, (now & ~IFF_UP) | (lo.flags & IFF_UP))


def _make_links(rctx: "RestoreContext", ns_id: int, pid: int, ndes: list[Any],
                host_ns: int) -> None:
    if all(n.type == netdev_pb2.LOOPBACK for n in ndes):
        # a namespace with only its loopback (LXC's "empty" network):
        # ioctls do it; pyroute2 takes 0.1-0.15 s to import, most of the time
        # an LXC container's restore spends here
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for n in ndes:
                try:
                    _set_loopback(s, n)
                except OSError as exc:
                    raise RestoreError(f"{_where(pid, ns_id)}: loopback {n.name}: "
                                       f"{os.strerror(exc.errno or 0)}") from None
        return
    from pyroute2 import IPRoute
    made: set[int] = set()
    with IPRoute() as ipr:
        by_index = {n.ifindex: n for n in ndes}
        for n in ndes:
            if n.type == netdev_pb2.LOOPBACK:
                idx = ipr.link_lookup(ifname=n.name)
                if not idx:
                    raise RestoreError(f"{_where(pid, ns_id)}: no loopback {n.name}")
                made.add(n.ifindex)
                continue
            if n.type != netdev_pb2.VETH:
                raise RestoreError(f"{_where(pid, ns_id)}: device {n.name}: type {n.type} "
                                   "cannot be restored")
            if n.ifindex in made:
                continue
            inner_peer = None if n.HasField("peer_nsid") else by_index.get(n.peer_ifindex)
            if inner_peer is not None:
                ipr.link("add", ifname=n.name, kind="veth", index=n.ifindex,
                         peer={"ifname": inner_peer.name, "index": inner_peer.ifindex})
                made.update((n.ifindex, inner_peer.ifindex))
                continue
            out = _veth_peer_name(rctx, n.name)
            if out is None:
                raise RestoreError(f"{_where(pid, ns_id)}: veth {n.name}'s peer was outside "
                                   f"the namespace; name the host end with --external "
                                   f"veth[{n.name}]:NAME (criu's --veth-pair {n.name}=NAME)")
            ipr.link("add", ifname=n.name, kind="veth", index=n.ifindex,
                     peer={"ifname": out, "net_ns_fd": host_ns})
            made.add(n.ifindex)
        for n in ndes:
            idx = ipr.link_lookup(ifname=n.name)[0]
            kw: dict[str, Any] = {"mtu": n.mtu}
            if n.HasField("address") and n.type != netdev_pb2.LOOPBACK:
                kw["address"] = ":".join(f"{b:02x}" for b in n.address)
            ipr.link("set", index=idx, **kw)
            ipr.link("set", index=idx, state="up" if n.flags & IFF_UP else "down")


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "wb") as f:
        f.write(value.encode(errors="surrogateescape"))


def _sysctl_order(path: str) -> int:
    parts = path.split("/")
    if len(parts) >= 3 and parts[1] == "conf":
        return {"all": 1, "default": 2}.get(parts[2], 3)
    return 0


def _restore_sysctls(pid: int, ns_id: int, ne: Any) -> None:
    wanted = sorted(((v.path, v.value) for v in ne.procsnap_sysctls),
                    key=lambda pv: _sysctl_order(pv[0]))
    written = False
    for path, value in wanted:
        full = os.path.join(SYSCTL_ROOT, path)
        now = _read_sysctl(full)
        if now == value:
            continue
        written = True
        if now is None and not os.path.exists(full):
            raise RestoreError(f"{_where(pid, ns_id)}: sysctl net.{path.replace('/', '.')} "
                               "does not exist in the new namespace")
        try:
            _write_sysctl(full, value)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EPERM, errno.EBUSY):
                raise
            # checked below: a value that reads back as saved is fine
    if not written:
        return  # every value read as saved, and nothing written since that could reset one
    wrong = [(p, v, _read_sysctl(os.path.join(SYSCTL_ROOT, p))) for p, v in wanted]
    wrong = [w for w in wrong if w[2] != w[1]]
    if wrong:
        p, v, got = wrong[0]
        raise RestoreError(f"{_where(pid, ns_id)}: sysctl net.{p.replace('/', '.')} is "
                           f"{got!r} after the restore, the image says {v!r}"
                           + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))


def _messages(data: bytes) -> list[bytes]:
    """The rtnetlink messages of an ``ip ... save`` stream (after ip's
    4-byte magic), each without its nlmsghdr."""
    out, pos = [], 4
    while pos + 16 <= len(data):
        length = struct.unpack_from("=I", data, pos)[0]
        if length < 16:
            break
        out.append(data[pos + 16:pos + length])
        pos += (length + 3) & ~3
    return out


def _addrs_there(data: bytes) -> bool:
    """Every address of an ``ip addr save`` stream is in the namespace
    already (lo's 127.0.0.1 and ::1, which the kernel adds when lo goes
    up): ip addr restore would meet EEXIST for each, which it ignores."""
    have = {rtnl.addr_key(m) for m in rtnl.addrs()}
    return all(rtnl.addr_key(m) in have for m in _messages(data))


def _restore_ip(rctx: "RestoreContext", pid: int, ns_id: int) -> None:
    """Each ``ip ... save`` stream given back to ``ip ... restore``; the
    tool is not run (nor looked for) where it would change nothing: a
    stream of ip's magic alone (no address or route saved), rules equal,
    in order, to those the new namespace holds already (its default ones)."""
    found: list[str] = []

    def ip() -> str:
        if not found:
            exe = _tool("ip")
            if exe is None:
                raise RestoreError(f"{_where(pid, ns_id)}: restoring it needs iproute2's ip")
            found.append(exe)
        return found[0]

    for kind, args in IP_IMAGES:
        path = images.image_path(rctx.images_dir, kind, ns_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue  # rule6: images of criu's, or older ones (v6 rules not saved)
        magic = data[:4] == struct.pack("=I", IP_MAGIC[kind])
        if kind in ("rule", "rule6"):
            family = 10 if kind == "rule6" else 2   # AF_INET6, AF_INET
            if magic and _messages(data) == rtnl.rules(family):
                continue
            # the new namespace has the default rules already: ip rule
            # restore would add them twice (as criu, flushed first; the
            # family's own only: v6 rules stay when only v4 ones were saved)
            _run([ip(), *args, "flush"])
            _run([ip(), *args, "delete", "table", "local"])
        elif magic and len(data) == 4:
            continue
        elif kind == "ifaddr" and magic and _addrs_there(data):
            continue
        res = _run([ip(), *args, "restore"], stdin=path)
        if res.returncode != 0:
            raise RestoreError(f"{_where(pid, ns_id)}: ip {' '.join(args)} restore: "
                               f"{res.stderr.decode(errors='replace').strip()}")


def _only_table(text: bytes, table: str) -> bool:
    """An ``nft list ruleset`` text that is the one table ``inet TABLE``."""
    top = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln[:1].isspace()]
    return top == [f"table inet {table} {{".encode(), b"}"]


def _restore_firewall(rctx: "RestoreContext", pid: int, ns_id: int,
                      lock_alone: str | None) -> bytes:
    """The saved rulesets, each by its tool; returns their text (what the
    namespace's firewall now holds, for _lock and _unlock).  An nftables
    ruleset that is the table ``lock_alone`` and nothing else is not
    restored."""
    texts = []
    for kind, tool in (("nftables", "nft"), ("iptables", "iptables-legacy-restore"),
                       ("ip6tables", "ip6tables-legacy-restore")):
        path = images.image_path(rctx.images_dir, kind, ns_id)
        try:
            with open(path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        if kind == "nftables" and lock_alone is not None and _only_table(text, lock_alone):
            continue
        exe = _tool(tool)
        if exe is None:
            raise RestoreError(f"{_where(pid, ns_id)}: {kind}-{ns_id}.img needs {tool}")
        res = _run([exe, "-f", "-"] if kind == "nftables" else [exe], stdin=path)
        if res.returncode != 0:
            raise RestoreError(f"{_where(pid, ns_id)}: {tool}: "
                               f"{res.stderr.decode(errors='replace').strip()}")
        texts.append(text)
    return b"\n".join(texts)


def _enter(rctx: "RestoreContext", ns_id: int, pid: int) -> None:
    """This thread into the root's new namespace until the tree is let go
    (the sockets made for the tasks must be born there)."""
    own = netns.enter(pid)
    if own is None:
        # never set links, routes or sysctls anywhere but in a new namespace
        raise RestoreError(f"{_where(pid, ns_id)}: the root was not made in a new network "
                           "namespace; nothing of it is restored")
    state = rctx.kind_state.setdefault(NAME, {})
    state["own"] = own
    rctx.before_detach.append(lambda: leave(rctx))


def _only_ifindex(data: bytes, index: int) -> bytes:
    """An ``ip addr save`` stream (ip's 4-byte magic, then rtnetlink
    messages: nlmsghdr, struct ifaddrmsg whose ifa_index is at byte 20)
    with the addresses of one device only."""
    out = [data[:4]]
    pos = 4
    while pos + 24 <= len(data):
        length = struct.unpack_from("=I", data, pos)[0]
        if length < 24:
            break
        if struct.unpack_from("=I", data, pos + 20)[0] == index:
            out.append(data[pos:pos + ((length + 3) & ~3)])
        pos += (length + 3) & ~3
    return b"".join(out)


def setup_done(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    """--empty-ns net, once the caller configured the namespace at
    setup-namespaces: the loopback as it was (mtu, UP, addresses)."""
    import socket
    if not rctx.opts.empty_ns & CLONE_FLAG:
        return
    pid = rt.pid
    path = images.image_path(rctx.images_dir, "netdev", ns_id)
    if not os.path.exists(path):
        return  # criu's own --empty-ns images: nothing of the namespace was saved
    los = [n for n in images.read_image(rctx.images_dir, "netdev", ns_id)
           if n.type == netdev_pb2.LOOPBACK]
    if not los:
        return
    lo = los[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # in the tree's namespace
        _set_loopback(s, lo)
        index = _ifreq(s, SIOCGIFINDEX, lo.name)
    addrs = images.image_path(rctx.images_dir, "ifaddr", ns_id)
    if not os.path.exists(addrs):
        return
    with open(addrs, "rb") as f:
        data = _only_ifindex(f.read(), lo.ifindex)
    if len(data) <= 4:
        return
    if index != lo.ifindex:
        raise RestoreError(f"{_where(pid, ns_id)}: the loopback is ifindex {index}, "
                           f"it was {lo.ifindex}")
    if data[:4] == struct.pack("=I", IP_MAGIC["ifaddr"]) and _addrs_there(data):
        return  # 127.0.0.1 and ::1 came with lo up: ip would add nothing
    ip = _tool("ip")
    if ip is None:
        raise RestoreError(f"{_where(pid, ns_id)}: restoring its loopback's addresses needs "
                           "iproute2's ip")
    import subprocess
    import tempfile
    with tempfile.TemporaryFile() as f:   # ip's restore seeks in its input
        f.write(data)
        f.seek(0)
        res = subprocess.run([ip, "addr", "restore"], stdin=f, capture_output=True,
                             timeout=60)
    if res.returncode != 0:
        raise RestoreError(f"{_where(pid, ns_id)}: ip addr restore (loopback): "
                           f"{res.stderr.decode(errors='replace').strip()}")


def restore(rctx: "RestoreContext", ns_id: int, rt: "RestoreTask") -> None:
    pid = rt.pid
    if rctx.opts.empty_ns & CLONE_FLAG:
        # criu's --empty-ns net: the namespace stays empty for the caller
        # to configure (setup-namespaces); the loopback follows (setup_done)
        _enter(rctx, ns_id, pid)
        return
    if not os.path.exists(images.image_path(rctx.images_dir, "netns", ns_id)):
        raise RestoreError(f"{_where(pid, ns_id)}: it was dumped with --empty-ns net "
                           f"(netns-{ns_id}.img is absent): restore it with --empty-ns net")
    ndes = images.read_image(rctx.images_dir, "netdev", ns_id)
    ne = images.read_one(rctx.images_dir, "netns", ns_id)
    host_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        own = netns.enter(pid)
    except BaseException:
        os.close(host_ns)
        raise
    if own is None:
        # never set links, routes or sysctls anywhere but in a new namespace
        os.close(host_ns)
        raise RestoreError(f"{_where(pid, ns_id)}: the root was not made in a new network "
                           "namespace; nothing of it is restored")
    # From here until the tree is let go this thread is in the tree's
    # namespace: the sockets made for the tasks must be born there.
    state = rctx.kind_state.setdefault(NAME, {})
    state["own"] = own
    rctx.before_detach.append(lambda: leave(rctx))
    try:
        _make_links(rctx, ns_id, pid, ndes, host_ns)
    finally:
        os.close(host_ns)
    _restore_sysctls(pid, ns_id, ne)
    _restore_ip(rctx, pid, ns_id)
    from .. import tcp
    table = tcp.table_name(rctx.tasks[0].pid)
    # Nothing for the network lock to hold: no link but loopbacks (nothing
    # outside reaches the namespace; inside, nothing runs before the tree)
    # and no TCP connection to restore (the two ends of one over lo must not
    # talk while one is still in repair).  The dump's lock table, if it is
    # all of the saved ruleset, is then neither restored nor deleted again:
    # the namespace ends as it would, with an empty ruleset.
    idle = all(n.type == netdev_pb2.LOOPBACK for n in ndes) and not any(
        n.startswith("tcp-stream-") for n in os.listdir(rctx.images_dir))
    rules = _restore_firewall(rctx, pid, ns_id, table if idle else None)
    _lock(rctx, pid, ns_id, table, rules, idle)


def _lock(rctx: "RestoreContext", pid: int, ns_id: int, table: str, rules: bytes,
          idle: bool) -> None:
    """The namespace stays locked (resources.tcp: the dump's lock came back
    with its ruleset; made here if it did not) until the tree runs: the
    connections restored in it meet no packet before their tasks do.
    ``rules``: the text of the rulesets restored (nft -f takes a file
    whole or not at all): the dump's lock table in it is there already,
    and no ``nft list`` is run to find it; criu's iptables chain is looked
    for (four tools run) only where a ruleset names it.  ``idle``: nothing
    for a lock to hold (restore): none is made."""
    from .. import tcp
    has_lock = f"table inet {table} {{".encode() in \
        (line.strip() for line in rules.splitlines())
    # the chain declared: ":CRIU - [0:0]" in iptables-save text, "chain
    # CRIU {" in nft's (iptables-nft's tables); criu's own nft lock table
    # "CRIU-<run id>" (procsnap's too) is not it
    import re
    criu_chain = re.search(rb"(?m)^:CRIU\s|\bchain CRIU\s*\{", rules) is not None
    if idle and not has_lock:
        if criu_chain:
            def unlock_criu() -> None:
                tcp.unlock_criu_iptables_in(pid)  # a CRIU dump's own lock, with its rules
            rctx.after_detach.append(unlock_criu)
        return
    try:
        if not has_lock:
            tcp.lock_netns_here(table)
    except DumpError as exc:
        streams = [n for n in os.listdir(rctx.images_dir) if n.startswith("tcp-stream-")]
        if _tool("nft") is None and not streams:
            return  # no nft and no connection: nothing hangs on a lock
        raise RestoreError(f"{_where(pid, ns_id)}: {exc}") from None
    rctx.after_detach.append(lambda: _unlock(pid, ns_id, table, criu_chain))


def _unlock(pid: int, ns_id: int, table: str, criu_chain: bool) -> None:
    from .. import tcp
    if criu_chain:
        tcp.unlock_criu_iptables_in(pid)  # a CRIU dump's own lock, restored with its rules
    if not tcp.unlock_netns(pid, table):
        raise RestoreError(f"{_where(pid, ns_id)}: the network lock (nft table inet "
                           f"{table}) could not be removed; the tree runs with its "
                           "network namespace locked")


def join(rctx: "RestoreContext", path: str) -> None:
    """criu's --join-ns net:PATH: the tree lives in that namespace as it
    is (its links, routes and firewall are not touched); the network lock
    the dump set in it (the same namespace, kept alive by its file while
    the tree was away) is removed once the tree runs."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise RestoreError(f"--join-ns net:{path}: {exc.strerror}") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscall(C.NR["setns"], target, C.CLONE_NEWNET)
    except OSError as exc:
        os.close(own)
        raise RestoreError(f"--join-ns net:{path}: not a network namespace "
                           f"({exc.strerror or exc})") from None
    finally:
        os.close(target)
    state = rctx.kind_state.setdefault(NAME, {})
    state["own"] = own
    rctx.before_detach.append(lambda: leave(rctx))
    from .. import tcp
    table = tcp.table_name(rctx.tasks[0].pid)
    root = rctx.tasks[0]

    def unlock() -> None:
        tcp.unlock_netns(root.pid, table)  # none there (a dump in our namespace): nothing
    rctx.after_detach.append(unlock)


def leave(rctx: "RestoreContext") -> None:
    """procsnap's thread back into its own namespace (once; also after a
    failed restore)."""
    state = rctx.kind_state.get(NAME, {})
    own = state.pop("own", None)
    netns.leave(own)
