"""The package's parts import one way only, with no cycles: read from the source with ``ast``.

Every import counts, wherever it stands: at module level, inside functions and methods, and
``importlib.import_module(...)`` / ``__import__(...)`` calls with a literal name. The rules are the ones
``docs/architecture.md`` draws:

    core      imports nothing outside core
    web       imports core
    serving   imports core and web
    training  imports core
    build     imports core and training; nothing imports build but the command that runs it
    cli       imports whatever it needs
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

PACKAGE = "captioner"
ALLOWED = {  # part -> the parts it may import
    "core": {"core"},
    "web": {"core", "web"},
    "serving": {"core", "web", "serving"},
    "training": {"core", "training"},
    "build": {"core", "training", "build"},
    "cli": {"core", "web", "serving", "training", "build", "cli"},
    "": {"core", "cli"},  # captioner/__init__.py and __main__.py
}
BUILD_IMPORTERS = {"captioner.cli.models"}  # the module of the build-default command


def module_files(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted name, line) of everything ``path`` imports, at any depth; relative imports made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[:len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]  # a module, or a name in base
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append((first.value, node.lineno))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def import_graph(root: Path, package: str = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {module of the package it imports: the first line that does}."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(path, module, path.name == "__init__.py"):
            target = _known(name, modules)
            if target is not None and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module of the package that importing ``name`` runs last (``a.b.func`` -> ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(sorted(group), graph) for group in groups]


def _cycle_through(group: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A path from the group's first module back to it, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in graph[node]:
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return group


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[1] not in ("__main__",) else ""


def wrong_way(graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> list[str]:
    problems = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            where = f"{modules[module].relative_to(ROOT)}:{line} imports {target}"
            if part(target) not in ALLOWED[part(module)]:
                problems.append(f"{where} ({part(module) or 'captioner'} may not import {part(target)})")
            elif part(target) == "build" and part(module) != "build" and module not in BUILD_IMPORTERS:
                problems.append(f"{where} (only {', '.join(sorted(BUILD_IMPORTERS))} may import build)")
    return problems


# ----------------------------------------------------------------------------- the rules


def test_every_module_belongs_to_a_known_part():
    assert {part(module) for module in module_files(ROOT)} <= set(ALLOWED)


def test_no_import_cycles_between_modules():
    found = cycles(import_graph(ROOT))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_imports_go_one_way_between_parts():
    problems = wrong_way(import_graph(ROOT), module_files(ROOT))
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_runtime_does_not_load_training_or_build_code():
    script = ("import sys\nfrom captioner import load_captioner\nimport captioner.cli\n"
              "import captioner.web.batcher, captioner.web.batch\n"
              "print(sorted(m for m in sys.modules if m.startswith(('captioner.training', 'captioner.build', "
              "'timm', 'skimage', 'pycocoevalcap'))))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_architecture_page_names_the_parts_and_how_this_test_checks_them():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name in ALLOWED:
        assert not name or f"captioner/{name}" in page
    assert "tests/test_architecture.py" in page and "one way" in page


# ----------------------------------------------------------------------------- the checker itself


@pytest.fixture
def sample(tmp_path) -> Path:
    """A small package whose imports break the rules in every way the checker must see."""
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "def f():\n    from captioner.core import b\n",
        "core/b.py": "import importlib\nmod = importlib.import_module('captioner.core.c')\n",
        "core/c.py": "class C:\n    def m(self):\n        from . import a\n",
        "core/d.py": "def g():\n    __import__('captioner.web.view')\n",
        "web/__init__.py": "",
        "web/view.py": "from captioner.core.d import g\n",
        "training/__init__.py": "",
        "training/t.py": "from captioner.build import maker\n",
        "build/__init__.py": "",
        "build/maker.py": "",
    }
    for name, text in files.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    return tmp_path


def test_the_checker_sees_imports_in_functions_methods_and_importlib_calls(sample):
    graph = import_graph(sample)
    assert graph["captioner.core.a"] == {"captioner.core.b": 2}  # inside a function
    assert graph["captioner.core.b"] == {"captioner.core.c": 2}  # importlib.import_module
    assert graph["captioner.core.c"] == {"captioner.core.a": 3}  # relative, inside a method
    assert graph["captioner.core.d"] == {"captioner.web.view": 2}  # __import__
    found = {frozenset(cycle) for cycle in cycles(graph)}
    assert found == {frozenset({"captioner.core.a", "captioner.core.b", "captioner.core.c"}),
                     frozenset({"captioner.core.d", "captioner.web.view"})}


def test_the_checker_names_imports_that_go_the_wrong_way(sample, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", sample)
    problems = wrong_way(import_graph(sample), module_files(sample))
    assert any("core/d.py:2 imports captioner.web.view (core may not import web)" in p for p in problems)
    assert any("training/t.py:1 imports captioner.build.maker (training may not import build)" in p
               for p in problems)
    assert len(problems) == 2


def test_every_package_is_in_the_wheel():
    from setuptools.config.pyprojecttoml import read_configuration

    listed = set(read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"])
    packages = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / PACKAGE).rglob("__init__.py")}
    assert packages <= listed, f"not in pyproject.toml's packages: {sorted(packages - listed)}"
