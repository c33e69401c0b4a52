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
