"""The package reads bottom-up: the imports between its modules, module-level and inside functions alike, form no
cycle, and the entry points (`run`, `evaluate`, `cli`) sit above `build`, which reaches the algorithms only through
a config's `_target_`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_meta"
ROOT = PACKAGE.name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def packages_of(module: str) -> list[str]:
    """The packages Python imports before `module`: `a.b.c` -> [`a`, `a.b`]."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported(node: ast.Import | ast.ImportFrom, importer: str) -> list[str]:
    """The package's modules an import statement runs: the named module, its packages, and for `from P import x`
    the submodule `P.x` when there is one."""
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, `level` steps up
            package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
            anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        named = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    found = []
    for module in named:
        for target in [*packages_of(module), module]:
            if target in MODULES and target not in found:
                found.append(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its file}. A module's own packages are left out:
    Python has them in hand (imported, or being imported) before the module runs."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(imported(node, module))
        own = {*packages_of(module), module}
        graph[module] = {target for target in edges if target not in own}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """{module: the module it was first reached from} for every module `start` imports, directly or not."""
    seen: dict[str, str | None] = {start: None}
    stack = [start]
    while stack:
        module = stack.pop()
        for target in sorted(graph[module]):
            if target not in seen:
                seen[target] = module
                stack.append(target)
    return seen


def path_to(seen: dict[str, str | None], target: str) -> str:
    chain = [target]
    while seen[chain[-1]] is not None:
        chain.append(seen[chain[-1]])
    return " -> ".join(reversed(chain))


def shortest_cycle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """The shortest import chain from `start` back to itself within `group`."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    for module in queue:  # breadth first: `queue` grows while it is read
        for target in sorted(graph[module] & group):
            if target == start:
                chain = [module]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])
                return [*reversed(chain), start]
            if target not in parent:
                parent[target] = module
                queue.append(target)
    return []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of modules that import each other (a strongly connected component)."""
    found, done = [], set()
    for start in sorted(graph):
        if start in done:
            continue
        group = {m for m in reachable(graph, start) if start in reachable(graph, m)}
        done |= group
        if len(group) > 1 or start in graph[start]:
            found.append(shortest_cycle(graph, start, group))
    return found


def test_the_graph_sees_module_level_and_function_level_imports():
    graph = import_graph()
    assert "lightning_meta.build" in graph["lightning_meta.run"]  # module level
    assert "lightning_meta.config" in graph["lightning_meta.build"]
    # A function-level import in a LightningModule: MetaLearner.load_from_checkpoint builds from a checkpoint.
    assert "lightning_meta.build" in graph["lightning_meta.algorithms.base"]
    # `from lightning_meta.algorithms.scaling import ...` runs the algorithms package's __init__ first.
    assert "lightning_meta.algorithms" in graph["lightning_meta.run"]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles between the package's modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_build_reaches_the_algorithms_only_through_target():
    graph = import_graph()
    seen = reachable(graph, "lightning_meta.build")
    above = [
        m for m in seen
        if m.startswith(f"{ROOT}.algorithms") or m in (f"{ROOT}.run", f"{ROOT}.cli", f"{ROOT}.evaluate")
    ]  # fmt: skip
    assert not above, "build imports a module above it: " + "; ".join(path_to(seen, m) for m in above)


def test_entry_points_import_build_not_each_other():
    graph = import_graph()
    for module in (f"{ROOT}.cli", f"{ROOT}.evaluate"):
        seen = reachable(graph, module)
        assert f"{ROOT}.run" not in seen, path_to(seen, f"{ROOT}.run")
    assert f"{ROOT}.build" in graph[f"{ROOT}.run"] and f"{ROOT}.build" in graph[f"{ROOT}.evaluate"]


def test_compat_stands_on_lightning_alone():
    assert not import_graph()[f"{ROOT}.compat"]
