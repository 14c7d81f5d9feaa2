"""trace.dat (trace-cmd record) and perf.data (perf record) read by every command that reads a trace.

The files are recorded here, with the real tools, around a workload that sends IPIs; each is then printed
by hand with its tool and the text read as any saved text is. Reading the binary file must give the same
audit as reading that text, and its counts must equal an independent tally of the text's lines.

Recording needs root and tracefs, and may share the machine with someone else's tracefs capture, so:
- trace.dat: trace-cmd (record and extract alike) resets the top-level buffer it works on (events off,
  buffer cleared, tracer nop), even with -B for its own instance. So it runs in a private mount namespace
  in which our own instance is bind-mounted where tracefs is looked for: the buffer it resets is ours.
  `trace-cmd extract` rather than `record`: record also writes the function tracer's filters, which some
  kernels (and sandboxes) refuse.
- perf.data: perf reads tracefs only to look the tracepoints up and records into its own buffers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_analyze import tally

from ipilab.cli import main
from ipilab.trace.read import ReadStats, read_trace

# Calls queued on another CPU whatever else the machine runs: two threads pinned to two CPUs each unmap
# memory both CPUs use (a TLB flush on the other CPU, flush_tlb_func), and two more, pinned apart, wake
# each other through pipes (a wakeup queued to an idle CPU, sched_ttwu_pending) and reschedule IPIs.
WORKLOAD = """
import mmap, os, threading
cpus = sorted(os.sched_getaffinity(0))[:2]
def pin(cpu):
    os.sched_setaffinity(threading.get_native_id(), {cpu})
def unmapper(cpu):
    pin(cpu)
    for _ in range(300):
        m = mmap.mmap(-1, 1 << 20)
        for i in range(0, 1 << 20, 4096):
            m[i] = 1
        m.close()
def pingpong(cpu, rd, wr, first):
    pin(cpu)
    for _ in range(1000):
        if not first:
            os.read(rd, 1)
        os.write(wr, b"x")
        if first:
            os.read(rd, 1)
a, b = os.pipe()
c, d = os.pipe()
threads = [threading.Thread(target=unmapper, args=(cpu,)) for cpu in cpus]
threads += [threading.Thread(target=pingpong, args=(cpus[0], c, b, True)),
            threading.Thread(target=pingpong, args=(cpus[-1], a, d, False))]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""

RECORD_TRACE_DAT = r"""
set -e
for m in $(awk '$3 == "tracefs" {print $2}' /proc/mounts); do umount -l "$m"; done
mount -t tracefs nodev /sys/kernel/tracing
[ -d /sys/kernel/tracing/events/csd ] || exit 77
I=/sys/kernel/tracing/instances/ipilab-test-$$
mkdir "$I"
trap 'umount /sys/kernel/tracing 2>/dev/null; rmdir "$I" 2>/dev/null || true' EXIT
mount --bind "$I" /sys/kernel/tracing
for e in csd ipi irq_vectors; do echo 1 > /sys/kernel/tracing/events/$e/enable; done
"$PYTHON" "$WORKLOAD"
echo 0 > /sys/kernel/tracing/tracing_on
trace-cmd extract -o "$OUT"
"""

RECORD_PERF_DATA = r"""
set -e
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
[ -d /sys/kernel/tracing/events/csd ] || exit 77
exec perf record -q -N -B -a -e 'csd:*' -e 'ipi:*' -e 'irq_vectors:call_function*' \
    -e 'irq_vectors:reschedule*' -o "$OUT" -- "$PYTHON" "$WORKLOAD"
"""

COUNTS = ("csd_enqueues", "csd_ipis", "reschedule_ipis", "cal_interrupts", "reschedule_interrupts", "local_runs")


def _can_record(tool: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("recording a trace needs root")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("cross-CPU calls need two CPUs")
    if "tracefs" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has no tracefs")
    for exe in (tool, "unshare"):
        if shutil.which(exe) is None:
            pytest.skip(f"{exe} is not installed")


def _record(script: str, tmp: Path, name: str) -> Path:
    workload = tmp / "workload.py"
    workload.write_text(WORKLOAD)
    out = tmp / name
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          env={**os.environ, "PYTHON": sys.executable, "WORKLOAD": str(workload), "OUT": str(out)},
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 77:
        pytest.skip("this kernel has no csd tracepoints (Linux 6.6 added them)")
    if proc.returncode != 0 and name == "perf.data" and any(
            w in proc.stderr for w in ("ermission", "not permitted", "paranoid")):
        pytest.skip(f"perf record is not permitted here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def trace_dat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _can_record("trace-cmd")
    return _record(RECORD_TRACE_DAT, tmp_path_factory.mktemp("trace-cmd"), "trace.dat")


@pytest.fixture(scope="module")
def perf_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _can_record("perf")
    return _record(RECORD_PERF_DATA, tmp_path_factory.mktemp("perf"), "perf.data")


def ipilab(*args: str) -> Result:
    """`ipilab ARGS...` in this process (the tests here run it often; a fresh interpreter costs seconds)."""
    return CliRunner().invoke(main, list(args))


def analyze_json(path: Path) -> dict:
    r = ipilab("analyze", "--json", str(path))
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    del out["trace"]
    return out


def user_error(r: Result, *words: str) -> str:
    """Exit code 2 and one stderr line `ipilab: error: ...` naming `words`."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipilab: error:"), r.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def printed_by_hand(argv: list[str], out: Path) -> Path:
    with open(out, "w") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=60)
    return out


def assert_same_audit_and_tally(binary: Path, text: Path, fmt: str) -> dict:
    from_binary = analyze_json(binary)
    assert from_binary == analyze_json(text)
    assert from_binary["format"] == fmt and from_binary["bad_lines"] == 0
    t = tally(text)
    assert t["csd_enqueues"] > 0, "the workload queued no calls: the comparison would show nothing"
    for key in COUNTS:
        assert from_binary[key] == t[key], key
    for cpu, c in from_binary["per_cpu"].items():
        assert c.get("cal_interrupts", 0) == t[f"cal/{cpu}"], cpu
    return from_binary


def test_trace_dat_reads_as_trace_cmd_report_prints_it(trace_dat: Path, tmp_path: Path) -> None:
    text = printed_by_hand(["trace-cmd", "report", "-t", "-i", str(trace_dat)], tmp_path / "report.txt")
    assert_same_audit_and_tally(trace_dat, text, "trace-cmd")


def test_perf_data_reads_as_perf_script_prints_it(perf_data: Path, tmp_path: Path) -> None:
    text = printed_by_hand(["perf", "script", "--ns", "-F", "comm,tid,cpu,time,event,trace", "-i", str(perf_data)],
                           tmp_path / "script.txt")
    assert_same_audit_and_tally(perf_data, text, "perf")


def test_replay_export_and_report_read_a_binary_file(trace_dat: Path, tmp_path: Path) -> None:
    text = printed_by_hand(["trace-cmd", "report", "-t", "-i", str(trace_dat)], tmp_path / "report.txt")
    replays = []
    for source in (trace_dat, text):
        r = ipilab("replay", "--json", str(source))
        assert r.exit_code == 0, r.stderr
        replays.append({k: v for k, v in json.loads(r.stdout).items() if k != "trace"})
    assert replays[0] == replays[1]
    timelines = []
    for source in (trace_dat, text):
        out = tmp_path / f"{source.name}.json"
        r = ipilab("export", str(source), "--perfetto", str(out))
        assert r.exit_code == 0, r.stderr
        timelines.append(json.loads(out.read_text())["traceEvents"])
    assert timelines[0] == timelines[1] and timelines[0]
    r = ipilab("report", str(trace_dat), "-o", str(tmp_path / "page.html"))
    assert r.exit_code == 0, r.stderr
    assert "trace.dat" in (tmp_path / "page.html").read_text()


def test_a_reader_that_stops_early_stops_the_tool(perf_data: Path) -> None:
    events = read_trace(perf_data, ReadStats())
    first = next(events)
    events.close()  # the tool is killed, not reported as failed
    assert first.ts > 0


# --- without the tools, and with files they cannot read ----------------------------------------------------

@pytest.mark.parametrize(("magic", "package"), [(b"\x17\x08\x44tracing6\0", "trace-cmd"),
                                                (b"PERFILE2", "linux-perf")])
@pytest.mark.parametrize("command", ["analyze", "replay", "export", "report"])
def test_a_missing_tool_names_its_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, magic: bytes,
                                                 package: str, command: str) -> None:
    trace = tmp_path / "recorded"  # no telling name: the magic bytes say what it is
    trace.write_bytes(magic + bytes(200))
    monkeypatch.setenv("PATH", str(tmp_path))
    args = {"analyze": [], "replay": [], "export": ["--perfetto", str(tmp_path / "t.json")],
            "report": ["-o", str(tmp_path / "t.html")]}[command]
    user_error(ipilab(command, str(trace), *args), str(trace), f"Debian package {package}", "not installed")


def test_perf_failing_is_reported_with_its_last_error_line(tmp_path: Path) -> None:
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed")
    trace = tmp_path / "cut.data"
    trace.write_bytes(b"PERFILE2" + bytes(200))
    by_hand = subprocess.run(["perf", "script", "-i", str(trace)], capture_output=True, text=True, timeout=60)
    assert by_hand.returncode != 0
    last = by_hand.stderr.strip().splitlines()[-1]
    user_error(ipilab("analyze", str(trace)), str(trace), "failed", last)


def test_trace_cmd_printing_nothing_is_an_error(tmp_path: Path) -> None:
    """trace-cmd report exits 0, silent, on a file cut short after its magic bytes."""
    if shutil.which("trace-cmd") is None:
        pytest.skip("trace-cmd is not installed")
    trace = tmp_path / "cut.dat"
    trace.write_bytes(b"\x17\x08\x44tracing6\0" + bytes(200))
    user_error(ipilab("analyze", str(trace)), str(trace), "printed no events")


def test_an_instance_buffers_lines_read_as_the_top_buffers(tmp_path: Path) -> None:
    """`trace-cmd record -B NAME` output starts each line of that buffer with `NAME: `; a task name may
    itself hold a colon."""
    event = ("memfd:sealed-91-8652  [000]   268.691288177: csd_queue_cpu:        cpu=1 "
             "callsite=smp_call_function_many_cond+0x1 func=do_sync_core csd=0xffff888627c338a0\n")
    top = tmp_path / "top.txt"
    top.write_text("cpus=2\n " + event)
    instance = tmp_path / "instance.txt"
    instance.write_text("cpus=2\nipilab-test-9132:  " + event)
    got = [list(read_trace(p)) for p in (top, instance)]
    assert got[0] == got[1]
    (ev,) = got[0]
    assert (ev.task, ev.pid, ev.cpu, ev.ts) == ("memfd:sealed-91", 8652, 0, 268_691_288_177)
