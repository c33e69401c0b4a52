"""The GNU build-id of an ELF file: enough of ELF to find it.

CRIU records the build-id of files mapped executable (reg_file_entry
field build_id: the note's bytes copied into the repeated uint32, four
bytes a word, little-endian, zero-padded: a 20-byte build-id is 5 words;
criu restore refuses any other length) so that a restore refuses a library
or program that was replaced by another build since the dump, even one of
the same size.  We read it from the program headers' PT_NOTE segments:
note type NT_GNU_BUILD_ID (3), owner "GNU".
"""
from __future__ import annotations

import os
import struct

ELF_MAGIC = b"\x7fELF"
PT_NOTE = 4
NT_GNU_BUILD_ID = 3


def build_id(fd: int) -> bytes | None:
    """The build-id of the 64-bit little-endian ELF file open on ``fd``,
    or None when it is no such file or has no build-id note."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != ELF_MAGIC or head[4] != 2 or head[5] != 1:
        return None
    e_phoff, = struct.unpack_from("<Q", head, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", head, 54)
    if e_phentsize < 56 or e_phnum == 0 or e_phnum > 4096:
        return None
    table = os.pread(fd, e_phentsize * e_phnum, e_phoff)
    for i in range(len(table) // e_phentsize):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * e_phentsize)
        if p_type != PT_NOTE or p_filesz > 1 << 20:
            continue
        notes = os.pread(fd, p_filesz, p_offset)
        pos = 0
        while pos + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
            name_at = pos + 12
            desc_at = name_at + (namesz + 3) // 4 * 4
            end = desc_at + (descsz + 3) // 4 * 4
            if end > len(notes):
                break
            if ntype == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz].rstrip(b"\0") == b"GNU":
                return notes[desc_at:desc_at + descsz]
            pos = end
    return None


def to_words(bid: bytes) -> list[int]:
    """The build-id as CRIU stores it in reg_file_entry.build_id (see above)."""
    padded = bid + b"\0" * (-len(bid) % 4)
    return list(struct.unpack(f"<{len(padded) // 4}I", padded))


def from_words(stored: list[int]) -> bytes:
    """The bytes of a stored build-id (CRIU's words; old one-byte form kept)."""
    if stored and all(0 <= b < 256 for b in stored) and len(stored) % 4 == 0 and len(stored) > 8:
        return bytes(stored)
    return b"".join(w.to_bytes(4, "little") for w in stored)


def matches(stored: list[int], bid: bytes | None) -> bool:
    """Does a stored reg_file_entry.build_id describe ``bid``?

    CRIU's form (words); images procsnap wrote before it used CRIU's form
    held one byte per element and are still accepted.
    """
    if bid is None:
        return False
    if stored == to_words(bid):
        return True
    return len(stored) == len(bid) and all(0 <= b < 256 for b in stored) and bytes(stored) == bid
