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


# Options the table names twice for one setting the check reads once.
_SAME_SETTING = {"SO_RCVTIMEO_OLD": "SO_RCVTIMEO", "SO_RCVTIMEO_NEW": "SO_RCVTIMEO",
                 "SO_SNDTIMEO_OLD": "SO_SNDTIMEO", "SO_SNDTIMEO_NEW": "SO_SNDTIMEO",
                 "SO_BINDTOIFINDEX": "SO_BINDTODEVICE", "IPV6_FREEBIND": "IP_FREEBIND"}


def test_every_saved_socket_option_is_compared() -> None:
    """Each option sockopts.TABLE marks SAVED, for each kind, is among
    what the restore check reads back (a field made exact later, and
    added to the table, fails here until the check compares it)."""
    import socket

    from procsnap.images.pb import fdinfo_pb2
    from procsnap.resources import sockopts
    from procsnap.tasks import RestoreContext, RestoreOptions

    rctx = RestoreContext("/nonexistent", RestoreOptions())
    kinds = {"unix": (socket.AF_UNIX, socket.SOCK_DGRAM, 0),
             "tcp4": (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP),
             "tcp6": (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP),
             "udp4": (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP),
             "udp6": (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP)}
    for kind, (fam, typ, proto) in kinds.items():
        entry = fdinfo_pb2.file_entry(id=1, type=fdinfo_pb2.UNIXSK if fam == socket.AF_UNIX
                                      else fdinfo_pb2.INETSK)
        sub = entry.usk if fam == socket.AF_UNIX else entry.isk
        o = sub.opts
        o.so_buf_lock, o.so_priority, o.so_rcvlowat, o.so_linger = 3, 1, 1, 1
        if fam != socket.AF_UNIX:
            sub.family, sub.type, sub.proto = fam, typ, proto
            sub.ip_opts.freebind = True
            sub.tcp_opts.keepcnt = sub.tcp_opts.keepidle = sub.tcp_opts.keepintvl = 5
        with socket.socket(fam, typ, proto) as sk:
            read = {name for name, *_ in verify._sockopt_expect(rctx, entry, sk)}
        saved = {o.name for o in sockopts.TABLE if o.how == sockopts.SAVED and kind in o.kinds}
        missing = {n for n in saved if _SAME_SETTING.get(n, n) not in read}
        assert not missing, f"{kind}: saved but not compared: {sorted(missing)}"
