"""The shape of the code (docs/architecture.md, layers): the import rule, no cycles, small modules.

The rule itself is in pyproject.toml, as import-linter contracts; these tests run
them on the project's real import graph (grimp, import-linter's own), and check
what the contracts cannot: no cycle between any two modules, no import hidden in
a function or behind TYPE_CHECKING to dodge one, package __init__ files that
import nothing, no application module over 450 lines.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("botplatform", "bots", "pool", "whatsapp")
MAX_LINES = 450
# Imported where they are used, on purpose: importing neonize starts Go's runtime and needs libmagic,
# which only a shard should pay for (docs/neonize.md); a web process never imports it.
LAZY = ("neonize",)


def application_modules() -> list[Path]:
    return sorted(
        path for package in PACKAGES for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts
    )


def test_it_keeps_the_import_rule():
    # Its own process, as `lint-imports` runs: in this one, Twisted's zope.interface has marked classes
    # in a way import-linter's contract loading trips over.
    lint = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert "Contracts: 4 kept, 0 broken." in lint.stdout, lint.stdout + lint.stderr
    assert lint.returncode == 0


def test_no_two_modules_import_each_other_even_through_others():
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    # Tarjan's strongly connected components over every module of the project.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)

    assert len(graph.modules) > 50, "the graph holds the project"
    assert cycles == []


def hidden_imports(path: Path) -> list[str]:
    """Imports inside a function or under ``if TYPE_CHECKING``: the usual ways of dodging a cycle."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def walk(node: ast.AST, hidden: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = hidden or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                found.append(f"{path.relative_to(ROOT)}:{child.lineno} if TYPE_CHECKING")
            if isinstance(child, ast.Import | ast.ImportFrom) and inside:
                names = [child.module or ""] if isinstance(child, ast.ImportFrom) else [a.name for a in child.names]
                if not all(name.split(".")[0] in LAZY for name in names):
                    found.append(f"{path.relative_to(ROOT)}:{child.lineno} {ast.unparse(child)}")
            walk(child, inside)

    walk(tree, False)
    return found


def test_no_import_hides_in_a_function_or_behind_type_checking():
    found = [line for path in application_modules() for line in hidden_imports(path)]

    assert found == []


def test_package_init_files_import_nothing():
    inits = [path for path in application_modules() if path.name == "__init__.py"]

    assert inits, "the packages have their __init__ files"
    assert [str(path.relative_to(ROOT)) for path in inits if path.read_text().strip()] == []


def test_no_application_module_is_over_450_lines():
    sizes = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in application_modules()}

    assert {name: size for name, size in sizes.items() if size > MAX_LINES} == {}


def test_nothing_points_outside_the_repository():
    """The contract lives in docs/: code, templates and the README cite it, never a place outside."""
    texts = [
        *application_modules(),
        ROOT / "README.md",
        *(ROOT / "templates").rglob("*.html"),
        *(ROOT / "docs").glob("*.md"),
    ]
    outside = re.compile(r"\.\./shared|shared/(notes|DESIGN)|DESIGN\.md")

    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in texts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []
