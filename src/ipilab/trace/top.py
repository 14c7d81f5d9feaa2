"""`ipilab top`: a live, per-CPU view of the cross-CPU calls and IPIs each CPU receives.

It records the `ipi` event set into a tracefs instance of its own (as capture does: the global buffer and
anyone else's tracing are not touched), reads the instance's `trace_pipe` every interval, and feeds the
lines to the same audit `analyze` uses (analysis/audit.py: one way of counting). Each interval it reports,
per target CPU, what arrived in that interval, and the top senders since the start; with an output file it
keeps every line it read, with a sidecar, as a trace `analyze` reads to the same counts. The instance is
removed however it ends; Ctrl-C is the ordinary way to stop and ends it like --duration does.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipilab.analysis.audit import Audit
from ipilab.events import FORMATS
from ipilab.trace.capture import (
    EVENT_SETS,
    TRACEFS,
    CaptureError,
    Recording,
    copy_out,
    machine_facts,
    overruns,
    own_instance,
    stale_instances,
    stop_signals_raise,
    tracefs_mounted,
)
from ipilab.trace.read import ReadStats, event_of_line

# What each per-CPU number counts (over one interval, the CPU as target); shown with the view and in --json.
TOP_DOCS: dict[str, str] = {
    "queued": "cross-CPU calls queued on this CPU's call_single_queue (csd_queue_cpu)",
    "ipis": "function-call IPIs sent to it for those calls",
    "no_ipi_queued": "calls that needed no IPI: its queue already waited for one",
    "no_ipi_polling": "calls that needed no IPI: it was polling idle",
    "cal_interrupts": "function-call interrupts it took (the CAL row)",
    "reschedule_interrupts": "reschedule interrupts it took (the RES row)",
    "calls_run": "queued calls it ran, in function-call interrupts or its idle loop",
}
HEADER = "# tracer: nop\n#\n# recorded by ipilab top from a tracefs instance's trace_pipe\n#\n"
READ_CHUNK = 1 << 20
MAX_READ_PER_INTERVAL = 64 << 20  # a flood of events must not stop the view from refreshing


@dataclass
class Interval:
    """What one interval showed: per target CPU the TOP_DOCS counts, and the top senders since the start."""

    number: int
    seconds: float  # since the start
    length: float  # of this interval
    cpus: dict[int, dict[str, int]]
    top_senders: dict[int, list[dict[str, Any]]]
    lost: int  # events lost so far (ring-buffer overruns)

    def as_json(self) -> dict[str, Any]:
        return {"interval": self.number, "seconds": round(self.seconds, 3), "length": round(self.length, 3),
                "cpus": {str(c): v for c, v in self.cpus.items()},
                "top_senders": {str(c): v for c, v in self.top_senders.items()}, "lost_events": self.lost}


@dataclass
class TopResult:
    total: dict[str, Any]  # the audit of the whole window, as analyze --json has it
    seconds: float
    lost: int
    stats: ReadStats
    trace: Path | None = None
    sidecar: Path | None = None
    stale: list[Path] = field(default_factory=list)
    events_missing: list[str] = field(default_factory=list)


def per_target(result: dict[str, Any], cpus: list[int]) -> dict[int, dict[str, int]]:
    """The TOP_DOCS counts of each CPU in `cpus`, from an audit result (cumulative)."""
    out = {}
    for cpu in cpus:
        tally = result["by"]["target"].get(str(cpu), {})
        c = result["per_cpu"].get(str(cpu), {})
        out[cpu] = {"queued": tally.get("enqueues", 0), "ipis": tally.get("ipis", 0),
                    "no_ipi_queued": tally.get("no_ipi_queued", 0), "no_ipi_polling": tally.get("no_ipi_polling", 0),
                    "cal_interrupts": c.get("cal_interrupts", 0),
                    "reschedule_interrupts": c.get("reschedule_interrupts", 0),
                    "calls_run": c.get("csds_run_in_irq", 0) + c.get("csds_run_elsewhere", 0)}
    return out


def online_cpus() -> list[int]:
    facts = machine_facts()
    return [c.cpu for c in facts.cpus] or sorted(os.sched_getaffinity(0))


class PipeReader:
    """The instance's trace_pipe, read without blocking: each call hands back the whole lines that arrived."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.partial = b""

    def lines(self) -> list[str]:
        got = 0
        chunks = [self.partial]
        while got < MAX_READ_PER_INTERVAL:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
            got += len(data)
        text = b"".join(chunks)
        end = text.rfind(b"\n") + 1  # a line still being written stays for the next call
        self.partial = text[end:]
        return [line + "\n" for line in text[:end].decode("utf-8", "replace").split("\n")[:-1]]

    def close(self) -> None:
        os.close(self.fd)


def top(interval: float = 1.0, duration: float | None = None, cpus: set[int] | None = None,
        out: Path | None = None, on_interval: Callable[[Interval], None] | None = None, senders: int = 3,
        buffer_kb: int = 8192, root: Path = TRACEFS) -> TopResult:
    """Watch until `duration` seconds have passed (or Ctrl-C), calling `on_interval` every `interval` seconds;
    see the module doc. Errors are CaptureError (one line); SIGTERM and SIGHUP raise Stopped; what
    `on_interval` raises (a closed stdout's BrokenPipeError) ends it too, the instance removed."""
    try:
        return _watch(interval, duration, cpus, out, on_interval, senders, buffer_kb, root)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise CaptureError(f"tracefs: {e.filename or ''}: {e.strerror}") from None


def _watch(interval: float, duration: float | None, cpus: set[int] | None, out: Path | None,
           on_interval: Callable[[Interval], None] | None, senders: int, buffer_kb: int, root: Path) -> TopResult:
    shown = sorted(cpus) if cpus is not None else online_cpus()
    with stop_signals_raise(), tracefs_mounted(root) as t:
        stale = stale_instances(t)
        with own_instance(t) as inst:
            rec = Recording(inst, EVENT_SETS["ipi"], buffer_kb)
            audit = Audit(cpus)
            stats = ReadStats(format="ftrace")
            where = str(out) if out is not None else "trace_pipe"
            raw = None
            if out is not None:
                fd, raw_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".raw", dir=out.resolve().parent)
                raw = os.fdopen(fd, "w")
                raw.write(HEADER)
            lineno = HEADER.count("\n")
            pipe = PipeReader(inst / "trace_pipe")

            def take() -> None:
                nonlocal lineno
                for line in pipe.lines():
                    lineno += 1
                    if raw is not None:
                        raw.write(line)
                    ev = event_of_line(line, lineno, "ftrace", FORMATS.keys(), stats, where)
                    if ev is not None:
                        audit.feed(ev)

            previous = per_target(audit.result(senders), shown)
            number = 0
            stopped = False

            def report(now: float, last: float) -> None:
                nonlocal previous, number
                number += 1
                result = audit.result(senders)
                current = per_target(result, shown)
                if on_interval is not None:
                    on_interval(Interval(
                        number, now - start, now - last,
                        {c: {k: current[c][k] - previous[c][k] for k in TOP_DOCS} for c in shown},
                        {c: result["top_senders"].get(str(c), []) for c in shown}, overruns(inst)))
                previous = current

            rec.start()
            start = last = time.monotonic()
            try:
                try:
                    while duration is None or last - start < duration:
                        end = start + (number + 1) * interval
                        if duration is not None:
                            end = min(end, start + duration)
                        time.sleep(max(0.0, end - time.monotonic()))
                        take()
                        now = time.monotonic()
                        report(now, last)
                        last = now
                except KeyboardInterrupt:
                    pass  # Ctrl-C: the way to stop watching; what was seen is kept as with --duration
                rec.stop()
                stopped = True
                take()  # what came between the last interval and tracing off: one more interval, if anything
                if per_target(audit.result(senders), shown) != previous:
                    report(time.monotonic(), last)
            finally:
                if not stopped:
                    rec.stop()
                    take()
                pipe.close()
                trace = side = None
                if raw is not None:
                    raw.close()
                    try:
                        if out is not None:
                            copy_out(Path(raw_name), out)
                            trace, side = out, rec.write_sidecar(out, f"ipilab top over {rec.seconds:.1f} s")
                    finally:
                        Path(raw_name).unlink(missing_ok=True)
    audit.finish()
    return TopResult(audit.result(senders), rec.seconds, rec.lost, stats, trace, side, stale, rec.missing)
