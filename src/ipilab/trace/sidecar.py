"""The sidecar next to a captured trace: /proc/interrupts rows before and after, and lost events.

It is text, `NAME.meta` beside `NAME.trace` (or `.trace.xz`, ...), with comment lines such as

    # before:
    #   CAL:     409328     385649   Function call interrupts
    # after:
    #   CAL:     450794     428932   Function call interrupts
    # lost: overrun: 0 commit overrun: 0 overrun: 0 commit overrun: 0

The first CAL/RES/TLB row is the one before the capture and the second the one after (the older
`# === AFTER` layout reads the same way). `ipilab capture` writes this format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROWS = ("CAL", "RES", "TLB")
ROW = re.compile(r"^#\s*(CAL|RES|TLB):\s+((?:\d+\s+)+)")
TRACE_SUFFIXES = (".xz", ".gz", ".zst", ".txt", ".trace", ".perf-script", ".trace-cmd-report", ".dat")


@dataclass
class Sidecar:
    path: Path
    deltas: dict[str, list[int]] = field(default_factory=dict)  # row -> per-CPU increase during the capture
    lost: int | None = None  # ring-buffer overruns summed over CPUs; None if not recorded


def sidecar_for(trace: Path) -> Path:
    """Where the sidecar of `trace` would be."""
    name = trace.name
    changed = True
    while changed:
        changed = False
        for suffix in TRACE_SUFFIXES:
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                changed = True
    return trace.with_name(name + ".meta")


def read_sidecar(path: Path) -> Sidecar | None:
    """The sidecar's deltas, or None when there is no readable one with both snapshots."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    seen: dict[str, list[list[int]]] = {}
    lost: int | None = None
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            seen.setdefault(m[1], []).append([int(x) for x in m[2].split()])
        elif line.lstrip("# ").lower().startswith(("lost", "=== lost")):
            lost = sum(int(x) for x in re.findall(r"overrun:\s*(\d+)", line))
    out = Sidecar(path, lost=lost)
    for row, snaps in seen.items():
        if len(snaps) >= 2 and len(snaps[0]) == len(snaps[1]):
            out.deltas[row] = [b - a for a, b in zip(snaps[0], snaps[1], strict=True)]
    return out if out.deltas else None
