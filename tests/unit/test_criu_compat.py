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
