"""A trace as a timeline for the Perfetto UI and chrome://tracing (Chrome Trace Event JSON).

One track per CPU. On it, slices ("ph": "X", times in µs): the function-call and reschedule interrupt
handlers, and inside them (or in the idle loop, or on the caller itself) each function run
(csd_function_entry to exit). Each csd_queue_cpu is a short marker slice on the sending CPU, and a flow
arrow ("ph": "s" then "f") goes from it to the entry of that call's function on the target, matched as
the audit matches them (per target CPU and CSD, first queued first run). IPI sends are instant events.

Slices shorter than MIN_US (an entry and exit in the same microsecond of ftrace text) are drawn MIN_US
long so that they show and can carry an arrow; a slice always covers its children.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipilab.events import HANDLER_ENTRY, Event, symbol_name
from ipilab.files import published

MIN_US = 0.01  # 10 ns: the shortest slice drawn
PID = 1  # one "process" holds the CPU tracks
HANDLER_NAMES = {"call_function_entry": "call_function interrupt",
                 "call_function_single_entry": "call_function_single interrupt",
                 "reschedule_entry": "reschedule interrupt"}
EXIT_OF = {"call_function_exit": "call_function_entry", "call_function_single_exit": "call_function_single_entry",
           "reschedule_exit": "reschedule_entry"}
NULL_CSD = "0" * 16


@dataclass
class Open:
    """A slice whose end is not yet known."""

    name: str
    kind: str  # the entry event's name
    start_ns: int
    args: dict[str, Any]
    end_ns: int = 0  # the latest end of its children so far
    flows_in: list[int] = field(default_factory=list)


def _us(ns: float) -> float:
    return round(ns / 1000, 6)


class Timeline:
    """Feed events in time order, then take `trace()`."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cpus: set[int] = set()
        self._stack: dict[int, list[Open]] = defaultdict(list)
        self._unrun: dict[tuple[int, str], deque[int]] = defaultdict(deque)  # (target, csd) -> flow ids
        self._next_flow = 1
        self.last_ns = 0
        self.flows = 0

    def _slice(self, cpu: int, name: str, start_ns: int, end_ns: int, args: dict[str, Any]) -> None:
        self.events.append({"ph": "X", "pid": PID, "tid": cpu + 1, "name": name, "cat": "ipi", "ts": _us(start_ns),
                            "dur": round(max(end_ns - start_ns, 0) / 1000, 6), "args": args})

    def _close(self, cpu: int, top: Open, exit_ns: int) -> None:
        end = max(exit_ns, top.end_ns, top.start_ns + round(MIN_US * 1000))
        self._slice(cpu, top.name, top.start_ns, end, top.args)
        for flow in top.flows_in:  # arrives inside the function's slice
            self.events.append({"ph": "f", "bp": "e", "pid": PID, "tid": cpu + 1, "name": "csd", "cat": "csd",
                                "id": flow, "ts": _us(top.start_ns + MIN_US * 500)})
        stack = self._stack[cpu]
        if stack:
            stack[-1].end_ns = max(stack[-1].end_ns, end)

    def feed(self, ev: Event) -> None:
        self.last_ns = max(self.last_ns, ev.ts)
        cpu, name, f = ev.cpu, ev.name, ev.fields
        self.cpus.add(cpu)
        stack = self._stack[cpu]
        if name in HANDLER_NAMES:
            stack.append(Open(HANDLER_NAMES[name], name, ev.ts, {"task": ev.task, "vector": f.get("vector")}))
        elif name in EXIT_OF or name == "csd_function_exit":
            want = EXIT_OF.get(name, "csd_function_entry")
            if stack and stack[-1].kind == want:
                self._close(cpu, stack.pop(), ev.ts)
        elif name == "csd_function_entry":
            csd = str(f["csd"])
            where = "in an interrupt" if any(o.kind in HANDLER_ENTRY for o in stack) else "outside an interrupt"
            o = Open(symbol_name(str(f["func"])), name, ev.ts,
                     {"func": str(f["func"]), "csd": csd, "task": ev.task,
                      "run": "local (the caller itself)" if csd == NULL_CSD else where})
            pending = self._unrun.get((cpu, csd))
            if csd != NULL_CSD and pending:
                o.flows_in.append(pending.popleft())
            stack.append(o)
        elif name == "csd_queue_cpu":
            target, csd = int(f["cpu"]), str(f["csd"])  # type: ignore[call-overload]
            flow = self._next_flow
            self._next_flow += 1
            self.flows += 1
            self._unrun[(target, csd)].append(flow)
            end = ev.ts + round(MIN_US * 1000)
            self._slice(cpu, f"queue -> CPU {target}", ev.ts, end,
                        {"func": str(f["func"]), "callsite": str(f["callsite"]), "csd": csd, "task": ev.task,
                         "note": "a marker at the csd_queue_cpu tracepoint, not a measured duration"})
            if stack:
                stack[-1].end_ns = max(stack[-1].end_ns, end)
            self.events.append({"ph": "s", "pid": PID, "tid": cpu + 1, "name": "csd", "cat": "csd", "id": flow,
                                "ts": _us(ev.ts + MIN_US * 500)})
        elif name in ("ipi_send_cpu", "ipi_send_cpumask"):
            targets = [f["cpu"]] if name == "ipi_send_cpu" else list(f["cpumask"])  # type: ignore[call-overload]
            kind = "reschedule IPI" if str(f["callback"]) == "0x0" else "IPI"
            self.events.append({"ph": "i", "s": "t", "pid": PID, "tid": cpu + 1, "cat": "ipi", "ts": _us(ev.ts),
                                "name": f"{kind} -> CPU {','.join(map(str, targets))}",
                                "args": {"callsite": str(f["callsite"]), "task": ev.task}})

    def trace(self) -> dict[str, Any]:
        """The Chrome Trace Event JSON object; slices still open are closed at the trace's end."""
        for cpu, stack in self._stack.items():
            while stack:
                top = stack.pop()
                top.args["unclosed"] = "the trace ended inside it"
                self._close(cpu, top, self.last_ns)
        # A call still queued when the trace ends has a marker but no arrow (an arrow needs both ends).
        unfinished = {flow for pending in self._unrun.values() for flow in pending}
        self.events = [e for e in self.events if not (e["ph"] == "s" and e["id"] in unfinished)]
        self.flows -= len(unfinished)
        meta: list[dict[str, Any]] = [{"ph": "M", "pid": PID, "name": "process_name", "args": {"name": "CPUs"}}]
        for cpu in sorted(self.cpus):
            meta.append({"ph": "M", "pid": PID, "tid": cpu + 1, "name": "thread_name", "args": {"name": f"CPU {cpu}"}})
            meta.append({"ph": "M", "pid": PID, "tid": cpu + 1, "name": "thread_sort_index",
                         "args": {"sort_index": cpu}})
        # Per track in time order; a parent before the children that start with it.
        body = sorted(self.events, key=lambda e: (e["tid"], e["ts"], -e.get("dur", 0), e["ph"] != "X"))
        return {"traceEvents": meta + body, "displayTimeUnit": "ns",
                "otherData": {"generator": "ipilab export", "flows": self.flows,
                              "slices": "interrupt handlers and csd functions; queue markers are 10 ns long"}}


def window(events: Iterable[Event], from_ms: float, to_ms: float | None) -> Iterator[Event]:
    """The events from `from_ms` to `to_ms` milliseconds after the first event (inclusive)."""
    t0 = None
    for ev in events:
        if t0 is None:
            t0 = ev.ts
        since = (ev.ts - t0) / 1e6
        if to_ms is not None and since > to_ms:
            return
        if since >= from_ms:
            yield ev


def timeline(events: Iterable[Event]) -> dict[str, Any]:
    t = Timeline()
    for ev in events:
        t.feed(ev)
    return t.trace()


def write_timeline(events: Iterable[Event], out: Path) -> dict[str, Any]:
    """Write the timeline JSON atomically; return it."""
    data = timeline(events)
    with published(out) as tmp, open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    return data
