"""Open-loop replay: what another kernel would have decided for every queued call of a real trace.

The trace's enqueues (who queued what on which CPU, when) and the targets' flushes (when each target
detached its call_single_queue, and which calls it ran then) stay as they were. For every call the kernel
model decides again, by running its own code (kernel/smp.py, as the simulator does) on a TracePlatform
that answers from the trace: IPI, no IPI because the queue already waited for one, or no IPI because the
target was polling idle; and each IPI either raises an interrupt or merges with the same vector already
pending in the target's APIC.

Rules read off the traces (Linux 6.x; each is checked by a hand-built trace in tests/test_replay.py):

- Queue state. Which flush ran each queued call comes from the queue model of analysis/queues.py (the
  one `analyze` measures waits with): a flush runs every call it detached, so the calls a flush ran are
  exactly the queue it detached, and a call found the queue non-empty iff a call added before it ran in
  the same flush. The first added is the first traced, unless the first run was traced within RACE_NS
  of it: then the two may have raced (csd_queue_cpu fires before llist_add) and the run order decides
  (`first_added`). A call whose run the trace does not show (its pointer queued again first) is a batch
  of its own; calls the trace never runs are still queued at its end (one batch per target).
- Calls. csd_queue_cpu events of one sending context (a CPU's task, or an interrupt handler on it) with
  the same callsite and function and ascending targets form one multi-CPU call (the kernel queues a
  call's targets in CPU order), until that context runs a local function (csd=0), switches task, goes
  idle or leaves the handler. Callsites of the single-target paths (SINGLE_CALLSITES) are one call each.
  The sends (ipi_send_*, sched_wake_idle_without_ipi) are not used, so a trace without them replays the
  same. The model is given the CPUs a call queued on as its cpumask: CPUs that the call's cond_func
  skipped (lazy TLB) are not in the trace, so under a kernel with the one-target shortcut (before 5.13) a
  call that queued on one CPU takes smp_call_function_single()'s path even if its mask held more.
- Polling. An idle CPU is polling (TIF_POLLING_NRFLAG) from sched_switch to the idle task, and again
  after each `cpu_idle` exit, until POLL_CLEAR_NS before its next halting `cpu_idle` (state >= 1), or
  until it switches away. A cpuidle poll state (`cpu_idle` state 0) polls until its exit. With a
  halt-poll window P (the last `guest_halt_poll_ns` on that CPU, or `halt_poll_ns`), the CPU polls for P
  after entering a halting state before it halts (as the simulator's idle loop does). A trace without
  sched_switch events (a simulated one) polls only in those windows. For a CPU whose idle states the
  trace never shows, a call counts as polled if the idle loop ran it without an interrupt (or, if the
  CPU was in its idle task, if its run never shows and the CPU took no interrupt after it).
- Interrupts. An IPI's vector stays pending in the target's APIC until the target's next flush, which
  takes every pending vector as one interrupt each; a same-vector IPI sent meanwhile merges.
- Window. Counting starts once every tracepoint the replay reads has appeared (WINDOW_EVENTS): traces
  often enable them one by one. Earlier calls are replayed for their state but not counted.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipilab.analysis.queues import NEVER, TTWU_FUNC, UNSEEN, Flush
from ipilab.analysis.tracemodel import Call, Enqueue, TraceModel, read_model, trace_events
from ipilab.events import (
    CALL_FUNCTION_SINGLE_VECTOR,
    CPU_IDLE_EXIT,
    Event,
)
from ipilab.kernel.features import Kernel, resolve_kernel
from ipilab.kernel.smp import Csd, Smp, SmpFunc
from ipilab.kernel.steps import KernelCode, SpinUntil
from ipilab.kernel.x86 import Apic
from ipilab.trace.read import ReadStats

MAX_MISMATCHES_SHOWN = 5
# Two enqueues traced this close may have reached llist_add in either order: under QEMU's emulated clock
# (the qemu4-* traces) the gap between the tracepoint and llist_add reaches tens of microseconds.
RACE_NS = 100_000
POLL_CLEAR_NS = 12_000  # the idle loop clears TIF_POLLING_NRFLAG this long before cpu_idle shows the halt
OWN_KERNEL = "v6.18"  # csd_* tracepoints exist since 6.3, whose cross-call path the model's v6.18 describes

# What each number of a replay counts; printed with the table and stored in the JSON.
REPLAY_DOCS: dict[str, str] = {
    "csd_enqueues": "queued calls replayed (csd_queue_cpu events; remote wakeups excluded under kernels "
                    "without shared_queue)",
    "calls": "cross-CPU calls they make up (one multi-CPU call queues on several CPUs)",
    "ipis": "function-call IPIs the kernel would send, one per target CPU",
    "ipis_single": "of which on the single-target path (vector 251)",
    "ipis_mask": "of which in a multi-target send (vector 252)",
    "cal_interrupts": "function-call interrupts the targets would take (the CAL row): IPIs less APIC merges "
                      "(an IPI sent just before the window may be taken in it)",
    "apic_merged": "IPIs absorbed by the same vector already pending in the target's APIC",
    "csds_per_interrupt": "queued calls run in interrupts / cal_interrupts",
    "csd_no_ipi_queued": "calls that need no IPI: the target's queue already waited for one",
    "csd_no_ipi_polling": "calls that need no IPI: the target was polling idle (NEED_RESCHED set instead)",
    "ipis_to_nonempty_queue": "IPIs sent although the target's queue already waited for one (pre-4.13 waste)",
    "csds_run_in_irq": "queued calls whose flush begins with an interrupt taken",
    "csds_run_without_irq": "queued calls flushed with no interrupt taken (idle-loop flush)",
    "wakeups_off_queue": "remote wakeups not on call_single_queue under this kernel (before shared_queue, "
                         "v5.8, they used the scheduler's wake_list and a reschedule IPI)",
}
REAL_DOCS: dict[str, str] = {
    "csd_enqueues": "queued calls counted (csd_queue_cpu from the window's start on)",
    "ipis": "queued calls the trace shows getting an IPI (ipi_send_cpu / ipi_send_cpumask naming their target)",
    "cal_interrupts": "function-call interrupts in the trace (call_function(_single)_entry)",
    "csds_per_interrupt": "queued calls run inside those interrupts / cal_interrupts",
    "csd_no_ipi_queued": "calls the trace shows needing no IPI: queue already waiting",
    "csd_no_ipi_polling": "calls the trace shows needing no IPI: target polling (sched_wake_idle_without_ipi)",
}

NOTES: dict[str, str] = {
    "csd_enqueues_in_trace": "csd_queue_cpu events in the whole trace, before the window included",
    "window_from_ts_ns": "trace timestamp (ns) of the first call counted",
    "flushes_in_irq": "of the flushes, those in a call-function interrupt",
    "idle_known_from": "which events told the replay when CPUs idled and polled",
    "halt_poll_ns": "the halt-poll window used (ns), or where it came from",
    "window_from_line": "counting starts at the first call queued once every tracepoint the replay reads has "
                        "appeared (see WINDOW_EVENTS); earlier calls set up state only",
    "flushes": "detach-and-run of a target's queue seen in the window (an interrupt, or the idle loop's own)",
    "runs_unmatched": "csd_function_entry with no queued call in the trace (queued before it began)",
    "csds_never_run": "queued calls the trace never runs (still queued at its end)",
    "runs_unseen": "queued calls whose run is missing (their CSD was queued again before the trace showed it "
                   "run); each is taken to have found the queue empty",
    "poll_clear_ns": "an idle CPU is taken as no longer polling this long before cpu_idle shows it halting",
}


@dataclass(slots=True)
class IdleState:
    """What the replay knows of one CPU's idle task (see the module doc's polling rule)."""

    in_idle: bool = False
    halted: bool = False
    halt_ts: int = 0
    poll_state: bool = False
    halt_poll_ns: int = 0


class IdleModel:
    """Per CPU, whether a sender would find it polling: the idle transitions replayed in trace order, and
    each CPU's halting entries looked up ahead (polling is cleared `poll_clear_ns` before one is traced)."""

    def __init__(self, m: TraceModel, poll_clear_ns: int) -> None:
        self.m = m
        self.poll_clear_ns = poll_clear_ns
        self.cpus: dict[int, IdleState] = defaultdict(IdleState)
        for cpu, pid in m.first_pid.items():
            # A CPU idle when the trace begins has most likely been idle long enough to halt.
            self.cpus[cpu].in_idle = self.cpus[cpu].halted = pid == 0
            if m.halt_poll_override is not None:
                self.cpus[cpu].halt_poll_ns = m.halt_poll_override
        # Per CPU whose idle states the trace shows: its halting entries (seqs, timestamps).
        self.halts: dict[int, tuple[list[int], list[int]]] = {}
        for seq, cpu, what, ev in m.idle_actions:
            if what == "cpu_idle":
                seqs, stamps = self.halts.setdefault(cpu, ([], []))
                if int(ev.fields["state"]) not in (0, CPU_IDLE_EXIT):  # type: ignore[arg-type]
                    seqs.append(seq)
                    stamps.append(ev.ts)

    def transition(self, cpu: int, what: str, ev: Event) -> None:
        st = self.cpus[cpu]
        if what == "sched_switch":
            st.in_idle = ev.fields["next_pid"] == 0
            st.halted = st.poll_state = False
        elif what == "guest_halt_poll_ns":
            if self.m.halt_poll_override is None:
                st.halt_poll_ns = int(ev.fields["halt_poll_ns"])  # type: ignore[arg-type]
        else:  # cpu_idle
            state = int(ev.fields["state"])  # type: ignore[arg-type]
            if state == CPU_IDLE_EXIT:
                st.halted = st.poll_state = False
            elif state == 0:
                st.poll_state = True
            else:
                st.halted, st.halt_ts = True, ev.ts

    def polling(self, cpu: int, seq: int, ts: int, ran: str | None) -> bool:
        """Would a sender at (seq, ts) find `cpu` polling? For a CPU whose idle states the trace does not
        show, the evidence is how the call ran (`ran`): flushed by the idle loop, not an interrupt (an IPI
        would have been taken as one); or, on a CPU that was in its idle task, never seen to run (the
        2-vCPU VM traces record no event of CPU 1's idle task outside interrupts, its flushes included)."""
        st = self.cpus[cpu]
        if cpu not in self.halts:
            return ran == "idle loop" or (ran == "unseen" and self.m.have_sched and st.in_idle)
        if st.poll_state:
            return True
        if st.halted:
            return ts < st.halt_ts + st.halt_poll_ns
        if not (self.m.have_sched and st.in_idle):
            return False
        seqs, stamps = self.halts[cpu]
        i = bisect_right(seqs, seq)
        return i == len(seqs) or ts < stamps[i] - self.poll_clear_ns


# The lines that carry a kernel's decisions; a prediction must work without them.
DECISION_EVENTS = frozenset({"ipi_send_cpu", "ipi_send_cpumask", "sched_wake_idle_without_ipi"})


def read_with_and_without_decisions(path: Path, halt_poll_ns: int | None = None) -> tuple[TraceModel, TraceModel]:
    """One read of a trace, two models: the whole trace (its own decisions, the truth to check against)
    and the trace with its DECISION_EVENTS lines removed (what a prediction may use)."""
    full, bare = TraceModel(), TraceModel(halt_poll_ns)
    n = 0
    for seq, (event, lineno) in enumerate(trace_events(path, ReadStats())):
        full.feed(seq, event, lineno)
        if event.name not in DECISION_EVENTS:
            bare.feed(n, event, lineno)
            n += 1
    full.finish()
    bare.finish()
    return full, bare


# --- pass 2: one kernel's decisions -------------------------------------------------------------------

@dataclass
class Prediction:
    kernel: Kernel
    counts: Counter[str] = field(default_factory=Counter)
    decisions: dict[int, str] = field(default_factory=dict)  # enqueue seq -> "ipi" | "queued" | "polling"


def first_added(batch: list[Enqueue]) -> Enqueue | None:
    """Which call of a flushed batch (in run order) found the queue empty. The queued call traced first
    was added first, except in a race: csd_queue_cpu fires just before llist_add, so two calls traced
    within RACE_NS may have been added the other way round. Then the run order decides: a flush runs the
    calls in the order they were added (the detached list, reversed). It is not trusted beyond a race,
    since 5.8 runs SYNC calls first and wakeups last."""
    if not batch:
        return None
    earliest = min(batch, key=lambda q: q.seq)
    if earliest.func == TTWU_FUNC:
        return earliest  # wakeups run last whenever they came: the run order says nothing
    first_run = next(q for q in batch if q.func != TTWU_FUNC)
    if first_run is not earliest and first_run.event.ts - earliest.event.ts <= RACE_NS:
        return first_run
    return earliest


class _PerCpu(dict[int, Any]):
    """Per-CPU data made on first use: a trace may name any CPU numbers, and few pairs of them talk."""

    def __init__(self, make: Callable[[int], Any]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, cpu: int) -> Any:
        value = self[cpu] = self.make(cpu)
        return value


class _TraceQueue:
    """A target's call_single_queue as the replay knows it: llist_add() answers from the trace."""

    __slots__ = ("platform",)

    def __init__(self, platform: TracePlatform) -> None:
        self.platform = platform

    def llist_add(self, csd: Csd) -> bool:
        return self.platform.llist_add(csd)


def _no_body(_p: object, _cpu: int, _info: object) -> KernelCode:
    """A queued call's function: the replay never runs it (the trace's flushes stand for the targets)."""
    return
    yield


class TracePlatform:
    """The machine the kernel model (kernel/smp.py, the simulator's own code) runs on in pass 2: it
    implements kernel/steps.py's Platform with the trace's answers, so the model decides each call of the
    trace exactly as it decides a simulated one.

    - llist_add() reports the queue empty for the call added first to the batch its flush ran
      (`first_of_batch`, see the module doc's queue-state rule).
    - set_nr_if_polling() asks the idle model (IdleModel.polling) at the call's send.
    - Costs are irrelevant: the model's Busy steps are consumed as they come.
    - CSD locks: the model's receiving side does not run here (the trace's flushes stand for it), so
      nothing would unlock a CSD; the trace shows each sender's next call going ahead, so a call's CSDs are
      unlocked once it is decided, and a csd_lock() spin (which that leaves none of) would be released.

    The decisions are what the model does: an IPI raised for a target (raise_ipi, with its vector), a
    sched_wake_idle_without_ipi traced for it, or neither (its queue already waited for an IPI)."""

    def __init__(self, kernel: Kernel, first_of_batch: set[int], polling: Callable[[Enqueue], bool]) -> None:
        self.first_of_batch = first_of_batch
        self.polling = polling
        self.now = 0  # Platform.now: the time of the call being decided (the model reads it for statistics)
        # How the ICR is written decides no IPI: one write per target, no shorthand.
        smp = Smp(kernel, 0, Apic("x2apic_phys", (), use_shorthand=False), self)
        smp.cfd_csd = _PerCpu(lambda src: _PerCpu(lambda dst: smp._new_csd(src, dst)))
        smp.csd_data = _PerCpu(lambda src: smp._new_csd(src, src))
        smp.call_single_queue = _PerCpu(lambda _cpu: _TraceQueue(self))
        smp._nonempty_since = _PerCpu(lambda _cpu: 0)
        self.smp = smp
        # The call being decided: its queued calls by target, the CSDs the model queued, what it decided.
        self._csds: dict[int, Enqueue] = {}
        self._queued: dict[int, Csd] = {}
        self._decided: dict[int, tuple[str, int]] = {}

    def decide(self, call: Call, csds: list[Enqueue]) -> list[tuple[Enqueue, str, int]]:
        """Run the kernel's code for one call of the trace, its queued calls `csds`; return each one's
        decision ("ipi", "polling" or "queued") and, for an IPI, its vector. A call the trace shows queued
        on its own sender's CPU gets none: the kernel (and the model) runs such a call locally."""
        self._csds = {q.target: q for q in csds}
        self._queued = {}
        self._decided = {}
        self.now = csds[-1].ts
        cpu, func = call.ctx[0], SmpFunc(call.func, _no_body)
        # The trace does not say whether the sender waited; waiting decides nothing (it follows the sends).
        if call.single:
            code = self.smp.smp_call_function_single(cpu, csds[0].target, func, None, wait=False,
                                                     callsite=call.callsite)
        else:
            # The mask the sender passed is known only as the CPUs it queued on (cond_func's rejects and
            # the sender itself are not in the trace).
            code = self.smp.smp_call_function_many_cond(cpu, [q.target for q in csds], func, None, wait=False,
                                                        callsite=call.callsite)
        for step in code:  # Busy and interrupts off/on: nothing to do
            if type(step) is SpinUntil:
                assert isinstance(step.watch, Csd), step  # csd_lock() is the model's only spin on a sender
                self.smp.csd_unlock(step.watch)  # see the class doc
        for csd in self._queued.values():
            self.smp.csd_unlock(csd)
        decided, queued = self._decided, self._queued
        return [(q, *decided.get(q.target, ("queued", 0))) for q in csds if q.target in queued]

    # --- kernel/steps.py Platform ---------------------------------------------------------------------

    def llist_add(self, csd: Csd) -> bool:
        self._queued[csd.dst] = csd
        return self._csds[csd.dst].seq in self.first_of_batch

    def cost(self, what: object, cpu: int) -> int:
        return 0

    def cacheline(self, cpu: int, other: int) -> int:
        return 0

    def raise_ipi(self, src: int, dst: int, vector: int) -> None:
        self._decided[dst] = ("ipi", vector)

    def notify(self, watch: object) -> None:
        pass

    def trace(self, cpu: int, name: str, /, **fields: object) -> None:
        if name == "sched_wake_idle_without_ipi":
            self._decided[fields["cpu"]] = ("polling", 0)  # type: ignore[index]

    def set_nr_if_polling(self, cpu: int) -> bool:
        return self.polling(self._csds[cpu])

    def is_lazy_tlb(self, cpu: int) -> bool:
        raise AssertionError("the replay passes the trace's queued CPUs as the mask: no cond_func runs")


def predict(m: TraceModel, kernel: Kernel, poll_clear_ns: int = POLL_CLEAR_NS) -> Prediction:
    """Decide every call of the trace under `kernel` (see the module doc): the kernel model itself decides,
    on a TracePlatform. Everything is replayed, but only what happens from `m.window_start` on is counted."""
    p = Prediction(kernel)
    on_queue = kernel.has("shared_queue")
    start = m.window_start

    def count(key: str, seq: int, n: int = 1) -> None:
        if seq >= start:
            p.counts[key] += n

    def on_call_queue(q: Enqueue) -> bool:
        return on_queue or q.func != TTWU_FUNC

    # was_empty: the first call added to its flush's batch.
    first_of_batch = {q.seq for fl in m.flushes if (q := first_added([q for q in fl.csds if on_call_queue(q)]))}
    first_of_batch.update(q.seq for q in m.enqueues if q.flush is not None and q.flush.seq == UNSEEN)

    # Everything in trace order: idle transitions, sends (right after a call's last enqueue), flushes.
    actions: list[tuple[int, int, Any]] = [(seq, 0, (cpu, what, ev)) for seq, cpu, what, ev in m.idle_actions]
    actions += [(call.csds[-1].seq, 1, call) for call in m.calls]
    actions += [(fl.seq, 2, fl) for fl in m.flushes if fl.seq < NEVER]
    actions.sort(key=lambda a: (a[0], a[1]))

    idle = IdleModel(m, poll_clear_ns)
    irr: dict[int, set[int]] = defaultdict(set)  # per target: vectors pending in its APIC

    def polling(q: Enqueue) -> bool:
        last = q.call.csds[-1]
        ran = None if q.flush is None or q.flush.vector is not None or q.flush.seq == NEVER else \
            ("unseen" if q.flush.seq == UNSEEN else "idle loop")
        return idle.polling(q.target, last.seq, last.event.ts, ran)

    platform = TracePlatform(kernel, first_of_batch, polling)
    outcome = {"ipi": "ipis", "queued": "csd_no_ipi_queued", "polling": "csd_no_ipi_polling"}

    for seq, kind, item in actions:
        if kind == 0:
            cpu, what, ev = item
            idle.transition(cpu, what, ev)
        elif kind == 1:
            call: Call = item
            csds = [q for q in call.csds if on_call_queue(q)]
            count("wakeups_off_queue", seq, len(call.csds) - len(csds))
            if not csds:
                continue
            count("calls", seq)
            count("csd_enqueues", seq, len(csds))
            for q, decision, vector in platform.decide(call, csds):
                p.decisions[q.seq] = decision
                count(outcome[decision], q.seq)
                if decision != "ipi":
                    continue
                count("ipis_single" if vector == CALL_FUNCTION_SINGLE_VECTOR else "ipis_mask", q.seq)
                if q.seq not in first_of_batch:
                    count("ipis_to_nonempty_queue", q.seq)
                if vector in irr[q.target]:
                    count("apic_merged", q.seq)
                else:
                    irr[q.target].add(vector)
        else:
            fl: Flush = item
            taken = len(irr[fl.target])
            irr[fl.target].clear()
            count("cal_interrupts", seq, taken)
            for q in fl.csds:
                if on_call_queue(q):
                    count("csds_run_in_irq" if taken else "csds_run_without_irq", q.seq)
    # IPIs still pending at the end are taken once the target can: interrupts too.
    p.counts["cal_interrupts"] += sum(len(v) for v in irr.values())
    return p


# --- the report -----------------------------------------------------------------------------------------

def replay_trace(path: Path, kernels: list[Kernel], *, trace_kernel: str = OWN_KERNEL,
                 halt_poll_ns: int | None = None, poll_clear_ns: int = POLL_CLEAR_NS,
                 drop: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Replay one trace open-loop under each kernel; `drop` names events to leave out (as if never traced)."""
    stats = ReadStats()
    events = ((ev, n) for ev, n in trace_events(Path(path), stats) if ev.name not in drop)
    m = read_model(events, halt_poll_ns)
    return report(m, kernels, trace=str(path), stats=stats, trace_kernel=resolve_kernel(trace_kernel),
                  poll_clear_ns=poll_clear_ns)


def real_counts(m: TraceModel) -> dict[str, Any]:
    """What the trace itself shows over the counted window (see REAL_DOCS); decisions only when it has sends."""
    start = m.window_start
    known = bool(m.audit_result["decisions_known"])
    decided = Counter(q.real.decision for q in m.enqueues if q.seq >= start and q.real is not None)
    irq_flushes = [f for f in m.flushes if f.vector is not None and f.seq >= start]
    in_irq = sum(len(f.csds) for f in irq_flushes)
    return {"csd_enqueues": sum(1 for q in m.enqueues if q.seq >= start),
            "ipis": decided["ipi"] if known else None,
            "cal_interrupts": len(irq_flushes),
            "csds_per_interrupt": in_irq / len(irq_flushes) if irq_flushes else None,
            "csd_no_ipi_queued": decided["queued"] if known else None,
            "csd_no_ipi_polling": decided["polling"] if known else None}


def report(m: TraceModel, kernels: list[Kernel], *, trace: str, stats: ReadStats | None,
           trace_kernel: Kernel, poll_clear_ns: int = POLL_CLEAR_NS) -> dict[str, Any]:
    decisions_known = bool(m.audit_result["decisions_known"])
    first = next((q.event.ts for q in m.enqueues if q.seq >= m.window_start), None)
    out: dict[str, Any] = {
        "trace": trace, "format": stats.format if stats else None, "lines": stats.lines if stats else None,
        "bad_lines": stats.bad_lines if stats else 0,
        "warnings": [str(w) for w in stats.warnings] if stats else [],
        "csd_enqueues_in_trace": len(m.enqueues),
        "window_from_line": next((q.lineno for q in m.enqueues if q.seq >= m.window_start), None),
        "window_from_ts_ns": first,
        "flushes": sum(1 for f in m.flushes if m.window_start <= f.seq < NEVER),
        "flushes_in_irq": sum(1 for f in m.flushes if f.vector is not None and f.seq >= m.window_start),
        "runs_unmatched": m.runs_unmatched,
        "runs_unseen": m.runs_unseen,
        "csds_never_run": sum(1 for q in m.enqueues if q.flush is not None and q.flush.seq == NEVER),
        "idle_known_from": ", ".join(k for k in ("sched_switch", "cpu_idle", "guest_halt_poll_ns") if m.kind_counts[k])
        or "no idle events (polling inferred from idle-loop flushes)",
        "halt_poll_ns": m.halt_poll_override if m.halt_poll_override is not None else
        ("the trace's guest_halt_poll_ns" if m.halt_poll_seen else 0),
        "poll_clear_ns": poll_clear_ns,
        "decisions_known": decisions_known,
        "trace_kernel": trace_kernel.name,
        "real": real_counts(m),
        "kernels": [],
        "metrics": REPLAY_DOCS, "real_metrics": REAL_DOCS, "notes": NOTES,
    }
    for kernel in kernels:
        p = predict(m, kernel, poll_clear_ns)
        c = p.counts
        entry: dict[str, Any] = {"kernel": kernel.name, "features": sorted(kernel.features)}
        entry.update({k: c[k] for k in REPLAY_DOCS if k != "csds_per_interrupt"})
        entry["csds_per_interrupt"] = c["csds_run_in_irq"] / c["cal_interrupts"] if c["cal_interrupts"] else None
        entry["agreement"] = agreement(m, p) if decisions_known and kernel.features == trace_kernel.features \
            else None
        out["kernels"].append(entry)
    return out


def agreement(m: TraceModel, p: Prediction) -> dict[str, Any]:
    """Per-call decisions against the trace's own, with the first mismatches in context. A trace without
    sched_wake_idle_without_ipi events cannot tell a polling target from a busy queue: then only IPI or no
    IPI is compared."""
    polling_traced = m.kind_counts["sched_wake_idle_without_ipi"] > 0

    def same(real: str, pred: str) -> bool:
        return real == pred or (not polling_traced and "ipi" not in (real, pred))

    pairs: Counter[str] = Counter()
    shown: list[dict[str, Any]] = []
    compared = matching = 0
    for q in m.enqueues:
        if q.seq < m.window_start or q.real is None or q.real.decision is None or q.seq not in p.decisions:
            continue
        compared += 1
        real, pred = q.real.decision, p.decisions[q.seq]
        if same(real, pred):
            matching += 1
            continue
        pairs[f"{real} -> {pred}"] += 1
        if len(shown) < MAX_MISMATCHES_SHOWN:
            shown.append({"line": q.lineno, "target": q.target, "func": q.func, "real": real, "predicted": pred,
                          "was_empty": q.flush is not None and min(x.seq for x in q.flush.csds) == q.seq,
                          "context": [_describe(n, e, e is q.event) for n, e in (*q.before, (q.lineno, q.event),
                                                                                 *q.after)]})
    return {"compared": compared, "matching": matching, "polling_traced": polling_traced,
            "percent": 100.0 * matching / compared if compared else None,
            "mismatches": dict(pairs.most_common()), "first_mismatches": shown}


def _describe(lineno: int, ev: Event, mark: bool) -> str:
    fields = " ".join(f"{k}={v}" for k, v in ev.fields.items())
    return (f"{'>>' if mark else '  '} line {lineno}: {ev.ts / 1e9:.6f} [{ev.cpu:03d}] {ev.task}-{ev.pid} {ev.flags} "
            f"{ev.name}: {fields}")
