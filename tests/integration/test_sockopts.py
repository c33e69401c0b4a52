"""Socket options and states of issue 17 (no silent loss): what procsnap
saves comes back exactly, what it cannot restore is refused by name and
the tree runs on.  Target: ``tests/targets/sock_opts.py``.  Ports are
the kernel's choice (bind to 0), never fixed.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from procsnap import images
from procsnap.images.pb import fdinfo_pb2
from helpers import (
    TargetFactory,
    assert_one_line_error,
    check_ok,
    finish,
    is_untouched,
    run_procsnap,
    tree_pids,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _nft_table_exists(name: str) -> bool:
    return subprocess.run(["nft", "list", "table", "inet", name], capture_output=True,
                          timeout=30).returncode == 0


@pytest.fixture
def nft_table() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        if shutil.which("nft") and _nft_table_exists(name):
            subprocess.run(["nft", "delete", "table", "inet", name], timeout=30)


def _cycle(targets: TargetFactory, t, images: Path, restore_args: tuple[str, ...] = ()) -> None:
    pids = tree_pids(t.pid)
    check_ok(run_procsnap("dump", "-t", t.pid, "-D", images, "--tcp-established",
                          timeout=120))
    for p in pids:
        assert wait_gone(p, 10), f"pid {p} still alive after dump"
    targets.adopt(t.pid, like=t)
    check_ok(run_procsnap("restore", "-D", images, "-d", *restore_args, timeout=120))
    assert t.alive()


def test_saved_options_come_back(targets: TargetFactory, images_dir: Path, tmp_path: Path,
                                 nft_table: list[str]) -> None:
    """TCP_CORK/NODELAY of a socket not connected, SO_REUSEADDR of a
    connection after repair mode, IP tos/ttl/pktinfo, and a unix dgram
    server others can connect to again."""
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables")
    t = targets.start("sock_opts.py", "keep", str(tmp_path))
    nft_table.append(f"procsnap_{t.pid}")
    _cycle(targets, t, images_dir)
    assert not _nft_table_exists(f"procsnap_{t.pid}")
    # our own decoder: Debian's crit (criu 3.17) predates tcp_opts
    isks = [f.isk for f in images.read_image(str(images_dir), "files")
            if f.type == fdinfo_pb2.INETSK]
    corked = [i for i in isks if i.tcp_opts.cork]
    assert len(corked) == 1 and corked[0].tcp_opts.nodelay, isks
    udp = [i for i in isks if i.proto == socket.IPPROTO_UDP and i.family == socket.AF_INET]
    assert udp and udp[0].ip_opts.tos == 0x10 and udp[0].ip_opts.ttl == 17, udp
    finish(t)


def test_tcp_close_restores_connections_closed(targets: TargetFactory, images_dir: Path,
                                               tmp_path: Path, nft_table: list[str]) -> None:
    """criu's --tcp-close at restore: both ends come back closed, the
    listener accepts again, and the network lock is gone."""
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables")
    t = targets.start("sock_opts.py", "closed", str(tmp_path))
    nft_table.append(f"procsnap_{t.pid}")
    _cycle(targets, t, images_dir, ("--tcp-close",))
    assert not _nft_table_exists(f"procsnap_{t.pid}"), "the network lock outlived the restore"
    finish(t)


@pytest.mark.parametrize("what,words", [
    ("notsent_lowat", ("TCP_NOTSENT_LOWAT is 12345", "not the default 0")),
    ("udp_cork", ("UDP_CORK is on", "datagram held back")),
    ("peek_off", ("SO_PEEK_OFF is 3", "not the default -1")),
    ("pending_error", ("an error is pending",)),
])
def test_unrestorable_state_refused(targets: TargetFactory, images_dir: Path, what: str,
                                    words: tuple[str, ...]) -> None:
    t = targets.start("sock_opts.py", "refuse", what)
    res = run_procsnap("dump", "-t", t.pid, "-D", images_dir)
    line = assert_one_line_error(res, f"pid {t.pid}: fd ")
    for w in words:
        assert w in line, line
    assert "socket:[" in line, line
    ok, why = is_untouched(t.pid)
    assert ok, why
    assert not list(images_dir.iterdir())
    finish(t)  # the state is still there: the refused dump left it alone
