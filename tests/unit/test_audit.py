"""The audit table (procsnap/audit.py) on recorded /proc text: every line
of a real status file is known, and a line a newer kernel might print is
refused as unknown, not skipped."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from procsnap import audit
from procsnap.errors import Unsupported
from procsnap.procfs import parse

DATA = Path(__file__).parent / "data" / "proc"


def _status(name: str = "self_status.txt") -> dict[str, str]:
    text = (DATA / name).read_text()
    return parse.parse_status(text).raw


def test_every_item_is_one_of_three() -> None:
    for it in audit.TABLE:
        assert it.kind in (audit.SAVED, audit.REFUSED, audit.IRRELEVANT), it
        assert it.note, f"{it.source} {it.name}: no module, reason or why written down"
        assert (it.refuse is not None) == (it.kind == audit.REFUSED), it


def test_saved_items_name_a_module() -> None:
    for it in audit.TABLE:
        if it.kind == audit.SAVED:
            mod = it.note.split()[0]
            importlib.import_module(f"procsnap.resources.{mod}")


def test_recorded_status_lines_all_known() -> None:
    for key in _status():
        assert audit.items("status", key), f"status line {key!r} is not in the table"


def test_unknown_status_line_refused() -> None:
    raw = dict(_status())
    raw["Frobnicate_mode"] = "1"
    with pytest.raises(Unsupported) as exc:
        audit.check_status(4242, "", raw, "/proc/4242/status")
    msg = str(exc.value)
    assert "pid 4242" in msg and "'Frobnicate_mode'" in msg and "\n" not in msg, msg


def test_unknown_stat_field_refused() -> None:
    text = (DATA / "self_stat.txt").read_text().rstrip("\n") + " 77\n"
    values = text.rsplit(")", 1)[1].split()
    with pytest.raises(Unsupported, match=r"pid 7: .*'field 53'"):
        audit.check_stat_fields(7, values, "/proc/7/stat")
    audit.check_stat_fields(7, values[:-1], "/proc/7/stat")  # the known ones pass


@pytest.mark.parametrize("key,value,word", [
    ("Mems_allowed", "2", "memory nodes"),
    ("SigPnd", "0000000000000010", "SIGTRAP"),
    ("Speculation_Store_Bypass", "thread force mitigated", "store bypass"),
])
def test_refused_status_values(key: str, value: str, word: str) -> None:
    raw = dict(_status())
    audit.check_status(1, "", raw, "/proc/1/status")  # as recorded: nothing refused
    raw[key] = value
    with pytest.raises(Unsupported, match=word):
        audit.check_status(1, "thread 2: ", raw, "/proc/1/status")


@pytest.mark.parametrize("key,value", [
    ("CapAmb", "0000000000001000"), ("NoNewPrivs", "1"), ("Seccomp", "2"),
    ("Seccomp", "1"), ("Seccomp_filters", "3"),
    ("NSpid", "100\t1"),   # a pid namespace nested in the tree: namespaces.pid checks its shape
])
def test_saved_status_values_pass(key: str, value: str) -> None:
    """Saved since issue 17's second round: ambient caps, no_new_privs, seccomp."""
    raw = dict(_status())
    raw[key] = value
    audit.check_status(1, "", raw, "/proc/1/status")
    assert all(it.kind == audit.SAVED for it in audit.items("status", key))


def test_old_kernel_status_is_known() -> None:
    for key in _status("status_old_kernel.txt"):
        assert audit.items("status", key), key


def test_table_lists_as_markdown() -> None:
    rows = audit.table_rows()
    assert rows[0].startswith("| source |")
    assert all(r.startswith("| ") and r.endswith(" |") for r in rows)
    assert any("`status`" in r and "refused" in r for r in rows)
