"""smaps parsing and the VmFlags table (resources/memory.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from procsnap.errors import ParseError, Unsupported
from procsnap.procfs.parse import parse_maps, parse_smaps
from procsnap.resources import memory

SMAPS = """\
7f0000000000-7f0000004000 rw-p 00000000 00:00 0 
Size:                 16 kB
Rss:                   8 kB
ProtectionKey:         0
VmFlags: rd wr mr mw me ac hg dc
7f0000004000-7f0000005000 r--s 00001000 fe:00 42                         /tmp/a file
Size:                  4 kB
VmFlags: rd mr me ms
7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd
"""


def test_parse_smaps_keeps_the_maps_fields_and_adds_flags() -> None:
    got = parse_smaps(SMAPS)
    heads = "\n".join(ln for ln in SMAPS.splitlines() if ln[:1] in "7")
    want = parse_maps(heads)
    assert [(m.start, m.end, m.perms, m.pgoff, m.ino, m.path) for m in got] == \
        [(m.start, m.end, m.perms, m.pgoff, m.ino, m.path) for m in want]
    assert got[0].vmflags == ("rd", "wr", "mr", "mw", "me", "ac", "hg", "dc")
    assert got[1].path == "/tmp/a file" and got[1].vmflags == ("rd", "mr", "me", "ms")
    assert got[2].pkey == 0


def test_parse_smaps_rejects_garbage() -> None:
    with pytest.raises(ParseError):
        parse_smaps("VmFlags: rd\n")


def _task() -> SimpleNamespace:
    return SimpleNamespace(pid=77)


def test_vmflags_give_map_flags_and_advice() -> None:
    m = parse_smaps(SMAPS)[0]
    flags, madv = memory._vmflags(_task(), m)  # type: ignore[arg-type]
    assert madv == (1 << 14) | (1 << 10)  # MADV_HUGEPAGE, MADV_DONTFORK
    assert flags == 0


def test_kernel_flags_of_special_mappings_are_not_refused() -> None:
    assert memory._vmflags(_task(), parse_smaps(SMAPS)[2]) == (0, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("flag", ["um", "ht", "zz", "pf"])
def test_refused_and_unknown_flags_name_pid_and_mapping(flag: str) -> None:
    text = SMAPS.replace("ac hg dc", f"ac {flag}")
    with pytest.raises(Unsupported) as e:
        memory._vmflags(_task(), parse_smaps(text)[0])  # type: ignore[arg-type]
    msg = str(e.value)
    assert "pid 77" in msg and "0x7f0000000000-0x7f0000004000" in msg and repr(flag) in msg
    assert "\n" not in msg


def test_protection_key_is_refused() -> None:
    text = SMAPS.replace("ProtectionKey:         0", "ProtectionKey:         3")
    with pytest.raises(Unsupported, match="protection key 3"):
        memory._vmflags(_task(), parse_smaps(text)[0])  # type: ignore[arg-type]


def test_every_entry_is_classified() -> None:
    for flag, (kind, why) in memory.VMFLAGS.items():
        assert len(flag) == 2 and kind in (memory.SAVED, memory.REFUSED, memory.IRRELEVANT)
        assert why


def _brute_diff(mine_img: bytes, mine: list, theirs_img: bytes, theirs: list) -> tuple:
    """Page by page, as the definition says."""
    from procsnap.resources.memory import PAGE
    mp = {a + k: o + k for a, s, o in mine for k in range(0, s, PAGE)}
    tp = {a + k: o + k for a, s, o in theirs for k in range(0, s, PAGE)}
    write = sorted((a, mp[a]) for a in mp
                   if a not in tp or mine_img[mp[a]:mp[a] + PAGE] != theirs_img[tp[a]:tp[a] + PAGE])
    drop = sorted(a for a in tp if a not in mp)
    return write, drop


def test_diff_pages_matches_page_by_page(tmp_path) -> None:
    """The run-wise sweep of inherited pages decides every page as the
    page-by-page definition does (random runs, overlaps and gaps)."""
    import random
    from procsnap.resources.memory import PAGE, _diff_pages
    rnd = random.Random(17)
    for trial in range(200):
        def runs() -> tuple[list, bytes]:
            out, addr, off = [], rnd.randrange(0, 8) * PAGE, 0
            for _ in range(rnd.randrange(0, 6)):
                n = rnd.randrange(1, 400) * PAGE
                out.append((addr, n, off))
                off += n
                addr += n + rnd.choice([0, PAGE, 37 * PAGE])
            return out, bytes(rnd.choice(b"ab") for _ in range(off // PAGE))
        mine, mseed = runs()
        theirs, tseed = runs()
        mimg = b"".join(bytes([c]) * PAGE for c in mseed)
        timg = b"".join(bytes([c]) * PAGE for c in tseed)
        (tmp_path / "m").write_bytes(mimg)
        (tmp_path / "t").write_bytes(timg)
        write, drop = _diff_pages([str(tmp_path / "m")], mine, [str(tmp_path / "t")], theirs)
        got_w = sorted((a + k, o + k) for a, n, o in write for k in range(0, n, PAGE))
        got_d = sorted(a + k for a, n in drop for k in range(0, n, PAGE))
        assert (got_w, got_d) == _brute_diff(mimg, mine, timg, theirs), trial


def test_guard_pages_are_not_data_but_guard_runs() -> None:
    """A guard page's pagemap entry is a swap-type marker (bits 62 and 58):
    never dumped as data (reading it gives EIO), found by guard runs."""
    import struct
    from procsnap.procfs.pagemap import PM_GUARD_REGION, PM_PRESENT, PM_SWAP, dump_runs
    entries = [PM_PRESENT, PM_SWAP | PM_GUARD_REGION, PM_SWAP | PM_GUARD_REGION, PM_SWAP, 0]
    data = struct.pack("<5Q", *entries)
    assert dump_runs(data, anon_only=False) == [(0, 1), (3, 1)]
    assert dump_runs(data, anon_only=True) == [(0, 1), (3, 1)]
    assert dump_runs(data, anon_only=False, guard=True) == [(1, 2)]


def test_parent_split_run_arithmetic() -> None:
    """A dump over a pre-dump keeps in the parent exactly the pages it
    has, not written since, that the parent holds; the rest is copied."""
    import random
    from procsnap.images.parent import intersect as _intersect
    from procsnap.resources.memory import PAGE, _subtract
    rnd = random.Random(5)

    def runs() -> list[tuple[int, int]]:
        out, addr = [], rnd.randrange(0, 4) * PAGE
        for _ in range(rnd.randrange(0, 7)):
            n = rnd.randrange(1, 9)
            out.append((addr, n))
            addr += (n + rnd.choice([0, 1, 3])) * PAGE
        return out

    def pages(rs: list[tuple[int, int]]) -> set[int]:
        return {a + k * PAGE for a, n in rs for k in range(n)}

    for trial in range(300):
        a, b = runs(), runs()
        assert sorted(pages(_intersect(a, b))) == sorted(pages(a) & pages(b)), trial
        assert sorted(pages(_subtract(a, b))) == sorted(pages(a) - pages(b)), trial
        got = _subtract(a, b)
        assert got == sorted(got) and all(n > 0 for _, n in got)


def test_verify_reads_the_flags_it_compares() -> None:
    """verify._vmflags_of (VmFlags found block by block) says what the
    line-by-line reading says: the madvise bits and mmap flags of each VMA,
    and a VMA with none of them is there with zeros."""
    from procsnap import verify
    from procsnap.kernel import consts as C

    text = SMAPS + """\
7f0000010000-7f0000020000 rw-p 00000000 00:00 0 
Size:                 64 kB
VmFlags: rd wr mr mw me gd lo nr nh dd wf sr
"""
    got = verify._vmflags_of(text)
    assert got == verify._vmflags_by_line(text)
    assert got[0x7F0000000000] == ((1 << C.MADV_HUGEPAGE) | (1 << C.MADV_DONTFORK), 0)
    assert got[0x7F0000004000] == (0, 0)
    madv, mflags = got[0x7F0000010000]
    assert madv == sum(1 << a for a in (C.MADV_NOHUGEPAGE, C.MADV_DONTDUMP, C.MADV_WIPEONFORK,
                                        C.MADV_SEQUENTIAL))
    assert mflags == C.MAP_GROWSDOWN | C.MAP_LOCKED | C.MAP_NORESERVE
    # not the kernel's layout (no maps line before a VmFlags line): line by line
    odd = "Size: 4 kB\nVmFlags: rd hg\n" + text
    assert verify._vmflags_of(odd) == verify._vmflags_by_line(odd)
