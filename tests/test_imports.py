"""The package's import graph: no cycles (lazy imports inside functions included), runtime/ without torch."""

from __future__ import annotations

import ast
from pathlib import Path

import probda_deploy

ROOT = Path(probda_deploy.__file__).parent
PACKAGE = "probda_deploy"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """{module: package modules it imports anywhere in its source}, one edge per `import` / `from ... import`."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, name, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a] ([] when there is none); a package's own __init__ re-exports are edges too,
    except a package importing its own submodules (that is how packages expose their parts)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def edges(m: str) -> set[str]:
        return {t for t in graph[m] if not t.startswith(m + ".")}

    def visit(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and "probda_deploy.runtime.predict" in graph["probda_deploy.runtime.backend"]
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_sees_lazy_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) == []


KNOWN: set[tuple[str, str]] = set()  # accepted part-level edges that would close a circle: none


def test_no_cycles_between_parts():
    """Sub-packages and top-level modules (runtime, report, evaluation, ...) do not import each other in a circle."""
    part = lambda m: ".".join(m.split(".")[:2])  # noqa: E731
    graph: dict[str, set[str]] = {}
    for m, targets in import_graph().items():
        graph.setdefault(part(m), set()).update(part(t) for t in targets if part(t) != part(m) and (m, t) not in KNOWN)
    cycle = find_cycle(graph)
    assert not cycle, "import cycle between parts: " + " -> ".join(cycle)


def test_runtime_imports_only_runtime_data_method_errors_files():
    allowed = {"probda_deploy.runtime", "probda_deploy.data", "probda_deploy.method", "probda_deploy.errors",
               "probda_deploy.files"}
    for m, targets in import_graph().items():
        if m.startswith("probda_deploy.runtime"):
            outside = {".".join(t.split(".")[:2]) for t in targets} - allowed
            assert not outside, f"{m} imports {outside}"


def test_the_onnxruntime_backend_imports_neither_torch_nor_scipy_nor_the_writers():
    import subprocess
    import sys

    code = ("import sys, probda_deploy.runtime.onnx_backend; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'dask', 'zarr'}), "
            "sorted(m for m in sys.modules if m.startswith('probda_deploy.runtime.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    heavy, runtime = out.split("] [")
    assert heavy == "[", out  # none of them
    assert "sinks" not in runtime and "batch" not in runtime and "predict" not in runtime, out
