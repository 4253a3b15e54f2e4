"""The documented architecture is the real one: every import of the package (lazy and TYPE_CHECKING included)
follows the "may import" column of docs/architecture.md, and no two modules import each other, even indirectly."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ww_callbacks

PACKAGE = Path(ww_callbacks.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


MODULES = _module_names()


def _imported(module: str) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
                break
    return out


def _part(module: str) -> str:
    """The documented part a module belongs to: ``engine`` for ``ww_callbacks.engine.monitor`` ..."""
    parts = module.split(".")
    return "ww_callbacks" if len(parts) == 1 else parts[1]


def _documented_rules() -> dict[str, set[str]]:
    rules = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = set(re.findall(r"`([\w.]+)`", cells[2]))
        for name in re.findall(r"`([\w./]+)`", cells[0]):
            rules[name.removesuffix("/").removesuffix(".py")] = allowed
    return rules


def test_every_part_of_the_package_is_documented():
    rules = _documented_rules()
    parts = {_part(m) for m in MODULES} - {"ww_callbacks"}
    assert parts - set(rules) == set(), "document these in docs/architecture.md"
    assert set(rules) - parts - {"__init__"} == set(), "the documentation names parts that do not exist"


def test_imports_follow_the_documented_rules():
    rules = _documented_rules()
    rules["ww_callbacks"] = rules.pop("__init__")
    broken = []
    for module in MODULES:
        own = _part(module)
        for target in _imported(module):
            other = _part(target)
            if other != own and other not in rules[own]:
                broken.append(f"{module} imports {target}")
    assert not broken


def test_no_import_cycle_between_modules():
    graph = {m: _imported(m) - {"ww_callbacks"} for m in MODULES}  # the root only re-exports
    graph["ww_callbacks"] = _imported("ww_callbacks")
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles
