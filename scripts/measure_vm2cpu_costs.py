#!/usr/bin/env python3
"""Measure machine costs for the `vm-2cpu` simulator preset from real ftrace traces.

The traces were captured on a 2-vCPU x86-64 KVM guest running Linux 6.18 (see
../shared/traces/README.md). This script derives, from the raw ftrace text:

1. function-call IPI latency (ipi_send_cpu -> call_function*_entry on the target),
   split by whether the target was busy or idle when the IPI was sent;
2. reschedule IPI latency (ipi_send_cpu callback=0x0 -> reschedule_entry);
3. call-function interrupt handler duration and its overhead excluding the
   CSD functions it ran;
4. per-function CSD durations, remote vs local;
5. sender-side costs: csd_queue_cpu -> ipi_send_cpu, and the TLB-flush round trip;
6. guest halt-poll values and cpu_idle residencies;
7. how often a queued CSD needed no IPI, and why.

ftrace prints timestamps as seconds with microsecond resolution, so every
duration here is a whole number of microseconds (reported in ns, resolution
1000 ns). Sub-microsecond costs therefore show up mostly as 0 or 1000 ns; the
mean of such quantised samples is a better estimate than the median, so it is
reported too.

Usage: measure_vm2cpu_costs.py [TRACE_DIR_OR_FILE ...] [--format both|json|table]
Stdlib only (Python 3.11).
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESOLUTION_NS = 1000
DEFAULT_TRACES = (
    "reclaim-usemem-4x96.trace.xz",
    "madvise-threads.trace.xz",
    "idle-1s.trace.xz",
)
# The repo root is the parent of scripts/; the traces live beside the repo.
DEFAULT_TRACE_DIR = Path(__file__).resolve().parent.parent / ".." / "shared" / "traces"

# cpu_idle uses (u32)-1 for "left the idle state".
IDLE_EXIT = 4294967295
NULL_CSD = "0000000000000000"
# Handlers running this many CSD functions or more share one bucket.
MANY_FUNCS = 3
FUNC_CALL_ENTRIES = ("call_function_single_entry", "call_function_entry")
FUNC_CALL_EXITS = ("call_function_single_exit", "call_function_exit")
# Callsites of the multi-target (TLB shootdown) path; inlining decides which one shows.
MANY_CALLSITES = ("on_each_cpu_cond_mask", "smp_call_function_many_cond")

# The task name may itself contain '-' and spaces, so anchor on "-PID [CPU]".
LINE_RE = re.compile(
    r"^\s*(?P<task>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<flags>\S+)\s+"
    r"(?P<secs>\d+)\.(?P<usecs>\d{6}):\s+(?P<event>\w+):\s?(?P<fields>.*)$"
)
# Values end at whitespace; csd_function_* put a comma after func=.
FIELD_RE = re.compile(r"(\w+)=(\S*?),?(?=\s|$)")
HALT_POLL_RE = re.compile(r"halt_poll_ns (\d+) \((\w+) (\d+)\)")


@dataclass(slots=True)
class Event:
    seq: int
    cpu: int
    pid: int
    flags: str
    t_ns: int
    name: str
    raw: str
    fields: dict[str, str]


def parse_trace(path: Path) -> list[Event]:
    """Parse an ftrace text trace, keeping file order (ftrace merges per-CPU
    buffers by the full-resolution timestamp, so file order is the true order
    even where the printed microsecond timestamps tie)."""
    opener = lzma.open if path.suffix == ".xz" else open
    events: list[Event] = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            m = LINE_RE.match(line)
            if not m:
                continue
            # Integer microseconds avoid float rounding in the differences.
            t_ns = (int(m["secs"]) * 1_000_000 + int(m["usecs"])) * RESOLUTION_NS
            raw = m["fields"].rstrip()
            events.append(
                Event(
                    seq=len(events),
                    cpu=int(m["cpu"]),
                    pid=int(m["pid"]),
                    flags=m["flags"],
                    t_ns=t_ns,
                    name=m["event"],
                    raw=raw,
                    fields=dict(FIELD_RE.findall(raw)),
                )
            )
    return events


def cpumask_cpus(mask: str) -> list[int]:
    """Raw ftrace prints cpumask as comma-separated 32-bit hex words, most
    significant first."""
    value = int(mask.replace(",", ""), 16)
    return [i for i in range(value.bit_length()) if value >> i & 1]


def in_hardirq(flags: str) -> bool:
    # Third flag column: h = hardirq, H = hardirq inside softirq.
    return len(flags) > 2 and flags[2] in "hH"


def func_base(callsite: str) -> str:
    return callsite.split("+", 1)[0]


class Samples:
    """Named collections of durations (ns)."""

    def __init__(self) -> None:
        self.data: dict[str, list[int]] = defaultdict(list)

    def add(self, key: str, value: int) -> None:
        self.data[key].append(value)

    def extend(self, other: Samples) -> None:
        for k, v in other.data.items():
            self.data[k].extend(v)


def nearest_rank(sorted_vals: list[int], pct: float) -> int:
    # Nearest-rank keeps every reported percentile an observed (quantised) value.
    idx = max(0, math.ceil(pct / 100 * len(sorted_vals)) - 1)
    return sorted_vals[idx]


def summarise(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "median": None, "p10": None, "p90": None, "mean": None}
    s = sorted(values)
    return {
        "count": len(s),
        "median": nearest_rank(s, 50),
        "p10": nearest_rank(s, 10),
        "p90": nearest_rank(s, 90),
        "mean": round(sum(s) / len(s), 1),
        "min": s[0],
        "max": s[-1],
    }


@dataclass
class Analysis:
    samples: Samples = field(default_factory=Samples)
    counts: Counter[str] = field(default_factory=Counter)
    halt_poll_values: Counter[str] = field(default_factory=Counter)
    sender_next_event: Counter[str] = field(default_factory=Counter)
    entries_per_cpu: Counter[int] = field(default_factory=Counter)
    resched_per_cpu: Counter[int] = field(default_factory=Counter)
    remote_tlb_per_cpu: Counter[int] = field(default_factory=Counter)
    event_counts: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Analysis) -> None:
        self.samples.extend(other.samples)
        for name in (
            "counts",
            "halt_poll_values",
            "sender_next_event",
            "entries_per_cpu",
            "resched_per_cpu",
            "remote_tlb_per_cpu",
            "event_counts",
        ):
            getattr(self, name).update(getattr(other, name))


def target_state(cur_pid: dict[int, int], idle_state: dict[int, int | None], cpu: int) -> str:
    """Classify the target CPU at send time from what it last traced."""
    if cpu not in cur_pid:
        return "unknown"
    if cur_pid[cpu] != 0:
        return "busy"
    # Swapper running: either halted in a cpuidle state or still in the idle
    # loop (where the kernel polls and may skip IPIs altogether).
    return "idle_halted" if idle_state.get(cpu) is not None else "idle_awake"


# One pass keeps all the per-CPU state machines in step, hence one long function.
def analyse(events: list[Event]) -> Analysis:
    a = Analysis()
    smp = a.samples
    cur_pid: dict[int, int] = {}
    idle_state: dict[int, int | None] = {}
    idle_since: dict[int, tuple[int, int]] = {}
    # Sends waiting for the target's interrupt: target -> [(t, state, sender)].
    pending_fc: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    pending_res: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    # Open call-function handler per CPU: [t_entry, n_funcs, ns_in_funcs].
    handler: dict[int, list[int]] = {}
    # CSD functions in progress per CPU: (func, csd, t, in_handler, idle_ctx).
    csd_stack: dict[int, list[tuple[str, str, int, bool, bool]]] = defaultdict(list)
    # The last csd_queue_cpu on each sender not yet resolved to IPI / no IPI.
    pending_q: dict[int, tuple[Event, str] | None] = {}
    # Queued-but-not-yet-run remote CSDs per target (approximates "llist non-empty").
    queued: Counter[int] = Counter()
    # TLB flush calls awaiting the target's csd_function_exit: (target, csd) -> (t_q, sender).
    pending_rt: dict[tuple[int, str], tuple[int, int]] = {}
    # Senders whose remote flush finished; next event on them ends the wait.
    await_sender: dict[int, tuple[int, int, bool]] = {}
    last_local_flush_exit: dict[int, int] = {}

    for ev in events:
        name, cpu, t, f = ev.name, ev.cpu, ev.t_ns, ev.fields
        a.event_counts[name] += 1

        # --- sender-side resolution must see this event before it changes state.
        if cpu in await_sender:
            t_exit, t_q, waiting = await_sender.pop(cpu)
            smp.add("tlb_sender_next_event_after_target_exit", t - t_exit)
            smp.add("tlb_sender_queue_to_next_event", t - t_q)
            if waiting:
                smp.add("tlb_sender_next_event_after_target_exit.sender_waiting", t - t_exit)
            a.sender_next_event[name] += 1

        pq = pending_q.get(cpu)
        if pq is not None:
            qev, qstate = pq
            target = int(qev.fields["cpu"])
            if name == "ipi_send_cpu" and f.get("callback") != "0x0" and int(f["cpu"]) == target:
                smp.add("csd_queue_to_ipi_send", t - qev.t_ns)
                smp.add(f"csd_queue_to_ipi_send.{qev.fields.get('func', '?')}", t - qev.t_ns)
                a.counts["queue.ipi_sent"] += 1
                pending_q[cpu] = None
            elif (
                name == "ipi_send_cpumask"
                and f.get("callback") != "0x0"
                and target in cpumask_cpus(f["cpumask"])
            ):
                smp.add("csd_queue_to_ipi_send", t - qev.t_ns)
                a.counts["queue.ipi_sent"] += 1
                pending_q[cpu] = None
            elif name == "sched_wake_idle_without_ipi" and int(f["cpu"]) == target:
                a.counts["queue.no_ipi.polling_idle_target"] += 1
                a.counts[f"queue.no_ipi.polling_idle_target.{qev.fields.get('func', '?')}"] += 1
                pending_q[cpu] = None
            elif in_hardirq(ev.flags) and not in_hardirq(qev.flags):
                pass  # an interrupt on the sender between queue and send; keep waiting
            else:
                kind = "queue_nonempty" if qstate == "nonempty" else "unexplained"
                a.counts[f"queue.no_ipi.{kind}"] += 1
                a.counts[f"queue.no_ipi.{kind}.{qev.fields.get('func', '?')}"] += 1
                pending_q[cpu] = None

        # Any line shows the task current on its CPU (even in irq context).
        cur_pid[cpu] = ev.pid

        if name == "sched_switch":
            cur_pid[cpu] = int(f.get("next_pid", ev.pid))
            if cur_pid[cpu] != 0:
                idle_state[cpu] = None

        elif name == "cpu_idle":
            icpu = int(f.get("cpu_id", cpu))
            state = int(f["state"])
            if state == IDLE_EXIT:
                if icpu in idle_since:
                    st, t0 = idle_since.pop(icpu)
                    smp.add(f"cpu_idle_residency.state{st}", t - t0)
                idle_state[icpu] = None
            else:
                idle_state[icpu] = state
                idle_since[icpu] = (state, t)
                a.counts[f"cpu_idle.enter.state{state}"] += 1

        elif name == "guest_halt_poll_ns":
            m = HALT_POLL_RE.search(ev.raw)
            a.halt_poll_values[m.group(1) if m else ev.raw] += 1

        elif name in ("ipi_send_cpu", "ipi_send_cpumask"):
            targets = [int(f["cpu"])] if name == "ipi_send_cpu" else cpumask_cpus(f["cpumask"])
            resched = f.get("callback") == "0x0"
            for tgt in targets:
                st = target_state(cur_pid, idle_state, tgt)
                (pending_res if resched else pending_fc)[tgt].append((t, st, cpu))
                a.counts[f"ipi_send.{'resched' if resched else 'func'}.{st}"] += 1

        elif name in FUNC_CALL_ENTRIES:
            a.entries_per_cpu[cpu] += 1
            sends = pending_fc.pop(cpu, [])
            if sends:
                # Several sends before one entry (rare) mean the vector was still
                # pending and got merged, or an earlier handler left no trace;
                # the last send gives the lower-bound (unambiguous) latency.
                t_send, st, sender = sends[-1]
                lat = t - t_send
                smp.add("ipi_func_latency", lat)
                smp.add(f"ipi_func_latency.{st}", lat)
                if st.startswith("idle"):
                    smp.add("ipi_func_latency.idle", lat)
                # Direction split: a per-CPU trace-clock skew would show up as a
                # systematic difference between the two directions.
                smp.add(f"ipi_func_latency.cpu{sender}_to_cpu{cpu}", lat)
                a.counts["ipi_func.coalesced_sends"] += len(sends) - 1
            else:
                a.counts["ipi_func.entry_without_send"] += 1
            handler[cpu] = [t, 0, 0]

        elif name in FUNC_CALL_EXITS:
            h = handler.pop(cpu, None)
            if h is not None:
                t0, nfun, infun = h
                dur = t - t0
                smp.add("handler_duration", dur)
                bucket = "3plus" if nfun >= MANY_FUNCS else str(nfun)
                smp.add(f"handler_duration.nfuncs_{bucket}", dur)
                smp.add("handler_overhead_excl_funcs", dur - infun)
                smp.add(f"handler_overhead_excl_funcs.nfuncs_{bucket}", dur - infun)

        elif name == "reschedule_entry":
            a.resched_per_cpu[cpu] += 1
            sends = pending_res.pop(cpu, [])
            if sends:
                t_send, st, _ = sends[-1]
                smp.add("ipi_resched_latency", t - t_send)
                smp.add(f"ipi_resched_latency.{st}", t - t_send)
                if st.startswith("idle"):
                    smp.add("ipi_resched_latency.idle", t - t_send)
                a.counts["ipi_resched.coalesced_sends"] += len(sends) - 1
            else:
                a.counts["ipi_resched.entry_without_send"] += 1

        elif name == "csd_queue_cpu":
            tgt = int(f["cpu"])
            state = "nonempty" if queued[tgt] > 0 else "empty"
            queued[tgt] += 1
            # Only one queue is outstanding per sender on 2 CPUs; an unresolved
            # earlier one would already have been closed above by this event.
            pending_q[cpu] = (ev, state)
            a.counts["queue.total"] += 1
            if f.get("func") == "flush_tlb_func" and func_base(f.get("callsite", "")) in MANY_CALLSITES:
                key = (tgt, f.get("csd", ""))
                # csd_lock forbids re-queuing a CSD before its function ran, so a
                # re-queue means the previous run happened but left no trace events.
                if key in pending_rt:
                    a.counts["tlb_flush.completed_untraced"] += 1
                pending_rt[key] = (t, cpu)

        elif name == "csd_function_entry":
            csd = f.get("csd", "")
            remote = csd not in (NULL_CSD, "(nil)", "0")
            if remote and queued[cpu] > 0:
                queued[cpu] -= 1
            csd_stack[cpu].append((f.get("func", "?"), csd, t, cpu in handler, cur_pid.get(cpu) == 0))

        elif name == "csd_function_exit":
            func, csd = f.get("func", "?"), f.get("csd", "")
            stack = csd_stack[cpu]
            idx = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][:2] == (func, csd)), None)
            if idx is None:
                continue
            _, _, t0, in_h, idle_ctx = stack.pop(idx)
            del stack[idx:]  # drop anything whose exit we missed
            dur = t - t0
            remote = csd not in (NULL_CSD, "(nil)", "0")
            where = "remote" if remote else "local"
            smp.add(f"csd_func.{func}.{where}", dur)
            if remote:
                ctx = "irq" if in_h else ("idle_loop" if idle_ctx else "task")
                smp.add(f"csd_func.{func}.remote.{ctx}", dur)
                if func == "flush_tlb_func":
                    a.remote_tlb_per_cpu[cpu] += 1
            if in_h and cpu in handler:
                handler[cpu][1] += 1
                handler[cpu][2] += dur
            if func == "flush_tlb_func" and not remote:
                last_local_flush_exit[cpu] = t
            if func == "flush_tlb_func" and remote:
                hit = pending_rt.pop((cpu, csd), None)
                if hit is not None:
                    t_q, sender = hit
                    smp.add("tlb_roundtrip_queue_to_target_exit", t - t_q)
                    # The sender is spinning in csd_lock_wait only if its own
                    # local flush (if any) already ran after it queued this one.
                    waiting = last_local_flush_exit.get(sender, -1) >= t_q
                    await_sender[sender] = (t, t_q, waiting)

    a.counts["ipi_func.sends_never_delivered"] = sum(len(v) for v in pending_fc.values())
    a.counts["ipi_resched.sends_never_delivered"] = sum(len(v) for v in pending_res.values())
    return a


def parse_meta(path: Path) -> dict[str, dict[str, list[int]]]:
    """Read the per-CPU RES/CAL/TLB rows before and after from a .meta file."""
    out: dict[str, dict[str, list[int]]] = {}
    section = ""
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        low = line.lower()
        if "before" in low:
            section = "before"
        elif "after" in low:
            section = "after"
        m = re.match(r"#\s+(RES|CAL|TLB):\s+([\d\s]+?)\s+[A-Z]", line)
        if m and section:
            out.setdefault(section, {})[m.group(1)] = [int(x) for x in m.group(2).split()]
    return out


def meta_check(trace: Path, a: Analysis) -> dict[str, Any]:
    meta = parse_meta(trace.with_name(trace.name.removesuffix(".xz").removesuffix(".trace") + ".meta"))
    if "before" not in meta or "after" not in meta:
        return {}
    result: dict[str, Any] = {}
    traced = {
        "CAL": a.entries_per_cpu,
        "RES": a.resched_per_cpu,
        "TLB": a.remote_tlb_per_cpu,
    }
    for row, per_cpu in traced.items():
        before, after = meta["before"].get(row), meta["after"].get(row)
        if before is None or after is None:
            continue
        delta = [y - x for x, y in zip(before, after, strict=False)]
        result[row] = {
            "proc_interrupts_delta_per_cpu": delta,
            "traced_per_cpu": [per_cpu.get(i, 0) for i in range(len(delta))],
            "proc_interrupts_delta_total": sum(delta),
            "traced_total": sum(per_cpu.values()),
        }
    return result


def build_report(per_trace: dict[str, tuple[Path, Analysis]]) -> dict[str, Any]:
    combined = Analysis()
    traces: dict[str, Any] = {}
    for label, (path, a) in per_trace.items():
        combined.merge(a)
        traces[label] = {
            "file": str(path),
            "events": sum(a.event_counts.values()),
            "stats_ns": {k: summarise(v) for k, v in sorted(a.samples.data.items())},
            "counts": dict(sorted(a.counts.items())),
            "guest_halt_poll_ns_values": dict(a.halt_poll_values),
            "tlb_sender_next_event_names": dict(a.sender_next_event.most_common()),
            "proc_interrupts_vs_trace": meta_check(path, a),
        }
    return {
        "machine": "vm-2cpu: 2-vCPU x86-64 KVM guest, Linux 6.18 (haltpoll cpuidle)",
        "units": "ns",
        "resolution_ns": RESOLUTION_NS,
        "percentile_method": "nearest-rank on whole-microsecond samples",
        "combined": {
            "stats_ns": {k: summarise(v) for k, v in sorted(combined.samples.data.items())},
            "counts": dict(sorted(combined.counts.items())),
            "guest_halt_poll_ns_values": dict(combined.halt_poll_values),
            "tlb_sender_next_event_names": dict(combined.sender_next_event.most_common()),
        },
        "traces": traces,
    }


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def table(stats: dict[str, dict[str, Any]]) -> str:
    head = f"{'quantity (ns)':<62} {'median':>8} {'p10':>8} {'p90':>8} {'mean':>9} {'count':>8}"
    lines = [head, "-" * len(head)]
    for k, s in stats.items():
        lines.append(
            f"{k:<62} {fmt(s['median']):>8} {fmt(s['p10']):>8} {fmt(s['p90']):>8} "
            f"{fmt(s['mean']):>9} {s['count']:>8}"
        )
    return "\n".join(lines)


def render_tables(report: dict[str, Any]) -> str:
    out = [
        (
            f"Resolution {report['resolution_ns']} ns (ftrace us timestamps); "
            f"percentiles are {report['percentile_method']}."
        ),
        "",
        "== combined (all traces)",
        table(report["combined"]["stats_ns"]),
        "",
        "counts: " + ", ".join(f"{k}={v}" for k, v in report["combined"]["counts"].items()),
        "guest_halt_poll_ns values: " + str(report["combined"]["guest_halt_poll_ns_values"]),
    ]
    for label, tr in report["traces"].items():
        out += ["", f"== {label} ({tr['events']} events)", table(tr["stats_ns"])]
        for row, chk in tr["proc_interrupts_vs_trace"].items():
            out.append(
                f"/proc/interrupts {row} delta {chk['proc_interrupts_delta_per_cpu']} "
                f"(total {chk['proc_interrupts_delta_total']}) vs traced "
                f"{chk['traced_per_cpu']} (total {chk['traced_total']})"
            )
    return "\n".join(out)


def resolve_inputs(args: list[str]) -> list[Path]:
    if not args:
        args = [str(DEFAULT_TRACE_DIR.resolve())]
    paths: list[Path] = []
    for arg in args:
        p = Path(arg)
        paths.extend(p / name for name in DEFAULT_TRACES) if p.is_dir() else paths.append(p)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"missing trace(s): {', '.join(missing)}")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "paths",
        nargs="*",
        help=f"trace files or a directory holding the three default traces (default {DEFAULT_TRACE_DIR})",
    )
    ap.add_argument("--format", choices=("both", "json", "table"), default="both")
    ns = ap.parse_args()

    per_trace: dict[str, tuple[Path, Analysis]] = {}
    for path in resolve_inputs(ns.paths):
        per_trace[path.name.removesuffix(".xz")] = (path, analyse(parse_trace(path)))
    report = build_report(per_trace)

    if ns.format in ("both", "table"):
        print(render_tables(report))
    if ns.format == "both":
        print()
    if ns.format in ("both", "json"):
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
