"""procsnap/kernel/rtnl.py's RTM_GETLINK against pyroute2's decoding of the
same links (this namespace's: the test runs wherever it runs)."""
from __future__ import annotations

import pytest

from procsnap.kernel import rtnl


def test_links_match_pyroute2() -> None:
    pyroute2 = pytest.importorskip("pyroute2")
    with pyroute2.IPRoute() as ipr:
        theirs = list(ipr.get_links())
    ours = {link.index: link for link in rtnl.links()}
    assert sorted(ours) == sorted(x["index"] for x in theirs)
    for x in theirs:
        o = ours[x["index"]]
        info = x.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        addr = x.get_attr("IFLA_ADDRESS")
        nsid = x.get_attr("IFLA_LINK_NETNSID")
        assert (o.name, o.flags, o.mtu, o.kind, o.link, o.master, o.link_netnsid) == (
            x.get_attr("IFLA_IFNAME"), x["flags"], x.get_attr("IFLA_MTU") or 0, kind,
            x.get_attr("IFLA_LINK") or 0, x.get_attr("IFLA_MASTER") or 0, nsid), o
        assert o.address == (bytes.fromhex(addr.replace(":", "")) if addr else o.address)
        assert bool(o.address) == bool(addr), (o.address, addr)
    lo = [link for link in ours.values() if link.name == "lo"]
    assert lo and lo[0].flags & 0x8 and lo[0].kind is None   # IFF_LOOPBACK


def test_rules_are_ip_rule_saves_messages() -> None:
    """rtnl.rules(family) is what ``ip [-6] rule save`` writes after its
    magic, each message without its nlmsghdr (the restore compares the two
    to skip a restore that would change nothing)."""
    import shutil
    import subprocess
    ip = shutil.which("ip") or "/usr/sbin/ip"
    from procsnap.resources.namespaces.net import IP_MAGIC, _messages
    for family, args in ((2, []), (10, ["-6"])):
        data = subprocess.run([ip, *args, "rule", "save"], capture_output=True,
                              check=True).stdout
        assert data[:4] == IP_MAGIC["rule"].to_bytes(4, "little")
        assert _messages(data) == rtnl.rules(family), family
        assert rtnl.rules(family), "no default rule?"


def test_ruleset_of_the_lock_table_alone() -> None:
    from procsnap.resources.namespaces.net import _only_table
    lock = (b"table inet CRIU-procsnap_7 {\n\tchain input {\n\t\ttype filter hook input "
            b"priority filter; policy drop;\n\t}\n}\n")
    assert _only_table(lock, "CRIU-procsnap_7")
    assert not _only_table(lock, "CRIU-procsnap_8")
    assert not _only_table(lock + b"table ip filter {\n}\n", "CRIU-procsnap_7")
    assert not _only_table(b"", "CRIU-procsnap_7")


def test_saved_addresses_found_there() -> None:
    """net._addrs_there: ip addr save's addresses are all in the namespace
    that saved them; one changed (its IFA_ADDRESS and IFA_LOCAL) is not."""
    import shutil
    import subprocess
    from procsnap.resources.namespaces.net import _addrs_there, _messages
    ip = shutil.which("ip") or "/usr/sbin/ip"
    data = subprocess.run([ip, "addr", "save"], capture_output=True, check=True).stdout
    assert _messages(data), "no address saved here?"
    assert _addrs_there(data)
    assert rtnl.addr_key(_messages(data)[0]) in {rtnl.addr_key(m) for m in rtnl.addrs()}
    # 127.0.0.1 -> 127.0.0.2 wherever it is (lo's IFA_ADDRESS and IFA_LOCAL)
    other = data.replace(bytes([127, 0, 0, 1]), bytes([127, 0, 0, 2]))
    if other != data:
        assert not _addrs_there(other)
