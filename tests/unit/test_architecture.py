"""The shape of the code, checked from its imports (read statically; nothing is imported).

Packages depend one way: experts <- router <- skills <- serving. No module imports its way back
into itself, no package reaches into another's private modules or names, and no module grows past
400 lines. Imports inside functions count: they are dependencies too, only hidden ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["experts", "router", "skills", "serving"]  # each may import only those before it
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The project module a dotted import name refers to (its longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for every import of a project module."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] in ORDER]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] in ORDER:
                for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                    sub = f"{base}.{alias.name}"
                    if sub in MODULES:
                        out.append((node.lineno, sub, []))
                    else:
                        out.append((node.lineno, base, [alias.name]))
    return out


EDGES = {
    m: sorted({o for _, target, _ in _imports(m) if (o := _owner(target)) and o != m})
    for m in MODULES
}


def test_packages_import_only_downward():
    upward = []
    for module in MODULES:
        rank = ORDER.index(module.split(".")[0])
        for line, target, _ in _imports(module):
            if ORDER.index(target.split(".")[0]) > rank:
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "imports must flow experts <- router <- skills <- serving:\n" + "\n".join(upward)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph; any with 2+ is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in EDGES[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_across_packages():
    private = []
    for module in MODULES:
        package = module.split(".")[0]
        for line, target, names in _imports(module):
            if target.split(".")[0] == package:
                continue
            hidden = [p for p in target.split(".") if p.startswith("_")]
            hidden += [n for n in names if n.startswith("_")]
            if hidden:
                private.append(f"{MODULES[module].relative_to(ROOT)}:{line} uses {target} {names}")
    assert not private, "private modules or names used across packages:\n" + "\n".join(private)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short_enough_to_read(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines; split it"


def test_the_checks_see_the_whole_tree():
    """Guards the guard: the graph is non-trivial and each package is present."""
    assert {m.split(".")[0] for m in MODULES} == set(ORDER)
    assert len(MODULES) > 40 and sum(map(len, EDGES.values())) > 100
    assert "experts.stream" in EDGES["serving.pipeline"]
