"""`ipilab capture` and `ipilab top` on this machine's real tracefs: capture records a small workload, the
trace agrees with /proc/interrupts, and neither ever disturbs another tracer: while they run, "someone else"
(the fixture) keeps tracing into the global buffer with its own events, buffer size, tracer and tracing_on,
and after every way they can end (success, a failing command, a missing command, Ctrl-C, SIGTERM, an
exception) that state is byte-identical, the other tracer's records are still there, and their instance is
gone. top's counts are held to analyze's over the same window.
Needs root and a kernel with the csd tracepoints (Linux 6.3+); skipped otherwise, with the reason."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import sigint_default
from test_cli import assert_user_error, ipilab

from ipilab.analysis.audit import audit_trace
from ipilab.trace import capture as capture_mod
from ipilab.trace.sidecar import read_machine_facts, read_sidecar

TRACEFS = Path("/sys/kernel/tracing")
# The global tracing state another tracer owns; capture must leave every byte of it as it was.
STATE = ("tracing_on", "buffer_size_kb", "current_tracer", "set_event", "trace_clock", "tracing_cpumask")

# Function-call IPIs on demand: opening and closing a perf event bound to another CPU installs and removes it
# there with a cross-CPU call (smp_call_function_single, waiting), so each cycle interrupts that CPU twice,
# whatever it is running. (TLB shootdowns, the obvious choice, send no IPIs on hypervisors that flush by
# hypercall, as the CI's VM does.)
WORKLOAD = [sys.executable, "-c", """
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
here, there = sorted(os.sched_getaffinity(0))[:2]
os.sched_setaffinity(0, {here})
attr = ctypes.create_string_buffer(struct.pack("IIQ", 1, 64, 9) + bytes(48), 64)  # software, dummy event
for _ in range(300):
    fd = libc.syscall(298, attr, -1, there, -1, 0)  # perf_event_open(attr, any task, cpu there)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
"""]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "capture needs root (tracefs)"
    if not TRACEFS.is_dir():
        return f"no {TRACEFS} on this kernel"
    if not Path("/proc/interrupts").exists():
        return "no /proc/interrupts"
    if platform.machine() != "x86_64":
        return "the workload calls perf_event_open by its x86-64 number; irq_vectors events are x86's"
    if len(os.sched_getaffinity(0)) < 2:
        return "cross-CPU calls need two CPUs to run on"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def _append(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def state() -> dict[str, str]:
    out = {name: (TRACEFS / name).read_text() for name in STATE}
    for p in sorted((TRACEFS / "per_cpu").glob("cpu*/buffer_size_kb")):
        out[str(p.relative_to(TRACEFS))] = p.read_text()
    return out


def our_instances() -> list[str]:
    return sorted(p.name for p in (TRACEFS / "instances").glob("ipilab-*"))


class OtherTracer:
    """Someone else tracing into the global buffer: the same csd event capture uses, a buffer size and a
    tracer of their own, tracing on, and a marker line they wrote."""

    def __init__(self) -> None:
        self.marker = f"other-tracer-{uuid.uuid4().hex}"

    def global_trace(self) -> str:
        return (TRACEFS / "trace").read_text(errors="replace")

    def check_undisturbed(self, before: dict[str, str]) -> None:
        assert state() == before
        assert self.marker in self.global_trace(), "the global buffer was cleared"
        assert our_instances() == []


@pytest.fixture()
def other_tracer():
    mounted_before = (TRACEFS / "tracing_on").exists()
    if not mounted_before:
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
    if not (TRACEFS / "events" / "csd").is_dir():
        pytest.skip("this kernel has no csd tracepoints (Linux 6.3+)")
    original = state()
    tracer = OtherTracer()
    (TRACEFS / "tracing_on").write_text("0")
    if "blk" in (TRACEFS / "available_tracers").read_text().split():
        (TRACEFS / "current_tracer").write_text("blk")  # not the default nop; blk is inert without blktrace
    (TRACEFS / "buffer_size_kb").write_text("4321")
    (TRACEFS / "set_event").write_text("csd:csd_queue_cpu")
    (TRACEFS / "trace").write_text("")
    (TRACEFS / "tracing_on").write_text("1")
    (TRACEFS / "trace_marker").write_text(tracer.marker)
    yield tracer
    (TRACEFS / "tracing_on").write_text("0")
    (TRACEFS / "current_tracer").write_text(original["current_tracer"].strip())
    (TRACEFS / "set_event").write_text("")
    for event in original["set_event"].split():
        _append(TRACEFS / "set_event", event)
    (TRACEFS / "buffer_size_kb").write_text(original["buffer_size_kb"].split()[0])
    (TRACEFS / "trace").write_text("")
    (TRACEFS / "tracing_on").write_text(original["tracing_on"])
    if not mounted_before:
        subprocess.run(["umount", str(TRACEFS)], check=False)


def test_capture_records_a_workload_that_agrees_with_proc_interrupts(tmp_path: Path, other_tracer) -> None:
    before = state()
    queued_before = other_tracer.global_trace().count("csd_queue_cpu:")
    out = tmp_path / "run.trace"
    proc = ipilab("capture", "-o", str(out), "--", *WORKLOAD)
    assert proc.returncode == 0, proc.stderr
    other_tracer.check_undisturbed(before)
    # The other tracer kept recording its event while capture ran, and its lines stay out of our trace.
    assert other_tracer.global_trace().count("csd_queue_cpu:") > queued_before
    assert other_tracer.marker not in out.read_text()
    r = json.loads(ipilab("analyze", "--json", str(out)).stdout)
    assert r["bad_lines"] == 0
    # 300 perf events opened and closed on the other CPU: 600 single-target calls queued there, each waited
    # for, so each found an empty queue and needed an IPI (or found that CPU polling idle).
    assert r["by_callsite"]["generic_exec_single"]["enqueues"] >= 600
    assert r["csd_ipis"] + r["csd_no_ipi_polling"] >= 600 and r["cal_interrupts"] >= 600 - r["csd_no_ipi_polling"]
    rec = r["reconciliation"]
    assert rec is not None and rec["lost_events"] == 0
    for row in ("CAL", "RES"):
        proc_n, trace_n = rec["rows"][row]["proc_interrupts"], rec["rows"][row]["trace"]
        # The snapshots bracket the recording by a few system calls: at most a handful more in /proc.
        assert 0 <= proc_n - trace_n <= max(10, proc_n // 20), (row, proc_n, trace_n)


def test_a_failing_command_still_writes_the_trace_and_removes_the_instance(tmp_path: Path, other_tracer) -> None:
    before = state()
    out = tmp_path / "fail.trace.xz"
    proc = ipilab("capture", "-o", str(out), "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert proc.returncode == 3
    assert "exited with status 3" in proc.stderr
    assert out.exists() and out.with_name("fail.meta").exists()
    other_tracer.check_undisturbed(before)


def test_a_missing_command_is_one_line_and_removes_the_instance(tmp_path: Path, other_tracer) -> None:
    before = state()
    proc = ipilab("capture", "-o", str(tmp_path / "x.trace"), "--", "/no/such/command-ipilab")
    assert_user_error(proc, "command not found")
    other_tracer.check_undisturbed(before)


@pytest.mark.parametrize(("sig", "code", "words"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "stopped by SIGTERM")],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_removes_the_instance(tmp_path: Path, other_tracer, sig: int, code: int, words: str) -> None:
    before = state()
    out = tmp_path / "stopped.trace"
    child = subprocess.Popen([sys.executable, "-m", "ipilab.cli", "capture", "-o", str(out), "--duration", "30"],
                             stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    deadline = time.monotonic() + 20
    while f"ipilab-{child.pid}" not in our_instances():  # recording has begun once its instance is there
        assert time.monotonic() < deadline and child.poll() is None, "capture never made its instance"
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(sig)
    _, err = child.communicate(timeout=30)
    assert child.returncode == code, err
    assert words in err and "instance is removed" in err and "Traceback" not in err
    assert out.exists()
    other_tracer.check_undisturbed(before)


def test_an_error_of_ours_mid_recording_removes_the_instance(tmp_path: Path, other_tracer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the second /proc/interrupts snapshot (taken after recording) fails like a bug would."""
    before = state()
    calls = []
    real_rows = capture_mod.interrupt_rows

    def rows_then_fail() -> dict[str, str]:
        calls.append(our_instances())
        if len(calls) == 2:
            raise RuntimeError("a bug of ours")
        return real_rows()

    monkeypatch.setattr(capture_mod, "interrupt_rows", rows_then_fail)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        capture_mod.capture(tmp_path / "x.trace", None, 0.2)
    assert calls == [[f"ipilab-{os.getpid()}"]] * 2  # it did record in its own instance
    other_tracer.check_undisturbed(before)


def test_an_instance_of_no_process_here_is_reported_and_left_alone(tmp_path: Path, other_tracer) -> None:
    """An ipilab instance whose pid runs nowhere here may be a killed capture's, or a live one's in another
    PID namespace: capture names it with the command that frees it, and does not remove it."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = TRACEFS / "instances" / f"ipilab-{int(gone.stdout)}"
    stale.mkdir()
    try:
        before = state()
        proc = ipilab("capture", "-o", str(tmp_path / "x.trace"), "--duration", "0.1")
        assert proc.returncode == 0, proc.stderr
        assert f"rmdir {stale}" in proc.stderr and stale.is_dir()
        assert our_instances() == [stale.name]
    finally:
        stale.rmdir()
    other_tracer.check_undisturbed(before)


def test_no_command_and_no_duration_is_a_usage_error(tmp_path: Path) -> None:
    proc = ipilab("capture", "-o", str(tmp_path / "x.trace"))
    assert proc.returncode == 2 and "either a command" in proc.stderr


# The function-call IPIs again, and madvise(MADV_DONTNEED) on touched pages: page faults and the system call.
CALIBRATION_WORKLOAD = [*WORKLOAD[:2], WORKLOAD[2] + """
import mmap
m = mmap.mmap(-1, 1 << 16)
for _ in range(50):
    m[::4096] = b"x" * 16
    m.madvise(mmap.MADV_DONTNEED)
"""]
CALIBRATOR_EVENT_LINE = re.compile(r": (local_timer_entry|local_timer_exit|page_fault_user): |: sys_madvise(\(| -> )")
COUNTS = ("csd_enqueues", "local_runs", "csd_ipis", "csd_no_ipi_queued", "csd_no_ipi_polling", "csds_undecided",
          "ipis_unmatched", "reschedule_ipis", "cal_interrupts", "reschedule_interrupts", "csds_run_in_irq",
          "csds_run_elsewhere", "tlb_flushes_received", "per_cpu", "by_callsite", "top_senders", "latency_ns",
          "function_ns", "duration_ns")


def test_the_calibrators_events_and_machine_facts_are_recorded_and_analyze_counts_as_before(
        tmp_path: Path, other_tracer) -> None:
    """A real capture with the default event set: the sidecar's machine facts are this machine's (as uname,
    /proc and lscpu tell them), the timer tick, page faults and madvise are in the trace, and analyze (both
    engines) reads them without a warning and counts exactly what it counts with those lines taken out."""
    before = state()
    out = tmp_path / "cal.trace"
    result = capture_mod.capture(out, CALIBRATION_WORKLOAD, None)
    assert result.returncode == 0
    other_tracer.check_undisturbed(before)

    facts = read_machine_facts(result.sidecar)
    assert facts is not None and read_sidecar(result.sidecar) is not None  # the old reader still reads it
    assert facts.kernel == os.uname().release
    assert facts.cmdline == Path("/proc/cmdline").read_text().strip()
    assert facts.trace_clock == "local"  # the default, which capture does not change
    assert len(facts.cpus) == os.sysconf("SC_NPROCESSORS_ONLN")
    if shutil.which("lscpu"):
        rows = [line.split(",") for line in subprocess.run(["lscpu", "-p=CPU,SOCKET,CORE,NODE"], check=True,
                capture_output=True, text=True).stdout.splitlines() if not line.startswith("#")]
        assert facts.sockets == len({r[1] for r in rows}) and facts.cores == len({r[2] for r in rows})
        assert [(c.cpu, c.node) for c in facts.cpus] == [(int(r[0]), int(r[3]) if r[3] else None) for r in rows]
    assert set(facts.events) | set(facts.events_missing) == set(capture_mod.EVENT_SETS["calibrate"])

    text = out.read_text()
    if "irq_vectors:local_timer_entry" in facts.events:
        assert ": local_timer_entry: vector=236" in text
    stripped = tmp_path / "stripped" / "cal.trace"  # beside a copy of the sidecar
    stripped.parent.mkdir()
    shutil.copy(result.sidecar, stripped.with_suffix(".meta"))
    stripped.write_text("".join(line for line in text.splitlines(keepends=True)
                                if not CALIBRATOR_EVENT_LINE.search(line)))
    plain = audit_trace(stripped)
    for reference in (False, True):
        r = audit_trace(out, reference=reference)
        assert r["warnings"] == [] and r["bad_lines"] == 0
        # Each calibrator event the kernel has, under its tracepoint name (a system call's too).
        assert {e.split(":")[1] for e in facts.events if e in capture_mod.CALIBRATE_EVENTS} <= set(r["other_events"])
        for key in COUNTS:
            assert json.dumps(r[key], sort_keys=True) == json.dumps(plain[key], sort_keys=True), key
        assert r["reconciliation"]["rows"] == plain["reconciliation"]["rows"]


# --- ipilab top: the live view, on the same tracefs ------------------------------------------------------

def _recording(pid: int, child: subprocess.Popen) -> None:
    """Wait until process `pid`'s instance records (its tracing_on reads 1)."""
    on = TRACEFS / "instances" / f"ipilab-{pid}" / "tracing_on"
    deadline = time.monotonic() + 30
    while not (on.exists() and on.read_text().strip() == "1"):
        assert time.monotonic() < deadline and child.poll() is None, "top never started recording"
        time.sleep(0.05)


def _targets(total: dict, cpu: str) -> dict[str, int]:
    """The per-target numbers top shows, from a whole-window audit (as analyze --json has it)."""
    t, c = total["by"]["target"].get(cpu, {}), total["per_cpu"].get(cpu, {})
    return {"queued": t.get("enqueues", 0), "ipis": t.get("ipis", 0), "no_ipi_queued": t.get("no_ipi_queued", 0),
            "no_ipi_polling": t.get("no_ipi_polling", 0), "cal_interrupts": c.get("cal_interrupts", 0),
            "reschedule_interrupts": c.get("reschedule_interrupts", 0),
            "calls_run": c.get("csds_run_in_irq", 0) + c.get("csds_run_elsewhere", 0)}


def test_top_counts_what_analyze_counts_in_the_same_window(tmp_path: Path, other_tracer) -> None:
    """top watches 2 s while the test's workload queues 600 calls on another CPU: its intervals add up to its
    total, which equals `analyze` of the trace it kept (the compiled engine against top's reference one),
    and that agrees with /proc/interrupts. The other tracer is undisturbed."""
    before = state()
    out = tmp_path / "top.trace.xz"
    child = subprocess.Popen([sys.executable, "-m", "ipilab.cli", "top", "--duration", "2", "--json", "--senders", "5",
                              "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _recording(child.pid, child)
    subprocess.run(WORKLOAD, check=True)
    stdout, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    other_tracer.check_undisturbed(before)
    *intervals, last = [json.loads(line) for line in stdout.splitlines()]
    assert len(intervals) >= 2 and "total" in last
    total = last["total"]
    for cpu in intervals[0]["cpus"]:
        summed = {k: sum(iv["cpus"][cpu][k] for iv in intervals) for k in intervals[0]["cpus"][cpu]}
        assert summed == _targets(total, cpu), cpu
    assert total["by_callsite"]["generic_exec_single"]["enqueues"] >= 600  # the workload's calls

    r = json.loads(ipilab("analyze", "--json", "--top", "5", str(out)).stdout)
    assert r["warnings"] == [] and r["bad_lines"] == 0
    for key in COUNTS:
        assert json.dumps(r[key], sort_keys=True) == json.dumps(total[key], sort_keys=True), key
    rec = r["reconciliation"]
    assert rec is not None and rec["lost_events"] == 0
    for row in ("CAL", "RES"):
        proc_n, trace_n = rec["rows"][row]["proc_interrupts"], rec["rows"][row]["trace"]
        assert 0 <= proc_n - trace_n <= max(10, proc_n // 20), (row, proc_n, trace_n)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 0), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_top_stops_on_a_signal_and_removes_its_instance(tmp_path: Path, other_tracer, sig: int, code: int) -> None:
    """Ctrl-C is how one stops top: exit 0 with its summary and the trace kept; SIGTERM ends it too (143).
    With --cpus it shows that CPU alone."""
    before = state()
    there = str(sorted(os.sched_getaffinity(0))[1])
    out = tmp_path / "top.trace"
    child = subprocess.Popen([sys.executable, "-m", "ipilab.cli", "top", "--json", "--cpus", there, "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    _recording(child.pid, child)
    time.sleep(1.2)  # past its first refresh
    child.send_signal(sig)
    stdout, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert "Traceback" not in err and out.exists()
    other_tracer.check_undisturbed(before)
    if code == 0:
        *intervals, last = [json.loads(line) for line in stdout.splitlines()]
        assert intervals and all(list(iv["cpus"]) == [there] for iv in intervals)
        assert last["total"]["cpus"] == [int(there)]
    else:
        assert "stopped by SIGTERM" in err and "instance is removed" in err


def test_top_with_a_bad_cpu_list_is_one_line() -> None:
    assert_user_error(ipilab("top", "--cpus", "x-y"), "--cpus")
