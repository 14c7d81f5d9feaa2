"""A first run on a fresh install: the compile notice, what gets compiled, and where it is cached.

A real cold compile of the fast engine takes about 15 s of CPU on our 2-core VM (benchmarks/cold_start.py
measures it), too long for the suite, so the notice is tested with the cache check and the compile
stood in for, and the cache check itself against numba's cache in a fresh folder (empty: no compile
needed to know) and the suite's own (filled by conftest's warm-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numba
import pytest
from click.testing import CliRunner

import ipilab.cli as cli
from ipilab.sim.fast import run as fast_run
from ipilab.sweep.run import uses_fast_engine
from ipilab.sweep.spec import expand, load_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_each_engine_helper_is_compiled_once_for_int64_arguments() -> None:
    """Call sites pass constants (_call(x, ID_FLUSH, ID_FLUSHED)); numba would compile a version per constant
    (Literal[int](12)), which made most of the cold compile. After warm-up each helper has one version and
    no literal argument types."""
    fast_run.warm_up()
    helpers = fast_run._helpers()
    names = {f.py_func.__name__ for f in helpers}
    assert {"_call", "_busy", "_draw", "_step", "trace", "notify"} <= names  # the ones that multiplied
    for f in helpers:
        assert len(f.signatures) == 1, (f.py_func.__name__, f.signatures)
        assert not any(isinstance(t, numba.types.Literal) for t in f.signatures[0]), f.signatures


def test_engine_cached_is_false_on_an_empty_cache_and_true_once_warm(tmp_path: Path) -> None:
    fast_run.warm_up()  # the suite's cache (conftest did this already): the loop is in it
    assert fast_run.engine_cached()
    probe = "from ipilab.sim.fast.run import engine_cached; print(engine_cached())"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("cached", [False, True])
def test_compile_notice_on_stderr_only_when_the_cache_is_cold(monkeypatch: pytest.MonkeyPatch, cached: bool) -> None:
    compiles: list[int] = []
    monkeypatch.setattr(cli, "engine_cached", lambda: cached)
    monkeypatch.setattr(cli, "warm_up", lambda: compiles.append(1) or 12.5)
    result = CliRunner().invoke(cli.main, ["simulate", "--json", "-s", "0.0002"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # the notice never reaches stdout
    assert data["engine"] == "fast"
    if cached:
        assert compiles == [] and "compil" not in result.stderr
    else:
        assert compiles == [1]
        assert "compiling the fast simulation engine" in result.stderr
        assert "once" in result.stderr and f"{fast_run.COMPILE_SECONDS_2CORE} s" in result.stderr
        assert "compiled in 12.5 s" in result.stderr
        assert data["compile_seconds"] == pytest.approx(12.5)  # the run's JSON counts the compile it paid


def test_no_notice_for_a_run_on_the_reference_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "engine_cached", lambda: False)
    monkeypatch.setattr(cli, "warm_up", lambda: pytest.fail("compiled for a reference-engine run"))
    result = CliRunner().invoke(cli.main, ["simulate", "--json", "-s", "0.0002", "--engine", "reference"])
    assert result.exit_code == 0, result.stderr
    assert "compil" not in result.stderr


def test_sweep_compiles_before_its_workers_fork_only_when_a_run_needs_it(tmp_path: Path) -> None:
    """The sweep's process compiles once and the forked workers inherit it; a sweep of tlbstorm runs (the
    reference engine only) compiles nothing."""
    fast = expand(load_spec(EXAMPLES / "synthetic-quick.toml"), EXAMPLES / "synthetic-quick.toml")
    assert uses_fast_engine(fast[0])
    spec = tmp_path / "tlb.toml"
    spec.write_text('[base]\nmachine = "vm-2cpu"\nworkload = "tlbstorm"\nseconds = 0.001\n')
    assert not any(uses_fast_engine(r) for r in expand(load_spec(spec), spec))


def test_compile_command_leaves_engine_parser_and_audit_in_the_cache() -> None:
    from ipilab.analysis.fastaudit import audit_block
    from ipilab.compiled import in_cache
    from ipilab.trace.fastparse import parse_block

    result = CliRunner().invoke(cli.main, ["compile"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "fast engine ready" in result.stderr and "trace parser and audit ready" in result.stderr
    assert fast_run.engine_cached() and in_cache(parse_block) and in_cache(audit_block)


def test_cold_compile_shares_split_so_advance_halves_compile_apart() -> None:
    """_compile_on_two_cores: advance in this process, advance_tail in the child, neither needing the other;
    what both call is split in two halves that each hold everything their functions call (a callee compiled
    before it is pinned would get a literal-typed version), and together the shares cover every helper."""
    helpers = fast_run._helpers()
    mine = fast_run._closure([fast_run.E.advance, fast_run.E.dispatch], helpers)
    theirs = fast_run._closure([f for f in helpers if f not in mine], helpers)
    assert fast_run.E.advance in mine - theirs and fast_run.E.advance_tail in theirs - mine
    assert mine | theirs == set(helpers)
    shared = [f for f in helpers if f in mine and f in theirs]
    a, b = fast_run._split_shared(shared, helpers)
    assert a and b and not set(a) & set(b) and set(a) | set(b) == set(shared)
    for half in (a, b):
        assert fast_run._closure(half, helpers) == set(half)
        assert half == [f for f in helpers if f in half]  # file order: callees first


def test_cold_compile_whose_child_fails_compiles_everything_itself(tmp_path: Path) -> None:
    """The compiling child dies at once: the parent still pins every helper to its one int64 version and the
    engine runs as the suite's warm one does (same engine events for the same short run)."""
    probe = (
        "import os\n"
        "from ipilab.sim.fast import run\n"
        "run._child = lambda *args: os._exit(1)\n"
        "run.warm_up()\n"
        "assert all(len(f.signatures) == 1 for f in run._helpers()), 'a helper compiled twice'\n"
        "from ipilab.sim.run import simulate\n"
        "from ipilab.kernel.features import resolve_kernel\n"
        "from ipilab.machine.model import load_machine\n"
        "from ipilab.workloads import workload_from_settings\n"
        "r = simulate(load_machine('vm-2cpu'), resolve_kernel('v6.18'), workload_from_settings('synthetic', {}),"
        " seconds=0.002, seed=3, engine='fast')\n"
        "print(r['engine_events'])\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    from ipilab.kernel.features import resolve_kernel
    from ipilab.machine.model import load_machine
    from ipilab.sim.run import simulate
    from ipilab.workloads import workload_from_settings
    warm = simulate(load_machine("vm-2cpu"), resolve_kernel("v6.18"), workload_from_settings("synthetic", {}),
                    seconds=0.002, seed=3, engine="fast")
    assert int(proc.stdout.split()[-1]) == warm["engine_events"] > 0
