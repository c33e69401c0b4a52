"""procsnap.verify's pure helpers: flag words, maps parsing, VMA merging."""
from __future__ import annotations

from procsnap import verify
from procsnap.procfs.parse import parse_maps

MAPS = """\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234                       /usr/bin/counter
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234                       /usr/bin/counter
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00000000 00:01 77                         /dev/zero (deleted)
7f0000001000-7f0000002000 r--p 00000000 fe:01 99                         /a file with spaces (deleted)
7f0000002000-7f0000003000 ---p 00000000 00:00 0 
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def test_open_flags_words() -> None:
    assert verify.open_flags(0o2002) == "O_RDWR|O_APPEND"
    assert verify.open_flags(0o2100001) == "O_WRONLY|O_LARGEFILE|O_CLOEXEC"
    assert verify.open_flags(0) == "O_RDONLY"
    assert verify.open_flags(0o400) == "O_RDONLY|O_NOCTTY"


def test_maps_split_by_hand_as_parse_maps() -> None:
    fast = verify._found_vmas(MAPS)
    slow = [verify._found_vma(m) for m in parse_maps(MAPS)]
    assert fast == slow
    assert [v.kind for v in fast] == ["file", "file", "[heap]", "shared anon", "file", "anon",
                                      "[vdso]", "[vsyscall]"]
    assert fast[4].name == "/a file with spaces (deleted)"
    assert fast[5].prot == 0 and fast[3].shared


def test_merge_only_what_the_kernel_could_merge() -> None:
    f = lambda s, e, off, prot=1: (s, e, off, prot, False, "file", "/lib", None)  # noqa: E731
    # contiguous offsets, same file and protection: one VMA
    assert verify._merge([f(0, 4096, 0), f(4096, 8192, 4096)]) == [f(0, 8192, 0)]
    # a gap in the file offsets, or another protection: two
    assert len(verify._merge([f(0, 4096, 0), f(4096, 8192, 8192)])) == 2
    assert len(verify._merge([f(0, 4096, 0), f(4096, 8192, 4096, prot=3)])) == 2
    vdso = (0, 4096, 0, 5, False, "[vdso]", "", None)
    vdso2 = (4096, 8192, 0, 5, False, "[vdso]", "", None)
    assert len(verify._merge([vdso, vdso2])) == 2
