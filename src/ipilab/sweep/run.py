"""Running a sweep: every run of the grid through `ipilab.sim.run.simulate`, in local worker processes
or on a Dask distributed cluster, each finished run stored at once (store.py)."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from ipilab import __version__
from ipilab.sim.fast.run import warm_up
from ipilab.sweep.spec import Run, configure
from ipilab.sweep.store import ResultStore

# Scalar results of `simulate` copied into each row (METRIC_DOCS explains them); rates and latency
# percentiles are added as flat columns, see `row_for`.
SCALARS = ("csd_enqueues", "ipis_sent", "cal_interrupts", "apic_merged", "csds_per_interrupt", "csd_no_ipi_queued",
           "csd_no_ipi_polling", "ipis_to_nonempty_queue", "icr_writes", "csds_run_in_irq", "csds_run_from_idle",
           "empty_interrupts", "calls", "local_calls", "ipis_in_flight_at_end", "csds_undecided_at_end",
           "irq_ns_total", "engine_events", "sim_seconds", "warmup_seconds")

# What the columns of the results table hold (beyond the parameters, named as in the spec).
COLUMN_DOCS: dict[str, str] = {
    "run_index": "position of the run in the grid (parameters crossed in spec order, seeds innermost)",
    "run_id": "identity of the run: a hash of its parameters and seed (what --resume matches)",
    "seed": "random seed of the run",
    "error": "why the run failed (null if it did not)",
    "wall_seconds": "host seconds the run took (its worker's clock)",
    "ipilab_version": "the ipilab that ran it",
    "<metric>": "the counts of `ipilab simulate --json` over the measured window (METRIC_DOCS)",
    "<counter>_per_s, <counter>_per_s_ci95": "rate per simulated second and the half-width of its 95% "
                                             "confidence interval (needs intervals >= 2)",
    "wait_latency_*_ns": "sender's call latency percentiles (call entry to return), simulated ns; p50/p90/p99 "
                         "rounded down to within 1/128, max exact",
    "per_cpu_interrupts, per_cpu_irq_ns": "function-call interrupts taken and ns spent in them, per CPU",
    "timeline_interval_ns, timeline_cpu_interrupts": "the window's intervals (ns) and, per interval, the "
                                                     "interrupts each CPU took",
}


def row_for(run: Run, result: dict[str, Any] | None, error: str | None, wall: float) -> dict[str, Any]:
    """One table row: the run's identity and parameters, then its metrics (or its error)."""
    row: dict[str, Any] = {"run_index": run.index, "run_id": run.run_id, **run.params, "seed": run.seed,
                           "error": error, "wall_seconds": round(wall, 3), "ipilab_version": __version__}
    if result is None:
        return row
    for key in SCALARS:
        row[key] = result[key]
    row.update(result["workload_counts"])
    for key, rate in result["rates"].items():
        row[f"{key}_per_s"] = rate["per_second"]
        row[f"{key}_per_s_ci95"] = rate["ci95"]
    for key, value in result["wait_latency_ns"].items():
        row[f"wait_latency_{key}" + ("" if key == "count" else "_ns")] = value
    row["per_cpu_interrupts"] = [c["interrupts"] for c in result["per_cpu"]]
    row["per_cpu_irq_ns"] = [c["irq_ns"] for c in result["per_cpu"]]
    row["timeline_interval_ns"] = result["timeline"]["interval_ns"]
    row["timeline_cpu_interrupts"] = result["timeline"]["cpu_interrupts"]
    return row


def run_one(run: Run) -> dict[str, Any]:
    """Simulate one run (in a worker); a failure becomes the row's `error`, never an exception."""
    t0 = time.perf_counter()
    try:
        result = configure(run.params, run.seed).simulate()
    except Exception as e:  # any failure of one run is recorded, and the sweep goes on
        last = traceback.extract_tb(e.__traceback__)[-1]
        where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if not isinstance(e, ValueError) else ""
        return row_for(run, None, f"{type(e).__name__}: {e}{where}", time.perf_counter() - t0)
    return row_for(run, result, None, time.perf_counter() - t0)


@dataclass
class Outcome:
    total: int  # runs in the grid
    skipped: int  # already in the table (--resume)
    done: int  # finished now, including failed
    failed: int
    wall_seconds: float


Progress = Callable[[int, int, int], None]  # (done, failed, to do)


def _worker_start(parent: int) -> None:
    """In each local worker: ignore Ctrl-C (the sweep's own process stops the workers and keeps what
    finished), and exit when the sweep's process is gone (killed): a worker would otherwise finish its
    run and then wait forever for the next."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def uses_fast_engine(run: Run) -> bool:
    """Whether `run` goes to the fast engine (False for a run whose configuration fails: it fails later)."""
    try:
        return configure(run.params).engine == "fast"
    except Exception:  # the run records its own error when it runs
        return False


def _local(runs: list[Run], workers: int) -> Iterator[dict[str, Any]]:
    if any(uses_fast_engine(r) for r in runs):
        warm_up()  # once, before the workers fork: each would otherwise compile the engine itself
    if workers <= 1:
        for run in runs:
            yield run_one(run)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(runs)), initializer=_worker_start,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(run_one, run): run for run in runs}
        for f in as_completed(futures):
            try:
                yield f.result()
            except Exception as e:  # the worker process died (killed, out of memory)
                yield row_for(futures[f], None, f"{type(e).__name__}: {e}", 0.0)
    except BaseException:  # Ctrl-C: stop the runs in flight now rather than wait for them
        for proc in (getattr(pool, "_processes", None) or {}).values():  # no public way before Python 3.14
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


class ClusterError(Exception):
    """The Dask scheduler cannot be reached; the message names it."""


def _dask(runs: list[Run], scheduler: str) -> Iterator[dict[str, Any]]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    try:
        client = Client(scheduler)  # waits up to distributed.comm.timeouts.connect (dask config; 30 s)
    except (OSError, ValueError, TypeError) as e:  # unreachable, or not an address
        raise ClusterError(f"--scheduler {scheduler}: {e}") from None
    try:
        futures = client.map(run_one, runs, pure=False)
        by_future = dict(zip(futures, runs, strict=True))
        for f in dask_completed(futures):
            try:
                yield f.result()
            except Exception as e:  # the run's worker died, or the cluster lost it
                yield row_for(by_future[f], None, f"{type(e).__name__}: {e}", 0.0)
    finally:
        client.close()


def run_sweep(runs: list[Run], store: ResultStore, *, workers: int | None = None, scheduler: str | None = None,
              resume: bool = False, progress: Progress | None = None) -> Outcome:
    """Run what the table does not yet hold (with `resume`: runs that succeeded are skipped, failed ones
    run again and their rows are replaced), store each row as it finishes, merge at the end (also on
    Ctrl-C)."""
    recorded = store.done() if resume else {}
    todo = [r for r in runs if not recorded.get(r.run_id, False)]
    t0 = time.perf_counter()
    done = failed = 0
    if progress:
        progress(0, 0, len(todo))
    try:
        if todo:
            rows = _dask(todo, scheduler) if scheduler else _local(todo, workers or os.cpu_count() or 1)
            for row in rows:
                store.add(row)
                done += 1
                failed += row["error"] is not None
                if progress:
                    progress(done, failed, len(todo) - done)
    finally:
        store.merge()
    return Outcome(len(runs), len(runs) - len(todo), done, failed, time.perf_counter() - t0)
