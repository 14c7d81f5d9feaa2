"""`ipilab export --perfetto`: the Chrome Trace Event timeline of a hand-built trace, slice by slice and
arrow by arrow, and of a simulated run against the simulator's own counts."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import SHARED_TRACES
from test_cli import assert_user_error, ipilab

# Litmus: CPU0 queues call A on CPU1 and sends an IPI; CPU1 runs A in its interrupt. Then CPU0 queues B
# (IPI) and C (queue already non-empty: no IPI) on CPU1, and runs the same function locally (csd=0, no
# queue). CPU1 runs B then C in one interrupt. Times in µs after 100 s.
#   expected CPU1 slices: handler [20,24] > A [21,23]; handler [40,47] > B [41,43], C [43,46]
#   expected CPU0 slices: queue markers at 10, 30, 31 (10 ns each); local run [32,33]
#   expected arrows: 10 -> A at 21, 30 -> B at 41, 31 -> C at 43
LITMUS = """\
# tracer: nop
#
          sender-700     [000] d..2.   100.000010: csd_queue_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 func=flush_tlb_func csd=00000000000000aa
          sender-700     [000] d..2.   100.000010: ipi_send_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 callback=generic_smp_call_function_single_interrupt+0x0/0x10
          <idle>-0       [001] d.h1.   100.000020: call_function_single_entry: vector=251
          <idle>-0       [001] d.h1.   100.000021: csd_function_entry: func=flush_tlb_func, csd=00000000000000aa
          <idle>-0       [001] d.h1.   100.000023: csd_function_exit: func=flush_tlb_func, csd=00000000000000aa
          <idle>-0       [001] d.h1.   100.000024: call_function_single_exit: vector=251
          sender-700     [000] d..2.   100.000030: csd_queue_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 func=flush_tlb_func csd=00000000000000bb
          sender-700     [000] d..2.   100.000030: ipi_send_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 callback=generic_smp_call_function_single_interrupt+0x0/0x10
          sender-700     [000] d..2.   100.000031: csd_queue_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 func=flush_tlb_func csd=00000000000000cc
          sender-700     [000] d..2.   100.000032: csd_function_entry: func=flush_tlb_func, csd=0000000000000000
          sender-700     [000] d..2.   100.000033: csd_function_exit: func=flush_tlb_func, csd=0000000000000000
          <idle>-0       [001] d.h1.   100.000040: call_function_single_entry: vector=251
          <idle>-0       [001] d.h1.   100.000041: csd_function_entry: func=flush_tlb_func, csd=00000000000000bb
          <idle>-0       [001] d.h1.   100.000043: csd_function_exit: func=flush_tlb_func, csd=00000000000000bb
          <idle>-0       [001] d.h1.   100.000043: csd_function_entry: func=flush_tlb_func, csd=00000000000000cc
          <idle>-0       [001] d.h1.   100.000046: csd_function_exit: func=flush_tlb_func, csd=00000000000000cc
          <idle>-0       [001] d.h1.   100.000047: call_function_single_exit: vector=251
"""
T0 = 100_000_000.0  # 100 s in µs


def export(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "timeline.json"
    proc = ipilab("export", *args, "--perfetto", str(out))
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def tracks(data: dict) -> tuple[dict[int, str], dict[int, list[dict]]]:
    names = {e["tid"]: e["args"]["name"] for e in data["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    per: dict[int, list[dict]] = defaultdict(list)
    for e in data["traceEvents"]:
        if e["ph"] != "M":
            per[e["tid"]].append(e)
    return names, per


def check_structure(data: dict) -> None:
    """Timestamps ascend per track in file order; slices on a track nest (no partial overlap); every flow
    id has one start and one finish, each inside a slice of its track."""
    _, per = tracks(data)
    flows: dict[int, dict[str, dict]] = defaultdict(dict)
    for tid, events in per.items():
        stamps = [e["ts"] for e in events]
        assert stamps == sorted(stamps), tid
        slices = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X"]
        for a0, a1 in slices:
            assert a1 > a0  # nothing drawn zero-length
            for b0, b1 in slices:
                assert not (a0 < b0 < a1 < b1), ((a0, a1), (b0, b1))
        for e in events:
            if e["ph"] in ("s", "f"):
                assert e["ph"] not in flows[e["id"]], e
                flows[e["id"]][e["ph"]] = e
                assert any(s0 <= e["ts"] <= s1 for s0, s1 in slices), e
    for fid, pair in flows.items():
        assert set(pair) == {"s", "f"}, fid
        assert pair["f"].get("bp") == "e"
        assert pair["s"]["ts"] < pair["f"]["ts"]


def test_litmus_trace_slices_and_arrows(tmp_path: Path) -> None:
    """The litmus trace above gives exactly the slices, arrows and IPI instants worked out there."""
    trace = tmp_path / "litmus.trace"
    trace.write_text(LITMUS)
    data = export(tmp_path, str(trace))
    check_structure(data)
    names, per = tracks(data)
    by_name = {v: k for k, v in names.items()}
    assert set(by_name) == {"CPU 0", "CPU 1"}
    cpu0, cpu1 = per[by_name["CPU 0"]], per[by_name["CPU 1"]]

    def slices(events: list[dict]) -> list[tuple[str, float, float]]:
        return [(e["name"], round(e["ts"] - T0, 3), round(e["dur"], 3)) for e in events if e["ph"] == "X"]

    assert slices(cpu1) == [("call_function_single interrupt", 20, 4), ("flush_tlb_func", 21, 2),
                            ("call_function_single interrupt", 40, 7), ("flush_tlb_func", 41, 2),
                            ("flush_tlb_func", 43, 3)]
    assert slices(cpu0) == [("queue -> CPU 1", 10, 0.01), ("queue -> CPU 1", 30, 0.01), ("queue -> CPU 1", 31, 0.01),
                            ("flush_tlb_func", 32, 1)]
    starts = {e["id"]: e["ts"] - T0 for e in cpu0 if e["ph"] == "s"}
    ends = {e["id"]: e["ts"] - T0 for e in cpu1 if e["ph"] == "f"}
    arrows = sorted((round(starts[i]), round(ends[i])) for i in starts)
    assert arrows == [(10, 21), (30, 41), (31, 43)]
    assert not any(e["ph"] == "f" for e in cpu0)  # the local run (csd=0) had no queue and gets no arrow
    sends = [e["name"] for e in cpu0 if e["ph"] == "i"]
    assert sends == ["IPI -> CPU 1", "IPI -> CPU 1"]  # C needed none


def test_a_window_of_the_litmus_trace(tmp_path: Path) -> None:
    """--from-ms 0.015 --to-ms 0.05: the events 15 to 50 µs after the first (at 10 µs), i.e. 25..60 µs. The
    first call (queued at 10, run at 21..23) is outside; B and C with their arrows and the local run are in."""
    trace = tmp_path / "litmus.trace"
    trace.write_text(LITMUS)
    data = export(tmp_path, str(trace), "--from-ms", "0.015", "--to-ms", "0.05")
    check_structure(data)
    got = sorted((e["name"], round(e["ts"] - T0, 3)) for e in data["traceEvents"] if e["ph"] == "X")
    assert got == [("call_function_single interrupt", 40), ("flush_tlb_func", 32), ("flush_tlb_func", 41),
                   ("flush_tlb_func", 43), ("queue -> CPU 1", 30), ("queue -> CPU 1", 31)]
    assert sum(e["ph"] == "s" for e in data["traceEvents"]) == 2


def test_simulated_timeline_matches_the_simulators_counts(tmp_path: Path) -> None:
    """--from-sim: one queue marker per CSD queued, one arrow per CSD run (calls still queued at the end
    get none), one handler slice per CAL interrupt, as `simulate --json` counts them for the same run
    (its window starts at time 0: no warm-up)."""
    args = ["-k", "v4.13", "--set", "rate=50000", "-s", "0.001", "--seed", "3"]
    data = export(tmp_path, "--from-sim", *args)
    check_structure(data)
    proc = ipilab("simulate", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    events = data["traceEvents"]
    markers = [e for e in events if e["ph"] == "X" and e["name"].startswith("queue -> CPU")]
    assert len(markers) == r["csd_enqueues"] > 0
    ran = r["csds_run_in_irq"] + r["csds_run_from_idle"]
    assert sum(e["ph"] == "s" for e in events) == sum(e["ph"] == "f" for e in events) == ran  # still queued: none
    handlers = [e for e in events if e["ph"] == "X" and e["name"].startswith("call_function")]
    assert len(handlers) == r["cal_interrupts"]


@pytest.mark.parametrize(("args", "words"), [
    ([], ["TRACE", "--from-sim"]),
    (["nope.trace"], ["nope.trace"]),
    (["--from-sim", "-k", "v9.9"], ["v9.9"]),
    (["--from-sim", "--from-ms", "2", "--to-ms", "1"], ["--to-ms", "--from-ms"]),
], ids=["neither", "missing-trace", "bad-kernel", "empty-window"])
def test_export_bad_input_is_one_error_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    """Neither input, a missing trace, a bad simulation option: one error line, no file written."""
    proc = ipilab("export", *args, "--perfetto", str(tmp_path / "t.json"), cwd=tmp_path)
    assert_user_error(proc, *words)
    assert not (tmp_path / "t.json").exists()


def test_a_real_4_cpu_trace_gives_a_well_formed_timeline(tmp_path: Path) -> None:
    """A real 4-vCPU trace (Linux 6.12 under QEMU, TLB shootdowns): four CPU tracks, nested slices, every
    arrow bound at both ends; no more arrows than the calls `ipilab analyze` counts as queued."""
    trace = SHARED_TRACES / "qemu4-tlbstorm-4x200.trace.xz"
    if not trace.exists():
        pytest.skip(f"{trace} not here (shared/ sits next to the repository clone)")
    data = export(tmp_path, str(trace))
    check_structure(data)
    names, _ = tracks(data)
    assert sorted(names.values()) == ["CPU 0", "CPU 1", "CPU 2", "CPU 3"]
    audit = json.loads(ipilab("analyze", "--json", str(trace)).stdout)
    arrows = sum(e["ph"] == "s" for e in data["traceEvents"])
    assert 0 < arrows <= audit["csd_enqueues"]
