"""The shape ARCHITECTURE.md describes, checked: layers as folders, no import cycles, imports inside
functions only for the heavy optional libraries (each with its reason), the registry complete.

The layers contract itself is import-linter's (pyproject.toml; scripts/test.sh runs lint-imports);
these tests read the source with ast and need no subprocess.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from builder.infra import paths
from builder.stages import registry

BUILDER = Path(__file__).resolve().parents[2] / "builder"
LAYERS = ("infra", "tools", "stages", "distros", "commands")
HEAVY = ("pycdlib", "git", "pykickstart")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(BUILDER.rglob("*.py")):
        rel = path.relative_to(BUILDER.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """The builder modules ``path`` imports at module level (outside ``if TYPE_CHECKING``)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if _type_checking(node):
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
    visit(tree.body)
    return {m for m in found if m in mods}


def test_every_module_is_in_a_layer() -> None:
    for name in modules():
        parts = name.split(".")
        assert parts[0] == "builder"
        assert len(parts) == 1 or parts[1] in (*LAYERS, "cli", "pipeline", "__main__", "templates"), name


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {name: imports(path, mods) - {name} for name, path in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            # a package and its own submodules are not a cycle of behaviour
            if len(component) > 1 and not all(c.startswith(min(component, key=len)) for c in component):
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == []


def test_imports_inside_functions_are_only_the_heavy_libraries_with_a_reason() -> None:
    offenders = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    module = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                    root = (module or "").split(".")[0]
                    reason = "#" in lines[inner.lineno - 1] or lines[inner.lineno - 2].strip().startswith("#")
                    if root not in HEAVY or not reason:
                        offenders.append(f"{name}:{inner.lineno} imports {module}")
    assert offenders == []


def test_the_registry_names_every_stage_and_its_work_entries() -> None:
    from builder.stages.base import Stage

    def subclasses(cls: type) -> set[type]:
        out: set[type] = set()
        sub: type
        for sub in cls.__subclasses__():
            out |= {sub, *subclasses(sub)}
        return out

    assert {c for c in subclasses(Stage) if not inspect.isabstract(c)} == set(registry.STAGES)
    assert registry.work_entries() <= set(paths.KNOWN_ENTRIES)
