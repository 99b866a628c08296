"""The house rules of the package, read from its source (nothing is imported or run):

* no module over 500 lines and no function over 80, so every file reads top to bottom;
* no import cycle between modules, lazy (function-level) imports included;
* run-folder file names are spelled only in ``runfolder.py``; ``split.json``, a file of both a run
  and a cache, once by each owner;
* English/Chinese strings live in one module (``text.py``);
* training imports nothing from prediction.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mri2mri"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
RUN_FOLDER_NAMES = {
    "config.json", "history.csv", "run_summary.json", "metrics.json", "test_metrics.csv",
    "predictions_preview.npz", "report.html", "test_cache", "checkpoints",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("mri2mri", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body (lazy imports too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(_tree(path)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)  # a module's own parent packages are not an edge of a cycle
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_is_over_500_lines():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}  # fmt: skip
    assert not long, f"split these modules: {long}"


def test_no_function_is_over_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({length} lines)")
    assert not long, f"split these functions: {long}"


def test_no_import_cycle_lazy_imports_included():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert not _cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
    # The rule above can fail: a graph with a cycle through three modules is reported.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_training_imports_nothing_from_prediction():
    training = {name: path for name, path in MODULES.items() if name.startswith("mri2mri.training")}
    assert training
    for name, path in training.items():
        assert not {m for m in _imports(name, path) if m.startswith("mri2mri.predict")}, name


def _string_constants(path: Path):
    """Every string constant of a module that is not a docstring."""
    tree = _tree(path)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


@pytest.mark.parametrize("name", sorted(set(MODULES) - {"mri2mri.runfolder"}))
def test_run_folder_file_names_are_spelled_only_by_the_run_folder(name):
    spelled = [(node.lineno, node.value) for node in _string_constants(MODULES[name]) if node.value in RUN_FOLDER_NAMES]
    assert not spelled, f"{name} spells run-folder names (use mri2mri.runfolder.RunFolder): {spelled}"


def test_split_json_is_spelled_once_by_each_owner():
    """A run's split.json (RunFolder.split) and a cache's (data.cache.SPLIT_FILE): no third place."""
    spelled = sorted(
        (name, node.lineno) for name, path in MODULES.items() for node in _string_constants(path)
        if node.value == "split.json"
    )
    assert [name for name, _ in spelled] == ["mri2mri.data.cache", "mri2mri.runfolder"], spelled


def test_chinese_strings_live_in_one_module():
    chinese = re.compile("[\u4e00-\u9fff]")
    holders = sorted(name for name, path in MODULES.items() if chinese.search(path.read_text(encoding="utf-8")))
    assert holders == ["mri2mri.text"]
