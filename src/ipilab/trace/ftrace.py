"""ftrace `trace` text: writing events in the kernel's own line format (read.py reads them back).

A line looks like
    `          <idle>-0       [001] d.h1.   897.028268: call_function_single_entry: vector=251`
task-pid (task right-aligned in 16 columns, pid left-aligned in 7), CPU, the five flag columns,
timestamp in seconds with microseconds (the default `local` clock), event name, fields.
The simulator's nanoseconds are printed with 6 decimals like the kernel, so a written trace parses back
to the same events with timestamps truncated to the microsecond.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TextIO

from ipilab.events import WRITTEN_FORMATS, Event, Kind
from ipilab.files import PublishOnExit, publish


def irq_flags(irqs_off: bool, need_resched: bool, in_hardirq: bool) -> str:
    """The latency-format flags column as the kernel prints it for a simulated CPU: irqs-off, need-resched,
    hardirq, a preempt count of 1 and no migrate-disable."""
    return ("d" if irqs_off else ".") + ("N" if need_resched else ".") + ("h" if in_hardirq else ".") + "1."


def format_cpumask(cpus: tuple[int, ...]) -> str:
    """The kernel's %*pb: hex bitmap, most significant 32-bit word first, comma-separated."""
    bits = 0
    for c in cpus:
        bits |= 1 << c
    words = max(1, (max(cpus, default=0) // 32) + 1)
    # The kernel prints as many words as nr_cpu_ids needs; two words covers 64 CPUs as in our traces.
    words = max(words, 2)
    return ",".join(f"{(bits >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))


def parse_cpumask(text: str) -> tuple[int, ...]:
    bits = int(text.replace(",", ""), 16)
    return tuple(i for i in range(bits.bit_length()) if bits >> i & 1)


def format_fields(name: str, fields: dict[str, object]) -> str:
    fmt = WRITTEN_FORMATS[name]
    parts = []
    for key, kind in fmt.fields:
        value = fields[key]
        if kind is Kind.MASK:
            value = format_cpumask(value)  # type: ignore[arg-type]
        parts.append(f"{key}={value}")
    return fmt.separator.join(parts)


def format_event(ev: Event) -> str:
    secs, ns = divmod(ev.ts, 1_000_000_000)
    return (f"{ev.task:>16}-{ev.pid:<7} [{ev.cpu:03d}] {ev.flags} {secs:5d}.{ns // 1000:06d}: "
            f"{ev.name}: {format_fields(ev.name, ev.fields)}")


HEADER = """# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:{ncpus}
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


class FtraceWriter(PublishOnExit):
    """Streams events to a file as ftrace text; the file appears (atomically) only when closed."""

    def __init__(self, path: Path, ncpus: int) -> None:
        self.path = Path(path)
        self.ncpus = ncpus
        self.count = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent or ".")
        self._tmp = Path(tmp)
        self._final_tmp: Path | None = None  # the header+body copy close() renames into place
        self._body: TextIO = os.fdopen(fd, "w")

    def __call__(self, ev: Event) -> None:
        self._body.write(format_event(ev))
        self._body.write("\n")
        self.count += 1

    def close(self) -> None:
        # The header carries the event count, so it is written last in front of the body.
        self._body.close()
        fd, final_tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent or ".")
        self._final_tmp = Path(final_tmp)
        with os.fdopen(fd, "w") as out, open(self._tmp) as body:
            out.write(HEADER.format(n=self.count, ncpus=self.ncpus))
            while chunk := body.read(1 << 20):
                out.write(chunk)
        publish(final_tmp, self.path)
        self._tmp.unlink()

    def abort(self) -> None:
        """Drop everything written so far: the target path is left as it was."""
        self._body.close()
        self._tmp.unlink(missing_ok=True)
        if self._final_tmp is not None:
            self._final_tmp.unlink(missing_ok=True)
