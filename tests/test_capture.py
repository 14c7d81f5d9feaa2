"""`ipilab capture` on this machine's real tracefs: it records a small workload, the trace agrees with
/proc/interrupts, and tracefs is left exactly as it was, also when the command fails or on Ctrl-C.
Needs root and a kernel with the csd tracepoints (Linux 6.3+); skipped otherwise, with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sigint_default
from test_cli import ipilab

TRACEFS = Path("/sys/kernel/tracing")
STATE = ("tracing_on", "buffer_size_kb", "current_tracer", "set_event")

# Three threads mapping, touching and unmapping memory: each munmap flushes the other CPUs' TLBs.
WORKLOAD = [sys.executable, "-c", """
import mmap, threading
def work():
    for _ in range(400):
        m = mmap.mmap(-1, 1 << 16)
        m[::4096] = b"x" * 16
        m.close()
threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
"""]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "capture needs root (tracefs)"
    if not TRACEFS.is_dir():
        return f"no {TRACEFS} on this kernel"
    if not Path("/proc/interrupts").exists():
        return "no /proc/interrupts"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture()
def tracefs_state():
    """tracefs mounted with some state of its own (an event on, a small buffer) that capture must keep."""
    mounted_before = (TRACEFS / "tracing_on").exists()
    if not mounted_before:
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
    if not (TRACEFS / "events" / "csd").is_dir():
        pytest.skip("this kernel has no csd tracepoints (Linux 6.3+)")
    original = {name: (TRACEFS / name).read_text() for name in STATE}
    (TRACEFS / "buffer_size_kb").write_text("1234")
    (TRACEFS / "set_event").write_text("sched:sched_wakeup")
    (TRACEFS / "tracing_on").write_text("1")
    ours = {name: (TRACEFS / name).read_text() for name in STATE}
    yield ours
    (TRACEFS / "set_event").write_text("")
    for event in original["set_event"].split():
        fd = os.open(TRACEFS / "set_event", os.O_WRONLY | os.O_APPEND)
        os.write(fd, (event + "\n").encode())
        os.close(fd)
    (TRACEFS / "buffer_size_kb").write_text(original["buffer_size_kb"].split()[0])
    (TRACEFS / "tracing_on").write_text(original["tracing_on"])
    if not mounted_before:
        subprocess.run(["umount", str(TRACEFS)], check=False)


def state() -> dict[str, str]:
    return {name: (TRACEFS / name).read_text() for name in STATE}


def test_capture_records_a_workload_that_agrees_with_proc_interrupts(tmp_path: Path, tracefs_state) -> None:
    out = tmp_path / "run.trace"
    proc = ipilab("capture", "-o", str(out), "--", *WORKLOAD)
    assert proc.returncode == 0, proc.stderr
    assert state() == tracefs_state
    r = json.loads(ipilab("analyze", "--json", str(out)).stdout)
    assert r["csd_enqueues"] > 0 and r["cal_interrupts"] > 0 and r["bad_lines"] == 0
    rec = r["reconciliation"]
    assert rec is not None and rec["lost_events"] == 0
    for row in ("CAL", "RES"):
        proc_n, trace_n = rec["rows"][row]["proc_interrupts"], rec["rows"][row]["trace"]
        # The snapshots bracket the recording by a few system calls: at most a handful more in /proc.
        assert 0 <= proc_n - trace_n <= max(10, proc_n // 20), (row, proc_n, trace_n)


def test_a_failing_command_still_writes_the_trace_and_restores_tracefs(tmp_path: Path, tracefs_state) -> None:
    out = tmp_path / "fail.trace.xz"
    proc = ipilab("capture", "-o", str(out), "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert proc.returncode == 3
    assert "exited with status 3" in proc.stderr
    assert out.exists() and out.with_name("fail.meta").exists()
    assert state() == tracefs_state


def test_ctrl_c_restores_tracefs(tmp_path: Path, tracefs_state) -> None:
    out = tmp_path / "stopped.trace"
    child = subprocess.Popen([sys.executable, "-m", "ipilab.cli", "capture", "-o", str(out), "--duration", "30"],
                             stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    time.sleep(2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "tracefs is restored" in err and "Traceback" not in err
    assert out.exists()
    assert state() == tracefs_state


def test_no_command_and_no_duration_is_a_usage_error(tmp_path: Path) -> None:
    proc = ipilab("capture", "-o", str(tmp_path / "x.trace"))
    assert proc.returncode == 2 and "either a command" in proc.stderr
