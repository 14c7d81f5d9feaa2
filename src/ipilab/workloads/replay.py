"""A trace's calls, issued again on a simulated machine: the closed-loop replay.

Each CPU that queued calls in the trace gets a thread that issues the same calls (same targets, same
function, single-target or multi-target path) at the same offsets from the trace's first call, or as soon
as it can when an earlier call still holds it. Everything else follows from the model: when targets take
their interrupts, how long calls wait, which queues are still non-empty. Each function runs for its
median run time in the trace. Approximations: calls on the multi-target paths wait for completion and
single-target ones do not (TLB flushes wait, remote wakeups and nohz kicks do not); calls the trace made
from interrupt handlers are issued from the thread; the trace's other work on the CPUs is not modelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr

from ipilab.analysis.tracemodel import TraceCall, read_model, trace_calls, trace_events
from ipilab.kernel.smp import SmpFunc
from ipilab.kernel.steps import Busy, KernelCode, Platform
from ipilab.sim.machine import SimMachine
from ipilab.trace.read import ReadStats, TraceFormatError
from ipilab.workloads.base import Workload, WorkloadError

DEFAULT_FUNC_NS = 1_000  # a function the trace never shows running
START_NS = 1_000  # the first call, after time 0 (whose events simulate() counts as before its window)


class TraceReplay(Workload):
    name = "trace-replay"
    summary = "the calls of a recorded trace, issued again from the CPUs that made them (closed-loop replay)"

    trace: str = Field(description="the trace file whose calls are replayed (any format `analyze` reads)")
    _calls: list[TraceCall] = PrivateAttr(default_factory=list)
    _func_ns: dict[str, int] = PrivateAttr(default_factory=dict)
    _loaded: bool = PrivateAttr(default=False)

    def use(self, calls: list[TraceCall], func_ns: dict[str, int]) -> TraceReplay:
        """Take calls already read (the replay reads a trace once for several kernels)."""
        self._calls, self._func_ns, self._loaded = calls, func_ns, True
        return self

    def span_ns(self) -> int:
        self._load()
        return max((c.at_ns for c in self._calls), default=0)

    def _load(self) -> None:
        if not self._loaded:
            try:
                calls, func_ns = trace_calls(read_model(trace_events(Path(self.trace), ReadStats())))
            except TraceFormatError as e:
                raise WorkloadError(f"workload {self.name}: field trace: {e}") from None
            self.use(calls, func_ns)

    def start(self, sim: SimMachine, seed: int) -> None:
        self._load()
        too_big = sorted({c for call in self._calls for c in (call.cpu, *call.targets) if c >= sim.ncpus})
        if too_big:
            raise WorkloadError(f"workload {self.name}: the trace uses CPU {too_big[-1]}, but the machine has "
                                f"CPUs 0-{sim.ncpus - 1}; choose a --machine with more CPUs")
        by_cpu: dict[int, list[TraceCall]] = {}
        for call in self._calls:
            by_cpu.setdefault(call.cpu, []).append(call)
        funcs = {name: SmpFunc(name, _body(ns)) for name, ns in self._func_ns.items()}
        for cpu in range(sim.ncpus):
            calls = by_cpu.get(cpu)
            if calls:
                sim.start(cpu, self._thread(sim, cpu, calls, funcs), "replay", 4000 + cpu)
            else:
                sim.start(cpu, None)

    def _thread(self, sim: SimMachine, cpu: int, calls: list[TraceCall], funcs: dict[str, SmpFunc]) -> KernelCode:
        smp = sim.smp
        for call in calls:
            if START_NS + call.at_ns > sim.now:
                yield Busy(START_NS + call.at_ns - sim.now, "user")
            func = funcs.get(call.func) or SmpFunc(call.func, _body(DEFAULT_FUNC_NS))
            if call.single:
                yield from smp.smp_call_function_single(cpu, call.targets[0], func, None, wait=False,
                                                        callsite=call.callsite)
            else:
                yield from smp.smp_call_function_many_cond(cpu, list(call.targets), func, None, wait=True,
                                                           callsite=call.callsite)


def _body(ns: int) -> Any:
    def body(p: Platform, cpu: int, info: object) -> KernelCode:
        yield Busy(ns, "func")
    return body
