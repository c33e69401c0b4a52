"""AUDIT.md is what the dumper's own tables say, at every commit."""
from __future__ import annotations

from pathlib import Path

from procsnap import auditdoc

ROOT = Path(__file__).resolve().parents[2]


def test_audit_md_is_generated_from_the_tables() -> None:
    have = (ROOT / "AUDIT.md").read_text()
    want = auditdoc.document()
    assert have == want, ("AUDIT.md is out of date with the audit tables: "
                          "run python3 -m procsnap.auditdoc > AUDIT.md")


def test_every_row_has_a_verdict_and_a_reason() -> None:
    for line in auditdoc.document().splitlines():
        if not line.startswith("| ") or line.startswith("| ---") or "| kind |" in line:
            continue
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if "(only the common keys)" in line:
            continue
        assert any(c in ("saved", "refused", "irrelevant", "inexact") for c in cells), line
        assert cells[-1], f"no reason given: {line}"
