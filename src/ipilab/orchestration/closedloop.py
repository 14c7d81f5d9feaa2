"""Closed-loop replay: a trace's calls issued again on a simulated machine under each kernel (the trace is read
by analysis/tracemodel.py, the calls issued by the trace-replay workload, workloads/replay.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ipilab.analysis.queues import TTWU_FUNC
from ipilab.analysis.replay import REAL_DOCS, real_counts
from ipilab.analysis.tracemodel import read_model, trace_calls, trace_events
from ipilab.kernel.features import Kernel
from ipilab.machine.model import Machine
from ipilab.sim.run import MAX_SECONDS, simulate
from ipilab.trace.read import ReadStats
from ipilab.workloads.replay import START_NS, TraceReplay

# What each number of a closed-loop replay counts; printed with the table and stored in the JSON.
CLOSED_DOCS: dict[str, str] = {
    "csd_enqueues": "remote calls queued in the simulation (the trace's calls, issued again)",
    "calls": "cross-CPU calls issued",
    "ipis": "function-call IPIs the simulated kernel sent, one per target CPU",
    "cal_interrupts": "function-call interrupts the simulated targets took",
    "apic_merged": "IPIs absorbed by the same vector already pending in the target's APIC",
    "csds_per_interrupt": "calls run in interrupts / cal_interrupts",
    "csd_no_ipi_queued": "calls that needed no IPI: the target's queue already waited for one",
    "csd_no_ipi_polling": "calls that needed no IPI: the target was polling idle",
    "ipis_to_nonempty_queue": "IPIs sent although the target's queue already waited for one",
    "csds_run_in_irq": "calls run inside function-call interrupts",
    "csds_run_without_irq": "calls run by an idle CPU's own flush, without an interrupt",
    "calls_not_issued": "trace calls still waiting to be issued when the simulated window closed",
    "wakeups_off_queue": "remote wakeups not issued: not on call_single_queue before shared_queue (v5.8)",
}


def closed_loop(path: Path, kernels: list[Kernel], machine: Machine, *, seed: int = 1) -> dict[str, Any]:
    """Issue the trace's calls again on a simulated `machine` under each kernel (workloads/replay.py)."""
    stats = ReadStats()
    m = read_model(trace_events(Path(path), stats))
    calls, func_ns = trace_calls(m)
    span = max((c.at_ns for c in calls), default=0)
    seconds = min(MAX_SECONDS, (START_NS + span + 1_000_000) / 1e9)  # a millisecond past the last call
    out: dict[str, Any] = {"trace": str(path), "mode": "closed", "machine": machine.name,
                           "format": stats.format, "bad_lines": stats.bad_lines,
                           "warnings": [str(w) for w in stats.warnings], "calls_in_trace": len(calls),
                           "trace_span_ns": span, "sim_seconds": seconds, "seed": seed,
                           "func_ns": func_ns, "real": real_counts(m), "kernels": [],
                           "metrics": CLOSED_DOCS, "real_metrics": REAL_DOCS}
    for kernel in kernels:
        # Before shared_queue (v5.8) remote wakeups did not use call_single_queue: they are not issued.
        mine = calls if kernel.has("shared_queue") else [c for c in calls if c.func != TTWU_FUNC]
        w = TraceReplay(trace=str(path)).use(mine, func_ns)
        r = simulate(machine, kernel, w, seconds=seconds, seed=seed)
        issued = r["calls"]
        out["kernels"].append({
            "kernel": kernel.name, "features": sorted(kernel.features), "csd_enqueues": r["csd_enqueues"],
            "calls": issued, "ipis": r["ipis_sent"], "cal_interrupts": r["cal_interrupts"],
            "apic_merged": r["apic_merged"], "csds_per_interrupt": r["csds_per_interrupt"],
            "csd_no_ipi_queued": r["csd_no_ipi_queued"], "csd_no_ipi_polling": r["csd_no_ipi_polling"],
            "ipis_to_nonempty_queue": r["ipis_to_nonempty_queue"], "csds_run_in_irq": r["csds_run_in_irq"],
            "csds_run_without_irq": r["csds_run_from_idle"], "calls_not_issued": len(mine) - issued,
            "wakeups_off_queue": len(calls) - len(mine),
            "agreement": None})
    return out
