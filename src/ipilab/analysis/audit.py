"""The IPI audit of a trace: every queued call, who sent it, whether it needed an IPI, how long it waited.

It reads events in order, once, keeping only what is still open (calls queued and not yet run, the
sending CPU's calls still awaiting their IPI decision), so memory does not grow with the trace.

How a queued call's IPI decision is read from the trace (Linux 6.x): a sending CPU traces
`csd_queue_cpu` for each target, then at most one send: `ipi_send_cpu` or `ipi_send_cpumask` for the
targets whose queue was empty, or `sched_wake_idle_without_ipi` for a polling idle target. So on each
CPU, the calls queued since its last send are decided by its next send: a target in the send got an
IPI; a target skipped by it (or when the CPU moves on without sending) was queued behind a call that
already had its IPI coming. Events inside interrupt handlers on the sending CPU do not interrupt this
(hardirq context is read from ftrace's flags). A context's calls are also decided once it queues the next
call: the single-target paths (SINGLE_CALLSITES) send right after their one enqueue, and a call already
waiting from another callsite or to the same target is another call whose send is past, so a later
send cannot be its.

How long each call waited (queued -> run) is found by the queue model of analysis/queues.py, the one the
replay decides with.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hdrh.histogram import HdrHistogram

from ipilab.analysis.auditrules import SINGLE_CALLSITES, TIME_DOCS, new_histogram, percentiles
from ipilab.analysis.fastaudit import fast_audit
from ipilab.analysis.queues import NULL_CSD, CallQueues, Flush
from ipilab.events import HANDLER_ENTRY, HANDLER_EXIT, Event, symbol_name
from ipilab.files import PublishOnExit, publish
from ipilab.trace.read import ReadStats, read_trace
from ipilab.trace.sidecar import Sidecar, read_sidecar, sidecar_for

RESCHEDULE_CALLBACK = "0x0"
IRQ_ENTRY = HANDLER_ENTRY | {"reschedule_entry"}
IRQ_EXIT = HANDLER_EXIT | {"reschedule_exit"}
GROUP_KEYS = ("callsite", "func", "sender", "target", "cpu")

# What each number of the audit counts; printed with the table and stored in the JSON.
AUDIT_DOCS: dict[str, str] = {
    "csd_enqueues": "remote calls queued on another CPU's call_single_queue (csd_queue_cpu)",
    "local_runs": "functions run on the calling CPU itself, with no queue and no IPI (csd=0)",
    "csd_ipis": "function-call IPIs sent, each CPU of an ipi_send_cpumask counted",
    "csd_no_ipi_queued": "queued calls that needed no IPI: the target's queue already waited for one",
    "csd_no_ipi_polling": "queued calls that needed no IPI: the target was polling idle",
    "csds_undecided": "queued calls whose sender's decision the trace does not show (trace ended, or it has no "
                      "ipi_send events)",
    "ipis_unmatched": "function-call IPIs with no queued call of that sender to that CPU in the trace",
    "reschedule_ipis": "reschedule IPIs (ipi_send_cpu with callback 0x0), apart from function calls",
    "cal_interrupts": "function-call interrupts taken (call_function(_single)_entry): the CAL row",
    "reschedule_interrupts": "reschedule interrupts taken: the RES row",
    "csds_run_in_irq": "queued calls run inside function-call interrupts",
    "csds_run_elsewhere": "queued calls run outside a function-call interrupt (the idle loop's own flush)",
    "csds_per_interrupt": "csds_run_in_irq / cal_interrupts",
    "tlb_flushes_received": "flush_tlb_func run for another CPU (the TLB row)",
    "runs_unseen": "queued calls whose run the trace does not show (their csd was queued again first): no wait",
    "runs_unmatched": "calls run whose queueing the trace does not show (queued before it began): no wait",
}
@dataclass(eq=False, slots=True)
class Queued:
    """One csd_queue_cpu: its IPI decision once the trace shows it, and (queues.py) the flush that ran it."""

    seq: int
    ts: int
    sender_cpu: int
    target: int
    task: str
    callsite: str
    func: str
    csd: str
    decision: str | None = None  # "ipi", "queued", "polling"
    flush: Flush | None = None
    run_ts: int | None = None


class Tally:
    """Counts of one group (a callsite, a function, a sender task, a target or sending CPU)."""

    __slots__ = ("enqueues", "ipis", "no_ipi_polling", "no_ipi_queued")

    def __init__(self) -> None:
        self.enqueues = self.ipis = self.no_ipi_queued = self.no_ipi_polling = 0

    def as_dict(self) -> dict[str, int]:
        return {"enqueues": self.enqueues, "ipis": self.ipis, "no_ipi_queued": self.no_ipi_queued,
                "no_ipi_polling": self.no_ipi_polling}


class Audit:
    """Feed it events in time order (`feed`), then read `result()`. `cpus` limits it to target CPUs."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.cpus = cpus
        self.counts: Counter[str] = Counter()
        self.groups: dict[str, defaultdict[str, Tally]] = {k: defaultdict(Tally) for k in GROUP_KEYS}
        self.per_cpu: defaultdict[int, Counter[str]] = defaultdict(Counter)
        self.top_senders: defaultdict[int, Counter[tuple[str, str]]] = defaultdict(Counter)
        self.latency: defaultdict[str, HdrHistogram] = defaultdict(new_histogram)
        self.duration: defaultdict[str, HdrHistogram] = defaultdict(new_histogram)
        # Undecided calls per sending context: (cpu, in an interrupt handler). A handler that queues and
        # sends between a task's queueing and its send must not decide the task's calls.
        self._waiting: dict[tuple[int, bool], list[Queued]] = defaultdict(list)
        self.queues = CallQueues(on_run=self._ran)  # which run ran each queued call: its wait
        self._seq = 0
        self._irq_depth: Counter[int] = Counter()  # per CPU: handlers open
        self._in_cal: Counter[int] = Counter()  # per CPU: function-call handlers open
        self._running: dict[int, list[tuple[str, str, int]]] = defaultdict(list)  # per CPU: functions entered
        self.saw_sends = False
        self.first_ts: int | None = None
        self.last_ts = 0

    def _wanted(self, target: int) -> bool:
        return self.cpus is None or target in self.cpus

    def _ran(self, q: Queued) -> None:  # type: ignore[override]
        if self._wanted(q.target) and q.run_ts is not None:
            self.latency[q.func].record_value(max(0, q.run_ts - q.ts))

    # --- decisions -------------------------------------------------------------------------------

    def _decide(self, q: Queued, decision: str) -> None:
        q.decision = decision
        if not self._wanted(q.target):
            return
        key = {"ipi": "ipis", "queued": "no_ipi_queued", "polling": "no_ipi_polling"}[decision]
        self.counts[{"ipi": "csd_ipis_matched", "queued": "csd_no_ipi_queued",
                     "polling": "csd_no_ipi_polling"}[decision]] += 1
        for group, name in self._group_names(q):
            setattr(self.groups[group][name], key, getattr(self.groups[group][name], key) + 1)
        if decision == "ipi":
            self.top_senders[q.target][(q.task, q.callsite)] += 0  # keep the sender listed
            self.per_cpu[q.target]["ipis_received"] += 1

    @staticmethod
    def _group_names(q: Queued) -> list[tuple[str, str]]:
        return [("callsite", q.callsite), ("func", q.func), ("sender", q.task), ("target", str(q.target)),
                ("cpu", str(q.sender_cpu))]

    def _close(self, ctx: tuple[int, bool]) -> None:
        """The sending context moved on: what is still undecided found its queue non-empty."""
        waiting = self._waiting.pop(ctx, None)
        if waiting:
            for q in waiting:
                if q.decision is None:
                    self._decide(q, "queued")

    def in_irq(self, ev: Event) -> bool:
        """Is the event in hardirq context? From ftrace's flags alone when the line has them (a trace that
        begins inside a handler, or before the exit tracepoint was enabled, would leave a handler depth
        wrong for good); otherwise from the handlers' entry and exit."""
        if ev.flags:
            return ev.flags[2:3] in ("h", "H")
        return self._irq_depth[ev.cpu] > 0

    # --- feeding -------------------------------------------------------------------------------------

    def feed(self, ev: Event) -> Queued | None:
        """Take the next event; for a csd_queue_cpu, return its record (its `decision` is filled in when the
        trace shows it)."""
        if self.first_ts is None:
            self.first_ts = ev.ts
        self.last_ts = ev.ts
        name, f, cpu = ev.name, ev.fields, ev.cpu
        seq = self._seq
        self._seq += 1
        self.queues.event(seq, ev)
        if name == "csd_queue_cpu":
            target = int(f["cpu"])  # type: ignore[arg-type]
            q = Queued(seq, ev.ts, cpu, target, ev.task, symbol_name(str(f["callsite"])), symbol_name(str(f["func"])),
                       str(f["csd"]))
            self.queues.enqueue(q)
            ctx = (cpu, self.in_irq(ev))
            if any(w.callsite in SINGLE_CALLSITES or w.callsite != q.callsite or w.target == target
                   for w in self._waiting.get(ctx, ())):
                self._close(ctx)
            self._waiting[ctx].append(q)
            if self._wanted(target):
                self.counts["csd_enqueues"] += 1
                for group, gname in self._group_names(q):
                    self.groups[group][gname].enqueues += 1
                self.top_senders[target][(q.task, q.callsite)] += 1
            return q
        if name == "ipi_send_cpu" or name == "ipi_send_cpumask":
            targets = (int(f["cpu"]),) if name == "ipi_send_cpu" else f["cpumask"]  # type: ignore[arg-type]
            if str(f["callback"]) == RESCHEDULE_CALLBACK:
                self.counts["reschedule_ipis"] += sum(1 for t in targets if self._wanted(t))  # type: ignore[union-attr]
                return
            self.saw_sends = True
            ctx = (cpu, self.in_irq(ev))
            waiting = self._waiting.get(ctx, [])
            for t in targets:  # type: ignore[union-attr]
                if self._wanted(t):
                    self.counts["csd_ipis"] += 1
                match = next((q for q in waiting if q.target == t and q.decision is None), None)
                if match is None:
                    if self._wanted(t):
                        self.counts["ipis_unmatched"] += 1
                else:
                    self._decide(match, "ipi")
            self._close(ctx)
            return
        if name == "sched_wake_idle_without_ipi":
            target = int(f["cpu"])  # type: ignore[arg-type]
            ctx = (cpu, self.in_irq(ev))
            waiting = self._waiting.get(ctx, [])
            match = next((q for q in waiting if q.target == target and q.decision is None), None)
            if match is not None:  # otherwise a plain wakeup of a polling CPU, no call involved
                self.saw_sends = True
                self._decide(match, "polling")
                self._close(ctx)
            return
        if name in IRQ_ENTRY:
            self._irq_depth[cpu] += 1
            if name in HANDLER_ENTRY:
                self._in_cal[cpu] += 1
                if self._wanted(cpu):
                    self.counts["cal_interrupts"] += 1
                    self.per_cpu[cpu]["cal_interrupts"] += 1
            elif self._wanted(cpu):
                self.counts["reschedule_interrupts"] += 1
                self.per_cpu[cpu]["reschedule_interrupts"] += 1
            return
        if name in IRQ_EXIT:
            self._irq_depth[cpu] = max(0, self._irq_depth[cpu] - 1)
            if name in HANDLER_EXIT:
                self._in_cal[cpu] = max(0, self._in_cal[cpu] - 1)
            return
        if name == "csd_function_entry":
            func, csd = symbol_name(str(f["func"])), str(f["csd"])
            self._running[cpu].append((func, csd, ev.ts))
            if csd == NULL_CSD:
                if self._wanted(cpu):
                    self.counts["local_runs"] += 1
                if not self.in_irq(ev):
                    self._close((cpu, False))
                return
            if not self._wanted(cpu):
                return
            where = "csds_run_in_irq" if self._in_cal[cpu] else "csds_run_elsewhere"
            self.counts[where] += 1
            self.per_cpu[cpu][where] += 1
            if func == "flush_tlb_func":
                self.counts["tlb_flushes_received"] += 1
                self.per_cpu[cpu]["tlb_flushes_received"] += 1
            return
        if name == "csd_function_exit":
            stack = self._running.get(cpu)
            if stack:
                func, csd, t0 = stack.pop()
                if csd != NULL_CSD and self._wanted(cpu):
                    self.duration[func].record_value(max(0, ev.ts - t0))
            return
        if (name == "cpu_idle" or name == "sched_switch") and not self.in_irq(ev):
            # The task stops or the CPU idles: its calls got no send. (sched_switch reaches the audit only
            # from readers that ask for it, such as the replay's.)
            self._close((cpu, False))
        return None

    # --- the result ------------------------------------------------------------------------------------

    def finish(self) -> None:
        """The trace has ended: the calls still queued get their last batch, with no run."""
        self.queues.finish()

    def result(self, top: int = 5) -> dict[str, Any]:
        """What the events so far show, the calls still awaiting their sender's decision as undecided. It
        changes nothing: feeding may go on (`ipilab top` reads it every second); call finish() first once
        the trace has ended."""
        c = Counter(self.counts)
        c["runs_unmatched"] = sum(n for cpu, n in self.queues.runs_unmatched.items() if self._wanted(cpu))
        c["runs_unseen"] = sum(n for cpu, n in self.queues.runs_unseen.items() if self._wanted(cpu))
        c["csds_undecided"] += sum(1 for waiting in self._waiting.values() for q in waiting
                                   if q.decision is None and self._wanted(q.target))
        by = {g: {name: t.as_dict() for name, t in sorted(tallies.items(), key=lambda kv: -kv[1].enqueues)}
              for g, tallies in self.groups.items()}
        if not self.saw_sends:
            # Without any send event the decisions are unknown, not "queued behind".
            c["csds_undecided"] += c["csd_no_ipi_queued"]
            c["csd_no_ipi_queued"] = 0
            for tallies in by.values():
                for t in tallies.values():
                    t["no_ipi_queued"] = 0
        keys = ("csd_enqueues", "local_runs", "csd_ipis", "csd_no_ipi_queued", "csd_no_ipi_polling",
                "csds_undecided", "ipis_unmatched", "reschedule_ipis", "cal_interrupts", "reschedule_interrupts",
                "csds_run_in_irq", "csds_run_elsewhere", "tlb_flushes_received", "runs_unseen", "runs_unmatched")
        out: dict[str, Any] = {k: c[k] for k in keys}
        out["csds_per_interrupt"] = c["csds_run_in_irq"] / c["cal_interrupts"] if c["cal_interrupts"] else None
        out["decisions_known"] = self.saw_sends
        out["duration_ns"] = (self.last_ts - self.first_ts) if self.first_ts is not None else 0
        out["by"] = by
        out["by_callsite"] = out["by"]["callsite"]
        out["per_cpu"] = {str(cpu): dict(sorted(v.items())) for cpu, v in sorted(self.per_cpu.items())}
        out["top_senders"] = {
            str(target): [{"task": task, "callsite": site, "enqueues": n} for (task, site), n in cnt.most_common(top)]
            for target, cnt in sorted(self.top_senders.items())}
        out["latency_ns"] = {func: percentiles(h) for func, h in sorted(self.latency.items())}
        out["function_ns"] = {func: percentiles(h) for func, h in sorted(self.duration.items())}
        out["times"] = TIME_DOCS
        out["cpus"] = sorted(self.cpus) if self.cpus is not None else None
        return out


# --- a whole trace ----------------------------------------------------------------------------------------

def audit_trace(path: Path, *, cpus: set[int] | None = None, parquet: Path | None = None,
                progress: Callable[[int, int], None] | None = None, top: int = 5,
                reference: bool = False) -> dict[str, Any]:
    """Read one trace file (any supported format), audit it, and reconcile with its sidecar if any.

    ftrace text goes through the compiled parser and audit (fastaudit.py) unless `reference` or
    `parquet` asks for the Python ones, which read every format. `progress(bytes_read, bytes_total)` is
    called every so often; `parquet` also writes every event read as a Parquet table (atomically)."""
    if not reference and parquet is None:
        stats = ReadStats()
        result = fast_audit(path, cpus, stats, progress, top)
        if result is not None:
            return _finish(path, stats, result, None)
    stats = ReadStats()
    audit = Audit(cpus)
    total = path.stat().st_size if path.exists() else 0
    with ParquetEvents(parquet) if parquet is not None else nullcontext() as writer:
        for i, ev in enumerate(read_trace(path, stats)):
            audit.feed(ev)
            if writer is not None:
                writer.add(ev)
            if progress is not None and i % 65536 == 0:
                progress(stats.bytes_read(), total)
    if progress is not None:
        progress(total, total)
    audit.finish()
    return _finish(path, stats, audit.result(top), parquet)


def _finish(path: Path, stats: ReadStats, result: dict[str, Any], parquet: Path | None) -> dict[str, Any]:
    out = {"trace": str(path), "format": stats.format, "lines": stats.lines, "events_read": stats.events,
           "timestamp_resolution_ns": stats.resolution_ns(),
           "other_events": dict(sorted(stats.other_events.items())), "bad_lines": stats.bad_lines,
           "warnings": [str(w) for w in stats.warnings], **result}
    side = read_sidecar(sidecar_for(path))
    out["reconciliation"] = reconcile(out, side) if side is not None else None
    out["parquet"] = str(parquet) if parquet is not None else None
    return out


# Which trace count each /proc/interrupts row should match, per CPU.
ROW_COUNTS = {"CAL": "cal_interrupts", "RES": "reschedule_interrupts", "TLB": "tlb_flushes_received"}


def reconcile(audit: dict[str, Any], side: Sidecar) -> dict[str, Any]:
    """The trace's per-CPU counts against /proc/interrupts deltas of the same capture."""
    rows = {}
    chosen = audit["cpus"]  # with --cpus, only those CPUs' rows on both sides
    for row, deltas in side.deltas.items():
        key = ROW_COUNTS[row]
        cpus = [c for c in range(len(deltas)) if chosen is None or c in chosen]
        traced = [audit["per_cpu"].get(str(cpu), {}).get(key, 0) for cpu in cpus]
        proc = [deltas[cpu] for cpu in cpus]
        rows[row] = {"proc_interrupts": sum(proc), "trace": sum(traced), "cpus": cpus, "per_cpu_proc": proc,
                     "per_cpu_trace": traced, "trace_counts": key}
    return {"sidecar": str(side.path), "lost_events": side.lost, "rows": rows,
            "why_they_differ": "the /proc/interrupts snapshots bracket the capture: interrupts between a snapshot "
                               "and the start or end of tracing count there and not in the trace; a trace that "
                               "began before the first snapshot counts more than /proc (the QEMU harness's traces "
                               "begin while it switched tracepoints on, each switch interrupting every other CPU); "
                               "lost events (ring-buffer overruns) are missing from the trace; the TLB row also "
                               "counts remote flushes done by paths other than flush_tlb_func"}


class ParquetEvents(PublishOnExit):
    """Events streamed into a Parquet table in row groups; the file appears only when closed."""

    BATCH = 100_000
    SCHEMA = pa.schema([
        ("ts_ns", pa.int64()), ("cpu", pa.int32()), ("event", pa.string()), ("task", pa.string()),
        ("pid", pa.int32()), ("flags", pa.string()), ("target_cpu", pa.int32()),
        ("cpumask", pa.list_(pa.int32())), ("callsite", pa.string()), ("func", pa.string()),
        ("csd", pa.string()), ("callback", pa.string()), ("vector", pa.int32()), ("state", pa.int64()),
    ])

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent or ".")
        os.close(fd)
        self._tmp = Path(tmp)
        self._writer = pq.ParquetWriter(self._tmp, self.SCHEMA, compression="zstd")
        self._rows: list[Event] = []

    def add(self, ev: Event) -> None:
        self._rows.append(ev)
        if len(self._rows) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        rows, self._rows = self._rows, []
        f = [ev.fields for ev in rows]
        cols = {
            "ts_ns": [ev.ts for ev in rows], "cpu": [ev.cpu for ev in rows], "event": [ev.name for ev in rows],
            "task": [ev.task for ev in rows], "pid": [ev.pid for ev in rows], "flags": [ev.flags for ev in rows],
            "target_cpu": [x.get("cpu") for x in f], "cpumask": [list(x["cpumask"]) if "cpumask" in x else None
                                                                for x in f],
            "callsite": [x.get("callsite") for x in f], "func": [x.get("func") for x in f],
            "csd": [x.get("csd") for x in f], "callback": [x.get("callback") for x in f],
            "vector": [x.get("vector") for x in f], "state": [x.get("state") for x in f],
        }
        self._writer.write_table(pa.table(cols, schema=self.SCHEMA))

    def close(self) -> None:
        if self._rows:
            self._flush()
        self._writer.close()
        publish(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)
