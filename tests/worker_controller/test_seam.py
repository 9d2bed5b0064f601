# SPDX-License-Identifier: Apache-2.0
"""The seam: only ``vllm/worker_controller/compat/`` reaches into vLLM's and
torch's internals (an AST scan of every other module), and the import graph
of the package runs one way (no cycles, type-only imports included)."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import vllm.worker_controller as package
from vllm.worker_controller.compat import (
    ALLOW_UNSUPPORTED_ENV,
    INTERNAL_MODULES,
    UnsupportedVllmError,
    check_vllm_version,
)

ROOT = Path(package.__file__).parent
SEAM = ROOT / "compat"
OURS = "vllm.worker_controller"
# Underscore names that are the standard library's public API.
STDLIB_API = frozenset({"_exit", "_replace", "_asdict", "_fields"})


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text(), str(path))


def upstream(module: str) -> bool:
    return module.split(".")[0] in ("vllm", "torch") and not module.startswith(OURS)


def is_internal(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in INTERNAL_MODULES)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def our_private_names() -> set[str]:
    """Underscore names this package defines (functions, classes,
    attributes it assigns): an access to any other is upstream's."""
    names: set[str] = set()
    for _, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if private(n)}


def violations(name: str, tree: ast.Module, ours: set[str]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module and upstream(node.module):
            if is_internal(node.module):
                found.append(f"{where} imports from {node.module}")
            found += [
                f"{where} imports {node.module}.{a.name}"
                for a in node.names
                if private(a.name)
            ]
        elif isinstance(node, ast.Import):
            found += [
                f"{where} imports {a.name}"
                for a in node.names
                if upstream(a.name) and is_internal(a.name)
            ]
        elif (
            isinstance(node, ast.Attribute)
            and private(node.attr)
            and node.attr not in ours
            and node.attr not in STDLIB_API
        ):
            found.append(f"{where} uses ._{node.attr.lstrip('_')}")
    return found


def test_only_the_seam_reaches_into_internals():
    ours = our_private_names()
    found = [
        v
        for name, tree in modules()
        if not name.startswith(f"{OURS}.compat")
        for v in violations(name, tree, ours)
    ]
    assert not found, "move these behind vllm/worker_controller/compat:\n" + "\n".join(
        found
    )


def test_imports_run_one_way():
    """No import cycle among our modules, counting imports made only for
    type checking."""
    graph: dict[str, set[str]] = {}
    for name, tree in modules():
        deps = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [
                    f"{node.module}.{a.name}" for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t.startswith(OURS + ".") and t != name)
    known = set(graph)
    graph = {n: {d for d in deps if d in known and d != n} for n, deps in graph.items()}
    # The package's __init__ re-exports the API; it is no one's dependency.
    graph = {n: deps - {OURS} for n, deps in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return [*path, start]
                if dep not in path:
                    stack.append((dep, [*path, dep]))
        return None

    cycles = [c for n in graph if (c := cycle_from(n))]
    assert not cycles, cycles[0]


def test_an_unsupported_vllm_is_refused_by_name(monkeypatch):
    monkeypatch.delenv(ALLOW_UNSUPPORTED_ENV, raising=False)
    check_vllm_version("0.26.0")
    with pytest.raises(UnsupportedVllmError, match=r"vLLM 0\.32\.0 is installed"):
        check_vllm_version("0.32.0")
    monkeypatch.setenv(ALLOW_UNSUPPORTED_ENV, "1")
    check_vllm_version("0.32.0")
