"""One simulation: a machine, a kernel and a workload, run for a simulated window; its results."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ipilab import __version__
from ipilab.kernel.features import Kernel
from ipilab.machine.model import Machine
from ipilab.sim.engine import Engine
from ipilab.sim.machine import SimMachine
from ipilab.trace.ftrace import FtraceWriter
from ipilab.workloads.base import Workload

MAX_SECONDS = 60.0

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
    "csds_undecided_at_end": "CSDs queued whose sender had not yet sent (or decided not to send) an IPI "
                             "when the window closed",
}


def simulate(machine: Machine, kernel: Kernel, workload: Workload, *, seconds: float, seed: int,
             trace_out: Path | None = None) -> dict[str, Any]:
    """Run and return the results as plain data (see METRIC_DOCS). Times are integer nanoseconds."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds must be in (0, {MAX_SECONDS:g}], got {seconds:g}")
    writer = FtraceWriter(trace_out, machine.ncpus) if trace_out is not None else None
    wall0 = time.perf_counter()
    try:
        sim = SimMachine(machine, kernel, Engine(), tracer=writer)
        workload.start(sim, seed)
        window_ns = round(seconds * 1e9)
        sim.engine.run(window_ns)
        wall = time.perf_counter() - wall0
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return _results(sim, machine, kernel, workload, window_ns, seed, wall, trace_out)


def _percentiles(samples: list[int]) -> dict[str, int | None]:
    if not samples:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(samples)
    p50, p90, p99 = np.percentile(a, [50, 90, 99], method="inverted_cdf")
    return {"count": len(samples), "p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(a.max())}


def _results(sim: SimMachine, machine: Machine, kernel: Kernel, workload: Workload, window_ns: int,
             seed: int, wall: float, trace_out: Path | None) -> dict[str, Any]:
    s = sim.smp.stats
    in_flight = s.csd_ipis - sim.stats.apic_merged - s.cal_interrupts
    per_cpu = [{"cpu": c.id, "interrupts": c.interrupts, "irq_ns": c.irq_ns,
                "irq_fraction": c.irq_ns / window_ns, "apic_merged": c.apic_merged} for c in sim.cpus]
    counts = {k: v for k, v in asdict(s).items() if k != "call_latencies_ns"}
    return {
        "ipilab_version": __version__,
        "machine": machine.name,
        "kernel": kernel.name,
        "kernel_features": sorted(kernel.features),
        "workload": {"name": workload.name, **workload.model_dump()},
        "seed": seed,
        "sim_seconds": window_ns / 1e9,
        "sim_ns": window_ns,
        "wall_seconds": round(wall, 3),
        "engine_events": sim.engine.events_processed,
        "csd_enqueues": s.csd_enqueues,
        "ipis_sent": s.csd_ipis,
        "cal_interrupts": s.cal_interrupts,
        "apic_merged": sim.stats.apic_merged,
        "csds_per_interrupt": s.csds_run_in_irq / s.cal_interrupts if s.cal_interrupts else None,
        "csd_no_ipi_queued": s.csd_no_ipi_queued,
        "csd_no_ipi_polling": s.csd_no_ipi_polling,
        "ipis_to_nonempty_queue": s.ipis_to_nonempty_queue,
        "icr_writes": s.icr_writes,
        "csds_run_in_irq": s.csds_run_in_irq,
        "csds_run_from_idle": s.csds_run_from_idle,
        "empty_interrupts": s.empty_interrupts,
        "calls": s.calls,
        "local_calls": s.local_calls,
        "ipis_in_flight_at_end": in_flight,
        "csds_undecided_at_end": s.csd_enqueues - s.csd_ipis - s.csd_no_ipi_queued - s.csd_no_ipi_polling,
        "counts": counts,
        "wait_latency_ns": _percentiles(s.call_latencies_ns),
        "per_cpu": per_cpu,
        "irq_ns_total": sum(c.irq_ns for c in sim.cpus),
        "trace_out": str(trace_out) if trace_out else None,
        "units": {"*_ns": "nanoseconds of simulated time", "sim_seconds": "simulated seconds",
                  "wall_seconds": "host seconds", "irq_fraction": "share of the window in interrupt handlers"},
        "metrics": METRIC_DOCS,
        "costs": {k: {"ns": v.ns, "source": v.source} for k, v in machine.costs.items()},
    }
