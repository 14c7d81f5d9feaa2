"""The `ipilab` command line, run as a real subprocess: exit codes, error lines, JSON shape and consistency."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

SMALL = ["-s", "0.005"]  # a 5 ms window: enough calls to count, fast to run


def ipilab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `ipilab ARGS...` in a fresh interpreter and capture its output."""
    return subprocess.run([sys.executable, "-m", "ipilab.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def simulate_json(*args: str) -> dict:
    proc = ipilab("simulate", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_user_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit code 2, exactly one stderr line starting `ipilab: error:` naming `words`, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ipilab: error:"), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "words"), [
    (["-m", "nope"], ["nope"]),
    (["--set", "rate=-5"], ["rate"]),
    (["--set", "targets=0-99"], ["targets"]),
    (["-k", "v9.99"], ["v9.99"]),
    (["-k", "v4.12+nonsense"], ["nonsense"]),
    (["--set", "bogus=1"], ["bogus"]),
    (["--seconds", "0"], ["--seconds"]),
    (["--seconds", "1000"], ["--seconds"]),
    (["--cost", "nope=5"], ["nope"]),
    (["--cost", "icr_write=-5"], ["--cost", "greater than or equal to 0"]),
], ids=["unknown-machine", "negative-rate", "targets-outside-machine", "unknown-kernel", "unknown-feature",
        "unknown-workload-field", "seconds-zero", "seconds-too-long", "unknown-cost", "negative-cost"])
def test_bad_simulate_input_is_one_clear_error_line(args: list[str], words: list[str]) -> None:
    """Each bad simulate input exits 2 with one `ipilab: error:` line naming the culprit, no traceback."""
    assert_user_error(ipilab("simulate", *SMALL, *args), *words)


def test_kernel_toml_with_bad_base_is_a_clear_error(tmp_path: Path) -> None:
    """A kernel TOML file whose `base` is not a known version is a one-line user error naming `base`."""
    spec = tmp_path / "whatif.toml"
    spec.write_text('name = "whatif"\nbase = "v9.99"\nadd = ["coalesce_many"]\n')
    assert_user_error(ipilab("simulate", *SMALL, "-k", str(spec)), "base", "whatif.toml")


def test_machine_toml_missing_a_cost_is_a_clear_error(tmp_path: Path) -> None:
    """A machine TOML file without one of the required costs is a one-line user error naming that cost."""
    preset = resources.files("ipilab.machine").joinpath("presets", "vm-2cpu.toml").read_text()
    head, sep, _tail = preset.partition("[costs.madvise_syscall]")
    assert sep, "the preset no longer has a madvise_syscall cost; pick another one to drop"
    machine = tmp_path / "broken.toml"
    machine.write_text(head)
    assert_user_error(ipilab("simulate", *SMALL, "-m", str(machine)), "madvise_syscall")


# --- kernels and machines -------------------------------------------------------------------------------

def test_kernels_json_lists_versions_and_features_with_commits() -> None:
    """`kernels --json` knows v4.12/v4.13/v6.18; the seed (coalesce_many) is in v4.13 only; all features cited."""
    proc = ipilab("kernels", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    versions, features = data["versions"], data["features"]
    assert {"v4.12", "v4.13", "v6.18"} <= versions.keys()
    assert "coalesce_many" in versions["v4.13"]["features"]
    assert "coalesce_many" not in versions["v4.12"]["features"]
    for name, f in features.items():
        assert f["commit"].strip(), name
        assert f["release"].strip(), name
    for name, v in versions.items():
        assert set(v["features"]) <= features.keys(), name


def test_machines_json_topologies_and_cost_sources() -> None:
    """`machines --json` has the 88-CPU Broadwell-EP (2x22x2) and the 2-CPU VM; every cost has a source."""
    proc = ipilab("machines", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    bdw = data["broadwell-ep-2s-88t"]
    t = bdw["topology"]
    assert (t["sockets"], t["cores_per_socket"], t["threads_per_core"]) == (2, 22, 2)
    assert bdw["ncpus"] == 88
    assert data["vm-2cpu"]["ncpus"] == 2
    for name, m in data.items():
        assert m["costs"], name
        for key, cost in m["costs"].items():
            assert isinstance(cost["source"], str) and cost["source"].strip(), (name, key)


# --- simulate -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_run() -> dict:
    return simulate_json(*SMALL)


def test_simulate_json_has_the_documented_keys(default_run: dict) -> None:
    """`simulate --json` reports the counters, latency percentiles, per-CPU irq time and both clocks."""
    r = default_run
    for key in ("csd_enqueues", "ipis_sent", "cal_interrupts", "csds_per_interrupt", "wait_latency_ns",
                "per_cpu", "sim_seconds", "wall_seconds"):
        assert key in r, key
    assert {"p50", "p90", "p99"} <= r["wait_latency_ns"].keys()
    assert r["machine"] == "vm-2cpu"
    assert len(r["per_cpu"]) == 2
    assert all("irq_ns" in c for c in r["per_cpu"])
    assert r["sim_seconds"] == pytest.approx(0.005)
    assert r["csd_enqueues"] > 0 and r["cal_interrupts"] > 0


@pytest.mark.parametrize("kernel", ["v4.12", "v4.13", "v6.18"])
def test_simulate_counters_are_consistent(kernel: str) -> None:
    """Every queued CSD got an IPI or was counted as not needing one; no more interrupts than IPIs.

    From smp.py: each remote CSD is queued (csd_enqueues) and then either (a) rides an IPI counted in
    ipis_sent (needless ones, ipis_to_nonempty_queue, are a subset of those), (b) sits behind an IPI
    already coming (csd_no_ipi_queued), or (c) finds its target polling idle (csd_no_ipi_polling).
    """
    r = simulate_json(*SMALL, "-k", kernel)
    assert r["cal_interrupts"] <= r["ipis_sent"]
    assert r["ipis_to_nonempty_queue"] <= r["ipis_sent"]
    assert (r["ipis_sent"] + r["csd_no_ipi_queued"] + r["csd_no_ipi_polling"] + r["csds_undecided_at_end"]
            == r["csd_enqueues"])
    assert r["csds_undecided_at_end"] >= 0


def test_same_seed_same_result_other_seed_differs(default_run: dict) -> None:
    """The synthetic workload is a pure function of its seed: same seed, same JSON (bar wall time)."""
    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items()
                if k not in ("wall_seconds", "warmup_wall_seconds", "compile_seconds", "seed")}

    again = simulate_json(*SMALL, "--seed", "1")
    other = simulate_json(*SMALL, "--seed", "2")
    assert default_run["seed"] == 1
    assert strip(again) == strip(default_run)
    assert strip(other) != strip(default_run)


def test_simulate_human_output_names_the_metrics() -> None:
    """The table printed for humans shows the csd_enqueues and cal_interrupts rows."""
    proc = ipilab("simulate", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "csd_enqueues" in proc.stdout
    assert "cal_interrupts" in proc.stdout
