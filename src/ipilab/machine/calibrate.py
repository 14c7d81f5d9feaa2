"""`ipilab calibrate`: a machine file whose costs are distributions measured from traces of the machine.

One pass over each trace (trace/read.py, every event line) collects samples; each cost is then the
empirical distribution of its samples (101 quantiles, p0 to p100), with its source: the traces, the
estimator, n and p50/p90/p99. What the traces cannot show comes from the --base preset, and says so.

The estimators (T = the traces' timestamps, 1 us apart in ftrace text: every sample is quantised to
whole microseconds, so a sub-microsecond cost shows as a mix of 0 and 1000 ns whose mean, not median,
is the cost; the sources quote the mean):

- delivery: an `ipi_send_cpu`/`ipi_send_cpumask` is paired with the target's next
  `call_function(_single)_entry` (several sends before one entry: the last one, as the vector was still
  pending). The target is *busy* when its last event before the send was a task's (pid != 0) and it was
  not halted; *halted* when its last `cpu_idle` was an idle entry; anything else (the idle task awake or
  polling) is left out.
- icr_write: `ipi_send_cpu` (or a one-target `ipi_send_cpumask`; any mask under KVM PV IPIs, one
  hypercall) to the sender's own next event when that is the local run of the function
  (`csd_function_entry` with csd=0), its next step after the send.
- irq_entry, irq_exit: the handler's time between its entry and exit tracepoints outside the CSD functions
  it ran, halved for each: the trace shows neither the entry code before the first tracepoint nor the
  exit code after the last, so their split (even) is an assumption and this time is their stand-in.
- ipi_latency_same_socket / _cross_socket: a busy delivery less the sender's own icr_write (this send's
  when measured, else the sample's mean; under x2APIC physical mode the k-th target of a mask waits for
  k writes) and less irq_entry's mean, clipped at 0. (Means, as the mean of quantised samples is unbiased.)
- idle_exit: a halted delivery, less the same icr_write and irq_entry, less the median busy latency of
  its CPU-pair class, clipped at 0: the extra a halted target takes (the median is subtracted rather than
  a distribution, so idle_exit's spread also carries the busy latency's).
- tlb_flush_full, invlpg: `flush_tlb_func` run on another CPU's behalf (csd != 0: entry -> exit). The trace
  does not say whether a flush was full or a range; reclaim's batched flushes are full and madvise's are
  ranges, so the kind is taken per trace from the workload its .meta names (usemem: full; tlbstorm or
  madvise: range) or from --tlb-flush. invlpg = a range flush / --pages-per-range.
- poll_notice: `sched_wake_idle_without_ipi` -> the target's next `csd_function_entry` outside an
  interrupt (the idle loop's own flush).
- tick: `local_timer_entry` -> `local_timer_exit`; background.tick_hz: timer interrupts taken while a CPU
  was not halted per second not halted, rounded to 100, 250, 300 or 1000 Hz when within 10%.
- page_fault: `page_fault_user` -> the same task's next `page_fault_user` on that CPU with no event
  between (it includes the user's own write of the page).
- missing time: on a CPU that is not idle, a gap between consecutive events longer than GAP_FACTOR x
  the median gap is time the CPU was away (a preempted vCPU). When the traces show user page faults (so
  a workload's own user time between faults is not taken for missing time), it becomes
  background.vcpu_preemption (only when asked: --vcpu-preemption on, or auto; the delivery latencies
  measured here already hold the targets' absences, so modelling both counts them twice, and the fidelity
  benchmark's predictions get worse): vcpu_preempt is those gaps' distribution, and vcpu_run exponential (the
  descheduling taken as a Poisson process) with the mean busy time between two of them. Without page
  faults it is an upper bound (untraced user code counts too), reported and written as a comment only.
  Either way a CPU spinning on a call to a descheduled CPU (csd_lock, csd_lock_wait) shows the same
  silence: the trace cannot tell that wait from the CPU's own absence, so on workloads of synchronous
  calls the stretches come out more frequent and shorter than the host's.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from ipilab.analysis.audit import NULL_CSD, RESCHEDULE_CALLBACK
from ipilab.events import CPU_IDLE_EXIT, HANDLER_ENTRY, HANDLER_EXIT, Event, symbol_name
from ipilab.files import published
from ipilab.machine.costs import CostId
from ipilab.machine.model import MAX_COST_NS, Background, Cost, Machine
from ipilab.trace.read import ReadStats, read_trace
from ipilab.trace.sidecar import MachineFacts, read_machine_facts, sidecar_for

QUANTILES = 101  # p0, p1, ..., p100
MIN_SAMPLES = 20  # fewer and the cost comes from --base
GAP_FACTOR = 20
HELD_NS = 2000  # an interrupt held off by a disabled section is taken within this of its end (2 ftrace ticks)
TIMESTAMP_RESOLUTION_NS = 1000  # ftrace text prints microseconds
CONFIG_HZ = (100, 250, 300, 1000)
FLUSH_KINDS = ("full", "range")
# What the .meta's command says about the flushes a trace's flush_tlb_func runs did.
# scripts/realkernel's `reclaim` writes dirty anonymous pages, as usemem does: reclaim's batched flushes.
FLUSH_KIND_BY_COMMAND = (("usemem", "full"), ("swap-w-seq-mt", "full"), ("reclaim", "full"), ("tlbstorm", "range"),
                         ("madvise", "range"))
PAIR_CLASSES = ("same_socket", "cross_socket")
# Each estimator in a few words, for the table (the machine file has it in full).
SHORT = {
    "icr_write": "ipi_send -> the sender's own local run",
    "ipi_latency_same_socket": "ipi_send -> handler entry, busy target, less icr_write and irq_entry",
    "ipi_latency_cross_socket": "ipi_send -> handler entry, busy target, less icr_write and irq_entry",
    "irq_entry": "handler time outside its functions, halved",
    "irq_exit": "handler time outside its functions, halved",
    "idle_exit": "delivery to a halted target less the busy one (median)",
    "tlb_flush_full": "flush_tlb_func for another CPU, full flushes",
    "invlpg": "flush_tlb_func for another CPU, range flushes, per page",
    "poll_notice": "sched_wake_idle_without_ipi -> the idle loop's flush",
    "page_fault": "page_fault_user -> the task's next one",
    "tick": "local_timer_entry -> local_timer_exit",
}


class CalibrateError(ValueError):
    """Calibration cannot go on: one line saying why."""


# --- one pass over a trace ------------------------------------------------------------------------------

@dataclass(eq=False, slots=True)
class Send:
    ts: int
    sender: int
    targets: tuple[int, ...]
    icr_ns: int | None = None  # the sender's time for the whole send, when its next step shows it


@dataclass(slots=True)
class Delivery:
    send: Send
    target: int
    index: int  # the target's place in the send's mask
    ns: int  # send -> the target's handler entry
    state: str  # "busy" or "halted"
    pair: str  # a PAIR_CLASSES member


@dataclass
class TraceSamples:
    """What one trace shows, as raw samples (ns)."""

    path: Path
    info: MachineFacts
    ncpus: int = 0
    duration_ns: int = 0
    events: int = 0
    sends: list[Send] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    busy_irqs_off: list[int] = field(default_factory=list)  # deliveries to a busy target with interrupts off
    handler_overhead: list[int] = field(default_factory=list)
    flush_remote: list[int] = field(default_factory=list)
    poll_notice: list[int] = field(default_factory=list)
    tick: list[int] = field(default_factory=list)
    ticks_awake: int = 0
    awake_ns: int = 0
    page_fault: list[int] = field(default_factory=list)
    halt_poll_ns: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)  # between consecutive events of a CPU that was not idle
    seen: set[str] = field(default_factory=set)  # event names present
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # why samples were left out


def _pair_class(info: MachineFacts, a: int, b: int) -> str:
    places = info.by_cpu
    pa, pb = places.get(a), places.get(b)
    if pa is None or pb is None or pa.package == pb.package:
        return "same_socket"
    return "cross_socket"


def sample_trace(path: Path, stats: ReadStats | None = None,
                 progress: Callable[[int, int], None] | None = None) -> TraceSamples:
    """Read `path` once and collect every estimator's samples (see the module doc); `progress(bytes_read,
    bytes_total)` is called every so often."""
    info = read_machine_facts(sidecar_for(path)) or MachineFacts()
    out = TraceSamples(path, info)
    stats = stats if stats is not None else ReadStats()
    pid: dict[int, int] = {}
    halted: dict[int, bool] = {}
    halted_since: dict[int, int] = {}
    halted_ns: dict[int, int] = defaultdict(int)
    # target -> (send, index, state, the send's event number): sends awaiting the target's handler
    pending: dict[int, list[tuple[Send, int, str, int]]] = defaultdict(list)
    icr_wait: dict[int, Send] = {}  # sender -> its last send, until its next event
    handler: dict[int, list[int]] = {}  # cpu -> [entry ts, ns in functions]
    running: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
    woken_polling: dict[int, int] = {}  # target -> ts of sched_wake_idle_without_ipi
    timer: dict[int, int] = {}
    last: dict[int, Event] = {}
    last_seq: dict[int, int] = {}  # the number of each CPU's last event
    first_ts = last_ts = None
    max_cpu = -1
    total = path.stat().st_size if path.exists() else 0
    for ev in read_trace(path, stats, calibrate_events=True):
        cpu, name, f, t = ev.cpu, ev.name, ev.fields, ev.ts
        out.events += 1
        if progress is not None and out.events % 65536 == 0:
            progress(stats.bytes_read(), total)
        out.seen.add(name)
        first_ts = t if first_ts is None else first_ts
        last_ts = t
        max_cpu = max(max_cpu, cpu)
        prev = last.get(cpu)
        if prev is not None and not halted.get(cpu, False) and prev.pid != 0:
            out.gaps.append(t - prev.ts)

        send = icr_wait.pop(cpu, None)
        if send is not None and name == "csd_function_entry" and f["csd"] == NULL_CSD:
            send.icr_ns = t - send.ts

        if name == "sched_switch":
            pid[cpu] = int(f["next_pid"])  # type: ignore[arg-type]
        else:
            pid[cpu] = ev.pid

        if name in ("ipi_send_cpu", "ipi_send_cpumask"):
            if str(f["callback"]) != RESCHEDULE_CALLBACK:
                targets = (int(f["cpu"]),) if name == "ipi_send_cpu" else tuple(f["cpumask"])  # type: ignore[arg-type]
                s = Send(t, cpu, targets)
                out.sends.append(s)
                icr_wait[cpu] = s
                for i, target in enumerate(targets):
                    max_cpu = max(max_cpu, target)
                    if halted.get(target, False):
                        state = "halted"
                    elif pid.get(target, 0) != 0:
                        state = "busy"
                    else:
                        state = "idle awake"
                    pending[target].append((s, i, state, out.events))
        elif name in HANDLER_ENTRY:
            sends = pending.pop(cpu, [])
            if sends:
                s, i, state, seq = sends[-1]
                out.dropped["sends merged into a later one's interrupt"] += len(sends) - 1
                if state == "busy" and _held_off(last.get(cpu), last_seq.get(cpu, -1), seq, t):
                    out.busy_irqs_off.append(t - s.ts)
                elif state in ("busy", "halted"):
                    out.deliveries.append(Delivery(s, cpu, i, t - s.ts, state, _pair_class(info, s.sender, cpu)))
                else:
                    out.dropped["deliveries to an idle CPU that was awake (not halted)"] += 1
            handler[cpu] = [t, 0]
        elif name in HANDLER_EXIT:
            h = handler.pop(cpu, None)
            if h is not None:
                out.handler_overhead.append(max(0, t - h[0] - h[1]))
        elif name == "csd_function_entry":
            csd = str(f["csd"])
            running[cpu].append((symbol_name(str(f["func"])), csd, t))
            if csd != NULL_CSD and not _in_hardirq(ev) and cpu in woken_polling:
                out.poll_notice.append(t - woken_polling.pop(cpu))
        elif name == "csd_function_exit":
            stack = running.get(cpu)
            if stack:
                func, csd, t0 = stack.pop()
                if cpu in handler:
                    handler[cpu][1] += t - t0
                if func == "flush_tlb_func" and csd != NULL_CSD:
                    out.flush_remote.append(t - t0)
        elif name == "sched_wake_idle_without_ipi":
            woken_polling[int(f["cpu"])] = t  # type: ignore[arg-type]
        elif name == "cpu_idle":
            icpu = int(f["cpu_id"])  # type: ignore[arg-type]
            if int(f["state"]) == CPU_IDLE_EXIT:  # type: ignore[arg-type]
                if halted.get(icpu):
                    halted_ns[icpu] += t - halted_since.pop(icpu, t)
                halted[icpu] = False
            else:
                if not halted.get(icpu):
                    halted_since[icpu] = t
                halted[icpu] = True
        elif name == "guest_halt_poll_ns":
            out.halt_poll_ns.append(int(f["halt_poll_ns"]))  # type: ignore[arg-type]
        elif name == "local_timer_entry":
            timer[cpu] = t
            if not halted.get(cpu, False):
                out.ticks_awake += 1
        elif name == "local_timer_exit":
            t0 = timer.pop(cpu, None)
            if t0 is not None:
                out.tick.append(t - t0)
        elif name == "page_fault_user" and prev is not None and prev.name == "page_fault_user" \
                and prev.pid == ev.pid:
            out.page_fault.append(t - prev.ts)
        last[cpu] = ev
        last_seq[cpu] = out.events
    if stats.events == 0 or first_ts is None:
        raise CalibrateError(f"{path}: no events of the tracepoints ipilab reads")
    out.ncpus = max(max_cpu + 1, len(info.cpus))
    out.duration_ns = last_ts - first_ts
    for cpu, since in halted_since.items():
        halted_ns[cpu] += last_ts - since
    out.awake_ns = out.ncpus * out.duration_ns - sum(halted_ns.values())
    return out


def _held_off(before: Event | None, before_seq: int, send_seq: int, entry_ts: int) -> bool:
    """Whether a busy target may have held the IPI off with interrupts disabled, a wait the simulator models
    itself (so such a delivery does not measure the latency): its last event before the handler entry came
    after the send, was traced with interrupts off, and the entry followed within HELD_NS (the interrupt
    came as soon as they were turned on again); or that event was its own send, whose ICR write runs with
    interrupts off for a time the trace does not show. Only the event right before the entry counts, so
    that long deliveries, which more often span some interrupts-off section, are not the ones left out."""
    if before is None:
        return False
    if before.name in ("ipi_send_cpu", "ipi_send_cpumask"):
        return True
    return before_seq > send_seq and before.flags[:1] == "d" and entry_ts - before.ts <= HELD_NS


def _in_hardirq(ev: Event) -> bool:
    return ev.flags[2:3] in ("h", "H")


# --- from samples to costs --------------------------------------------------------------------------------

@dataclass
class Measured:
    """A sample of one cost and where it came from."""

    key: str
    values: np.ndarray
    estimator: str
    traces: list[str]

    def cost(self, extra: str = "") -> Cost:
        v = np.clip(self.values, 0, MAX_COST_NS)
        q = np.rint(np.quantile(v, np.linspace(0, 1, QUANTILES))).astype(int).tolist()
        p50, p90, p99 = (round(float(x)) for x in np.percentile(v, (50, 90, 99)))
        mean = float(v.mean())
        source = (f"measured: {self.estimator}; n={len(v):,}, p50 {p50} ns, p90 {p90} ns, p99 {p99} ns, "
                  f"mean {mean:.0f} ns ({', '.join(self.traces)}){extra}")
        return Cost(dist="empirical", quantiles=q, n=len(v), estimator=self.estimator, trace=", ".join(self.traces),
                    p50=p50, p90=p90, p99=p99, source=source)


@dataclass
class Calibration:
    machine: Machine
    measured: dict[str, Cost]
    from_base: dict[str, str]  # cost -> why it is not measured
    notes: list[str]  # one line per cost a trace could not give, and other facts worth a line
    measurements: dict[str, dict[str, Any]]  # raw samples' summaries (delivery times and the like)
    missing_time: dict[str, Any] | None
    header: list[str]  # comment lines for the file

    def toml(self) -> str:
        data = self.machine.model_dump(exclude_none=True)
        for cost in data["costs"].values():
            if cost.get("dist") == "empirical":
                cost.pop("ns", None)  # the median, filled in again on load
            if cost.get("dist") == "constant":
                cost.pop("dist")
        return "".join(f"# {line}\n" for line in self.header) + "\n" + tomli_w.dumps(data)

    def write(self, path: Path) -> None:
        with published(path) as tmp:
            tmp.write_text(self.toml())

    def rows(self) -> list[dict[str, Any]]:
        """Every cost of the machine: measured (p50/p90/p99, n, estimator) or from base (why)."""
        out = []
        for key, cost in self.machine.costs.items():
            if key in self.measured:
                out.append({"cost": key, "measured": True, "p50": cost.p50, "p90": cost.p90, "p99": cost.p99,
                            "n": cost.n, "estimator": cost.estimator, "short": SHORT.get(key, cost.estimator),
                            "trace": cost.trace})
            elif key == "ipi_latency_cross_socket" and self.machine.topology.sockets == 1:
                out.append({"cost": key, "measured": False, "ns": cost.ns, "describe": "one socket: as "
                            "ipi_latency_same_socket", "why": "one socket", "source": cost.source})
            else:
                out.append({"cost": key, "measured": False, "ns": cost.ns, "describe": "from base: " + cost.describe(),
                            "why": self.from_base.get(key, ""), "source": cost.source})
        return out

    def as_json(self) -> dict[str, Any]:
        t = self.machine.topology
        return {"machine": self.machine.name, "ncpus": self.machine.ncpus, "topology": t.model_dump(),
                "background": self.machine.background.model_dump(), "costs": self.rows(), "notes": self.notes,
                "measurements": self.measurements, "missing_time": self.missing_time,
                "units": "ns; samples are differences of ftrace timestamps (1 us resolution)"}


def _summary(values: list[int] | np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0}
    p50, p90, p99 = np.percentile(v, (50, 90, 99))
    return {"n": len(v), "mean": round(float(v.mean()), 1), "p50": round(float(p50)), "p90": round(float(p90)),
            "p99": round(float(p99))}


def _flush_kind(s: TraceSamples, override: str | None) -> str | None:
    if override is not None:
        return override
    command = (s.info.command or "").lower()
    return next((kind for word, kind in FLUSH_KIND_BY_COMMAND if word in command), None)


def _is_kvm(info: MachineFacts) -> bool | None:
    """True if the capture says it ran under KVM, False if it says otherwise, None if it says nothing."""
    said = " ".join(x for x in (info.machine, info.cmdline, info.clocksource, info.cpuidle_driver) if x)
    if not said:
        return None
    return bool(re.search(r"\bkvm\b|kvm-clock|kvmclock|haltpoll", said, re.I)) and "tcg" not in said.lower()


def _tick_hz(rate: float) -> int:
    nearest = min(CONFIG_HZ, key=lambda hz: abs(hz - rate))
    return nearest if abs(nearest - rate) <= 0.1 * nearest else round(rate)


def calibrate(traces: list[Path], base: Machine, *, name: str, apic_mode: str | None = None,
              pages_per_range: int = 16, tlb_flush: str | None = None,
              samples: list[TraceSamples] | None = None, vcpu_preemption: str = "off") -> Calibration:
    """A machine from `traces` (see the module doc); `base` gives what they cannot show. `samples`: already
    collected (sample_trace) for these traces."""
    samples = samples if samples is not None else [sample_trace(p) for p in traces]
    names = [s.path.name for s in samples]
    notes: list[str] = []
    measured: dict[str, Cost] = {}
    from_base: dict[str, str] = {}
    measurements: dict[str, dict[str, Any]] = {}
    means: dict[str, np.ndarray] = {}

    # Topology: the CPU count from the traces, the rest from the first .meta that has CPU lines.
    ncpus = max(s.ncpus for s in samples)
    info = next((s.info for s in samples if s.info.cpus), samples[0].info)
    if len({s.ncpus for s in samples}) > 1:
        notes.append(f"the traces show different CPU counts ({', '.join(str(s.ncpus) for s in samples)}): "
                     f"using {ncpus}")
    topo, topo_note = _topology(info, ncpus, base)
    if topo_note:
        notes.append(topo_note)
    kvm = _is_kvm(info)
    if apic_mode is None:
        if kvm is None:
            apic_mode = base.topology.apic_mode
            notes.append(f"apic_mode: the .meta says nothing of the hypervisor: {apic_mode} from base preset "
                         f"{base.name}")
        else:
            apic_mode = "kvm_pv" if kvm else "x2apic_phys"
    topo["apic_mode"] = apic_mode
    polls = [v for s in samples for v in s.halt_poll_ns]
    topo["halt_poll_ns"] = int(np.median(polls)) if polls else 0

    def measure(key: str, values: list[int] | np.ndarray, estimator: str, used: list[str], missing: str,
                extra: str = "") -> Measured | None:
        if len(values) >= MIN_SAMPLES:
            m = Measured(key, np.asarray(values, float), estimator, used)
            measured[key] = m.cost(extra)
            means[key] = m.values
            return m
        why = f"{missing}" if not len(values) else f"only {len(values)} samples ({missing})"
        from_base[key] = why
        notes.append(f"{key}: {why}" + (": the tick is left off" if key == "tick" else
                                        f": from base preset {base.name}"))
        return None

    def typical(key: str) -> float:
        """What to subtract for a cost a sample contains but does not show: its measured mean (the mean of
        microsecond-quantised samples is unbiased, their median is not), else the base's value."""
        return float(np.mean(means[key])) if key in means else float(base.costs[key].ns)  # type: ignore[arg-type]

    # icr_write: the sends whose sender's next step shows their end.
    one_write = apic_mode == "kvm_pv"
    icr = [s.icr_ns for t in samples for s in t.sends if s.icr_ns is not None and (one_write or len(s.targets) == 1)]
    measure("icr_write", icr, "ipi_send_cpu/ipi_send_cpumask -> the sender's own next csd_function_entry (csd=0, "
            "the local run right after the send)" + ("" if one_write else "; one-target sends only (x2APIC "
                                                       "writes once per target)"),
            names, "no send followed at once by the sender's local run of the function")
    icr_typical = typical("icr_write")

    # irq_entry / irq_exit: the handler's time outside its functions, halved.
    overhead = np.array([v for t in samples for v in t.handler_overhead], float)
    measurements["handler_outside_functions"] = _summary(overhead)
    for key, end in (("irq_entry", "entry"), ("irq_exit", "exit")):
        measure(key, overhead / 2, "call_function(_single)_entry -> _exit less the csd functions it ran, halved "
                f"(the {end} code itself is outside the tracepoints: half this time is its stand-in, an "
                "even split assumed)", names, "no call_function(_single)_entry/_exit pairs")
    irq_entry_typical = typical("irq_entry")

    # Deliveries, by target state and CPU-pair class.
    def delivery_net(d: Delivery) -> int:
        per_write = icr_typical if d.send.icr_ns is None else d.send.icr_ns / (1 if one_write else len(d.send.targets))
        writes = 1 if one_write else d.index + 1
        return round(d.ns - per_write * writes - irq_entry_typical)

    dropped: dict[str, int] = defaultdict(int)
    for t in samples:
        for why, count in t.dropped.items():
            dropped[why] += count
    measurements["deliveries_not_used"] = dict(dropped)
    off = [v for t in samples for v in t.busy_irqs_off]
    measurements["delivery_busy_irqs_off"] = _summary(off)
    measurements["delivery_busy_any"] = _summary(off + [d.ns for t in samples for d in t.deliveries
                                                        if d.state == "busy"])
    busy_median: dict[str, int] = {}
    for pair in PAIR_CLASSES:
        key = f"ipi_latency_{pair}"
        busy = [d for t in samples for d in t.deliveries if d.state == "busy" and d.pair == pair]
        measurements[f"delivery_busy_{pair}"] = _summary([d.ns for d in busy])
        halted = [d for t in samples for d in t.deliveries if d.state == "halted" and d.pair == pair]
        measurements[f"delivery_halted_{pair}"] = _summary([d.ns for d in halted])
        if pair == "cross_socket" and topo["sockets"] == 1:
            continue
        m = measure(key, np.maximum(0, [delivery_net(d) for d in busy]),
                    "ipi_send_cpu/ipi_send_cpumask -> the target's call_function(_single)_entry, target busy "
                    "(running a task, not halted, and not seen holding interrupts off: no event traced with them "
                    "off within 2 us before the entry, not in its own send), "
                    f"{pair.replace('_', ' ')}, less the sender's icr_write (its own when measured, else the mean) "
                    "and irq_entry's mean, clipped at 0",
                    names, f"no deliveries to a busy CPU {pair.replace('_', ' ')}")
        if m is not None:
            busy_median[pair] = round(float(np.median(m.values)))
    if topo["sockets"] == 1:
        measured.pop("ipi_latency_cross_socket", None)
        from_base["ipi_latency_cross_socket"] = "one socket"

    halted_all = [d for t in samples for d in t.deliveries if d.state == "halted"]
    if busy_median:
        fallback = int(np.median(list(busy_median.values())))
        extra_ns = [delivery_net(d) - busy_median.get(d.pair, fallback) for d in halted_all]
        measure("idle_exit", np.maximum(0, extra_ns),
                "a delivery to a halted target (its last cpu_idle an idle entry) less icr_write and irq_entry as "
                "for ipi_latency, less the median busy ipi_latency of its CPU-pair class, clipped at 0", names,
                "no deliveries to a halted CPU (last cpu_idle an idle entry)")
    else:
        measure("idle_exit", [], "", names, "no busy deliveries to compare halted ones with")

    # TLB flushes by kind.
    by_kind: dict[str, list[int]] = {"full": [], "range": []}
    used: dict[str, list[str]] = {"full": [], "range": []}
    for t in samples:
        kind = _flush_kind(t, tlb_flush)
        if kind is None:
            if t.flush_remote:
                notes.append(f"{t.path.name}: its {len(t.flush_remote):,} flush_tlb_func runs are not used: "
                             "the trace does not show whether a flush was full or a range, and its .meta names "
                             "no workload that says (give --tlb-flush full|range)")
            continue
        by_kind[kind] += t.flush_remote
        if t.flush_remote:
            used[kind].append(t.path.name)
    flush = "flush_tlb_func run for another CPU (csd_function_entry -> exit, csd != 0)"
    measure("tlb_flush_full", by_kind["full"], f"{flush}, full flushes (reclaim's batched flush)", used["full"],
            "no flush_tlb_func runs known to be full flushes")
    measure("invlpg", np.asarray(by_kind["range"], float) / pages_per_range,
            f"{flush}, range flushes (madvise), per page: / {pages_per_range} pages (--pages-per-range: the trace "
            "does not show the page count)", used["range"], "no flush_tlb_func runs known to be range flushes")

    measure("poll_notice", [v for t in samples for v in t.poll_notice],
            "sched_wake_idle_without_ipi -> the target's next csd_function_entry outside an interrupt (the idle "
            "loop's own flush)", names, "no sched_wake_idle_without_ipi followed by the idle loop's flush")
    measure("page_fault", [v for t in samples for v in t.page_fault],
            "page_fault_user -> the same task's next page_fault_user on that CPU with no event between (includes "
            "the user's own write of the page)", names, "no page_fault_user events (exceptions:page_fault_user)")

    background = base.background
    ticks = [v for t in samples for v in t.tick]
    tick = measure("tick", ticks, "local_timer_entry -> local_timer_exit", names,
                   "no local_timer_entry/exit events")
    if tick is not None:
        awake = sum(t.awake_ns for t in samples)
        rate = sum(t.ticks_awake for t in samples) / (awake / 1e9) if awake else 0.0
        hz = _tick_hz(rate)
        background = Background(tick_hz=hz, source=f"measured: {sum(t.ticks_awake for t in samples):,} "
                                f"local_timer_entry on CPUs not halted over {awake / 1e9:.3f} CPU-seconds not "
                                f"halted = {rate:.1f} Hz" + (f", taken as CONFIG_HZ={hz}" if hz in CONFIG_HZ else "")
                                + f" ({', '.join(names)})")
        measurements["tick_rate_hz"] = {"measured": round(rate, 2), "tick_hz": hz}
    else:
        from_base.pop("tick", None)
        background = Background()

    costs: dict[str, Cost] = {}
    for c in CostId:
        key = c.key
        if key in measured:
            costs[key] = measured[key]
        elif key in base.costs and key != "tick":
            b = base.costs[key]
            costs[key] = b.model_copy(update={"source": f"from base preset {base.name}: {b.source}"})
            from_base.setdefault(key, "the traces do not show it")
    if topo["sockets"] == 1 and "ipi_latency_same_socket" in measured:
        costs["ipi_latency_cross_socket"] = measured["ipi_latency_same_socket"].model_copy(
            update={"source": "one socket: same as ipi_latency_same_socket"})
    missing_time, away = _missing_time(samples)
    faults = any("page_fault_user" in t.seen for t in samples)
    wanted = vcpu_preemption == "on" or (vcpu_preemption == "auto" and faults)
    if missing_time is not None and len(away) < MIN_SAMPLES and vcpu_preemption == "on":
        notes.append(f"vcpu_preemption: only {len(away)} missing stretches: left off")
    if missing_time is not None and len(away) >= MIN_SAMPLES and wanted:
        awake = sum(t.awake_ns for t in samples)
        mean_run = (awake - float(away.sum())) / len(away)
        estimator = (f"gaps longer than {missing_time['threshold_ns']:,} ns ({GAP_FACTOR} x the median gap) "
                     "between consecutive events of a CPU that was not idle")
        costs["vcpu_preempt"] = Measured("vcpu_preempt", away, estimator, names).cost()
        costs["vcpu_run"] = Cost(
            dist="empirical",
            quantiles=[min(MAX_COST_NS, round(-mean_run * np.log1p(-p))) for p in np.linspace(0, 0.999, 101)],
            n=len(away), estimator="busy time not missing / number of missing stretches, as an exponential",
            trace=", ".join(names), source=f"measured: mean {mean_run:,.0f} ns between two missing stretches "
            f"({len(away):,} of them over {awake / 1e9:.3f} CPU-seconds not idle); exponential (Poisson "
            f"descheduling) is an assumption, cut at {MAX_COST_NS / 1e6:g} ms")
        background = background.model_copy(update={"vcpu_preemption": True})
        missing_time["used"] = True
    header = _header(samples, info, base, missing_time, ncpus, pages_per_range)
    description = (f"calibrated by ipilab calibrate from {', '.join(names)}; base preset {base.name}"
                   + (f"; kernel {info.kernel}" if info.kernel else "")
                   + (f"; {info.machine}" if info.machine else ""))
    machine = Machine.model_validate({"name": name, "description": description, "topology": topo,
                                      "costs": {k: v.model_dump(exclude_none=True) for k, v in costs.items()},
                                      "background": background.model_dump()})
    return Calibration(machine, measured, {k: v for k, v in from_base.items() if k in machine.costs}, notes,
                       measurements, missing_time, header)


def _topology(info: MachineFacts, ncpus: int, base: Machine) -> tuple[dict[str, Any], str | None]:
    t = base.topology
    topo: dict[str, Any] = {"llc_mb_per_socket": t.llc_mb_per_socket, "cpu_model": info.machine or t.cpu_model}
    note = None
    if info.cpus and len(info.cpus) == ncpus:
        packages = {c.package for c in info.cpus}
        cores = {(c.package, c.core) for c in info.cpus}
        threads = ncpus // len(cores) if ncpus % len(cores) == 0 else 0
        per_socket = len(cores) // len(packages) if len(cores) % len(packages) == 0 else 0
        if threads and per_socket and len(packages) * per_socket * threads == ncpus:
            topo.update(sockets=len(packages), cores_per_socket=per_socket, threads_per_core=threads)
        else:
            note = (f"the .meta's CPU lines ({len(packages)} packages, {len(cores)} cores, {ncpus} CPUs) are not "
                    "a symmetric topology: taken as one socket of single-thread cores")
    else:
        note = (f"topology: {'no' if not info.cpus else 'incomplete'} '=== CPU N package P core C' lines in the "
                f".meta: taken as one socket of {ncpus} single-thread cores")
    if "sockets" not in topo:
        topo.update(sockets=1, cores_per_socket=ncpus, threads_per_core=1)
    nodes = info.numa_nodes if info.numa_nodes and topo["sockets"] % info.numa_nodes == 0 else topo["sockets"]
    topo["numa_nodes"] = nodes
    return topo, note


def _missing_time(samples: list[TraceSamples]) -> tuple[dict[str, Any] | None, np.ndarray]:
    """A summary of the gaps taken as missing time, and those gaps (ns)."""
    gaps = np.array([g for t in samples for g in t.gaps], float)
    if not len(gaps):
        return None, gaps
    # Many events share a microsecond: a floor of one timestamp step keeps the threshold meaningful.
    median = max(float(np.median(gaps)), TIMESTAMP_RESOLUTION_NS)
    threshold = GAP_FACTOR * median
    away = gaps[gaps > threshold]
    awake_s = sum(t.awake_ns for t in samples) / 1e9
    out: dict[str, Any] = {"threshold_ns": round(threshold), "median_gap_ns": round(float(np.median(gaps))),
                           "count": len(away), "per_cpu_second": round(len(away) / awake_s, 2) if awake_s else None,
                           "share_of_busy_time": round(float(away.sum()) / (awake_s * 1e9), 4) if awake_s else None}
    if len(away):
        p50, p90, p99 = np.percentile(away, (50, 90, 99))
        out.update(p50_ns=round(float(p50)), p90_ns=round(float(p90)), p99_ns=round(float(p99)))
    return out, away


def _header(samples: list[TraceSamples], info: MachineFacts, base: Machine, missing: dict[str, Any] | None,
            ncpus: int, pages: int) -> list[str]:
    lines = [f"Calibrated by `ipilab calibrate` from {', '.join(str(s.path) for s in samples)} ({ncpus} CPUs).",
             "Measured costs are empirical distributions (quantiles at p0, p1, ..., p100 of the sample); the",
             f"simulator draws them anew at each use. The rest comes from base preset {base.name}, as each",
             f"source says. Range flushes are taken as {pages} pages each."]
    for label, value in (("kernel", info.kernel), ("cmdline", info.cmdline), ("cpuidle driver", info.cpuidle_driver),
                         ("clocksource", info.clocksource), ("machine", info.machine), ("workload", info.command)):
        if value:
            lines.append(f"{label}: {value}")
    if missing is not None:
        if missing["count"]:
            use = ("used: background.vcpu_preemption" if missing.get("used") else
                   "not used: without page_fault_user events untraced user time would count as missing")
            lines.append(f"missing time ({use}): {missing['count']:,} gaps longer than "
                         f"{missing['threshold_ns']:,} ns ({GAP_FACTOR} x the median gap between a busy CPU's "
                         f"events) on CPUs not idle, {missing['per_cpu_second']} per CPU-second, p50 "
                         f"{missing['p50_ns']:,} ns, p90 {missing['p90_ns']:,} ns, p99 {missing['p99_ns']:,} ns, "
                         f"{100 * missing['share_of_busy_time']:.1f}% of busy time")
        else:
            lines.append(f"missing time: no gap longer than {missing['threshold_ns']:,} ns on a busy CPU")
        lines.append("missing_time = { " + ", ".join(f"{k} = {v}" for k, v in missing.items()) + " }")
    return lines


def output_name(path: Path) -> str:
    """The machine's name: the output file's name without .toml."""
    return path.name.removesuffix(".toml") or "calibrated"

