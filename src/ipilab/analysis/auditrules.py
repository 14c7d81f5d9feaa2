"""What the two audits of a trace share (audit.py, the reference, and fastaudit.py, the compiled one that
gives the same numbers): which callsites are single-target calls, and how call times are kept and reported."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

# Callsites (csd_queue_cpu's _RET_IP_) on the single-target paths: each enqueue there is a call of its own,
# its send (if any) right after it.
SINGLE_CALLSITES = frozenset({"generic_exec_single", "ttwu_queue_wakelist", "irq_work_queue_on",
                              "smp_call_function_single", "smp_call_function_single_async",
                              "__smp_call_single_queue", "send_call_function_single_ipi"})

# What the per-function times are; stored in the JSON (`times`) and printed under the table.
TIME_DOCS: dict[str, str] = {
    "latency_ns": "wait: from a call's csd_queue_cpu to the csd_function_entry on its target that ran it, the run "
                  "found by the kernel's queue rules (analysis/queues.py): a remote wakeup queued behind another runs "
                  "in the batch's one sched_ttwu_pending call; calls counted in runs_unseen or runs_unmatched have "
                  "no wait",
    "function_ns": "run: a queued call's csd_function_entry to its csd_function_exit on the target",
    "units": "nanoseconds, as percentiles of an HdrHistogram (3 significant digits); no time finer than "
             "timestamp_resolution_ns can be told from 0",
}


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, 3_600_000_000_000, 3)  # 1 ns to an hour, 3 significant digits


def percentiles(h: HdrHistogram) -> dict[str, int]:
    """count, p50, p90, p99 and max of a histogram of nanoseconds."""
    return {"count": h.get_total_count(), "p50": h.get_value_at_percentile(50),
            "p90": h.get_value_at_percentile(90), "p99": h.get_value_at_percentile(99), "max": h.get_max_value()}
