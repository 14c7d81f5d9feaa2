"""Reading real traces: ftrace `trace` text, `perf script` text and `trace-cmd report` text.

The format is recognised from the first event lines, and compression (xz, gzip, zstd) from the file's
magic bytes. Each reader turns a line into an `Event` of the shared event language (events.py), with
fields normalised so that the three formats of the same kernel event give the same Event:
pointers as 16 hex digits (`(nil)` and `0x0` become zeros), cpumasks as sorted CPU tuples (from the
ftrace hex bitmap or trace-cmd's CPU list), timestamps in integer nanoseconds.

Bad lines do not stop a read: each becomes a `TraceWarning` naming the file and line, and the lines
around it are still read. Only a file that is not a trace at all (empty, unreadable, binary, or
compressed other than it says) raises `TraceFormatError`.
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from ipilab.events import FORMATS, Event, Kind


class TraceFormatError(ValueError):
    """The file cannot be read as a trace; the message names the file (and line, where there is one)."""


@dataclass(frozen=True)
class TraceWarning:
    path: str
    lineno: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}"


# --- compression -------------------------------------------------------------------------------------

MAGIC = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
SUFFIX = {".xz": "xz", ".gz": "gzip", ".zst": "zstd"}


DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, zstandard.ZstdError)


class _ZstdReader(io.RawIOBase):
    """zstd frames decompressed as a stream that, unlike zstandard's stream_reader, says when the data
    ends inside a frame (a cut file) instead of returning what it had."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dobj = zstandard.ZstdDecompressor().decompressobj()
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if not self._dobj.eof:
                    raise EOFError("the zstd data ends inside a frame")
                return 0
            if self._dobj.eof:  # the next frame
                self._dobj = zstandard.ZstdDecompressor().decompressobj()
            self._buf = self._dobj.decompress(chunk)
            while self._dobj.eof and self._dobj.unused_data:
                rest = self._dobj.unused_data
                self._dobj = zstandard.ZstdDecompressor().decompressobj()
                self._buf += self._dobj.decompress(rest)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def decompressed(raw: BinaryIO, path: Path) -> BinaryIO:
    """The bytes of an open trace file, decompressed by its magic bytes (`raw` itself when plain). A name
    that says .xz, .gz or .zst over other data is a TraceFormatError. The caller closes both."""
    try:
        head = raw.read(6)
        raw.seek(0)
    except OSError as e:
        raise TraceFormatError(f"{path}: {e.strerror}") from None
    kind = next((k for magic, k in MAGIC.items() if head.startswith(magic)), None)
    said = SUFFIX.get(path.suffix)
    if said and kind != said:
        raise TraceFormatError(f"{path}: named {path.suffix} but the data is {kind or 'not compressed'}")
    if kind == "xz":
        return lzma.open(raw)  # type: ignore[return-value]
    if kind == "gzip":
        return gzip.open(raw)  # type: ignore[return-value]
    if kind == "zstd":
        return io.BufferedReader(_ZstdReader(raw), 1 << 20)  # type: ignore[return-value]
    return raw


# --- line formats ------------------------------------------------------------------------------------

TS = r"(?P<secs>\d+)\.(?P<frac>\d+)"
FTRACE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                    r"(?P<flags>[.a-zA-Z0-9]{4,5})\s+" + TS + r":\s+(?P<name>\w+):\s?(?P<rest>.*)$")
TRACE_CMD = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+" + TS +
                       r":\s+(?P<name>\w+):\s*(?P<rest>.*)$")
PERF = re.compile(r"^\s*(?P<task>.+?)\s+(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+" + TS +
                  r":\s+(?:\S+\s+)?(?P<system>\w+):(?P<name>\w+):\s*(?P<rest>.*)$")
LINE_RE = {"ftrace": FTRACE, "trace-cmd": TRACE_CMD, "perf": PERF}

FIELD = re.compile(r"(\w+)=(\([^)]*\)|\S+)")

# Scheduler and idle events, read only when asked (`read_trace(..., idle_events=True)`: the replay needs
# them, the audit does not). Their text is not key=value throughout, so each has its own pattern; the
# second sched_switch form is trace-cmd's `prev:pid [prio] state ==> next:pid [prio]`.
IDLE_EVENTS: dict[str, tuple[re.Pattern[str], ...]] = {
    "sched_switch": (
        re.compile(r"prev_comm=(?P<prev_comm>.*?) prev_pid=(?P<prev_pid>\d+) .*==> "
                   r"next_comm=(?P<next_comm>.*?) next_pid=(?P<next_pid>\d+)"),
        re.compile(r"(?P<prev_comm>.*?):(?P<prev_pid>\d+) \[-?\d+\] \S+ ==> "
                   r"(?P<next_comm>.*?):(?P<next_pid>\d+) \[-?\d+\]"),
    ),
    # drivers/cpuidle/governors/haltpoll.c: `halt_poll_ns NEW (grow|shrink OLD)`
    "guest_halt_poll_ns": (re.compile(r"halt_poll_ns (?P<halt_poll_ns>\d+) \((?:grow|shrink) (?P<old>\d+)\)"),),
}


def _pointer(text: str) -> str:
    if text in ("(nil)", "0", "0x0"):
        return "0" * 16
    return f"{int(text.removeprefix('0x'), 16):016x}"


def _cpulist(text: str) -> tuple[int, ...]:
    """trace-cmd's `0-3,5` (or an ftrace hex bitmap `00000000,0000000b`)."""
    if re.fullmatch(r"[0-9a-f]{8}(,[0-9a-f]{8})*", text):
        bits = int(text.replace(",", ""), 16)
        return tuple(i for i in range(bits.bit_length()) if bits >> i & 1)
    cpus: set[int] = set()
    for part in text.strip("{}[]").split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(cpus))


def parse_fields(name: str, rest: str) -> dict[str, object]:
    """The known fields of event `name` from its printed text, normalised (see the module doc)."""
    if name in IDLE_EVENTS:
        for pattern in IDLE_EVENTS[name]:
            m = pattern.search(rest)
            if m is not None:
                return {k: int(v) if v.isdigit() else v for k, v in m.groupdict().items()}
        raise ValueError(f"cannot read its fields from {rest.strip()[:60]!r}")
    kinds = dict(FORMATS[name].fields)
    out: dict[str, object] = {}
    for key, value in FIELD.findall(rest):
        kind = kinds.get(key)
        if kind is None:
            raise ValueError(f"unexpected field {key!r}")
        value = value.rstrip(",") if kind is not Kind.MASK else value
        if kind is Kind.INT:
            out[key] = int(value)
        elif kind is Kind.MASK:
            out[key] = _cpulist(value)
        elif kind is Kind.PTR:
            out[key] = _pointer(value)
        else:
            out[key] = value
    missing = [k for k in kinds if k not in out]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    return out


def detect_format(lines: list[str]) -> str | None:
    """Which of the three formats these first lines are, by the first line that is an event."""
    for line in lines:
        if not line.strip() or line.startswith("#") or line.startswith("cpus="):
            continue
        for name in ("ftrace", "perf", "trace-cmd"):
            if LINE_RE[name].match(line):
                return name
    return None


@dataclass
class ReadStats:
    """What a read saw besides the events it returned."""

    format: str = ""
    lines: int = 0
    events: int = 0
    other_events: dict[str, int] = field(default_factory=dict)  # events of tracepoints we don't use
    warnings: list[TraceWarning] = field(default_factory=list)
    bad_lines: int = 0
    lineno: int = 0  # the file line of the event last returned
    ts_decimals: int = 0  # the most decimals of a second any event's timestamp had
    bytes_read: Callable[[], int] = lambda: 0

    MAX_WARNINGS = 20  # kept in full; the rest are only counted in bad_lines

    def resolution_ns(self) -> int | None:
        """The smallest time step the trace's timestamps can show (ftrace's default clock prints
        microseconds), or None before any event."""
        return 10 ** (9 - self.ts_decimals) if self.ts_decimals else None

    def warn(self, w: TraceWarning) -> None:
        self.bad_lines += 1
        if len(self.warnings) < self.MAX_WARNINGS:
            self.warnings.append(w)


def read_trace(path: Path, stats: ReadStats | None = None, idle_events: bool = False) -> Iterator[Event]:
    """The events of the tracepoints ipilab knows, in file order (see the module doc); with `idle_events`,
    sched_switch and guest_halt_poll_ns too (fields: prev_comm, prev_pid, next_comm, next_pid; halt_poll_ns,
    old)."""
    known = FORMATS.keys() | IDLE_EVENTS.keys() if idle_events else FORMATS.keys()
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below, after the text on top of it
    except OSError as e:
        raise TraceFormatError(f"{path}: {e.strerror}") from None
    with raw, io.TextIOWrapper(decompressed(raw, path), encoding="utf-8", errors="replace", newline="\n") as text:
        stats.bytes_read = raw.tell
        try:
            head = [text.readline() for _ in range(64)]
        except DECOMPRESS_ERRORS as e:
            raise TraceFormatError(f"{path}: cannot decompress: {e}") from None
        if not any(line.strip() for line in head):
            raise TraceFormatError(f"{path}: empty: no lines at all")
        fmt = detect_format(head)
        if fmt is None:
            first = next(line for line in head if line.strip())
            raise TraceFormatError(f"{path}: not an ftrace, perf script or trace-cmd report text; it starts "
                                   f"{first.strip()[:60]!r}")
        stats.format = fmt
        regex = LINE_RE[fmt]
        lineno = 0

        def lines() -> Iterator[str]:
            yield from head
            try:
                yield from text
            except DECOMPRESS_ERRORS as e:
                stats.warn(TraceWarning(str(path), lineno + 1, f"the compressed data ends early ({e})"))

        for line in lines():
            lineno += 1
            if not line.strip() or line.startswith("#") or (lineno == 1 and line.startswith("cpus=")):
                continue
            stats.lines += 1
            if not line.endswith("\n"):
                stats.warn(TraceWarning(str(path), lineno, "last line is cut short (no newline)"))
                continue
            m = regex.match(line)
            if m is None:
                stats.warn(TraceWarning(str(path), lineno, f"not a {fmt} event line: {line.strip()[:60]!r}"))
                continue
            name = m["name"]
            if name not in known:
                stats.other_events[name] = stats.other_events.get(name, 0) + 1
                continue
            try:
                fields = parse_fields(name, m["rest"])
            except ValueError as e:
                stats.warn(TraceWarning(str(path), lineno, f"{name}: {e}"))
                continue
            frac = m["frac"]
            if len(frac) > stats.ts_decimals:
                stats.ts_decimals = min(len(frac), 9)
            ts = int(m["secs"]) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
            flags = m["flags"] if fmt == "ftrace" else ""
            stats.events += 1
            stats.lineno = lineno
            yield Event(ts, int(m["cpu"]), name, m["task"].strip(), int(m["pid"]), flags, fields)
