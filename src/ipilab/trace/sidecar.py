"""The sidecar next to a captured trace: /proc/interrupts rows before and after, lost events, and the
facts about the machine a calibration needs.

It is text, `NAME.meta` beside `NAME.trace` (or `.trace.xz`, ...), with comment lines such as

    # kernel: 6.18.44
    # cpu 0: package 0 core 0 siblings 0,2 node 0
    # before:
    #   CAL:     409328     385649   Function call interrupts
    # after:
    #   CAL:     450794     428932   Function call interrupts
    # lost: overrun: 0 commit overrun: 0 overrun: 0 commit overrun: 0

The first CAL/RES/TLB row is the one before the capture and the second the one after (the older
`# === AFTER` layout reads the same way). `read_sidecar` reads the rows, `read_machine_facts` the machine
(`MachineFacts`: its keys are listed there; the QEMU harness's `=== UNAME` and `=== CPU` lines read too).
`ipilab capture` writes this format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ipilab.cpulist import CpuListError, parse_cpulist

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


# --- the machine ------------------------------------------------------------------------------------------

MAX_CPUS = 1 << 16  # bound for the CPU lists read here


@dataclass(frozen=True)
class CpuPlace:
    """Where one CPU sits: its package (socket), its core's id in the package, the CPUs sharing that core
    (SMT siblings, itself included), and its NUMA node when known."""

    cpu: int
    package: int
    core: int
    siblings: tuple[int, ...]
    node: int | None = None

    def meta_line(self) -> str:
        node = "" if self.node is None else f" node {self.node}"
        return f"# cpu {self.cpu}: package {self.package} core {self.core} siblings {cpulist(self.siblings)}{node}"


@dataclass(frozen=True)
class MachineFacts:
    """What a capture's sidecar says about the machine it ran on; None (or empty) where it does not say.

    Sidecar keys: `kernel` (uname -r), `cmdline` (/proc/cmdline), `cpuidle driver`, `clocksource`, `trace
    clock` (the ftrace clock the timestamps are in), `numa nodes`, one `cpu N` line per online CPU (package,
    core, siblings, node), `events` and `events missing` (tracepoints on and absent on that kernel).
    `sockets`, `cores` and `threads per core` are written too, and derived from the CPU lines."""

    cpus: tuple[CpuPlace, ...] = ()
    machine: str | None = None  # the `machine` line: what the capture ran on, in words
    command: str | None = None  # the workload the capture recorded
    kernel: str | None = None
    cmdline: str | None = None
    cpuidle_driver: str | None = None
    clocksource: str | None = None
    trace_clock: str | None = None
    numa_nodes: int | None = None
    events: tuple[str, ...] = ()
    events_missing: tuple[str, ...] = ()

    @property
    def by_cpu(self) -> dict[int, CpuPlace]:
        return {c.cpu: c for c in self.cpus}

    @property
    def sockets(self) -> int | None:
        return len({c.package for c in self.cpus}) or None

    @property
    def cores(self) -> int | None:
        """Physical cores: the distinct sibling groups (core ids repeat across packages)."""
        return len({(c.package, c.siblings) for c in self.cpus}) or None

    @property
    def threads_per_core(self) -> int | None:
        return max((len(c.siblings) for c in self.cpus), default=0) or None

    def meta_lines(self) -> list[str]:
        """The sidecar lines for these facts (what is not known is left out)."""
        keyed = {"kernel": self.kernel, "cmdline": self.cmdline, "cpuidle driver": self.cpuidle_driver,
                 "clocksource": self.clocksource, "trace clock": self.trace_clock, "sockets": self.sockets,
                 "cores": self.cores, "threads per core": self.threads_per_core, "numa nodes": self.numa_nodes}
        lines = [f"# {key}: {value}" for key, value in keyed.items() if value is not None]
        lines += [c.meta_line() for c in self.cpus]
        if self.events:
            lines.append(f"# events: {' '.join(self.events)}")
        if self.events_missing:
            lines.append(f"# events missing: {' '.join(self.events_missing)}")
        return lines


def cpulist(cpus: tuple[int, ...]) -> str:
    """The kernel's cpulist (`0-3,8`) of sorted CPU numbers."""
    runs: list[list[int]] = []
    for c in cpus:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# `# key: value`, the key maybe with a remark in brackets (`# command (inside a memory cgroup): usemem 4 96`)
KEY = re.compile(r"^#\s*([a-z][a-z ]*[a-z])\s*(?:\([^)]*\))?:[ \t]?(.*)$")
CPU_LINE = re.compile(r"^#\s*(?:cpu (\d+):|=== CPU (\d+)) package (\d+) core (\d+) siblings (\S+)(?: node (\d+))?\s*$")
UNAME_LINE = re.compile(r"^#\s*=== UNAME (\S+)")
# Other spellings of the keys (scripts/realkernel writes `uname:` and `cpuidle:`).
KEY_ALIASES = {"uname": "kernel", "cpuidle": "cpuidle driver"}


def read_machine_facts(path: Path) -> MachineFacts | None:
    """The machine facts of sidecar `path` (as `ipilab calibrate` needs them), or None when there is no
    readable sidecar. A sidecar from before these facts were recorded gives a MachineFacts of Nones."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    keys: dict[str, str] = {}
    cpus: dict[int, CpuPlace] = {}
    in_command = False
    numa_lines = 0
    for line in text.splitlines():
        if in_command and line.strip() and not line.startswith("#"):
            keys["command"] += f" {line.strip()}"  # a command over several lines (python3 -c '...')
            continue
        in_command = False
        if m := CPU_LINE.match(line):
            cpu = int(m[1] if m[1] is not None else m[2])
            try:
                siblings = tuple(parse_cpulist(m[5], MAX_CPUS, f"{path.name}: cpu {cpu} siblings"))
            except CpuListError:
                continue
            cpus[cpu] = CpuPlace(cpu, int(m[3]), int(m[4]), siblings, None if m[6] is None else int(m[6]))
        elif m := UNAME_LINE.match(line):
            keys.setdefault("kernel", m[1])
        elif m := KEY.match(line):
            key = KEY_ALIASES.get(m[1], m[1])
            if key == "numa" and m[2].strip().startswith("node"):  # `numa: node0 cpus 0-3`, a line per node
                numa_lines += 1
                continue
            keys.setdefault(key, m[2].strip())
            in_command = key == "command"

    def number(key: str) -> int | None:
        value = keys.get(key, "")
        return int(value) if value.isdigit() else None

    return MachineFacts(
        cpus=tuple(cpus[c] for c in sorted(cpus)), machine=keys.get("machine"), command=keys.get("command"),
        kernel=keys.get("kernel"), cmdline=keys.get("cmdline"),
        cpuidle_driver=keys.get("cpuidle driver"), clocksource=keys.get("clocksource"),
        trace_clock=keys.get("trace clock"), numa_nodes=number("numa nodes") or numa_lines or None,
        events=tuple(keys.get("events", "").split()), events_missing=tuple(keys.get("events missing", "").split()))
