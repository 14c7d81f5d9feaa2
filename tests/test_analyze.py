"""`ipilab analyze`: exact counts on the real traces against tallies written here, hand-built litmus
traces, the simulator's own counts, the /proc/interrupts sidecar, and bad input of every kind."""

from __future__ import annotations

import gzip
import json
import lzma
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_TRACES
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_user_error, ipilab

from ipilab.events import Event
from ipilab.trace.ftrace import format_event
from ipilab.trace.read import ReadStats, TraceFormatError, read_trace
from ipilab.trace.sidecar import read_sidecar, sidecar_for

TRACES = SHARED_TRACES
REAL = sorted(TRACES.glob("*.xz"))
needs_traces = pytest.mark.skipif(not REAL, reason=f"no real traces in {TRACES}")


def analyze_json(*args: str) -> dict:
    proc = ipilab("analyze", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- an independent tally: one regex per quantity over the decompressed text ----------------------------

EVENT = re.compile(r"\[(\d+)\][^:]*\d+\.\d+:\s+(?:\w+:)?(\w+):\s*(.*)$")
EVENT_AT = re.compile(r"\[(\d+)\][^:]*?(\d+\.\d+):\s+(?:\w+:)?(\w+):")


def tally(path: Path) -> Counter:
    out: Counter = Counter()
    with (lzma.open(path, "rt") if path.suffix == ".xz" else open(path)) as text:
        lines = text.readlines()
    for line in lines:
        m = EVENT.search(line)
        if not m:
            continue
        cpu, name, rest = int(m[1]), m[2], m[3]
        if name == "csd_queue_cpu":
            out["csd_enqueues"] += 1
        elif name in ("ipi_send_cpu", "ipi_send_cpumask"):
            callback = re.search(r"callback=(\S+)", rest)[1]
            if name == "ipi_send_cpu":
                n = 1
            else:
                mask = re.search(r"cpumask=(\S+)", rest)[1]
                if re.fullmatch(r"[0-9a-f]{8}(,[0-9a-f]{8})*", mask):
                    n = bin(int(mask.replace(",", ""), 16)).count("1")
                else:  # trace-cmd prints a CPU list
                    n = sum(int(b) - int(a) + 1 if b else 1
                            for a, _, b in (p.partition("-") for p in mask.split(",")))
            out["reschedule_ipis" if callback == "0x0" else "csd_ipis"] += n
        elif name in ("call_function_entry", "call_function_single_entry"):
            out["cal_interrupts"] += 1
            out[f"cal/{cpu}"] += 1
        elif name == "reschedule_entry":
            out["reschedule_interrupts"] += 1
        elif name == "csd_function_entry" and re.search(r"csd=(\(nil\)|0+)$", rest.strip()):
            out["local_runs"] += 1
    return out


@needs_traces
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_counts_equal_an_independent_tally(path: Path) -> None:
    r = analyze_json(str(path))
    t = tally(path)
    for key in ("csd_enqueues", "csd_ipis", "reschedule_ipis", "cal_interrupts", "reschedule_interrupts",
                "local_runs"):
        assert r[key] == t[key], key
    for cpu, c in r["per_cpu"].items():
        assert c.get("cal_interrupts", 0) == t[f"cal/{cpu}"]
    # Every queued call is decided exactly once (or left undecided at the end).
    matched = r["csd_ipis"] - r["ipis_unmatched"]
    assert matched + r["csd_no_ipi_queued"] + r["csd_no_ipi_polling"] + r["csds_undecided"] == r["csd_enqueues"]
    assert sum(v["enqueues"] for v in r["by_callsite"].values()) == r["csd_enqueues"]
    assert sum(v["ipis"] for v in r["by_callsite"].values()) == matched
    assert r["bad_lines"] == 0


@needs_traces
def test_proc_interrupts_agree_where_the_capture_brackets_the_trace() -> None:
    """reclaim-usemem-4x96 lost no events: its CAL and RES rows equal the trace's interrupts, per CPU."""
    r = analyze_json(str(TRACES / "reclaim-usemem-4x96.trace.xz"))
    rec = r["reconciliation"]
    assert rec is not None and rec["lost_events"] == 0
    for row in ("CAL", "RES"):
        assert rec["rows"][row]["per_cpu_proc"] == rec["rows"][row]["per_cpu_trace"], row
    # The TLB row also counts remote flushes outside the traced flush_tlb_func calls: never fewer.
    assert rec["rows"]["TLB"]["proc_interrupts"] >= rec["rows"]["TLB"]["trace"]


QEMU_TRACES = sorted(TRACES.glob("qemu*.trace.xz"))


@pytest.mark.skipif(not QEMU_TRACES, reason=f"no QEMU traces in {TRACES}")
@pytest.mark.parametrize("path", QEMU_TRACES, ids=[p.name for p in QEMU_TRACES])
def test_the_qemu_traces_extra_cal_interrupts_are_the_harness_switching_tracepoints_on(path: Path) -> None:
    """qemu4-reclaim-4x40's trace counts 332 more CAL interrupts than its /proc/interrupts delta. Its first
    ~30 ms are the harness (init, pid 1) still enabling tracepoints, before it took the BEFORE rows: each
    enable patches kernel text and synchronises every other CPU with a do_sync_core cross-call. Take the
    interrupts up to the last do_sync_core away and, per CPU, the trace and /proc agree within 3 (the few
    interrupts between the last patch and the BEFORE rows, or between a snapshot and tracing on or off)."""
    side = read_sidecar(sidecar_for(path))
    assert side is not None
    first = last_sync = None
    cal: Counter = Counter()
    cal_when_enabling: list[tuple[float, int]] = []
    with lzma.open(path, "rt") as text:
        for line in text:
            m = EVENT_AT.search(line)
            if not m:
                continue
            cpu, when, name = int(m[1]), float(m[2]), m[3]
            first = when if first is None else first
            if "func=do_sync_core" in line:
                last_sync = when
            if name in ("call_function_entry", "call_function_single_entry"):
                cal[cpu] += 1
                cal_when_enabling.append((when, cpu))
    assert last_sync is not None and last_sync - first < 0.1, "the patching is the trace's first moments"
    enabling = Counter(cpu for when, cpu in cal_when_enabling if when <= last_sync)
    proc = side.deltas["CAL"]
    assert sum(cal.values()) > sum(proc), "the trace counts more than /proc: what this test explains"
    for cpu, proc_n in enumerate(proc):
        assert abs(proc_n - (cal[cpu] - enabling[cpu])) <= 3, (cpu, proc_n, cal[cpu], enabling[cpu])


@needs_traces
def test_cpus_limits_the_audit_to_calls_aimed_at_those_cpus() -> None:
    path = str(TRACES / "qemu4-tlbstorm-4x200.trace.xz")
    whole = analyze_json(path)
    parts = [analyze_json(path, "--cpus", str(cpu)) for cpu in range(4)]
    for key in ("csd_enqueues", "csd_ipis", "cal_interrupts", "csd_no_ipi_queued"):
        assert sum(p[key] for p in parts) == whole[key], key
    assert set(parts[1]["top_senders"]) == {"1"}


# --- hand-built litmus traces ----------------------------------------------------------------------------

def line(ts_us: int, on: int, name: str, task: str = "sender", flags: str = "...1.", **fields: object) -> str:
    return format_event(Event(ts_us * 1000, on, name, task, 100 + on, flags, fields))


def queue(ts: int, cpu: int, target: int, csd: int) -> str:
    return line(ts, cpu, "csd_queue_cpu", cpu=target, callsite="smp_call_function_many_cond+0x1/0x2",
                func="flush_tlb_func", csd=f"{csd:016x}")


def send(ts: int, cpu: int, mask: tuple[int, ...]) -> str:
    return line(ts, cpu, "ipi_send_cpumask", cpumask=mask, callsite="smp_call_function_many_cond+0x1/0x2",
                callback="generic_smp_call_function_single_interrupt+0x0/0x10")


def run(ts: int, cpu: int, csd: int) -> list[str]:
    return [line(ts, cpu, "csd_function_entry", task="<idle>", flags="d.h1.", func="flush_tlb_func",
                 csd=f"{csd:016x}"),
            line(ts + 1, cpu, "csd_function_exit", task="<idle>", flags="d.h1.", func="flush_tlb_func",
                 csd=f"{csd:016x}")]


def test_three_calls_queued_before_the_flush_need_one_ipi(tmp_path: Path) -> None:
    """CPUs 0, 1 and 3 each queue a call on CPU 2 (and on another CPU) before CPU 2's handler runs.
    Only the first finds CPU 2's queue empty: one IPI to CPU 2, two calls queued behind it, and one
    interrupt that runs all three, each having waited from its own enqueue."""
    lines = [
        queue(10, 0, 2, 1), queue(11, 0, 1, 2), send(12, 0, (1, 2)),
        queue(20, 1, 2, 3), queue(21, 1, 3, 4), send(22, 1, (3,)),
        queue(30, 3, 2, 5), queue(31, 3, 0, 6), send(32, 3, (0,)),
        line(40, 2, "call_function_entry", task="<idle>", flags="d.h1.", vector=252),
        *run(41, 2, 1), *run(43, 2, 3), *run(45, 2, 5),
        line(47, 2, "call_function_exit", task="<idle>", flags="d.h1.", vector=252),
    ]
    path = tmp_path / "litmus.trace"
    path.write_text("\n".join(lines) + "\n")
    r = analyze_json(str(path), "--cpus", "2")
    assert (r["csd_enqueues"], r["csd_ipis"], r["csd_no_ipi_queued"]) == (3, 1, 2)
    assert (r["cal_interrupts"], r["csds_run_in_irq"], r["csds_per_interrupt"]) == (1, 3, 3.0)
    # Waits: 41-10, 43-20, 45-30 microseconds.
    lat = r["latency_ns"]["flush_tlb_func"]
    assert lat["count"] == 3 and lat["max"] == pytest.approx(31_000, rel=1e-3)
    assert lat["p50"] == pytest.approx(23_000, rel=1e-3)
    senders = {s["task"]: s["enqueues"] for s in r["top_senders"]["2"]}
    assert senders == {"sender": 3}
    everyone = analyze_json(str(path))
    assert (everyone["csd_enqueues"], everyone["csd_ipis"], everyone["csd_no_ipi_queued"]) == (6, 4, 2)


# --- the simulator's traces analyze like real ones -------------------------------------------------------

def test_a_simulated_trace_audits_to_the_simulators_own_counts(tmp_path: Path) -> None:
    out = tmp_path / "sim.trace"
    proc = ipilab("simulate", "--json", "-m", "broadwell-ep-2s-88t", "-k", "v4.13", "-w", "tlbstorm",
                  "--set", "cpus=0-11", "-s", "0.0005", "--trace-out", str(out))
    assert proc.returncode == 0, proc.stderr
    sim = json.loads(proc.stdout)
    r = analyze_json(str(out))
    assert r["csd_enqueues"] == sim["csd_enqueues"]
    assert r["csd_ipis"] == sim["ipis_sent"]
    assert r["cal_interrupts"] == sim["cal_interrupts"]
    assert r["csd_no_ipi_queued"] + r["csds_undecided"] == sim["csd_no_ipi_queued"] + sim["csds_undecided_at_end"]
    assert r["csds_run_in_irq"] == sim["csds_run_in_irq"]


@needs_traces
def test_parsed_trace_written_back_parses_to_the_same_events(tmp_path: Path) -> None:
    for name in ("madvise-threads.trace.xz", "python-mmap-threads.trace-cmd-report.txt.xz",
                 "reclaim-usemem-3x100.perf-script.txt.xz"):
        events = list(read_trace(TRACES / name))
        out = tmp_path / f"{name}.trace"
        out.write_text("".join(format_event(e) + "\n" for e in events))
        again = list(read_trace(out))
        # ftrace text keeps microseconds; perf and trace-cmd have no flags column.
        strip = [(e.ts // 1000, e.cpu, e.name, e.task, e.pid, e.fields) for e in events]
        assert [(e.ts // 1000, e.cpu, e.name, e.task, e.pid, e.fields) for e in again] == strip, name


# --- bad input ------------------------------------------------------------------------------------------

GOOD = [line(10 + i, 0, "call_function_single_entry", task="<idle>", vector=251) for i in range(5)]
# Lines of the events `ipilab capture` adds for calibration, as a 6.18 kernel printed them (a system call's
# without its event name), and near misses of the system-call forms that neither parser may take.
CALIBRATOR_LINES = [
    "         python3-22423   [000] d.h..   924.646940: local_timer_entry: vector=236",
    " qemu-system-x86-21046   [001] dNh..   924.646952: local_timer_exit: vector=236",
    "         python3-22423   [000] d....   924.645676: page_fault_user: address=0x7ff3d3f37030 ip=0x7ff3fd7af8bb "
    "error_code=0x6",
    "         python3-22478   [000] .....   924.927602: sys_madvise(start: 0x7f3af4287000, len_in: 0x10000, "
    "behavior: 4)",
    "         python3-22478   [000] .....   924.927612: sys_madvise -> 0x0",
    "         python3-22478   [000] .....   924.927612: sys_madvise ->0x0",
    "         python3-22478   [000] .....   924.927612: sys_madvise (start: 0x7f3af4287000)",
]


def test_truncated_last_line_is_a_warning_and_the_rest_counts(tmp_path: Path) -> None:
    path = tmp_path / "cut.trace"
    path.write_text("\n".join(GOOD) + "\n" + GOOD[0][:30])
    proc = ipilab("analyze", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cal_interrupts"] == 5
    assert f"{path}:6: last line is cut short" in proc.stderr


@pytest.mark.parametrize("reference", [False, True], ids=["compiled", "reference"])
def test_the_calibrators_events_are_counted_apart_without_a_warning(tmp_path: Path, reference: bool) -> None:
    """The timer tick, a user page fault and a madvise call (entry and exit, printed without the event's name)
    among five function-call interrupts: the five count as before, the others by their tracepoint names,
    and only the two near misses are bad lines."""
    from ipilab.analysis.audit import audit_trace

    path = tmp_path / "calibrate.trace"
    path.write_text("\n".join([*GOOD, *CALIBRATOR_LINES]) + "\n")
    r = audit_trace(path, reference=reference)
    assert r["cal_interrupts"] == 5 and r["events_read"] == 5
    assert r["other_events"] == {"local_timer_entry": 1, "local_timer_exit": 1, "page_fault_user": 1,
                                 "sys_enter_madvise": 1, "sys_exit_madvise": 1}
    assert r["bad_lines"] == 2 and [w.split(": ", 1)[0] for w in r["warnings"]] == [f"{path}:11", f"{path}:12"]


def test_unknown_events_are_counted_apart_and_garbage_lines_warned(tmp_path: Path) -> None:
    path = tmp_path / "mixed.trace"
    unknown = "          <idle>-0       [000] d..2.   887.705021: sched_waking: comm=a pid=1 prio=120 target_cpu=000"
    path.write_text("\n".join([GOOD[0], unknown, "\x00\x01garbage\xff", *GOOD[1:]]) + "\n")
    proc = ipilab("analyze", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["cal_interrupts"] == 5 and r["other_events"] == {"sched_waking": 1} and r["bad_lines"] == 1
    assert f"{path}:3:" in proc.stderr


@pytest.mark.parametrize(("content", "words"), [
    (b"", ["empty"]),
    (bytes(range(256)) * 64, ["not an ftrace"]),
    (b"hello\nworld\n", ["not an ftrace"]),
])
def test_files_that_are_not_traces_fail_in_one_line(tmp_path: Path, content: bytes, words: list[str]) -> None:
    path = tmp_path / "bad.trace"
    path.write_bytes(content)
    assert_user_error(ipilab("analyze", str(path)), str(path), *words)


def test_a_mislabeled_compressed_file_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "plain.trace.gz"
    path.write_text("\n".join(GOOD) + "\n")
    assert_user_error(ipilab("analyze", str(path)), "plain.trace.gz", ".gz", "not compressed")


def test_compressed_traces_read_like_plain_ones(tmp_path: Path) -> None:
    import zstandard

    text = ("\n".join(GOOD) + "\n").encode()
    (tmp_path / "t.trace.gz").write_bytes(gzip.compress(text))
    (tmp_path / "t.trace.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    (tmp_path / "t.trace.xz").write_bytes(lzma.compress(text))
    for name in ("t.trace.gz", "t.trace.zst", "t.trace.xz"):
        assert analyze_json(str(tmp_path / name))["cal_interrupts"] == 5, name


def test_missing_file_and_bad_cpulist_fail_in_one_line(tmp_path: Path) -> None:
    assert_user_error(ipilab("analyze", str(tmp_path / "nope.trace")), "nope.trace")
    path = tmp_path / "ok.trace"
    path.write_text("\n".join(GOOD) + "\n")
    assert_user_error(ipilab("analyze", str(path), "--cpus", "x-y"), "--cpus")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(GOOD), st.text(max_size=120)), min_size=1, max_size=30))
def test_any_text_reads_without_a_traceback(tmp_path_factory: pytest.TempPathFactory, lines: list[str]) -> None:
    """Whatever the lines, the reader returns events or warnings, or one TraceFormatError; and every
    well-formed line among bad ones is still read once the format is known."""
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.trace"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    stats = ReadStats()
    try:
        events = list(read_trace(path, stats))
    except TraceFormatError:
        return
    good = sum(1 for x in lines if x in GOOD)
    if stats.format == "ftrace":
        assert len(events) == good


# --- the compiled audit against the reference one --------------------------------------------------------

def _same(path: Path, cpus: set[int] | None = None) -> None:
    from ipilab.analysis.audit import audit_trace

    fast = audit_trace(path, cpus=cpus)
    slow = audit_trace(path, cpus=cpus, reference=True)
    assert json.loads(json.dumps(fast)) == json.loads(json.dumps(slow))


FTRACE_REAL = [p for p in REAL if ".trace." in p.name]


@needs_traces
@pytest.mark.parametrize("path", FTRACE_REAL, ids=[p.name for p in FTRACE_REAL])
def test_compiled_audit_equals_the_reference_on_real_traces(path: Path) -> None:
    from ipilab.analysis.fastaudit import fast_audit

    assert fast_audit(path, None, ReadStats()) is not None  # it really took the compiled path
    _same(path)
    _same(path, {1})


def test_compiled_audit_equals_the_reference_on_a_simulated_88_cpu_trace(tmp_path: Path) -> None:
    out = tmp_path / "sim.trace"
    proc = ipilab("simulate", "-m", "broadwell-ep-2s-88t", "-k", "v4.12", "-w", "tlbstorm", "-s", "0.0002",
                  "--trace-out", str(out))
    assert proc.returncode == 0, proc.stderr
    _same(out)  # 88 CPUs: cpumasks of three 32-bit words
    _same(out, {5, 70})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2_000), min_size=5, max_size=60), st.lists(st.text(max_size=40), max_size=5),
       st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 120)), max_size=5), st.booleans())
def test_compiled_audit_equals_the_reference_on_shuffled_lines(tmp_path_factory: pytest.TempPathFactory,
                                                               picks: list[int], junk: list[str],
                                                               cuts: list[tuple[int, int]], cut_last: bool) -> None:
    """Real lines in arbitrary order, garbage and lines cut anywhere among them, maybe a cut last line:
    whenever the compiled audit takes a trace, it says exactly what the reference says."""
    lines = _sample_lines()
    chosen = [lines[i % len(lines)] for i in picks] + [j.replace("\n", " ") for j in junk]
    for i, (pick, at) in enumerate(cuts):
        chosen.insert((i * 7) % len(chosen), lines[pick % len(lines)][:at])
    text = "\n".join(chosen) + ("" if cut_last else "\n")
    path = tmp_path_factory.mktemp("mix") / "mix.trace"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    from ipilab.analysis.audit import audit_trace

    try:
        slow = audit_trace(path, reference=True)
    except TraceFormatError:
        return
    assert json.loads(json.dumps(audit_trace(path))) == json.loads(json.dumps(slow))


_LINES: list[str] = []


def _sample_lines() -> list[str]:
    if not _LINES:
        path = TRACES / "qemu4-tlbstorm-4x200.trace.xz"
        if path.exists():
            with lzma.open(path, "rt") as f:
                _LINES.extend(line.rstrip("\n") for line in f if not line.startswith("#"))
        else:
            _LINES.extend(GOOD)
        for i, extra in enumerate(CALIBRATOR_LINES * 30):  # one in ten of the first lines picked
            _LINES.insert(10 * i, extra)
    return _LINES


def test_a_handler_that_queues_and_sends_does_not_decide_the_interrupted_calls(tmp_path: Path) -> None:
    """CPU 0 queues a call on CPU 1; before its send, an interrupt on CPU 0 queues a wakeup on CPU 2 and
    sends it an IPI; then CPU 0's own send goes to CPU 1. Both calls had their IPI; none is unmatched."""
    irq = {"task": "<idle>", "flags": "d.h1."}
    lines = [
        queue(10, 0, 1, 1),
        line(11, 0, "call_function_single_entry", vector=251, **irq),
        line(12, 0, "csd_queue_cpu", cpu=2, callsite="ttwu_queue_wakelist+0x1/0x2", func="sched_ttwu_pending",
             csd=f"{7:016x}", **irq),
        line(13, 0, "ipi_send_cpu", cpu=2, callsite="ttwu_queue_wakelist+0x1/0x2",
             callback="generic_smp_call_function_single_interrupt+0x0/0x10", **irq),
        line(14, 0, "call_function_single_exit", vector=251, **irq),
        send(15, 0, (1,)),
    ]
    path = tmp_path / "nested.trace"
    path.write_text("\n".join(lines) + "\n")
    r = analyze_json(str(path))
    assert (r["csd_enqueues"], r["csd_ipis"], r["csd_no_ipi_queued"], r["ipis_unmatched"]) == (2, 2, 0, 0)
    _same(path)
    # The same as trace-cmd report lines (no flags column): the handler's entry and exit events tell the
    # context. (ftrace lines with flags saying "not in hardirq" are believed: a trace can begin inside a
    # handler, or before its exit tracepoint was enabled, and then only the flags are right.)
    plain = tmp_path / "nested-noflags.trace"
    plain.write_text("\n".join(re.sub(r" (d\.h1\.|\.\.\.1\.) ", " ", x, count=1) for x in lines) + "\n")
    r = analyze_json(str(plain))
    assert (r["format"], r["csd_ipis"], r["ipis_unmatched"]) == ("trace-cmd", 2, 0)
    _same(plain)


@needs_traces
def test_parquet_holds_every_event_read(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "events.parquet"
    r = analyze_json(str(TRACES / "qemu4-tlbstorm-4x200.trace.xz"), "--parquet", str(out))
    table = pq.read_table(out)
    assert table.num_rows == r["events_read"]
    events = table.column("event").to_pylist()
    assert events.count("csd_queue_cpu") == r["csd_enqueues"]
    masks = [m for m, e in zip(table.column("cpumask").to_pylist(), events, strict=True) if e == "ipi_send_cpumask"]
    sends = [t for t, e in zip(table.column("callback").to_pylist(), events, strict=True) if e == "ipi_send_cpu"]
    assert sum(len(m) for m in masks) + sum(1 for cb in sends if cb != "0x0") == r["csd_ipis"]
