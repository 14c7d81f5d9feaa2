"""Each target CPU's call_single_queue as a trace shows it: which flush ran each queued call, and when.

This is the one queue model of the project: `replay` decides again from the flushes it finds, and
`analyze` measures each call's wait (queued -> run) from them. The rules (Linux 6.x, kernel/smp.c and
kernel/sched/core.c read for the facts):

- A flush detaches the target's whole queue and runs every call on it. A flush is a call-function
  interrupt (from its `call_function(_single)_entry` to its exit) or, outside one, a run of
  `csd_function_entry` events with nothing else on that CPU in between (the idle loop's own flush, or a
  handler whose entry the trace missed, as when it starts inside one). A call queued after a flush's first
  run was queued after the detach: it belongs to the next flush.
- A queued call is matched to its run by its csd pointer on the target. A CSD is locked while queued
  (a task's wake entry likewise), so one pointer is queued at most once at a time: a pointer queued
  again before its run shows ran unseen (no wait is known for it; it is counted as `runs_unseen`).
  A run with no queued call is a call queued before the trace began (`runs_unmatched`).
- Remote wakeups (`sched_ttwu_pending`, since 5.8 on the same queue) run as one call for the whole batch,
  traced with the first wakeup's pointer: that run takes every other wakeup queued on the target before
  the flush's first run. A wakeup so taken that shows a run of its own in the target's next flush was
  queued after the detach: it moves to that run (a run of its own any later is a call queued untraced,
  since every flush takes the whole queue). Its wait is final once its pointer is queued again or runs,
  or the trace ends.

A wait is the time from `csd_queue_cpu` to the `csd_function_entry` that ran the call (for a batched
wakeup, the batch's `sched_ttwu_pending` entry).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ipilab.events import HANDLER_ENTRY, HANDLER_EXIT, Event, symbol_name

NULL_CSD = "0" * 16
TTWU_FUNC = "sched_ttwu_pending"
NEVER = 1 << 62  # the flush of calls still queued when the trace ends
UNSEEN = NEVER - 1  # the flush of a call whose run the trace does not show


class QueuedCall(Protocol):
    """What the queue model needs of a queued call (replay's Enqueue, the audit's Wait)."""

    seq: int
    target: int
    csd: str
    func: str
    flush: Flush | None
    run_ts: int | None

    @property
    def ts(self) -> int: ...


@dataclass(eq=False, slots=True)
class Flush:
    """One detach-and-run of a target's queue: an interrupt handler (`vector`) or the idle loop's flush."""

    target: int
    seq: int
    vector: int | None
    first_run_seq: int | None = None
    csds: list[QueuedCall] = field(default_factory=list)


class CallQueues:
    """Feed every event in trace order (`event`), each csd_queue_cpu's call also to `enqueue`, then `finish`.

    `on_flush(flush)` hears of each flush as it begins; `on_run(call)` of each call whose run (`call.run_ts`)
    is final. Only what is still open is kept: queued calls not yet run, the last call of each pointer, and
    wakeups whose batch may still change."""

    def __init__(self, on_flush: Callable[[Flush], None] | None = None,
                 on_run: Callable[[QueuedCall], None] | None = None) -> None:
        self.on_flush = on_flush
        self.on_run = on_run
        self.runs_unmatched: Counter[int] = Counter()  # per target CPU
        self.runs_unseen: Counter[int] = Counter()
        self.pending: defaultdict[int, list[QueuedCall]] = defaultdict(list)  # per target, queue order
        self._by_pointer: dict[str, QueuedCall] = {}  # the last call queued with each csd pointer
        self._batched: dict[str, QueuedCall] = {}  # wakeups taken as run in another wakeup's batch, by pointer
        self._last_irq: dict[int, tuple[int, int | None]] = {}  # per CPU: its last handler entry (seq, vector)
        self._cal_flush: dict[int, Flush] = {}
        self._idle_flush: dict[int, Flush] = {}
        # Per CPU: the last flush that ran a queued call, and the one before it.
        self._ran_last: dict[int, tuple[Flush | None, Flush]] = {}

    def _new_flush(self, fl: Flush) -> Flush:
        if self.on_flush is not None:
            self.on_flush(fl)
        return fl

    def _ran(self, q: QueuedCall) -> None:
        if self.on_run is not None:
            self.on_run(q)

    def event(self, seq: int, ev: Event) -> None:
        """Any event, in trace order (csd_queue_cpu's call goes to `enqueue` after this)."""
        name, cpu = ev.name, ev.cpu
        if name != "csd_function_entry" and name != "csd_function_exit":
            self._idle_flush.pop(cpu, None)
        if name == "csd_function_entry":
            self._run(seq, ev)
        elif name in HANDLER_ENTRY:
            fl = self._new_flush(Flush(cpu, seq, int(ev.fields["vector"])))  # type: ignore[arg-type]
            self._last_irq[cpu] = (seq, fl.vector)
            self._cal_flush[cpu] = fl
        elif name in HANDLER_EXIT:
            self._cal_flush.pop(cpu, None)

    def enqueue(self, q: QueuedCall) -> None:
        batched = self._batched.pop(q.csd, None)
        if batched is not None:
            self._ran(batched)  # its pointer is queued again: the batch it ran in stands
        old = self._by_pointer.pop(q.csd, None)
        if old is not None and old.flush is None:
            self.pending[old.target].remove(old)
            # An interrupt the target took after that enqueue, running nothing of it, was its IPI arriving
            # after an untraced flush: the run came without one, but the IPI was sent.
            irq_seq, vector = self._last_irq.get(old.target, (-1, None))
            old.flush = Flush(old.target, UNSEEN, vector if irq_seq > old.seq else None, csds=[old])
            self.runs_unseen[old.target] += 1
        self._by_pointer[q.csd] = q
        self.pending[q.target].append(q)

    def _run(self, seq: int, ev: Event) -> None:
        cpu, csd, func = ev.cpu, str(ev.fields["csd"]), symbol_name(str(ev.fields["func"]))
        if csd == NULL_CSD:  # a local run: nothing was queued
            return
        fl = self._cal_flush.get(cpu) or self._idle_flush.get(cpu)
        if fl is None:
            fl = self._idle_flush[cpu] = self._new_flush(Flush(cpu, seq, None))
        pending = self.pending[cpu]
        hit = next((i for i, q in enumerate(pending) if q.csd == csd), None)
        if fl.vector is None and fl.first_run_seq is not None and hit is not None and \
                pending[hit].seq > fl.first_run_seq:
            # Queued after this flush began running, so after it detached: the idle loop flushes again
            # (woken once more while it polls, it traces nothing in between).
            fl = self._idle_flush[cpu] = self._new_flush(Flush(cpu, seq, None))
        if fl.first_run_seq is None:
            fl.first_run_seq = seq
            self._ran_last[cpu] = (self._ran_last.get(cpu, (None, None))[1], fl)
        if hit is None:
            q = self._batched.pop(csd, None)
            if q is not None and q.target == cpu and q.flush is not None and q.flush is self._ran_last[cpu][0]:
                # A wakeup taken as batched with an earlier one runs on its own: it was queued after that
                # flush detached the queue.
                q.flush.csds.remove(q)
                self._take(q, fl, ev.ts)
                self._ran(q)
            else:
                if q is not None:
                    self._ran(q)
                self.runs_unmatched[cpu] += 1  # queued before the trace began
            return
        first = pending.pop(hit)
        self._take(first, fl, ev.ts)
        self._ran(first)
        if func == TTWU_FUNC:
            # One run for the whole batch of remote wakeups: the others queued before this flush went too.
            start = fl.first_run_seq
            rest = [q for q in pending if q.func == TTWU_FUNC and q.seq < start]
            if rest:
                self.pending[cpu] = [q for q in pending if not (q.func == TTWU_FUNC and q.seq < start)]
                for q in rest:
                    self._take(q, fl, ev.ts)
                    self._batched[q.csd] = q

    @staticmethod
    def _take(q: QueuedCall, fl: Flush, ts: int) -> None:
        q.flush = fl
        q.run_ts = ts
        fl.csds.append(q)

    def finish(self) -> None:
        """Calls never run are still queued at the end: one last batch per target, with no run."""
        for q in self._batched.values():
            self._ran(q)
        self._batched.clear()
        for target, pending in self.pending.items():
            if pending:
                fl = self._new_flush(Flush(target, NEVER, None))
                for q in pending:
                    q.flush = fl
                    fl.csds.append(q)
        self.pending.clear()
