"""The package's shape: no import cycles between hypergen's modules, and no module over 400 lines.

The import graph is read from the source with ``ast`` (nothing is imported): every ``import hypergen...`` and
``from ... import ...`` of a hypergen module, relative or absolute, at the top of a module or inside a function,
is an edge from the importing module to the imported one (``from .x import y`` also to ``x.y`` when that is a
module)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hypergen"
MAX_LINES = 400

# No exceptions: the registry imports no component (``hypergen.components`` imports its built-in modules, whose
# decorators register them), so there is no cycle by design either.
REGISTRATION: set[tuple[str, str]] = set()
CYCLES_FOR_NOW: list[list[str]] = []
OVER_LIMIT_FOR_NOW: set[str] = set()


def module_files() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (a package is its __init__.py)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("hypergen", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The hypergen modules that module ``name`` (its source at ``path``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read_from_relative_absolute_and_deferred_imports():
    graph = import_graph()
    assert "hypergen.training.distributed" in graph["hypergen.training.trainer"]          # from .distributed import
    assert "hypergen.training.backends.torch" in graph["hypergen.training.backends"]      # from .torch import
    assert "hypergen.errors" in graph["hypergen.training.backends.deepspeed"]             # from ...errors import
    assert "hypergen.components.generators" in graph["hypergen.components"]             # from . import generators
    assert not any(m.startswith("hypergen.components") for m in graph["hypergen.registry"])
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_but_registration():
    graph = import_graph()
    for source, target in REGISTRATION:
        graph[source].discard(target)
    assert [cycle for cycle in cycles(graph) if cycle not in CYCLES_FOR_NOW] == []


def test_no_module_over_400_lines():
    lengths = {path.relative_to(PACKAGE).as_posix(): len(path.read_text().splitlines())
               for path in module_files().values()}
    over = {name for name, count in lengths.items() if count > MAX_LINES}
    assert over <= OVER_LIMIT_FOR_NOW, {name: lengths[name] for name in over - OVER_LIMIT_FOR_NOW}


def test_the_package_root_holds_at_most_ten_modules():
    """Everything beyond what the whole package shares lives in a package whose name says what it holds
    (docs/architecture.md, "Layout"); a new module goes there, not beside cli.py."""
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= 10, f"{len(root)} modules at hypergen/: {', '.join(root)}"
