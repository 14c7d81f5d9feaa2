"""`ipilab sweep`: the grid a spec makes, failed runs recorded, a Dask cluster gives the local table, a
killed sweep resumes without losing or repeating a run, bad specs fail before any run naming the field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import sigint_default
from test_cli import assert_user_error, ipilab

from ipilab.sweep.spec import SpecError, expand, load_spec

# vm-2cpu is 1 socket x 2 cores x 1 thread; the synthetic workload's default senders are CPUs 0-1.
GRID = """
[base]
machine = "vm-2cpu"
workload = "synthetic"
seconds = 0.002
intervals = 2
[base.set]
rate = 50000
[vary]
kernel = ["v4.12", "v4.13"]
cores_per_socket = {from = 1, to = 3}
[seeds]
first = 7
count = 2
"""


def sweep(tmp_path: Path, spec: str, *args: str, name: str = "grid") -> tuple[subprocess.CompletedProcess[str], Path]:
    path = tmp_path / f"{name}.toml"
    path.write_text(spec)
    out = tmp_path / f"{name}.parquet"
    return ipilab("sweep", str(path), "--out", str(out), *args), out


def without_wall_time(t: pa.Table) -> pa.Table:
    return t.drop(["wall_seconds"])


def test_grid_is_crossed_and_a_failing_run_is_recorded(tmp_path: Path) -> None:
    """2 kernels x cores_per_socket 1..3 x seeds 7,8 = 12 rows, one per combination and seed.

    With 1 core per socket the machine has CPU 0 only, and the workload's senders 0-1 cannot start: those 4
    runs fail with that error in their row and the other 8 run. A machine with c cores has c CPUs, so a
    run's per-CPU list has c entries. A row's counts are those of `ipilab simulate` for the same kernel,
    settings and seed (a second path to the same simulation)."""
    proc, out = sweep(tmp_path, GRID, "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert "12 runs" in proc.stderr and "4 failed" in proc.stderr
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 12
    combos = sorted((r["kernel"], r["cores_per_socket"], r["seed"]) for r in rows)
    assert combos == sorted((k, c, s) for k in ("v4.12", "v4.13") for c in (1, 2, 3) for s in (7, 8))
    for r in rows:
        assert r["ipilab_version"] and r["wall_seconds"] >= 0 and r["rate"] == 50000
        if r["cores_per_socket"] == 1:
            assert "senders" in r["error"] and r["ipis_sent"] is None
        else:
            assert r["error"] is None
            assert len(r["per_cpu_interrupts"]) == r["cores_per_socket"]
            assert sum(r["per_cpu_interrupts"]) == r["cal_interrupts"]
            assert r["ipis_sent"] > 0
    one = next(r for r in rows if r["kernel"] == "v4.13" and r["cores_per_socket"] == 2 and r["seed"] == 8)
    single = ipilab("simulate", "--json", "-k", "v4.13", "--set", "rate=50000", "-s", "0.002", "--seed", "8")
    assert single.returncode == 0, single.stderr
    ref = json.loads(single.stdout)
    for key in ("csd_enqueues", "ipis_sent", "cal_interrupts", "calls", "csd_no_ipi_queued"):
        assert one[key] == ref[key], key
    assert not (tmp_path / "grid.parquet.parts").exists()


def test_dask_cluster_gives_the_same_table_as_local_processes(tmp_path: Path) -> None:
    """A real LocalCluster (a scheduler and two worker processes) runs the grid through --scheduler; the
    table equals the local run's for the same seeds, row for row (bar the wall time), failed runs too."""
    distributed = pytest.importorskip("distributed")
    local, out_local = sweep(tmp_path, GRID, "-j", "2", name="local")
    assert local.returncode == 0, local.stderr
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote, out_dask = sweep(tmp_path, GRID, "--scheduler", cluster.scheduler_address, name="dask")
        assert remote.returncode == 0, remote.stderr
        assert "run_one" in cluster.scheduler.task_prefixes  # the runs went through the cluster
    a, b = pq.read_table(out_local), pq.read_table(out_dask)
    assert a.num_rows == 12
    assert without_wall_time(a).equals(without_wall_time(b))


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:9", "nonsense"], ids=["nobody-there", "not-an-address"])
def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path, address: str) -> None:
    """No cluster at the address, or no address: one error line naming --scheduler, no traceback (after the
    connect timeout, shortened here through dask's config)."""
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID)
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    proc = subprocess.run([sys.executable, "-m", "ipilab.cli", "sweep", str(spec), "--scheduler", address],
                          capture_output=True, text=True, timeout=120, env=env)
    assert_user_error(proc, "--scheduler", address)
    assert not (tmp_path / "grid.parquet").exists()


SLOW = """
[base]
seconds = 0.25
intervals = 2
[vary]
rate = [20000, 30000, 40000, 50000]
[seeds]
count = 2
"""


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_midway(tmp_path: Path, sig: int, workers: int = 1) -> tuple[subprocess.Popen[str], str, Path, int,
                                                                           list[int]]:
    """Start an 8-run sweep and send `sig` once at least 2 runs are stored; also return the sweep's worker
    processes as they were just before."""
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW)
    out = tmp_path / "slow.parquet"
    parts = tmp_path / "slow.parquet.parts"
    proc = subprocess.Popen([sys.executable, "-m", "ipilab.cli", "sweep", str(spec), "--out", str(out), "-j",
                             str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if parts.is_dir() and len([p for p in parts.iterdir() if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.02)
    kids = children(proc.pid)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    stored = len(list(parts.glob("[!.]*.parquet"))) if parts.is_dir() else pq.read_table(out).num_rows
    return proc, stderr, out, stored, kids


def test_killed_sweep_resumes_without_losing_or_repeating_a_run(tmp_path: Path) -> None:
    """SIGKILL of a 2-worker sweep after some runs: its workers exit too; the runs' parts survive;
    --resume runs only the rest; the table then holds each of the 8 runs exactly once and equals an
    uninterrupted sweep's."""
    proc, _, out, stored, workers = _kill_midway(tmp_path, signal.SIGKILL, workers=2)
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= stored < 8, stored  # killed midway
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if Path(f"/proc/{w}").exists()]
    for w in left:  # don't leave them behind when the check fails
        os.kill(w, signal.SIGKILL)
    assert not left, "workers outlived the killed sweep"
    again = ipilab("sweep", str(tmp_path / "slow.toml"), "--out", str(out), "--resume", "-j", "1")
    assert again.returncode == 0, again.stderr
    assert f"{8 - stored} runs" in again.stderr and f"{stored} already in the table" in again.stderr
    resumed = pq.read_table(out)
    ids = resumed.column("run_id").to_pylist()
    assert len(ids) == 8 and len(set(ids)) == 8
    assert sorted(zip(resumed.column("rate").to_pylist(), resumed.column("seed").to_pylist(), strict=True)) == \
        sorted((r, s) for r in (20000, 30000, 40000, 50000) for s in (1, 2))
    fresh_spec = tmp_path / "fresh.toml"
    fresh_spec.write_text(SLOW)
    fresh = ipilab("sweep", str(fresh_spec), "-j", "2")
    assert fresh.returncode == 0, fresh.stderr
    assert without_wall_time(resumed).equals(without_wall_time(pq.read_table(tmp_path / "fresh.parquet")))


def test_ctrl_c_keeps_the_finished_runs_in_the_table(tmp_path: Path) -> None:
    """SIGINT midway: exit 130, the finished runs are merged into the table and the parts folder is gone;
    without --resume a second sweep refuses to overwrite it."""
    proc, stderr, out, stored, _ = _kill_midway(tmp_path, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "slow.parquet.parts").exists()
    t = pq.read_table(out)
    assert 2 <= t.num_rows == stored < 8
    assert t.column("error").null_count == t.num_rows
    assert_user_error(ipilab("sweep", str(tmp_path / "slow.toml"), "--out", str(out)), "--resume")


def test_grid_order_and_run_identity(tmp_path: Path) -> None:
    """vary.rate = [1000, 2000] with vary.seed = [5, 9]: 4 runs, parameters outer and seeds inner; a run's
    id depends on its parameters and seed only, so the same spec read again gives the same ids (what
    --resume matches) and one changed base value changes them all."""
    path = tmp_path / "g.toml"
    path.write_text("[vary]\nrate = [1000, 2000]\nseed = [5, 9]\n")
    runs = expand(load_spec(path), path)
    assert [(r.index, r.params["rate"], r.seed) for r in runs] == [(0, 1000, 5), (1, 1000, 9), (2, 2000, 5),
                                                                  (3, 2000, 9)]
    assert runs[0].params["kernel"] == "v6.18" and runs[0].params["machine"] == "vm-2cpu"  # the base defaults
    assert len({r.run_id for r in runs}) == 4
    assert [r.run_id for r in expand(load_spec(path), path)] == [r.run_id for r in runs]
    path.write_text("[base]\nseconds = 0.02\n[vary]\nrate = [1000, 2000]\nseed = [5, 9]\n")
    assert not {r.run_id for r in expand(load_spec(path), path)} & {r.run_id for r in runs}


@pytest.mark.parametrize(("body", "words"), [
    ("[vary]\nflux = [1, 2]\n", ["vary", "flux", "unknown parameter"]),
    ("[vary]\nrate = []\n", ["vary", "rate", "empty list"]),
    ("[vary]\nrate = {from = 5, to = 1}\n", ["rate", "empty range"]),
    ("[vary]\nrate = [1000, \"fast\"]\n", ["vary.rate", "'fast'", "rate"]),
    ("[vary]\ncores_per_socket = {from = \"one\", to = 3}\n", ["cores_per_socket.from", "number"]),
    ("[vary]\nicr_write = [1.5]\n", ["vary.icr_write", "whole nanoseconds"]),
    ("[vary]\nthreads = [8]\n", ["vary.threads", "unknown"]),  # a field of another workload
    ("[base]\nseconds = \"long\"\n", ["base.seconds"]),
    ("[base]\ncolour = 1\n", ["base.colour", "unknown field"]),
    ("[base.set]\nrate = -3\n", ["base", "rate", "greater than 0"]),
    ("[vary]\nkernel = [\"v4.12\", \"v9.9\"]\n", ["vary.kernel", "v9.9"]),
    ("[seeds]\ncount = 0\n", ["seeds.count"]),
    ("[vary]\nseed = [1, \"two\"]\n", ["vary.seed", "'two'"]),
    ("[vary]\nseed = [1]\n[seeds]\ncount = 2\n", ["vary.seed", "[seeds]"]),
], ids=["unknown-parameter", "empty-list", "empty-range", "wrong-type", "wrong-type-in-range", "cost-not-whole",
        "other-workloads-field", "base-wrong-type", "unknown-base-field", "bad-base-setting", "unknown-kernel",
        "no-seeds", "seed-not-a-number", "seeds-twice"])
def test_bad_spec_names_the_field(tmp_path: Path, body: str, words: list[str]) -> None:
    """Each bad spec is refused while the grid is built (before any run), naming the field."""
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(SpecError) as e:
        expand(load_spec(path), path)
    for word in ["bad.toml", *words]:
        assert word in str(e.value), (word, str(e.value))


def test_bad_spec_on_the_command_line_writes_nothing(tmp_path: Path) -> None:
    """From the command line: one error line naming the field, exit 2, and no table or part written."""
    proc, _ = sweep(tmp_path, "[vary]\nkernel = [\"v4.13\"]\nrate = {from = 5, to = 1}\n", name="bad")
    assert_user_error(proc, "bad.toml", "rate", "empty range")
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]
