"""Reading real traces: ftrace `trace` text, `perf script` text and `trace-cmd report` text, and the binary
files those two tools print (trace.dat from `trace-cmd record`, perf.data from `perf record`).

The format is recognised from the first event lines, and compression (xz, gzip, zstd) and the binary
files from the file's magic bytes. A binary file is printed by its installed tool (`trace-cmd report`,
`perf script`) and the tool's output read as it comes, as that text saved to a file would be.

Each reader turns a line into an `Event` of the shared event language (events.py), with
fields normalised so that the three formats of the same kernel event give the same Event:
pointers as 16 hex digits (`(nil)` and `0x0` become zeros), cpumasks as sorted CPU tuples (from the
ftrace hex bitmap or trace-cmd's CPU list), timestamps in integer nanoseconds.

Bad lines do not stop a read: each becomes a `TraceWarning` naming the file and line, and the lines
around it are still read. Only a file that is not a trace at all (empty, unreadable, binary other than
trace.dat or perf.data, or compressed other than it says), a missing tool or a tool that fails raises
`TraceFormatError`.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import shutil
import signal
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
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


# --- binary trace files -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BinaryFormat:
    """A binary trace file and the installed tool that prints it as text read.py reads."""

    name: str  # what people call such a file
    made_by: str
    command: tuple[str, ...]  # the file's path goes last
    package: str  # the Debian package with the tool

    @property
    def what(self) -> str:
        return f"a {self.name} file ({self.made_by} output)"

    def argv(self, path: Path) -> list[str]:
        return [*self.command, str(path)]


BINARY = {
    # -t: nanoseconds (the default cuts timestamps to microseconds).
    b"\x17\x08\x44tracing": BinaryFormat("trace.dat", "trace-cmd record",
                                        ("trace-cmd", "report", "-t", "-i"), "trace-cmd"),
    # -f: also a file recorded by another user; -F: only the fields the perf reader reads, times in ns.
    b"PERFILE2": BinaryFormat("perf.data", "perf record",
                              ("perf", "script", "-f", "--ns", "-F", "comm,tid,cpu,time,event,trace", "-i"),
                              "linux-perf"),
}


def binary_format(head: bytes) -> BinaryFormat | None:
    """The binary trace file that starts with `head` (its first 16 bytes or more), if any."""
    return next((f for magic, f in BINARY.items() if head.startswith(magic)), None)


class _EndSeen(io.RawIOBase):
    """A tool's stdout that knows whether its reader saw the end (then the tool is exiting: not to be killed)."""

    def __init__(self, pipe: BinaryIO) -> None:
        self._pipe = pipe
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._pipe.readinto(b)  # type: ignore[attr-defined]
        self.ended |= n == 0 and len(b) > 0
        return n


@contextmanager
def printed(path: Path, fmt: BinaryFormat) -> Iterator[BinaryIO]:
    """The text the tool prints for binary trace `path`, streamed from its stdout. TraceFormatError when
    the tool is not installed, or when it fails (with the last line it wrote to stderr); a tool still
    running when the reader is done with it is stopped."""
    exe = shutil.which(fmt.command[0])
    if exe is None:
        raise TraceFormatError(f"{path}: {fmt.what}; reading it needs `{' '.join(fmt.command[:2])}`, which is not "
                               f"installed (Debian package {fmt.package})")
    # stderr to a file, not a pipe: a tool that warns a lot must not block on a pipe nobody drains.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([exe, *fmt.argv(path)[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, env={**os.environ, "LC_ALL": "C"})
        assert proc.stdout is not None
        out = _EndSeen(proc.stdout)
        stopped = False
        try:
            yield io.BufferedReader(out, 1 << 16)  # type: ignore[misc]
        finally:
            if not out.ended and proc.poll() is None:  # the reader stopped early
                stopped = True
                proc.kill()
            proc.stdout.close()
            proc.wait()
            if proc.returncode == -signal.SIGINT:  # Ctrl-C reached the tool too: not a failure of the file
                raise KeyboardInterrupt
            if not stopped and proc.returncode != 0:
                err.seek(0)
                lines = [line.strip() for line in err.read().decode("utf-8", "replace").splitlines() if line.strip()]
                raise TraceFormatError(f"{path}: `{' '.join(fmt.argv(path))}` failed (exit {proc.returncode}): "
                                       f"{lines[-1] if lines else 'no message'}") from None


# --- line formats ------------------------------------------------------------------------------------

TS = r"(?P<secs>\d+)\.(?P<frac>\d+)"
# ftrace prints a system call's events without their names: `sys_madvise(start: 0x7f.., ...)` on entry
# (syscalls:sys_enter_madvise) and `sys_madvise -> 0x0` on exit; event_name() gives them theirs.
FTRACE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                    r"(?P<flags>[.a-zA-Z0-9]{4,5})\s+" + TS +
                    r":\s+(?P<name>\w+)(?::\s?(?P<rest>.*)|(?P<syscall_entry>\().*| -> .*)$")
# A trace-cmd line of an instance's buffer (`record -B NAME`) starts `NAME: `; a task name is printed right-aligned
# in 16 columns and is at most 15 characters, so a line without that prefix starts with a space.
TRACE_CMD = re.compile(r"^(?:(?P<instance>[^\s:]+):\s)?\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+" + TS +
                       r":\s+(?P<name>\w+):\s*(?P<rest>.*)$")
PERF = re.compile(r"^\s*(?P<task>.+?)\s+(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+" + TS +
                  r":\s+(?:\S+\s+)?(?P<system>\w+):(?P<name>\w+):\s*(?P<rest>.*)$")
LINE_RE = {"ftrace": FTRACE, "trace-cmd": TRACE_CMD, "perf": PERF}


def event_name(m: re.Match[str]) -> str:
    """The tracepoint name of a line matched by one of LINE_RE (a system call's from how ftrace prints it)."""
    if m["rest"] is not None:
        return m["name"]
    call = m["name"].removeprefix("sys_")
    return f"sys_enter_{call}" if m["syscall_entry"] else f"sys_exit_{call}"

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

# Events only `ipilab calibrate` reads (`read_trace(..., calibrate_events=True)`): the timer tick and user
# page faults (exceptions/page_fault_user: `address=%ps ip=%ps error_code=0x%lx`).
CALIBRATE_EVENTS: dict[str, tuple[re.Pattern[str], ...]] = {
    "local_timer_entry": (re.compile(r"vector=(?P<vector>\d+)"),),
    "local_timer_exit": (re.compile(r"vector=(?P<vector>\d+)"),),
    "page_fault_user": (re.compile(r"address=(?P<address>\S+)\s+ip=(?P<ip>\S+)\s+error_code=(?P<error_code>\S+)"),),
}
PATTERNED_EVENTS = {**IDLE_EVENTS, **CALIBRATE_EVENTS}


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
    if name in PATTERNED_EVENTS:
        for pattern in PATTERNED_EVENTS[name]:
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


@contextmanager
def trace_text(path: Path) -> Iterator[tuple[BinaryIO, BinaryFormat | None]]:
    """The text of a trace file as bytes, and the binary format it was printed from (None for a text
    file): decompressed by its magic bytes, or printed by the tool of a binary trace file."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed below, after the text on top of it
    except OSError as e:
        raise TraceFormatError(f"{path}: {e.strerror}") from None
    with raw:
        try:
            binary = binary_format(raw.read(16))
            raw.seek(0)
        except OSError as e:
            raise TraceFormatError(f"{path}: {e.strerror}") from None
        if binary is not None:
            with printed(path, binary) as out:
                yield out, binary
        else:
            with decompressed(raw, path) as data:
                yield data, None


def read_trace(path: Path, stats: ReadStats | None = None, idle_events: bool = False,
               calibrate_events: bool = False) -> Iterator[Event]:
    """The events of the tracepoints ipilab knows, in file order (see the module doc); with `idle_events`,
    sched_switch and guest_halt_poll_ns too (fields: prev_comm, prev_pid, next_comm, next_pid; halt_poll_ns,
    old); with `calibrate_events`, those and CALIBRATE_EVENTS too, and every other event line as an Event
    without fields (calibrate times the gaps between a CPU's events, whatever they are)."""
    known = FORMATS.keys() | IDLE_EVENTS.keys() if idle_events or calibrate_events else FORMATS.keys()
    if calibrate_events:
        known = known | CALIBRATE_EVENTS.keys()
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    with trace_text(path) as (data, binary):
        # Not closed by a `with` of its own: closing a tool's stdout before the tool is stopped would make it
        # fail (broken pipe) when a reader stops early; trace_text closes `data` in the right order.
        text = io.TextIOWrapper(data, encoding="utf-8", errors="replace", newline="\n")
        stats.bytes_read = data.tell if binary is None else lambda: 0
        # A bad line of a binary file is a line of its tool's output: the warning says which output.
        where = str(path) if binary is None else f"{path} (`{' '.join(binary.argv(path))}` output)"
        try:
            head = [text.readline() for _ in range(64)]
        except DECOMPRESS_ERRORS as e:
            raise TraceFormatError(f"{path}: cannot decompress: {e}") from None
        fmt = detect_format(head)
        if fmt is None and binary is not None:
            raise TraceFormatError(f"{path}: `{' '.join(binary.argv(path))}` printed no events (an empty or cut "
                                   f"{binary.name}?)")
        if not any(line.strip() for line in head):
            raise TraceFormatError(f"{path}: empty: no lines at all")
        if fmt is None:
            first = next(line for line in head if line.strip())
            raise TraceFormatError(f"{path}: not an ftrace, perf script or trace-cmd report text; it starts "
                                   f"{first.strip()[:60]!r}")
        stats.format = fmt
        lineno = 0

        def lines() -> Iterator[str]:
            yield from head
            try:
                yield from text
            except DECOMPRESS_ERRORS as e:
                stats.warn(TraceWarning(where, lineno + 1, f"the compressed data ends early ({e})"))

        for line in lines():
            lineno += 1
            ev = event_of_line(line, lineno, fmt, known, stats, where, any_event=calibrate_events)
            if ev is not None:
                yield ev


def event_of_line(line: str, lineno: int, fmt: str, known: Collection[str], stats: ReadStats,
                  where: str, any_event: bool = False) -> Event | None:
    """The event of line `lineno` of a trace in format `fmt` if it is one of the `known` tracepoints' (with
    `any_event`, any other event too, without its fields); None for anything else, which `stats` counts
    (another tracepoint's event) or warns of (a bad line, named `where:lineno`). Comments, blank lines and
    trace-cmd's first `cpus=` line are not counted as lines."""
    if not line.strip() or line.startswith("#") or (lineno == 1 and line.startswith("cpus=")):
        return None
    stats.lines += 1
    if not line.endswith("\n"):
        stats.warn(TraceWarning(where, lineno, "last line is cut short (no newline)"))
        return None
    m = LINE_RE[fmt].match(line)
    if m is None:
        stats.warn(TraceWarning(where, lineno, f"not a {fmt} event line: {line.strip()[:60]!r}"))
        return None
    name = event_name(m)
    if name not in known:
        stats.other_events[name] = stats.other_events.get(name, 0) + 1
        if not any_event:
            return None
    try:
        fields = parse_fields(name, m["rest"]) if name in known else {}
    except ValueError as e:
        stats.warn(TraceWarning(where, lineno, f"{name}: {e}"))
        return None
    frac = m["frac"]
    if len(frac) > stats.ts_decimals:
        stats.ts_decimals = min(len(frac), 9)
    ts = int(m["secs"]) * 1_000_000_000 + int(frac.ljust(9, "0")[:9])
    flags = m["flags"] if fmt == "ftrace" else ""
    stats.events += 1
    stats.lineno = lineno
    return Event(ts, int(m["cpu"]), name, m["task"].strip(), int(m["pid"]), flags, fields)
