"""Fields whose form CRIU 4.x fixes, found by restoring across the two tools
(scripts/criu-interop.py): each one broke criu restore of our images or our
restore of criu's."""
from __future__ import annotations

import struct
from pathlib import Path

from procsnap import elf
from procsnap.images import PE_PRESENT, read_image, write_image
from procsnap.images.pb import pagemap_pb2
from procsnap.resources import memory


def _frame(msgs: list[bytes]) -> bytes:
    """A pagemap image as raw bytes (magics + size-prefixed entries)."""
    out = struct.pack("<II", 0x54564319, 0x56084025)
    for m in msgs:
        out += struct.pack("<I", len(m)) + m
    return out


def test_pagemap_count_is_criu4_field5(tmp_path: Path) -> None:
    """We write the count in field 5 (nr_pages, as criu 4.x reads it) and in
    field 2 (compat_nr_pages) for older readers."""
    write_image(str(tmp_path), "pagemap", [
        pagemap_pb2.pagemap_head(pages_id=1),
        pagemap_pb2.pagemap_entry(vaddr=0x1000, nr_pages=3, flags=PE_PRESENT)], 7)
    raw = (tmp_path / "pagemap-7.img").read_bytes()
    # entry 2 is the last: decode it with the schema, fields by number
    e = pagemap_pb2.pagemap_entry.FromString(raw[8 + 4 + 2 + 4:])
    assert (e.nr_pages, e.compat_nr_pages) == (3, 3)
    assert e.HasField("nr_pages")


def test_pagemap_reads_criu4_and_old_images(tmp_path: Path) -> None:
    head = pagemap_pb2.pagemap_head(pages_id=1).SerializeToString()
    # criu 4.2 writes compat_nr_pages = 0 and nr_pages = N
    criu4 = pagemap_pb2.pagemap_entry(vaddr=0x1000, compat_nr_pages=0, nr_pages=5,
                                      flags=PE_PRESENT).SerializeToString()
    # criu 3.x (and procsnap before) wrote the count in field 2 only
    old = pagemap_pb2.pagemap_entry(vaddr=0x9000, compat_nr_pages=2,
                                    flags=PE_PRESENT).SerializeToString()
    (tmp_path / "pagemap-9.img").write_bytes(_frame([head, criu4, old]))
    _, a, b = read_image(str(tmp_path), "pagemap", 9)
    assert (a.nr_pages, b.nr_pages) == (5, 2)


def test_build_id_is_packed_in_words() -> None:
    """criu copies the note's bytes into the repeated uint32 (4 a word):
    a 20-byte build-id is 5 words; criu restore refuses any other count."""
    bid = bytes(range(1, 21))
    words = elf.to_words(bid)
    assert len(words) == 5 and words[0] == 0x04030201
    assert elf.matches(words, bid)
    assert elf.from_words(words) == bid
    assert not elf.matches(words, bytes(20))
    assert elf.matches(list(bid), bid)            # images procsnap wrote before
    assert elf.to_words(b"\x01\x02\x03") == [0x030201]


def test_auxv_saved_without_at_null() -> None:
    """criu restore allows 44 auxv words; 6.18 gives 46 with AT_NULL."""
    words = list(range(1, 45)) + [0, 0]
    assert memory.criu_auxv(words) == words[:-2]
    assert memory.criu_auxv([6, 4096]) == [6, 4096]


def test_vdso_layout_merges_vvar() -> None:
    """criu writes [vvar]+[vvar_vclock] as one VVAR VMA: the same layout."""
    vvar, vdso = memory.VMA_AREA_VVAR, memory.VMA_AREA_VDSO
    ours = memory._vdso_layout([(vvar, 0, 0x4000), (vvar, 0x4000, 0x6000),
                                (vdso, 0x6000, 0x8000)])
    criu = memory._vdso_layout([(vvar, 0, 0x6000), (vdso, 0x6000, 0x8000)])
    assert ours == criu == [0x6000, 0x2000]
    assert memory._vdso_layout([(vvar, 0, 0x6000), (vdso, 0x6000, 0xa000)]) != ours


def _tree_in_pidns() -> list:
    """procsnap's outside view of a tree in its own pid namespace: root
    5000 (1 inside) with a thread 5003 (3 inside), child 5001 (2 inside)."""
    from procsnap.images.pb import pstree_pb2
    root = pstree_pb2.pstree_entry(pid=5000, ppid=77, pgid=5000, sid=5000,
                                   threads=[5000, 5003], ns_pid=[5000, 1],
                                   ns_threads=[5000, 1, 5003, 3])
    kid = pstree_pb2.pstree_entry(pid=5001, ppid=5000, pgid=5000, sid=5000,
                                  threads=[5001], ns_pid=[5001, 2], ns_threads=[5001, 2])
    return [root, kid]


def test_pstree_written_as_criu_inside_the_pid_namespace() -> None:
    """criu names a pid namespace's tasks by their inside pids (and refuses
    one without its init, pid 1); procsnap writes that, keeping ns_pid."""
    from procsnap.images import pidview
    tree = _tree_in_pidns()
    out, names = pidview.to_inside(tree)
    assert names == {5000: 1, 5003: 3, 5001: 2}
    assert [(e.pid, e.ppid, e.pgid, e.sid, list(e.threads)) for e in out] == \
        [(1, 0, 1, 1, [1, 3]), (2, 1, 1, 1, [2])]
    assert list(out[0].ns_pid) == [5000, 1]
    assert tree[0].pid == 5000  # the dumper's own entries are left alone
    # read back: the outside view again, image files named by the inside pids
    assert pidview.is_inside_form(out) and not pidview.is_inside_form(tree)
    image_pids = pidview.to_outside(out)
    assert image_pids == {5000: 1, 5003: 3, 5001: 2}
    assert [(e.pid, e.ppid, e.pgid, e.sid, list(e.threads)) for e in out] == \
        [(5000, 0, 5000, 5000, [5000, 5003]), (5001, 5000, 5000, 5000, [5001])]


def test_pstree_without_pid_namespace_unchanged() -> None:
    from procsnap.images import pidview
    from procsnap.images.pb import pstree_pb2
    tree = [pstree_pb2.pstree_entry(pid=10, ppid=1, pgid=10, sid=10, threads=[10])]
    out, names = pidview.to_inside(tree)
    assert out is tree and names == {} and not pidview.is_inside_form(tree)


def test_network_lock_named_for_criu(monkeypatch) -> None:
    """Our nft lock table is criu's name for it ("CRIU-" + the run id the
    inventory records, lock method nftables), so criu's restore deletes it;
    criu's iptables lock (its default) is taken off rule by rule, spelled
    as criu/netfilter.c spells it."""
    import socket
    from procsnap.images.pb import inventory_pb2
    from procsnap.resources import tcp

    class Ctx:
        kind_state = {tcp.NAME: {"locked": True}}
        tasks = [type("T", (), {"pid": 4242})]
    inv = inventory_pb2.inventory_entry(img_version=2)
    tcp.inventory(Ctx(), inv)  # type: ignore[arg-type]
    assert inv.network_lock_method == tcp.LOCK_NFTABLES
    assert f"CRIU-{inv.dump_criu_run_id}" == tcp.table_name(4242)
    ran: list[list[str]] = []
    import subprocess  # tcp imports it where it runs a command
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: ran.append(argv))
    tcp._criu_iptables_unlock(socket.AF_INET6, "::ffff:127.0.0.1", 40000, "::ffff:127.0.0.2", 80)
    assert [" ".join(a) for a in ran] == [
        "iptables -w -t filter -D INPUT --protocol tcp -m mark ! --mark 49428 "
        "--source 127.0.0.2 --sport 80 --destination 127.0.0.1 --dport 40000 -j DROP",
        "iptables -w -t filter -D OUTPUT --protocol tcp -m mark ! --mark 49428 "
        "--source 127.0.0.1 --sport 40000 --destination 127.0.0.2 --dport 80 -j DROP"]


def test_file_pids_written_inside_the_pid_namespace() -> None:
    """A SIGIO owner or a pidfd's pid in files.img, as CRIU writes them for
    a pid namespace: the inside pid; the original entry is left alone."""
    from procsnap.images import pidview
    from procsnap.images.pb import fdinfo_pb2, fown_pb2, pidfd_pb2, regfile_pb2
    reg = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=1, reg=regfile_pb2.reg_file_entry(
        id=1, flags=0, pos=0, name="/x", fown=fown_pb2.fown_entry(
            uid=0, euid=0, signum=29, pid_type=1, pid=5001)))
    pfd = fdinfo_pb2.file_entry(type=fdinfo_pb2.PIDFD, id=2, pidfd=pidfd_pb2.pidfd_entry(
        id=2, ino=9, flags=0, nspid=5000, fown=fown_pb2.fown_entry(
            uid=0, euid=0, signum=0, pid_type=0, pid=0)))
    names = {5000: 1, 5001: 2}
    a, b = (pidview.map_file_pids(f, names) for f in (reg, pfd))
    assert (a.reg.fown.pid, b.pidfd.nspid, b.pidfd.fown.pid) == (2, 1, 0)
    assert (reg.reg.fown.pid, pfd.pidfd.nspid) == (5001, 5000)
    back = {1: 5000, 2: 5001}
    assert pidview.map_file_pids(a, back) == reg and pidview.map_file_pids(b, back) == pfd
    other = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=3, reg=regfile_pb2.reg_file_entry(
        id=3, flags=0, pos=0, name="/y", fown=fown_pb2.fown_entry(
            uid=0, euid=0, signum=0, pid_type=0, pid=0)))
    assert pidview.map_file_pids(other, names) is other


def test_pstree_nested_pid_namespace_named_at_the_roots_level() -> None:
    """A task in a pid namespace nested in the tree's is named by its pid in
    the tree's namespace (criu's view), and read back to its outside pid."""
    from procsnap.images import pidview
    from procsnap.images.pb import pstree_pb2
    tree = _tree_in_pidns()
    tree.append(pstree_pb2.pstree_entry(pid=5002, ppid=5001, pgid=5000, sid=5000,
                                        threads=[5002], ns_pid=[5002, 4, 1],
                                        ns_threads=[5002, 4, 1]))
    out, names = pidview.to_inside(tree)
    assert names[5002] == 4 and out[2].pid == 4 and out[2].ppid == 2
    assert pidview.to_outside(out)[5002] == 4 and out[2].pid == 5002


def test_other_pids_written_inside_the_pid_namespace() -> None:
    """Lock owners, a terminal's session and group, a timer's thread: the
    inside pids, as CRIU writes them; the dumper's messages unchanged."""
    from procsnap.images import pidview
    from procsnap.images.pb import core_pb2, file_lock_pb2, timer_pb2, tty_pb2
    names = {5000: 1, 5003: 3}
    lk = file_lock_pb2.file_lock_entry(flag=1, type=1, pid=5000, fd=3, start=0, len=0)
    assert pidview.map_pids("filelocks", lk, names).pid == 1 and lk.pid == 5000
    info = tty_pb2.tty_info_entry(id=1, type=tty_pb2.PTY, locked=False, exclusive=False,
                                  packet_mode=False, sid=5000, pgrp=5003)
    m = pidview.map_pids("tty-info", info, names)
    assert (m.sid, m.pgrp, info.sid) == (1, 3, 5000)
    assert pidview.map_pids("tty-info", m, {}) is m
    core = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
    core.tc.timers.posix.append(timer_pb2.posix_timer_entry(
        it_id=0, clock_id=0, si_signo=10, it_sigev_notify=4, sival_ptr=0, overrun=0,
        isec=0, insec=0, vsec=0, vnsec=0, notify_thread_id=5003))
    c = pidview.map_core_pids(core, names)
    assert c.tc.timers.posix[0].notify_thread_id == 3
    assert core.tc.timers.posix[0].notify_thread_id == 5003


def test_tmpfs_tarball_named_as_criu(tmp_path: Path) -> None:
    """CRIU names a tmpfs's tarball tmpfs-dev-N.tar.gz.img (every image name
    ends in .img); procsnap's images before 2026-11-30 lack the .img and
    are still found."""
    from procsnap.images import image_path
    from procsnap.resources.namespaces import mnt
    assert image_path(str(tmp_path), "tmpfs-dev", 23).endswith("/tmpfs-dev-23.tar.gz.img")
    assert mnt._tmpfs_image(str(tmp_path), 23).endswith(".tar.gz.img")
    (tmp_path / "tmpfs-dev-23.tar.gz").write_bytes(b"")
    assert mnt._tmpfs_image(str(tmp_path), 23).endswith("/tmpfs-dev-23.tar.gz")
