"""Capturing a real trace through tracefs without disturbing anyone else who traces.

`capture()` records into a tracefs instance of its own, `instances/ipilab-<pid>` (mkdir creates a whole
trace array: buffer, events, tracing_on; rmdir frees it), so the global buffer, its events, tracer,
buffer size and tracing_on, which another tool or person may be using, are never touched. It enables
the events an IPI audit needs there, runs a command (or waits), and writes the instance's `trace` text
and a sidecar (sidecar.py) with /proc/interrupts before and after and the ring buffer's overruns.
Whatever happens (the command fails, Ctrl-C, SIGTERM or SIGHUP, an error of ours) the instance is
removed, and a tracefs we mounted is unmounted.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from ipilab.cpulist import CpuListError, parse_cpulist
from ipilab.files import published
from ipilab.trace.sidecar import MAX_CPUS, ROWS, CpuPlace, MachineFacts, sidecar_for

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
# ... plus what a calibration measures: the timer tick (rate, duration), user page faults (the work between
# calls), and madvise (when tlbstorm-like work drops its pages). Each is optional: a kernel without it is
# recorded without it, and the sidecar says so.
CALIBRATE_EVENTS = ("irq_vectors:local_timer_entry", "irq_vectors:local_timer_exit", "exceptions:page_fault_user",
                    "syscalls:sys_enter_madvise", "syscalls:sys_exit_madvise")
EVENT_SETS["calibrate"] = (*EVENT_SETS["replay"], *CALIBRATE_EVENTS)


INSTANCE_PREFIX = "ipilab-"  # + the pid of the capture that owns it


class CaptureError(RuntimeError):
    """Capture cannot start or finish; the message says why in one line."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived while recording. Raised like KeyboardInterrupt so that every `finally`
    runs: Python's default for these signals is to die on the spot and leave the instance behind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class CaptureResult:
    trace: Path
    sidecar: Path
    returncode: int | None  # the command's; None with --duration
    lost: int
    events_enabled: list[str]
    events_missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stale: list[Path] = field(default_factory=list)  # ipilab instances of no process here (stale_instances)


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
def stop_signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise Stopped; their handlers are put back afterwards.
    (Only the main thread can set handlers; elsewhere the block runs with them as they are.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the block is over, so a second Ctrl-C cannot cut a clean-up
    short; they are delivered when it ends."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def tracefs_mounted(root: Path = TRACEFS) -> Iterator[Path]:
    """tracefs at `root`, mounted for the block if it was not; unmounted again only if we mounted it."""
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
    try:
        yield root
    finally:
        if mounted_here:  # fails harmlessly if someone started using it meanwhile
            with signals_held():
                subprocess.run(["umount", str(root)], capture_output=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_instances(root: Path) -> list[Path]:
    """ipilab instances whose process does not run here: left by a capture killed with SIGKILL (which no
    clean-up survives), or made by one in another PID namespace sharing this tracefs. Which, we cannot tell,
    so they are reported and never removed: removing another's would be the disturbance we avoid."""
    out = []
    for inst in sorted((root / "instances").glob(INSTANCE_PREFIX + "*")):
        pid = inst.name[len(INSTANCE_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            out.append(inst)
    return out


@contextmanager
def own_instance(root: Path) -> Iterator[Path]:
    """A new tracefs instance `instances/ipilab-<pid>`, not recording yet, removed when the block ends
    however it ends (signals are held while it is removed)."""
    instances = root / "instances"
    if not instances.is_dir():
        raise CaptureError(f"this tracefs has no {instances} (instances came in Linux 3.10): cannot record "
                           "without touching the global buffer")
    inst = instances / f"{INSTANCE_PREFIX}{os.getpid()}"
    try:
        inst.mkdir()
    except FileExistsError:
        raise CaptureError(f"{inst} exists already: another capture in this process?") from None
    try:
        _write(inst / "tracing_on", "0")  # an instance records from the moment it is made
        yield inst
    finally:
        with signals_held():
            _remove_instance(inst)


def _remove_instance(inst: Path) -> None:
    # rmdir answers EBUSY while a file of the instance is open (e.g. someone reads its trace_pipe).
    for _ in range(50):
        try:
            inst.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise CaptureError(f"could not remove the tracefs instance {inst}: {e.strerror}") from None
            time.sleep(0.1)
    raise CaptureError(f"could not remove the tracefs instance {inst}: still busy after 5 s (a reader holds "
                       f"one of its files open); remove it with: rmdir {inst}")


def _write_append(path: Path, value: str) -> None:
    # Python's "a" mode seeks to the end, which tracefs refuses; O_APPEND alone is what `>>` does.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def copy_out(src: Path, path: Path) -> None:
    """Copy `src` to `path` (compressed by its suffix), atomically: all of it or nothing."""
    with published(path) as tmp, open(tmp, "wb") as raw, open(src, "rb") as text:
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


def overruns(root: Path) -> int:
    total = 0
    for stats in sorted((root / "per_cpu").glob("cpu*/stats")):
        total += sum(int(x) for x in re.findall(r"overrun:\s*(\d+)", stats.read_text()))
    return total


def _text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip() or None
    except OSError:
        return None


def _cpus(text: str | None, what: str) -> list[int]:
    try:
        return parse_cpulist(text, MAX_CPUS, what) if text else []
    except CpuListError:
        return []


def machine_facts(sysfs: Path = Path("/sys"), proc: Path = Path("/proc"), trace_clock: str | None = None,
                  events: tuple[str, ...] = (), events_missing: tuple[str, ...] = ()) -> MachineFacts:
    """This machine as sysfs and procfs describe it (each fact that cannot be read is left out)."""
    cpu_dir = sysfs / "devices/system/cpu"
    node_dir = sysfs / "devices/system/node"
    node_of: dict[int, int] = {}
    nodes = sorted(node_dir.glob("node[0-9]*"))
    for node in nodes:
        for cpu in _cpus(_text(node / "cpulist"), str(node / "cpulist")):
            node_of[cpu] = int(node.name[4:])
    places = []
    for cpu in _cpus(_text(cpu_dir / "online"), str(cpu_dir / "online")):
        topo = cpu_dir / f"cpu{cpu}" / "topology"
        package, core = _text(topo / "physical_package_id"), _text(topo / "core_id")
        siblings = _cpus(_text(topo / "thread_siblings_list"), str(topo))
        if package is None or core is None or not siblings:
            continue
        places.append(CpuPlace(cpu, int(package), int(core), tuple(siblings), node_of.get(cpu)))
    return MachineFacts(cpus=tuple(places), kernel=_text(proc / "sys/kernel/osrelease"),
                        cmdline=_text(proc / "cmdline"), cpuidle_driver=_text(cpu_dir / "cpuidle/current_driver"),
                        clocksource=_text(sysfs / "devices/system/clocksource/clocksource0/current_clocksource"),
                        trace_clock=trace_clock, numa_nodes=len(nodes) or None, events=events,
                        events_missing=events_missing)


def current_trace_clock(inst: Path) -> str | None:
    """The clock the instance stamps events with: the bracketed one of `trace_clock`."""
    m = re.search(r"\[(\S+)\]", _text(inst / "trace_clock") or "")
    return m[1] if m else None


def enable_events(inst: Path, events: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Enable `events` in the instance; (enabled, missing on this kernel)."""
    enabled, missing = [], []
    for event in events:
        try:
            _write_append(inst / "set_event", event)
            enabled.append(event)
        except OSError:  # this kernel has no such event
            missing.append(event)
    return enabled, missing


def capture(out: Path, command: list[str] | None, duration: float | None, events: str = "calibrate",
            buffer_kb: int = 16384, root: Path = TRACEFS) -> CaptureResult:
    """Record `command` (or `duration` seconds) into `out` and its sidecar; see the module doc."""
    if events not in EVENT_SETS:
        raise CaptureError(f"--events: unknown set {events!r}; known: {', '.join(EVENT_SETS)}")
    try:
        with stop_signals_raise(), tracefs_mounted(root) as t:
            stale = stale_instances(t)
            with own_instance(t) as inst:
                result = _record(inst, out, command, duration, EVENT_SETS[events], buffer_kb)
            result.stale = stale
            return result
    except OSError as e:
        raise CaptureError(f"tracefs: {e.filename or ''}: {e.strerror}") from None


class Recording:
    """One recording in an instance of our own: the events switched on, /proc/interrupts and the overruns
    read around tracing_on, and the sidecar that says what was recorded where."""

    def __init__(self, inst: Path, events: tuple[str, ...], buffer_kb: int) -> None:
        self.inst = inst
        self.enabled, self.missing = enable_events(inst, events)
        if not any(e.startswith("csd:") for e in self.enabled):
            raise CaptureError("this kernel has no csd tracepoints (they came in Linux 6.3): nothing to audit")
        _write(inst / "buffer_size_kb", str(buffer_kb))
        _write(inst / "trace", "")
        self.before: dict[str, str] = {}
        self.after: dict[str, str] = {}
        self.lost = 0
        self.seconds = 0.0

    def start(self) -> None:
        # Taken after the events are on: switching a tracepoint on patches kernel text, which interrupts every
        # other CPU (do_sync_core); those interrupts belong before the first snapshot, not in the trace.
        self.before = interrupt_rows()
        self._lost_before = overruns(self.inst)
        self._t0 = time.monotonic()
        _write(self.inst / "tracing_on", "1")

    def stop(self) -> None:
        _write(self.inst / "tracing_on", "0")
        self.seconds = time.monotonic() - self._t0
        self.after = interrupt_rows()
        self.lost = overruns(self.inst) - self._lost_before

    def write_sidecar(self, out: Path, what: str) -> Path:
        """The sidecar of trace `out`, atomically; `what` says what was recorded (the command line)."""
        side = sidecar_for(out)
        facts = machine_facts(trace_clock=current_trace_clock(self.inst), events=tuple(self.enabled),
                              events_missing=tuple(self.missing))
        lines = [f"# command: {what}", f"# seconds: {self.seconds:.3f}", f"# tracefs instance: {self.inst.name}",
                 *facts.meta_lines(), "# before:"]
        lines += [f"#   {self.before[r]}" for r in ROWS if r in self.before]
        lines += ["# after:"] + [f"#   {self.after[r]}" for r in ROWS if r in self.after]
        lines += [f"# lost: overrun: {self.lost}"]
        with published(side) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        return side


def _record(inst: Path, out: Path, command: list[str] | None, duration: float | None, events: tuple[str, ...],
            buffer_kb: int) -> CaptureResult:
    rec = Recording(inst, events, buffer_kb)
    returncode = None
    rec.start()
    try:
        if command:
            try:
                returncode = subprocess.run(command).returncode
            except FileNotFoundError:
                raise CaptureError(f"command not found: {command[0]}") from None
        else:
            time.sleep(duration or 0)
    finally:
        rec.stop()
        copy_out(inst / "trace", out)
        what = shlex.join(command).replace("\n", "\\n") if command else f"--duration {duration:g}"
        side = rec.write_sidecar(out, what)
    return CaptureResult(out, side, returncode, rec.lost, rec.enabled, rec.missing, rec.seconds)
