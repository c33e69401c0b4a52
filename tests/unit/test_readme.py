"""The README's table of what is saved and refused names real tests."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    sources = {p.name: p.read_text() for p in (ROOT / "tests").rglob("test_*.py")}
    missing = []
    for name in sorted(set(re.findall(r"`(test_[A-Za-z0-9_]+)(?:\.py|\[[^\]]*\])?`", readme))):
        if f"{name}.py" in sources:
            continue
        if not any(re.search(rf"^def {name}\b", text, re.M) for text in sources.values()):
            missing.append(name)
    assert not missing, f"README names tests that do not exist: {missing}"
