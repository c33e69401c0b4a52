"""The import graph of procsnap is a tree of layers, never a circle.

kernel < procfs < images < inject < tasks < resources, audit < drivers
(dumper, restorer, verify) < the API and the command line.  A lower layer
never imports a higher one -- not even under TYPE_CHECKING or inside a
function -- so each layer can be read, tested and replaced on its own.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "procsnap"

# layer of each module (by dotted name prefix; the longest prefix wins)
LAYERS = {
    "procsnap.errors": 0,
    "procsnap.logs": 0,
    "procsnap.record": 0,
    "procsnap.lazyre": 0,
    "procsnap.kernel": 1,
    "procsnap.procfs": 2,
    "procsnap.elf": 2,
    "procsnap.images": 3,
    "procsnap.progress": 3,
    "procsnap.inject": 4,
    "procsnap.tmpnames": 4,
    "procsnap.pagexfer": 4,  # CRIU's page server protocol, both ends
    "procsnap.tasks": 5,
    "procsnap.resources": 6,
    "procsnap.audit": 6,
    "procsnap.dumper": 7,
    "procsnap.restorer": 7,
    "procsnap.verify": 7,
    "procsnap.lazypages": 7,
    "procsnap.check": 8,
    "procsnap.auditdoc": 8,
    "procsnap.demo": 9,
    "procsnap.cli": 9,
    "procsnap.criu": 9,  # criu's command line, beside cli
    "procsnap.__main__": 9,
    "procsnap": 9,  # the package itself: the Python API
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        if "pb" in p.relative_to(PKG).parts[:2] and p.parent.name == "pb":
            continue
        name = ".".join(("procsnap",) + p.relative_to(PKG).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _layer(mod: str) -> int:
    best = max((k for k in LAYERS if mod == k or mod.startswith(k + ".")), key=len)
    return LAYERS[best]


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                full = (base + ("." + node.module if node.module else "")) if node.level \
                    else (node.module or "")
                for alias in node.names:
                    cand = f"{full}.{alias.name}"
                    deps.add(cand if cand in mods else full)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def test_no_module_imports_a_higher_layer() -> None:
    mods = _modules()
    bad = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
           for m, deps in _imports(mods).items() for d in sorted(deps)
           if _layer(d) > _layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_circle() -> None:
    graph = _imports(_modules())
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circle = path[path.index(d):] + [d]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
