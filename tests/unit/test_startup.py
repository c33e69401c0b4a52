"""What procsnap's start-up loads: every CLI dump and restore of a small
process pays for it (issue 16: within 2x of criu, start-up included), so
what is left out on purpose must stay out."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code``."""
    r = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                        "print(sorted(sys.modules))"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    return set(ast.literal_eval(r.stdout.splitlines()[-1]))


def test_pb_modules_skip_protobufs_python_machinery_on_upb() -> None:
    """On upb our *_pb2 modules are built by images/pb/_runtime.py: neither
    protobuf's builder nor descriptor_pool (which pull the pure-Python
    message implementation and text_format) is loaded."""
    from google.protobuf.internal import api_implementation
    if api_implementation.Type() != "upb":
        pytest.skip("protobuf here is not upb: _runtime uses protobuf's own builder")
    loaded = _modules_after("import procsnap.images.magic, procsnap.images.pb.core_pb2")
    heavy = {"google.protobuf.internal.python_message", "google.protobuf.text_format",
             "google.protobuf.descriptor_pool", "google.protobuf.internal.builder",
             "google.protobuf.descriptor_pb2"}
    assert not heavy & loaded, sorted(heavy & loaded)


def test_pb_classes_are_protobufs_own() -> None:
    """The classes _runtime makes are the ones protobuf's builder makes for
    the same descriptors (one class per message, whoever loads it first),
    with the same module-level names."""
    from google.protobuf.internal import builder

    from procsnap.images.pb import core_pb2, fdinfo_pb2
    for mod in (core_pb2, fdinfo_pb2):
        theirs: dict[str, object] = {}
        builder.BuildMessageAndEnumDescriptors(mod.DESCRIPTOR, theirs)
        builder.BuildTopDescriptorsAndMessages(mod.DESCRIPTOR, mod.__name__, theirs)
        for name, value in theirs.items():
            ours = getattr(mod, name)
            if isinstance(value, type):
                assert ours is value, name
            elif isinstance(value, int):
                assert ours == value, name
            else:  # descriptors and enum wrappers
                assert getattr(ours, "DESCRIPTOR", ours) is getattr(value, "DESCRIPTOR", value), name
    m = core_pb2.core_entry(mtype=core_pb2.core_entry.X86_64)
    m.tc.comm = "x"
    assert core_pb2.core_entry.FromString(m.SerializePartialToString()).tc.comm == "x"
    assert fdinfo_pb2.fd_types.Name(fdinfo_pb2.EVENTFD) == "EVENTFD"


def test_cli_dump_and_restore_import_only_what_a_small_process_needs() -> None:
    """The modules of a dump and a restore of a tree without namespaces,
    sockets, tmpfs or pre-dump: none of the stdlib modules that only those
    need (each was imported at every start before), and only the parser of
    the command run is built."""
    loaded = _modules_after(
        "import procsnap.cli as c\n"
        "c._parser('dump'); c._parser('restore')\n"
        "import procsnap.dumper, procsnap.restorer, procsnap.verify")
    lazy = {"tarfile", "gzip", "tempfile", "subprocess", "json", "shutil", "socket", "logging",
            "procsnap.resources.tcp", "procsnap.resources.memtrack"}
    assert not lazy & loaded, sorted(lazy & loaded)


def test_cli_builds_the_parser_of_its_command_only() -> None:
    from procsnap import cli
    assert set(cli._parser("dump")._subparsers._group_actions[0].choices) == {"dump"}  # type: ignore[union-attr]
    assert set(cli._parser()._subparsers._group_actions[0].choices) == set(cli.COMMANDS)  # type: ignore[union-attr]


def test_log_messages_come_out_as_configured_once_logging_loads() -> None:
    """procsnap.logs keeps the command line's configuration until the first
    message: that message and the next are formatted and filtered by it,
    and a library logging through logging itself meets it too."""
    r = subprocess.run([sys.executable, "-c",
                        "import sys\n"
                        "from procsnap import logs\n"
                        "logs.configure(level=logs.WARNING, format='procsnap: %(message)s')\n"
                        "assert 'logging' not in sys.modules\n"
                        "from procsnap.tmpnames import log\n"
                        "log.info('not shown'); log.warning('shown %d', 1)\n"
                        "import logging; logging.getLogger('lib').warning('lib too')\n"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == ["procsnap: shown 1", "procsnap: lib too"]


def test_criu_version_answers_before_the_command_line_is_loaded() -> None:
    """LXC runs `criu --version` before each checkpoint and restore: the
    answer comes without the option tables, logging or dataclasses (with
    no config file around), and is criu's line."""
    loaded = _modules_after("import sys\nsys.argv = ['criu', '--version']\n"
                            "import procsnap.criu\nassert procsnap.criu.main() == 0")
    heavy = {"procsnap.criu.command", "procsnap.criu.options", "logging", "dataclasses"}
    assert not heavy & loaded, sorted(heavy & loaded)
    r = subprocess.run([sys.executable, "-m", "procsnap.criu", "--version"], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert (r.returncode, r.stdout) == (0, "Version: 4.2\n"), r.stderr


def _imported_by(cmd: list[str]) -> list[str]:
    """The modules ``python3 -X importtime -m procsnap CMD...`` imported
    (importtime sees every import statement's load, in order)."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "procsnap", *cmd],
                       capture_output=True, text=True, timeout=120, cwd="/",
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr[-2000:]
    return [line.split("|")[2].strip() for line in r.stderr.splitlines()
            if line.startswith("import time:") and "self [us]" not in line]


# What a dump or restore of a small tree (no namespaces of its own, no
# sockets) must not load: the namespace kinds, the image kinds it does not
# write, protobuf's well-known types (upb imports them at its first class
# for mixins no criu message uses).  Each was loaded at every start before.
_NOT_FOR_A_SMALL_TREE = {
    "procsnap.resources.namespaces.net", "procsnap.resources.namespaces.mnt",
    "procsnap.resources.namespaces.ipc", "procsnap.resources.namespaces.uts",
    "procsnap.resources.namespaces.time", "procsnap.resources.namespaces.cgroup",
    "procsnap.kernel.rtnl", "procsnap.kernel.netns",
    "procsnap.images.pb.netdev_pb2", "procsnap.images.pb.mnt_pb2",
    "procsnap.images.pb.stats_pb2", "procsnap.images.pb.sk_packet_pb2",
    "procsnap.images.pb.timens_pb2", "procsnap.images.pb.utsns_pb2",
    "procsnap.images.pb.ipc_var_pb2", "procsnap.images.pb.tun_pb2",
    "google.protobuf.internal.well_known_types", "datetime", "calendar",
    # annotations only (TYPE_CHECKING = False in each module): importing
    # typing was ~6 % of a small restore's start-up instructions
    "typing",
}


def test_cli_dump_and_restore_of_a_small_tree_load_only_its_kinds(tmp_path: Path) -> None:
    """A real CLI dump and restore -d of a small process: none of the
    modules above, and a bound on procsnap's own modules (127 for a dump
    before the image and namespace kinds were loaded on first use, 106 after)."""
    target = subprocess.Popen(["setsid", "sleep", "60"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              close_fds=True)
    images = tmp_path / "img"
    restored = 0
    try:
        dumped = _imported_by(["dump", "-t", str(target.pid), "-D", str(images)])
        target.wait(timeout=30)
        back = _imported_by(["restore", "-D", str(images), "-d",
                             "--pidfile", str(tmp_path / "pid")])
        restored = int((tmp_path / "pid").read_text())
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
        if restored:  # our child: the test runner is the subreaper
            os.kill(restored, 9)
            try:
                os.waitpid(restored, 0)
            except ChildProcessError:
                pass
    for name, loaded in (("dump", dumped), ("restore", back)):
        assert "procsnap.dumper" in dumped and "procsnap.restorer" in back  # what ran
        assert not _NOT_FOR_A_SMALL_TREE & set(loaded), (name, sorted(_NOT_FOR_A_SMALL_TREE & set(loaded)))
        own = {m for m in loaded if m.startswith("procsnap")}
        assert len(own) <= 115, (name, len(own))
    # the restore's check of a tree without internet sockets does not load
    # ipaddress (~3 % of its instructions), nor the CLI locale (argparse's
    # messages: see test_argparse_translates_without_a_lookup_per_message)
    assert not {"ipaddress", "locale"} & set(back), sorted({"ipaddress", "locale"} & set(back))


def test_well_known_types_are_left_alone_for_a_library_user() -> None:
    """Only the command line skips protobuf's well-known types: a program
    that imports procsnap and loads our classes gets Timestamp's mixins."""
    loaded = _modules_after(
        "import procsnap, procsnap.images\n"
        "from procsnap.images.pb import core_pb2\n"
        "core_pb2.core_entry()\n"
        "from google.protobuf import timestamp_pb2\n"
        "assert hasattr(timestamp_pb2.Timestamp(), 'ToDatetime')")
    assert "google.protobuf.internal.well_known_types" in loaded


def test_namespace_kinds_are_named_as_their_modules() -> None:
    """NS_NAMES names each kind's module; the module's NAME is that name
    (the registry imports a kind by it, on first use)."""
    from procsnap.resources import namespaces
    assert [m.NAME for m in namespaces.NS_KINDS] == namespaces.NS_NAMES
    assert namespaces.mnt.NAME == "mnt"


def test_image_kinds_name_classes_that_exist() -> None:
    """Every framed kind's entry (and head) class name resolves."""
    from procsnap.images.magic import KINDS
    for k in KINDS:
        for cls in (k.message, k.head):
            assert cls is None or cls.DESCRIPTOR.name in k._message + str(k._head), k


def _compiled_at_import(modules: str) -> list[str]:
    """The regular expressions a fresh interpreter compiles while importing
    ``modules`` (re's compiler, called for every pattern not in re's cache),
    named by the file that asked."""
    r = subprocess.run([sys.executable, "-c",
                        "import sys, re._compiler as rc\n"
                        "seen = []\n"
                        "orig = rc.compile\n"
                        "def compile(p, flags=0):\n"
                        "    f = sys._getframe(1)\n"
                        "    while f.f_code.co_filename.endswith('re/__init__.py'):\n"
                        "        f = f.f_back\n"
                        "    seen.append(f.f_code.co_filename)\n"
                        "    return orig(p, flags)\n"
                        "rc.compile = compile\n"
                        f"import {modules}\n"
                        "print(seen)"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    return list(ast.literal_eval(r.stdout.splitlines()[-1]))


def test_procsnap_compiles_no_regex_at_import() -> None:
    """Every pattern of procsnap's own is compiled at its first use
    (procsnap.lazyre): ~1M instructions each, most for files a small
    process does not have (timers, locks...).  Fails if a module-level
    re.compile (or a re.sub/match at import) comes back."""
    ours = [f for f in _compiled_at_import(
        "procsnap.cli, procsnap.dumper, procsnap.restorer, procsnap.verify, "
        "procsnap.resources, procsnap.procfs.parse, procsnap.procfs.pagemap")
        if "/procsnap/" in f]
    assert ours == [], ours


def test_lazy_patterns_match_as_compiled() -> None:
    import re

    from procsnap.lazyre import LazyPattern
    lazy = LazyPattern(r"(\d+)-(\d+)")
    assert lazy._re is None  # nothing compiled yet
    assert lazy.match("1-2").groups() == ("1", "2")  # type: ignore[union-attr]
    assert lazy.compiled is lazy.compiled  # once
    assert lazy.compiled.pattern == r"(\d+)-(\d+)"
    assert lazy.fullmatch("1-2x") is None and lazy.search("x3-4").group(2) == "4"  # type: ignore[union-attr]
    assert lazy.sub("x", "a1-2b") == "axb" and lazy.findall("1-2 3-4") == [("1", "2"), ("3", "4")]
    assert [m.start() for m in LazyPattern(rb"1+").finditer(b"0110111")] == [1, 4]
    assert LazyPattern("a.b", re.DOTALL).match("a\nb") is not None


def test_image_file_names_as_criu_prints_them() -> None:
    """magic.file_name replaces %u, %d, %lu, %ld and %x as the re.sub it
    replaced did (and as criu's printf)."""
    from procsnap.images.magic import KINDS, kind
    for k in KINDS:
        if k.has_ident:
            for ident in (0, 9, 12345, 0xabcdef):
                want = k.pattern
                for spec in ("%lu", "%ld", "%u", "%d"):
                    want = want.replace(spec, str(ident))
                assert k.file_name(ident) == want.replace("%x", format(ident, "x")), k.name
    assert kind("pagemap").file_name(7) == "pagemap-7.img"
    assert kind("ghost-file").file_name(255) == "ghost-file-ff.img"


def test_argparse_translates_without_a_lookup_per_message(tmp_path: Path) -> None:
    """The CLI looks the message catalog up once (cli._translate_once), not
    at each of argparse's messages (gettext.find: locale.normalize and a
    stat per language each time), and without loading locale when no
    catalog directory exists; and a catalog that exists is still used."""
    code = ("import sys, gettext\n"
            "calls = []\n"
            "orig = gettext.find\n"
            "gettext.find = lambda *a, **k: calls.append(a) or orig(*a, **k)\n"
            "import procsnap.cli as c\n"
            "try:\n"
            "    c.main(['restore'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(len(calls), 'locale' in sys.modules)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), LANGUAGE="", LC_ALL="", LC_MESSAGES="",
               LANG="C.UTF-8")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    import gettext
    if not os.path.isdir(gettext.bindtextdomain(gettext.textdomain())):
        assert r.stdout.split() == ["0", "False"], r.stdout
    else:
        assert int(r.stdout.split()[0]) <= 1, r.stdout
    assert "the following arguments are required: -D/--images-dir" in r.stderr
    # a catalog of the current domain (messages) in a language's directory
    # named by path is found and used, as gettext.gettext would
    mo = tmp_path / "xx" / "LC_MESSAGES"
    mo.mkdir(parents=True)
    _write_mo(mo / "messages.mo", {"the following arguments are required: %s":
                                   "ARGS MISSING: %s"})
    env["LANGUAGE"] = str(tmp_path / "xx")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "ARGS MISSING: -D/--images-dir" in r.stderr, r.stderr


def _write_mo(path: Path, table: dict[str, str]) -> None:
    """A GNU .mo catalog with ``table`` (and an empty header entry)."""
    import struct
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **table}.items())
    ids = b"".join(k.encode() + b"\0" for k, _ in entries)
    strs = b"".join(v.encode() + b"\0" for _, v in entries)
    n = len(entries)
    start = 7 * 4 + 16 * n
    oids, ostrs, off = [], [], 0
    for k, _ in entries:
        oids += [len(k.encode()), start + off]
        off += len(k.encode()) + 1
    off = 0
    for _, v in entries:
        ostrs += [len(v.encode()), start + len(ids) + off]
        off += len(v.encode()) + 1
    path.write_bytes(struct.pack("Iiiiiii", 0x950412de, 0, n, 28, 28 + 8 * n, 0, 0)
                     + struct.pack(f"{2 * n}i", *oids) + struct.pack(f"{2 * n}i", *ostrs)
                     + ids + strs)


def test_socket_kinds_import_no_command_running_or_logging_modules() -> None:
    """A dump or restore of a server (memcached: TCP, epoll, eventfd, pipes)
    loads the socket kinds during the frozen time; they must not bring
    subprocess, shutil, logging, ipaddress or typing with them (together
    ~20 ms of a memcached dump inside the freeze): those are imported
    where a command is run, a message logged or a lock taken without
    libnftables."""
    loaded = _modules_after(
        "from procsnap.images.pb import _runtime\n"
        "_runtime.skip_well_known_types()\n"
        "import procsnap.dumper, procsnap.restorer, procsnap.verify\n"
        "from procsnap.resources import (eventfd, eventpoll, inetsk, netlinksk, packetsk,\n"
        "    pipe, sockdiag, sockets, tcp, unixsk)\n"
        "from procsnap.kernel import nftables")
    heavy = {"subprocess", "shutil", "logging", "ipaddress", "typing"}
    assert not heavy & loaded, sorted(heavy & loaded)
