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


# --- what the capture knew about the machine -------------------------------------------------------------
# Lines such as `# === CPU 3 package 0 core 3 siblings 3` (tools/realkernel's guests write these from
# /sys/devices/system/cpu/cpuN/topology) and `# === UNAME 6.12.9-cloud-amd64`, or `# key: value` lines
# (`# machine: ...`, `# command: ...`, `# cmdline: ...`, `# cpuidle driver: ...`, `# clocksource: ...`,
# `# numa nodes: 2`). Every key is optional: what is missing is None.
CPU_LINE = re.compile(r"^#?\s*===\s*CPU\s+(\d+)\s+package\s+(\d+)\s+core\s+(\d+)(?:\s+siblings\s+(\S+))?", re.I)
INFO_KEYS = {"uname": "uname", "kernel": "uname", "cmdline": "cmdline", "cpuidle": "cpuidle",
             "cpuidle driver": "cpuidle", "cpuidle_driver": "cpuidle", "clocksource": "clocksource",
             "machine": "machine", "command": "command", "numa": "numa_nodes", "numa nodes": "numa_nodes",
             "numa_nodes": "numa_nodes"}
INFO_LINES = (re.compile(r"^#?\s*(?P<key>[a-z_ ]+?)\s*(?:\([^)]*\))?\s*:\s*(?P<value>\S.*)$", re.I),
              re.compile(r"^#?\s*===\s*(?P<key>[a-z_]+)\s+(?P<value>\S.*)$", re.I))


@dataclass
class CaptureInfo:
    """What a capture's sidecar says about its machine; None (or empty) where it says nothing."""

    path: Path | None = None
    cpus: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (package, core id)
    siblings: dict[int, str] = field(default_factory=dict)  # cpu -> its thread_siblings_list
    uname: str | None = None
    cmdline: str | None = None
    cpuidle: str | None = None
    clocksource: str | None = None
    machine: str | None = None
    command: str | None = None
    numa_nodes: int | None = None


def read_capture_info(path: Path) -> CaptureInfo:
    """The machine facts in sidecar `path` (an empty CaptureInfo when there is no readable file)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return CaptureInfo()
    info = CaptureInfo(path)
    in_command = False
    for line in text.splitlines():
        if in_command and line.strip() and not line.startswith("#"):
            info.command = f"{info.command} {line.strip()}"  # a multi-line command (python3 -c '...')
            continue
        in_command = False
        m = CPU_LINE.match(line)
        if m:
            info.cpus[int(m[1])] = (int(m[2]), int(m[3]))
            if m[4]:
                info.siblings[int(m[1])] = m[4]
            continue
        m = INFO_LINES[0].match(line) or INFO_LINES[1].match(line)
        if not m:
            continue
        key = INFO_KEYS.get(m["key"].strip().lower())
        if key is None or getattr(info, key) is not None:
            continue
        value = m["value"].strip()
        if key == "numa_nodes":
            if value.isdigit():
                info.numa_nodes = int(value)
        else:
            setattr(info, key, value)
            in_command = key == "command"
    return info
