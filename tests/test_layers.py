"""ipilab's modules import each other bottom-up: no import cycles, and no module imports one of a higher layer.

The import graph is read from the source with `ast`, not by importing: every `import` and `from ... import`
of an ipilab module, wherever it is in the file (an import deferred into a function still ties the two
modules together; hiding a cycle that way is what this test exists to stop), except under
`if TYPE_CHECKING:` (annotations only: never executed). Importing a.b.c also runs the package a.b's
__init__, so that is an edge too (except to the importer's own packages, which Python has already begun).
"""

from __future__ import annotations

import ast
import functools
import graphlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ipilab"

# Bottom-up. A module belongs to the layer of its longest listed prefix (a module, or a package and all
# under it); a module may import from its own layer or lower ones.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation: files, events, configuration errors", (
        "ipilab", "ipilab.files", "ipilab.events", "ipilab.compiled", "ipilab.validation", "ipilab.cpulist")),
    ("traces: reading, writing and capturing them", ("ipilab.trace",)),
    # Pure functions of a trace. Calibration (machine), the live view (trace/top.py) and the trace-replay
    # workload read traces through them, so they sit under the kernel model.
    ("trace audit: the audit and the trace model", (
        "ipilab.analysis.auditrules", "ipilab.analysis.queues", "ipilab.analysis.audit", "ipilab.analysis.fastaudit",
        "ipilab.analysis.tracemodel", "ipilab.trace.top")),
    # The kernel model names the cost each step pays (machine/costs.py's CostId); the machine gives the values.
    ("kernel model", ("ipilab.kernel", "ipilab.machine.costs")),
    ("machine: topology, costs, calibration", ("ipilab.machine",)),
    ("simulated machine: the engines and the CPUs", ("ipilab.sim",)),
    ("workloads", ("ipilab.workloads",)),
    # One simulation: a machine, a kernel and a workload run for a window (so above the workloads).
    ("simulation runs", ("ipilab.sim.run", "ipilab.sim.fast.run")),
    ("analysis and verification (pure: they run no simulation)", ("ipilab.analysis", "ipilab.verify")),
    ("orchestration: run configurations, experiments, sweeps, closed-loop replay", (
        "ipilab.orchestration", "ipilab.reproduce", "ipilab.sweep")),
    ("presentation: the HTML report and the command line", ("ipilab.report", "ipilab.cli")),
]


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names imported from it) for every import statement, skipping `if TYPE_CHECKING:` bodies."""
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


@functools.cache
def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the ipilab modules it imports (see the module doc)."""
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        own = {".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)}
        for target, names in _imports(ast.parse(path.read_text(), str(path))):
            if target.split(".")[0] != "ipilab":
                continue
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod.
            wanted = [f"{target}.{n}" if f"{target}.{n}" in files else target for n in names] or [target]
            for w in wanted:
                parts = w.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in files and dep != mod and dep not in own:
                        graph[mod].add(dep)
    return graph


def layer_of(module: str) -> int:
    best, index = -1, None
    for i, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return index


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle graphlib finds, one at a time, breaking each (in a copy) by removing one of its edges."""
    graph = {m: set(deps) for m, deps in graph.items()}
    found = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return found
        except graphlib.CycleError as e:
            cycle = e.args[1]  # [a, b, ..., a]: each imported by the one after it
            found.append(cycle)
            graph[cycle[1]].discard(cycle[0])


def test_the_graph_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A hand-made package: each way of importing is an edge, an annotation-only import is not, and a
    cycle through a deferred import is found."""
    pkg = tmp_path / "ipilab"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from ipilab.sub import c\n")
    (pkg / "a.py").write_text("import ipilab.b\nfrom typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from ipilab import typed_only\n")
    (pkg / "b.py").write_text("def f():\n    from ipilab.sub import c\n")
    (pkg / "typed_only.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ipilab.sub.d import x\n")
    (pkg / "sub" / "d.py").write_text("def g():\n    from ipilab import a\n")
    graph = import_graph(pkg)
    assert graph["ipilab.a"] == {"ipilab.b"}  # typed_only is for annotations
    assert graph["ipilab.b"] == {"ipilab.sub", "ipilab.sub.c"}  # the package's __init__ runs first
    assert graph["ipilab.sub"] == {"ipilab.sub.c"}
    assert graph["ipilab.sub.c"] == {"ipilab.sub.d"}  # its own package is not an edge
    assert graph["ipilab.sub.d"] == {"ipilab.a"}
    found = cycles(graph)
    assert len(found) == 1 and set(found[0]) == {"ipilab.a", "ipilab.b", "ipilab.sub.c", "ipilab.sub.d"}


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (each module imports the one before it): " + "; ".join(
        " <- ".join(c) for c in found)


def test_no_module_imports_a_higher_layer() -> None:
    graph = import_graph()
    # A package whose __init__ imports nothing of ipilab brings in nothing when a submodule's import runs it.
    inert = {m for m, deps in graph.items()
             if not deps and SRC.parent.joinpath(*m.split("."), "__init__.py").exists()}
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, deps in sorted(graph.items()) for d in sorted(deps - inert) if layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module", ["ipilab.analysis.replay", "ipilab.analysis.audit", "ipilab.verify.explore"])
def test_analysis_runs_no_simulation(module: str) -> None:
    """Analysis is pure: it may use the kernel model's decisions, never run a simulation (sim.run)."""
    graph = import_graph()
    reach, todo = set(), [module]
    while todo:
        for dep in graph[todo.pop()] - reach:
            reach.add(dep)
            todo.append(dep)
    assert "ipilab.sim.run" not in reach
