"""The project's layout rules, as checks: who may import whom, no import cycles, no oversized modules.

Read as a newcomer would: ``shared/`` is the format and knows no stage; no product module imports a test
fixture; stages and tools use each other's public modules only; no package has an import circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

PRODUCT = ("shared", "stage1_encode", "stage2_train", "preflight", "downloads")
PACKAGES = (*PRODUCT, "fixtures", "bench")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for package in PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def _imports(path: Path) -> set[str]:
    """Every absolute import of ``path``, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {dep for dep in _imports(path) if dep in modules and dep != name and not name.startswith(dep + ".")}
        for name, path in modules.items()
    }


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_shared_knows_no_stage_and_no_tool():
    offenders = {m: sorted(d for d in deps if _top(d) not in ("shared",)) for m, deps in _graph().items() if _top(m) == "shared"}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_product_module_imports_a_fixture_or_a_benchmark():
    graph = _graph()
    offenders = {m: sorted(d for d in deps if _top(d) in ("fixtures", "bench")) for m, deps in graph.items() if _top(m) in PRODUCT}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_stage_reaches_into_inspect_or_the_download_tool():
    graph = _graph()
    private = ("shared.inspection", "shared.inspect_shards", "downloads")
    offenders = {
        m: sorted(d for d in deps if d.startswith(private))
        for m, deps in graph.items()
        if _top(m) in ("stage1_encode", "stage2_train", "preflight")
    }
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_product_module_is_over_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items() if _top(name) in PRODUCT}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
