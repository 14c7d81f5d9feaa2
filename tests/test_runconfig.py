"""The one run-configuration builder (orchestration/runconfig.py) behind simulate, export --from-sim, reproduce
seed and sweep: where each `--set` key goes, what it refuses and how, and that the commands build the same
configuration from the same settings. In process (click's CliRunner): no simulation runs here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ipilab import cli
from ipilab.orchestration.runconfig import RunConfig, build_run, route_settings
from ipilab.sweep.spec import configure, expand, load_spec
from ipilab.validation import ConfigError
from ipilab.workloads import WORKLOADS, Workload


class Ambiguous(Workload):
    """A workload whose fields clash with machine keys: `icr_write` is also a machine cost, `tick_hz` a
    background field."""

    name = "ambiguous"
    summary = "a test workload with fields named like machine keys"
    icr_write: int = 0
    tick_hz: int = 0
    depth: int = 1


def one_error_line(args: list[str]) -> str:
    """Run `ipilab ARGS` in process; it must exit 2 with one `ipilab: error:` line and no traceback."""
    result = CliRunner().invoke(cli.main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipilab: error: "), result.stderr
    return lines[0]


# --- where a key goes -------------------------------------------------------------------------------------

def test_each_kind_of_key_goes_to_its_place() -> None:
    """rate: the synthetic workload's; cores_per_socket: topology; tick_hz: background; spread: the machine's;
    icr_write: a cost, as whole ns."""
    routed = route_settings({"rate": "5", "cores_per_socket": "4", "tick_hz": "250", "spread": "2",
                             "icr_write": "300"}, "synthetic")
    assert routed.workload == {"rate": "5"}
    assert routed.machine == {"cores_per_socket": "4", "tick_hz": "250", "spread": "2"}
    assert routed.costs == {"icr_write": 300}


def test_cost_option_wins_over_set_for_the_same_cost() -> None:
    """--set icr_write=100 --cost icr_write=300: the machine's icr_write is 300 ns; another --set cost stays."""
    run = build_run("vm-2cpu", "v6.18", "synthetic", {"icr_write": "100", "irq_entry": "700"},
                    costs={"icr_write": "300"}, seconds=0.001)
    assert (run.machine.costs["icr_write"].ns, run.machine.costs["irq_entry"].ns) == (300, 700)


@pytest.mark.parametrize(("key", "other"), [("icr_write", "a machine cost"),
                                            ("tick_hz", "a machine background field")])
def test_an_ambiguous_key_is_refused_naming_both_meanings(key: str, other: str) -> None:
    with pytest.raises(ConfigError) as e:
        route_settings({key: "5"}, "ambiguous", tuple(Ambiguous.model_fields))
    message = str(e.value)
    assert f"--set {key}" in message and "ambiguous" in message
    assert "a field of workload ambiguous" in message and other in message
    # A key of the same workload that means one thing goes through.
    assert route_settings({"depth": "3"}, "ambiguous", tuple(Ambiguous.model_fields)).workload == {"depth": "3"}


def test_an_ambiguous_key_in_a_sweep_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the command line: the sweep's spec names the workload, so a registered workload with a clashing
    field is refused before any run, exit 2, naming the key and both meanings."""
    monkeypatch.setitem(WORKLOADS, Ambiguous.name, Ambiguous)
    spec = tmp_path / "clash.toml"
    spec.write_text('[base]\nworkload = "ambiguous"\n[base.set]\nicr_write = 5\n')
    line = one_error_line(["sweep", str(spec)])
    for word in ("clash.toml", "icr_write", "a field of workload ambiguous", "a machine cost"):
        assert word in line, (word, line)
    assert not list(tmp_path.glob("clash.parquet*"))


# --- bad values: the field and what is allowed ------------------------------------------------------------

@pytest.mark.parametrize(("args", "words"), [
    (["simulate", "--set", "sockets=99"], ["sockets", "16"]),  # Topology: 1 to 16 sockets
    (["simulate", "--set", "tick_hz=20000"], ["tick_hz", "10000"]),  # Background: 0 to 10,000 Hz
    (["simulate", "--set", "spread=0.5"], ["spread", "1", "100"]),  # a p90/median ratio from 1 to 100
    (["simulate", "--set", "icr_write=-1"], ["--set icr_write", "greater than or equal to 0", "1,000,000,000"]),
    (["simulate", "--cost", "icr_write=2000000000"], ["--cost icr_write", "1,000,000,000"]),
    (["simulate", "--set", "rate=0"], ["rate", "greater than 0"]),  # calls per second per sender
    (["simulate", "-s", "61"], ["--seconds", "(0, 60]"]),
    (["export", "--from-sim", "--perfetto", "x.json", "--set", "sockets=0"], ["sockets", "greater than or equal to 1"]),
    (["reproduce", "seed", "--set", "numa_nodes=65"], ["numa_nodes", "64"]),
], ids=["sockets", "tick_hz", "spread", "set-cost", "cost-option", "rate", "window", "export", "seed"])
def test_a_bad_value_names_the_field_and_its_range(args: list[str], words: list[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "warm_fast_engine", lambda: 0.0)  # reproduce seed warms it first: nothing runs here
    line = one_error_line(args)
    for word in words:
        assert word in line, (word, line)


def test_a_bad_value_in_a_sweep_names_where_and_the_range(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[base]\nworkload = "synthetic"\n[vary]\ncores_per_socket = [2, 600]\n')
    line = one_error_line(["sweep", str(spec)])
    for word in ("bad.toml", "vary.cores_per_socket = 600", "512"):  # Topology: 1 to 512 cores per socket
        assert word in line, (word, line)


# --- the same settings, the same configuration --------------------------------------------------------------

class Built(Exception):
    """Raised in place of the simulation: carries the configuration the command built."""

    def __init__(self, run: RunConfig) -> None:
        self.run = run


def built_by_simulate(args: list[str], monkeypatch: pytest.MonkeyPatch) -> RunConfig:
    def capture(self: RunConfig, trace_out: Path | None = None) -> Any:
        raise Built(self)

    monkeypatch.setattr(RunConfig, "simulate", capture)
    monkeypatch.setattr(cli, "warm_fast_engine", lambda: 0.0)  # no compile: nothing runs
    result = CliRunner().invoke(cli.main, ["simulate", *args])
    assert isinstance(result.exception, Built), (result.output, result.exception)
    return result.exception.run


def test_simulate_and_sweep_build_equal_configurations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One configuration written both ways: simulate's options (text) and a sweep spec (TOML numbers and a
    boolean) give equal machines (topology, background, spread costs, the --cost), kernels, workloads,
    windows, seeds and engines."""
    run = built_by_simulate(["-m", "vm-2cpu", "-k", "v4.13", "-w", "synthetic", "-s", "0.003", "--seed", "7",
                             "--set", "rate=20000", "--set", "wait=false", "--set", "cores_per_socket=4",
                             "--set", "tick_hz=250", "--set", "spread=1.5", "--set", "irq_entry=700",
                             "--cost", "icr_write=300"], monkeypatch)
    spec = tmp_path / "same.toml"
    spec.write_text('[base]\nmachine = "vm-2cpu"\nkernel = "v4.13"\nworkload = "synthetic"\nseconds = 0.003\n'
                    'warmup = 0.0\nintervals = 0\n[base.set]\nrate = 20000\nwait = false\ncores_per_socket = 4\n'
                    'tick_hz = 250\nspread = 1.5\nirq_entry = 700\nicr_write = 300\n[seeds]\nfirst = 7\n')
    (swept,) = expand(load_spec(spec), spec)
    from_sweep = configure(swept.params, swept.seed)
    assert from_sweep == run
    # The settings took effect (the equality is not that of two defaults).
    assert (run.machine.ncpus, run.machine.background.tick_hz, run.seed) == (4, 250, 7)
    assert (run.machine.costs["icr_write"].median, run.machine.costs["icr_write"].p90) == (300, 450)
    assert (run.workload.rate, run.workload.wait) == (20000, False)  # type: ignore[attr-defined]
