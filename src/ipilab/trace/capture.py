"""Capturing a real trace through tracefs, and leaving tracefs exactly as it was found.

`capture()` mounts tracefs if it is not mounted, enables the events an IPI audit needs, runs a command
(or waits), and writes the `trace` text and a sidecar (sidecar.py) with /proc/interrupts before and
after and the ring buffer's overruns. Whatever happens (the command fails, Ctrl-C, an error of ours),
the enabled events, buffer size, tracer and tracing_on are put back, and a tracefs we mounted is
unmounted.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ipilab.files import publish
from ipilab.trace.sidecar import ROWS, sidecar_for

TRACEFS = Path("/sys/kernel/tracing")

EVENT_SETS: dict[str, tuple[str, ...]] = {
    # What `analyze` uses: the calls, the IPIs, the handlers.
    "ipi": ("csd:csd_queue_cpu", "csd:csd_function_entry", "csd:csd_function_exit", "ipi:ipi_send_cpu",
            "ipi:ipi_send_cpumask", "irq_vectors:call_function_entry", "irq_vectors:call_function_exit",
            "irq_vectors:call_function_single_entry", "irq_vectors:call_function_single_exit",
            "irq_vectors:reschedule_entry", "irq_vectors:reschedule_exit",
            "sched:sched_wake_idle_without_ipi"),
}
# ... plus what replay needs to know whether each target was idle or polling.
EVENT_SETS["replay"] = (*EVENT_SETS["ipi"], "sched:sched_switch", "power:cpu_idle", "power:guest_halt_poll_ns")


class CaptureError(RuntimeError):
    """Capture cannot start or finish; the message says why in one line."""


@dataclass
class CaptureResult:
    trace: Path
    sidecar: Path
    returncode: int | None  # the command's; None with --duration
    lost: int
    events_enabled: list[str]
    events_missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def interrupt_rows() -> dict[str, str]:
    """The CAL, RES and TLB lines of /proc/interrupts, as printed."""
    rows = {}
    for line in Path("/proc/interrupts").read_text().splitlines():
        name = line.strip().split(":", 1)[0]
        if name in ROWS:
            rows[name] = line.strip()
    return rows


@contextmanager
def tracefs_session(root: Path = TRACEFS) -> Iterator[Path]:
    """tracefs mounted and its state saved; on exit everything we touch is restored."""
    if os.geteuid() != 0:
        raise CaptureError("capture needs root (tracefs is root-only); run it with sudo")
    mounted_here = False
    if not (root / "tracing_on").exists():
        if not root.is_dir():
            raise CaptureError(f"no tracefs here: {root} does not exist (kernel without CONFIG_TRACING?)")
        proc = subprocess.run(["mount", "-t", "tracefs", "nodev", str(root)], capture_output=True, text=True)
        if proc.returncode != 0 or not (root / "tracing_on").exists():
            raise CaptureError(f"cannot mount tracefs at {root}: {proc.stderr.strip() or 'mount failed'}")
        mounted_here = True
    saved = {name: _read(root / name) for name in ("tracing_on", "current_tracer", "set_event")}
    # Per CPU, as the buffers may differ; "7 (expanded: 1408)" (never used since boot) restores as 1408.
    buffers = {p: _buffer_kb(_read(p)) for p in sorted((root / "per_cpu").glob("cpu*/buffer_size_kb"))}
    try:
        yield root
    finally:
        steps = [
            lambda: _write(root / "tracing_on", "0"),
            lambda: _write(root / "current_tracer", saved["current_tracer"].strip()),
            lambda: _restore_events(root, saved["set_event"].split()),
            *[(lambda p=p, kb=kb: _write(p, kb)) for p, kb in buffers.items()],
            lambda: _write(root / "tracing_on", saved["tracing_on"].strip()),
        ]
        errors = []
        for step in steps:  # every step is tried, whatever failed before it
            try:
                step()
            except OSError as e:
                errors.append(f"{e.filename}: {e.strerror}")
        if mounted_here:
            subprocess.run(["umount", str(root)], capture_output=True)
        if errors:
            raise CaptureError("could not put tracefs back as it was: " + "; ".join(errors))


def _buffer_kb(text: str) -> str:
    m = re.search(r"expanded:\s*(\d+)", text)
    return m[1] if m else text.split()[0]


def _restore_events(root: Path, events: list[str]) -> None:
    _write(root / "set_event", "")  # O_TRUNC clears every event first
    for event in events:
        _write_append(root / "set_event", event)


def _write_append(path: Path, value: str) -> None:
    # Python's "a" mode seeks to the end, which tracefs refuses; O_APPEND alone is what `>>` does.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def _copy_out(src: Path, path: Path) -> None:
    """Copy `src` to `path` (compressed by its suffix), atomically: all of it or nothing."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as raw, open(src, "rb") as text:
            if path.suffix == ".xz":
                with lzma.open(raw, "wb") as out:
                    shutil.copyfileobj(text, out, 1 << 20)
            elif path.suffix == ".gz":
                with gzip.open(raw, "wb") as out:
                    shutil.copyfileobj(text, out, 1 << 20)
            elif path.suffix == ".zst":
                with zstandard.ZstdCompressor().stream_writer(raw, closefd=False) as out:
                    shutil.copyfileobj(text, out, 1 << 20)
            else:
                shutil.copyfileobj(text, raw, 1 << 20)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def overruns(root: Path) -> int:
    total = 0
    for stats in sorted((root / "per_cpu").glob("cpu*/stats")):
        total += sum(int(x) for x in re.findall(r"overrun:\s*(\d+)", stats.read_text()))
    return total


def capture(out: Path, command: list[str] | None, duration: float | None, events: str = "replay",
            buffer_kb: int = 16384, root: Path = TRACEFS) -> CaptureResult:
    """Record `command` (or `duration` seconds) into `out` and its sidecar; see the module doc."""
    try:
        return _capture(out, command, duration, events, buffer_kb, root)
    except OSError as e:
        raise CaptureError(f"tracefs: {e.filename or ''}: {e.strerror}") from None


def _capture(out: Path, command: list[str] | None, duration: float | None, events: str, buffer_kb: int,
             root: Path) -> CaptureResult:
    if events not in EVENT_SETS:
        raise CaptureError(f"--events: unknown set {events!r}; known: {', '.join(EVENT_SETS)}")
    with tracefs_session(root) as t:
        _write(t / "tracing_on", "0")
        _write(t / "current_tracer", "nop")
        _write(t / "set_event", "")
        enabled, missing = [], []
        for event in EVENT_SETS[events]:
            try:
                _write_append(t / "set_event", event)
                enabled.append(event)
            except OSError:  # this kernel has no such event
                missing.append(event)
        if not any(e.startswith("csd:") for e in enabled):
            raise CaptureError("this kernel has no csd tracepoints (they came in Linux 6.3): nothing to audit")
        _write(t / "buffer_size_kb", str(buffer_kb))
        _write(t / "trace", "")
        before = interrupt_rows()
        lost_before = overruns(t)
        t0 = time.monotonic()
        returncode = None
        _write(t / "tracing_on", "1")
        try:
            if command:
                try:
                    returncode = subprocess.run(command).returncode
                except FileNotFoundError:
                    raise CaptureError(f"command not found: {command[0]}") from None
            else:
                time.sleep(duration or 0)
        finally:
            _write(t / "tracing_on", "0")
            seconds = time.monotonic() - t0
            after = interrupt_rows()
            lost = overruns(t) - lost_before
            _copy_out(t / "trace", out)
            side = sidecar_for(out)
            what = shlex.join(command).replace("\n", "\\n") if command else f"--duration {duration:g}"
            lines = [f"# command: {what}", f"# seconds: {seconds:.3f}",
                     f"# events: {' '.join(enabled)}", "# before:"]
            lines += [f"#   {before[r]}" for r in ROWS if r in before]
            lines += ["# after:"] + [f"#   {after[r]}" for r in ROWS if r in after]
            lines += [f"# lost: overrun: {lost}"]
            fd, stmp = tempfile.mkstemp(prefix=f".{side.name}.", dir=side.parent or ".")
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(lines) + "\n")
            publish(stmp, side)
    return CaptureResult(out, side, returncode, lost, enabled, missing, seconds)
