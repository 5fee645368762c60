"""No import loops between the gateway's modules, and the data plane's boundary holds.

Every import counts: module level, inside functions (lazy imports are still a
dependency) and under `if TYPE_CHECKING:` (a type-only loop is still two modules that
must be understood together, and it is what turns into a runtime loop the day
someone needs the name at run time). A loop is reported as the modules of one
strongly connected component with one concrete cycle through them, so the message
says which edge to cut.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(GATEWAY.parent).with_suffix("")
        if "_compiled" in rel.parts:
            continue
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The gateway modules that `module` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`
            # imports mod (and runs pkg's __init__, which is not a dependency of ours).
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: set(_imported(m, p, modules)) for m, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _one_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """A concrete path start -> ... -> start inside one component (breadth first)."""
    inside = set(members)
    start = members[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node] & inside):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return members


def test_the_checker_finds_a_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    # module level, relative-free absolute import
    assert "gateway.dataplane.decide" in graph["gateway.dataplane.exchange"]
    # a lazy import inside a function (the CLI loads subcommands on demand)
    assert any(m.startswith("gateway.") for m in graph["gateway.cli"])


def test_no_import_loops_between_gateway_modules() -> None:
    graph = import_graph()
    loops = [" -> ".join(_one_cycle(graph, members)) for members in _cycles(graph)]
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_the_data_plane_imports_no_control_plane() -> None:
    """DESIGN.md: the upstream call is the request path's only I/O; no YAML, MLflow,
    Kubernetes or Evidently in the data plane."""
    graph = import_graph()
    banned = ("gateway.controlplane", "gateway.rollout", "gateway.admin", "gateway.drift.worker")
    offenders = sorted(
        f"{module} imports {dep}"
        for module, deps in graph.items()
        if module.startswith("gateway.dataplane")
        for dep in deps
        if dep.startswith(banned)
    )
    assert not offenders, "\n".join(offenders)
