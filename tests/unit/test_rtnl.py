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
