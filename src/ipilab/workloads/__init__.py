"""Workloads that drive the simulated kernel; `WORKLOADS` maps each name to its parameter model."""

from ipilab.workloads.base import Workload, WorkloadError, make_workload
from ipilab.workloads.replay import TraceReplay
from ipilab.workloads.swap import SwapWSeq, SwapWSeqMt
from ipilab.workloads.synthetic import Synthetic
from ipilab.workloads.tlbstorm import TlbStorm

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (SwapWSeqMt, SwapWSeq, Synthetic, TlbStorm,
                                                            TraceReplay)}


def workload_from_settings(name: str, settings: dict[str, str]) -> Workload:
    if name not in WORKLOADS:
        raise WorkloadError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return make_workload(WORKLOADS[name], settings)


__all__ = ["WORKLOADS", "Workload", "WorkloadError", "workload_from_settings"]
