"""Pass 1 of a replay: a trace read as cross-CPU calls, the flushes that ran them and the CPUs' idle
transitions, with the audit's reading of the trace's own decisions. The rules (which enqueues form one
call, the window) are analysis/replay.py's module doc. The open-loop replay (analysis/replay.py) decides
its calls again; the closed-loop replay issues them again on a simulated machine (workloads/replay.py).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ipilab.analysis.audit import Audit, Queued
from ipilab.analysis.auditrules import SINGLE_CALLSITES
from ipilab.analysis.queues import NULL_CSD, CallQueues, Flush
from ipilab.events import HANDLER_EXIT, Event, symbol_name
from ipilab.trace.read import ReadStats, read_trace

CONTEXT_BEFORE, CONTEXT_AFTER = 8, 6  # trace events shown around a mismatching call
# The window: tracepoints are often enabled one after another (at boot, by a script), so the trace's
# first stretch lacks some of them. Counting starts once each of these has appeared (those seen fewer
# than WINDOW_MIN_EVENTS times are left out: they tell nothing about when tracing began).
WINDOW_EVENTS = ("csd_queue_cpu", "csd_function_entry", "csd_function_exit", "call_function_entry",
                 "call_function_single_entry", "sched_switch", "cpu_idle")
WINDOW_MIN_EVENTS = 10


@dataclass(frozen=True)
class TraceCall:
    at_ns: int  # from the trace's first call
    cpu: int
    targets: tuple[int, ...]
    func: str
    single: bool
    callsite: str


@dataclass(eq=False, slots=True)
class Call:
    """One cross-CPU call: the CSDs a sending context queued together, decided by one send."""

    ctx: tuple[int, bool]
    callsite: str
    func: str
    single: bool
    csds: list[Enqueue] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Enqueue:
    """One csd_queue_cpu: the call it belongs to, the flush that ran it, the trace's own decision (from the
    audit, when the trace has its sends), and the trace events around it."""

    seq: int
    event: Event
    lineno: int
    target: int
    csd: str
    func: str
    call: Call
    real: Queued | None
    before: tuple[tuple[int, Event], ...]
    after: list[tuple[int, Event]] = field(default_factory=list)
    flush: Flush | None = None
    run_ts: int | None = None

    @property
    def ts(self) -> int:
        return self.event.ts


class TraceModel:
    """Pass 1: the trace as calls, flushes and idle transitions, plus the audit's real decisions."""

    def __init__(self, halt_poll_ns: int | None = None) -> None:
        self.audit = Audit()
        self.halt_poll_override = halt_poll_ns
        self.enqueues: list[Enqueue] = []
        self.calls: list[Call] = []
        self.flushes: list[Flush] = []
        self.idle_actions: list[tuple[int, int, str, Event]] = []  # (seq, cpu, what, event)
        self.have_sched = False
        self.halt_poll_seen: set[int] = set()
        self.first_pid: dict[int, int] = {}
        self.queues = CallQueues(on_flush=self.flushes.append)
        self.runs_unmatched = self.runs_unseen = 0
        self._open_call: dict[tuple[int, bool], Call] = {}
        self._ring: deque[tuple[int, Event]] = deque(maxlen=CONTEXT_BEFORE)
        self._awaiting: list[Enqueue] = []
        self.first_seq: dict[str, int] = {}
        self.kind_counts: Counter[str] = Counter()
        self.window_start = 0

    def feed(self, seq: int, ev: Event, lineno: int = 0) -> None:
        for q in self._awaiting:
            q.after.append((lineno, ev))
        if self._awaiting:
            self._awaiting = [q for q in self._awaiting if len(q.after) < CONTEXT_AFTER]
        self._ring.append((lineno, ev))
        real = self.audit.feed(ev)
        cpu, name, f = ev.cpu, ev.name, ev.fields
        self.first_pid.setdefault(cpu, ev.pid)
        self.first_seq.setdefault(name, seq)
        self.kind_counts[name] += 1
        self.queues.event(seq, ev)
        if name == "csd_queue_cpu":
            self._enqueue(seq, ev, lineno, real)
        elif name == "csd_function_entry":
            if f["csd"] == NULL_CSD and not self._in_irq(ev):
                self._open_call.pop((cpu, False), None)  # a local run: the calling context's call has been sent
        elif name in HANDLER_EXIT or name == "reschedule_exit":
            self._open_call.pop((cpu, True), None)
        elif name in ("sched_switch", "cpu_idle", "guest_halt_poll_ns"):
            if name == "sched_switch":
                self.have_sched = True
            if name == "guest_halt_poll_ns":
                self.halt_poll_seen.add(cpu)
            self.idle_actions.append((seq, cpu, name, ev))
            if not self._in_irq(ev):
                self._open_call.pop((cpu, False), None)

    def _in_irq(self, ev: Event) -> bool:
        return self.audit.in_irq(ev)  # the same contexts as the audit's

    def _enqueue(self, seq: int, ev: Event, lineno: int, real: Queued | None) -> None:
        f = ev.fields
        ctx = (ev.cpu, self._in_irq(ev))
        target, callsite, func = int(f["cpu"]), symbol_name(str(f["callsite"])), symbol_name(str(f["func"]))  # type: ignore[arg-type]
        call = self._open_call.get(ctx)
        single = callsite in SINGLE_CALLSITES
        if (call is None or single or call.single or call.callsite != callsite or call.func != func
                or target <= call.csds[-1].target):
            call = Call(ctx, callsite, func, single)
            self.calls.append(call)
            self._open_call[ctx] = call
        q = Enqueue(seq, ev, lineno, target, str(f["csd"]), func, call, real, tuple(self._ring)[:-1])
        call.csds.append(q)
        self.enqueues.append(q)
        self.queues.enqueue(q)
        self._awaiting.append(q)

    def finish(self) -> None:
        """Calls never run are still queued at the end: one last batch per target."""
        self.queues.finish()
        self.runs_unmatched = self.queues.runs_unmatched.total()
        self.runs_unseen = self.queues.runs_unseen.total()
        self.audit.finish()
        self.audit_result = self.audit.result()
        self.window_start = max((self.first_seq[k] for k in WINDOW_EVENTS if self.kind_counts[k] >= WINDOW_MIN_EVENTS),
                                default=0)


def read_model(events: Iterable[tuple[Event, int]], halt_poll_ns: int | None = None) -> TraceModel:
    """Pass 1 over `(event, file line)` pairs in file order."""
    m = TraceModel(halt_poll_ns)
    for seq, (ev, lineno) in enumerate(events):
        m.feed(seq, ev, lineno)
    m.finish()
    return m


def trace_calls(m: TraceModel) -> tuple[list[TraceCall], dict[str, int]]:
    """The trace's calls for the closed-loop replay (workloads/replay.py), timed from the first one, and
    each function's median run time (ns)."""
    if not m.calls:
        return [], {}
    t0 = m.calls[0].csds[0].event.ts
    calls = [TraceCall(call.csds[0].event.ts - t0, call.ctx[0], tuple(q.target for q in call.csds), call.func,
                       call.single, call.callsite) for call in m.calls]
    func_ns = {f: max(1, int(v["p50"])) for f, v in m.audit_result["function_ns"].items()}
    return calls, func_ns


def trace_events(path: Path, stats: ReadStats) -> Iterator[tuple[Event, int]]:
    for ev in read_trace(path, stats, idle_events=True):
        yield ev, stats.lineno
