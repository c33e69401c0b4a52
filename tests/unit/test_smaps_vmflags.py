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
