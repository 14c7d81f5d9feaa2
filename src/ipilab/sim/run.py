"""One simulation: a machine, a kernel and a workload, run for a simulated window; its results."""

from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from ipilab import __version__
from ipilab.kernel.features import Kernel
from ipilab.machine.costs import CostId
from ipilab.machine.model import Machine
from ipilab.sim.engine import Engine
from ipilab.sim.fast.run import FastSim, unsupported, warm_up
from ipilab.sim.machine import SimMachine
from ipilab.sim.timeuse import Use
from ipilab.trace.ftrace import FtraceWriter
from ipilab.validation import ConfigError
from ipilab.workloads.base import Workload, WorkloadError

MAX_SECONDS = 60.0
MAX_INTERVALS = 1000
ENGINES = ("auto", "fast", "reference")

# What each reported number counts; printed with the table and stored in the JSON.
METRIC_DOCS: dict[str, str] = {
    "csd_enqueues": "remote CSDs queued on a call_single_queue (csd_queue_cpu events)",
    "ipis_sent": "function-call IPIs sent, one per target CPU (each CPU of a cpumask send counts)",
    "cal_interrupts": "function-call interrupt handler entries (the CAL row of /proc/interrupts)",
    "apic_merged": "IPIs absorbed because the same vector was already pending in the target's APIC",
    "csds_per_interrupt": "CSDs run inside function-call interrupts / cal_interrupts",
    "csd_no_ipi_queued": "CSDs that needed no IPI: the target's queue already waited for one",
    "csd_no_ipi_polling": "CSDs that needed no IPI: the target was polling idle (NEED_RESCHED set)",
    "ipis_to_nonempty_queue": "IPIs sent although the target's queue was already non-empty (needless)",
    "icr_writes": "ICR writes (or PV-IPI hypercalls) that carried the IPIs",
    "csds_run_from_idle": "CSDs run by a polling idle CPU's own flush, without an interrupt",
    "empty_interrupts": "function-call interrupts that found the queue already emptied",
    "calls": "cross-CPU calls made (smp_call_function_many_cond / _single)",
    "ipis_in_flight_at_end": "IPIs sent but not yet handled when the window closed (pending or travelling)",
    "ticks": "local timer interrupts taken (the machine's background.tick_hz on CPUs running a task; 0 when off)",
    "vcpu_preemptions": "times the host descheduled a running vCPU (background.vcpu_preemption; 0 when off)",
    "stolen_ns": "time running vCPUs spent descheduled, summed over CPUs (ns)",
    "csds_undecided_at_end": "CSDs queued whose sender had not yet sent (or decided not to send) an IPI "
                             "when the window closed",
}


def choose_engine(machine: Machine, kernel: Kernel, workload: Workload, engine: str = "auto") -> str:
    """"fast" or "reference": what `engine` ("auto", "fast" or "reference") means for this run. Forcing
    "fast" on what only the reference engine models is a WorkloadError saying why."""
    if engine not in ENGINES:
        raise WorkloadError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "reference":
        return engine
    why = unsupported(machine, kernel, workload)
    if why is None:
        return "fast"
    if engine == "fast":
        raise WorkloadError(f"--engine fast: {why}; use --engine reference")
    return "reference"


def check_window(seconds: float, warmup: float = 0.0, intervals: int = 0, option: str = "--") -> None:
    """The simulated window of a run: `seconds` measured after `warmup` seconds, cut into `intervals` parts.
    `option` prefixes the names in the message: "--" for command-line options, "" for a sweep spec's fields."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ConfigError(f"{option}seconds must be in (0, {MAX_SECONDS:g}], got {seconds:g}")
    if not 0 <= warmup <= MAX_SECONDS:
        raise ConfigError(f"{option}warmup must be in [0, {MAX_SECONDS:g}], got {warmup:g}")
    if not 0 <= intervals <= MAX_INTERVALS:
        raise ConfigError(f"{option}intervals must be in [0, {MAX_INTERVALS}], got {intervals}")


def simulate(machine: Machine, kernel: Kernel, workload: Workload, *, seconds: float, seed: int,
             trace_out: Path | None = None, warmup: float = 0.0, intervals: int = 0,
             engine: str = "auto") -> dict[str, Any]:
    """Run for `warmup` + `seconds` simulated seconds and return the results as plain data (see
    METRIC_DOCS). Counts cover the `seconds` after the warm-up. With `intervals` >= 2 that window is cut
    into equal parts whose rates give each rate its 95% confidence interval (batch means) and the
    per-CPU timeline. Times are integer nanoseconds. `engine`: "fast" (compiled), "reference" (the
    readable one) or "auto" (fast where it covers the configuration); both give the same results."""
    check_window(seconds, warmup, intervals)
    missing = [c for c in workload.costs_needed if c not in machine.costs]
    if missing:
        raise WorkloadError(f"workload {workload.name} needs machine costs {', '.join(missing)}, which machine "
                            f"{machine.name} does not give (add [costs.NAME] with ns and source)")
    engine = choose_engine(machine, kernel, workload, engine)
    warmup_ns = round(warmup * 1e9)
    window_ns = round(seconds * 1e9)
    parts = max(intervals, 1)
    wall0 = time.perf_counter()
    with FtraceWriter(trace_out, machine.ncpus) if trace_out is not None else nullcontext() as writer:
        if engine == "fast":
            compile_seconds = warm_up()
            sim: Any = FastSim(machine, kernel, workload, seed, writer)
            run, counters = sim.run, sim.counters
        else:
            sim = SimMachine(machine, kernel, Engine(), tracer=writer, seed=seed)
            workload.start(sim, seed)
            sim.start_background(seed)
            run, counters = sim.engine.run, workload.counters
            compile_seconds = 0.0
        run(warmup_ns)
        warmup_wall = time.perf_counter() - wall0 - compile_seconds
        if engine == "fast":
            sim.clear_latencies()
        else:
            sim.smp.stats.call_latencies_ns.clear()
        snaps = [_snapshot(sim, counters())]
        for i in range(1, parts + 1):
            run(warmup_ns + window_ns * i // parts)
            snaps.append(_snapshot(sim, counters()))
        wall = time.perf_counter() - wall0
    latency = (sim.latencies if engine == "fast" else sim.smp.stats.call_latencies_ns).percentiles()
    r = _results(sim, machine, kernel, workload, snaps, warmup_ns, window_ns, seed, wall - compile_seconds,
                 trace_out, latency)
    r["engine"] = engine
    r["compile_seconds"] = round(compile_seconds, 3)
    r["warmup_wall_seconds"] = round(warmup_wall, 3)
    return r


def _snapshot(sim: Any, workload_counts: dict[str, int]) -> dict[str, Any]:
    """Every monotone counter of the run so far."""
    s = sim.smp.stats
    counts = {f.name: getattr(s, f.name) for f in fields(s) if f.name != "call_latencies_ns"}
    counts["apic_merged"] = sim.stats.apic_merged
    counts["ticks"] = sim.stats.ticks
    counts["vcpu_preemptions"] = sim.stats.vcpu_preemptions
    counts["stolen_ns"] = sim.stats.stolen_ns
    counts.update(workload_counts)
    return {"now": sim.engine.now, "counts": counts, "workload_keys": list(workload_counts),
            "cpu_interrupts": [c.interrupts for c in sim.cpus], "cpu_irq_ns": [c.irq_ns for c in sim.cpus],
            "cpu_apic_merged": [c.apic_merged for c in sim.cpus], "cpu_time_use": sim.time_use()}


def _rates(snaps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-second rate of every counter over the window, with a 95% CI from the intervals' rates (and
    those rates, for statistics across counters such as a ratio's interval)."""
    out: dict[str, dict[str, Any]] = {}
    span = (snaps[-1]["now"] - snaps[0]["now"]) / 1e9
    n = len(snaps) - 1
    t = float(scipy.stats.t.ppf(0.975, n - 1)) if n >= 2 else None
    for key in snaps[0]["counts"]:
        total = snaps[-1]["counts"][key] - snaps[0]["counts"][key]
        parts = [(b["counts"][key] - a["counts"][key]) / ((b["now"] - a["now"]) / 1e9)
                 for a, b in itertools.pairwise(snaps)]
        entry: dict[str, Any] = {"per_second": total / span, "ci95": None, "intervals": parts}
        if t is not None:
            entry["ci95"] = float(t * np.std(parts, ddof=1) / np.sqrt(n))
        out[key] = entry
    return out


def _results(sim: Any, machine: Machine, kernel: Kernel, workload: Workload,
             snaps: list[dict[str, Any]], warmup_ns: int, window_ns: int, seed: int, wall: float,
             trace_out: Path | None, latency: dict[str, int | None]) -> dict[str, Any]:
    first, last = snaps[0], snaps[-1]
    d = {k: last["counts"][k] - first["counts"][k] for k in last["counts"]}
    s = sim.smp.stats
    in_flight = s.csd_ipis - sim.stats.apic_merged - s.cal_interrupts
    per_cpu = []
    for c in sim.cpus:
        irq_ns = last["cpu_irq_ns"][c.id] - first["cpu_irq_ns"][c.id]
        per_cpu.append({"cpu": c.id, "comm": c.comm,
                        "interrupts": last["cpu_interrupts"][c.id] - first["cpu_interrupts"][c.id],
                        "irq_ns": irq_ns, "irq_fraction": irq_ns / window_ns,
                        "apic_merged": last["cpu_apic_merged"][c.id] - first["cpu_apic_merged"][c.id],
                        "time_ns": {u.key: last["cpu_time_use"][c.id][u] - first["cpu_time_use"][c.id][u]
                                    for u in Use}})
    workload_counts = {k: d[k] for k in last["workload_keys"]}
    return {
        "ipilab_version": __version__,
        "machine": machine.name,
        "kernel": kernel.name,
        "kernel_features": sorted(kernel.features),
        "workload": {"name": workload.name, **workload.model_dump()},
        "seed": seed,
        "warmup_seconds": warmup_ns / 1e9,
        "sim_seconds": window_ns / 1e9,
        "sim_ns": window_ns,
        "wall_seconds": round(wall, 3),
        "engine_events": sim.engine.events_processed,
        "csd_enqueues": d["csd_enqueues"],
        "ipis_sent": d["csd_ipis"],
        "cal_interrupts": d["cal_interrupts"],
        "apic_merged": d["apic_merged"],
        "csds_per_interrupt": d["csds_run_in_irq"] / d["cal_interrupts"] if d["cal_interrupts"] else None,
        "csd_no_ipi_queued": d["csd_no_ipi_queued"],
        "csd_no_ipi_polling": d["csd_no_ipi_polling"],
        "ipis_to_nonempty_queue": d["ipis_to_nonempty_queue"],
        "icr_writes": d["icr_writes"],
        "csds_run_in_irq": d["csds_run_in_irq"],
        "csds_run_from_idle": d["csds_run_from_idle"],
        "empty_interrupts": d["empty_interrupts"],
        "calls": d["calls"],
        "local_calls": d["local_calls"],
        "ipis_in_flight_at_end": in_flight,
        "ticks": d["ticks"],
        "vcpu_preemptions": d["vcpu_preemptions"],
        "stolen_ns": d["stolen_ns"],
        "csds_undecided_at_end": s.csd_enqueues - s.csd_ipis - s.csd_no_ipi_queued - s.csd_no_ipi_polling,
        "counts": {k: v for k, v in d.items() if k not in workload_counts},
        "workload_counts": workload_counts,
        "rates": _rates(snaps),
        "timeline": {"interval_ns": [b["now"] - a["now"] for a, b in itertools.pairwise(snaps)],
                     "cpu_interrupts": [[y - x for x, y in zip(a["cpu_interrupts"], b["cpu_interrupts"],
                                                               strict=True)]
                                        for a, b in itertools.pairwise(snaps)]},
        "wait_latency_ns": latency,
        "per_cpu": per_cpu,
        "irq_ns_total": sum(c["irq_ns"] for c in per_cpu),
        "trace_out": str(trace_out) if trace_out else None,
        "units": {"*_ns": "nanoseconds of simulated time", "sim_seconds": "simulated seconds measured, after "
                  "warmup_seconds", "wall_seconds": "host seconds of the run (warm-up included, the fast engine's "
                  "compile or cache load not: compile_seconds)",
                  "warmup_wall_seconds": "host seconds of set-up and warm-up",
                  "engine": "fast (compiled) or reference: the same numbers either way",
                  "irq_fraction": "share of the window in interrupt handlers",
                  "time_ns": "per CPU, simulated ns of the window by what they were spent on (sim/timeuse.py Use); "
                  "they sum to the window",
                  "wait_latency_ns": "per waited-for call, entry to return: count and max exact; p50/p90/p99 the "
                  "lowest value of the log bin (under 1/128 of the value wide, exact below 256 ns) that holds the "
                  "exact percentile (ipilab/latency.py)",
                  "rates": "per simulated second, with the half-width of a 95% confidence interval "
                  "(t-distribution over the intervals; null with fewer than 2)",
                  "workload_counts": "the workload's own counts in the window; swap-w-seq(-mt): pages written, "
                  "faulted, deactivated, scanned and reclaimed, TLB shootdowns and their wait (ns), swap slot "
                  "refills, per-CPU page list refills and bulk frees, page list drains (pcp_drains; pcp_drain_skips: "
                  "calls that found one under way) and the pages they moved, the reschedule IPIs that woke the "
                  "drains' workers (resched_ipis: the RES row, not CAL), and per kind of lock its acquisitions, "
                  "waits, spin and hold ns and holds with an interrupt inside"},
        "metrics": METRIC_DOCS,
        "costs": {c.key: sim.costs.describe(c) for c in CostId if c.key in machine.costs},
    }
