"""How long queued calls wait (queued -> run), as `analyze` and `report` print it: against a second, naive
pairing written here on every real trace, and on hand-worked litmus traces where the kernel's queue rules
(a flush takes the whole queue; one sched_ttwu_pending call runs a whole batch of wakeups) decide."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_TRACES
from test_cli import ipilab
from test_replay import ev, handler, queue, send_one, write

from ipilab.analysis.audit import audit_trace
from ipilab.events import symbol_name
from ipilab.trace.read import read_trace

REAL = sorted(SHARED_TRACES.glob("*.xz"))
TTWU = "sched_ttwu_pending"
WAKE_SITE = "ttwu_queue_wakelist+0x11d/0x150"
SINGLE_SITE = "generic_exec_single+0x36/0x150"


# --- a second implementation: the plain pairing rule, nothing else ----------------------------------------

def naive_waits(path: Path) -> dict[str, list[int]]:
    """Each csd_queue_cpu paired with the first later csd_function_entry of the same csd pointer on its
    target CPU; a remote wakeup with the first later sched_ttwu_pending run there. A CSD stays locked
    while queued, so a pointer queued again before any such run leaves the earlier one unpaired. Waits in
    ns, per queued function."""
    open_calls: list[tuple[int, int, str, str]] = []  # (queued ts, target, csd, func), oldest first
    waits: dict[str, list[int]] = {}
    for e in read_trace(path):
        if e.name == "csd_queue_cpu":
            csd = str(e.fields["csd"])
            open_calls = [c for c in open_calls if c[2] != csd]
            open_calls.append((e.ts, int(e.fields["cpu"]), csd, symbol_name(str(e.fields["func"]))))  # type: ignore[arg-type]
        elif e.name == "csd_function_entry" and int(str(e.fields["csd"]), 16) != 0:
            func, csd = symbol_name(str(e.fields["func"])), str(e.fields["csd"])
            still = []
            for ts, target, c_csd, c_func in open_calls:
                if target == e.cpu and ((c_func == TTWU and func == TTWU) or (c_func != TTWU and c_csd == csd)):
                    waits.setdefault(c_func, []).append(e.ts - ts)
                else:
                    still.append((ts, target, c_csd, c_func))
            open_calls = still
    return waits


def at_rank(values: list[int], p: float) -> int:
    """The p-th percentile as HdrHistogram ranks it: the sample at rank round(p% of n), at least the first."""
    s = sorted(values)
    return s[max(1, int(p * len(s) / 100 + 0.5)) - 1]


def close_enough(got: int, want: int, resolution: int) -> bool:
    """Within 10%, or one step of the trace's timestamps."""
    return abs(got - want) <= max(0.1 * want, resolution)


@pytest.mark.skipif(not REAL, reason=f"no real traces in {SHARED_TRACES}")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_waits_agree_with_a_naive_pairing_on_real_traces(path: Path) -> None:
    r = audit_trace(path)  # what `analyze` computes (the compiled audit where it reads the format)
    res = r["timestamp_resolution_ns"]
    assert res == 1000  # every trace here prints microseconds
    naive = naive_waits(path)
    assert set(r["latency_ns"]) == set(naive)
    for func, waits in naive.items():
        got = r["latency_ns"][func]
        assert close_enough(got["count"], len(waits), 0), func
        want = {"p50": at_rank(waits, 50), "p90": at_rank(waits, 90), "p99": at_rank(waits, 99), "max": max(waits)}
        for p, value in want.items():
            assert close_enough(got[p], value, res), (func, p, got[p], value)


# --- litmus traces ------------------------------------------------------------------------------------------

def waits_us(r: dict, func: str) -> tuple[int, int, int, int, int]:
    w = r["latency_ns"][func]
    return w["count"], *(round(w[p] / 1000) for p in ("p50", "p90", "p99", "max"))  # type: ignore[return-value]


def both_audits(path: Path) -> dict:
    """What `analyze` computes (the compiled audit, for ftrace text), checked equal to the Python reference."""
    r = audit_trace(path)
    ref = audit_trace(path, reference=True)
    for key in ("latency_ns", "function_ns", "runs_unseen", "runs_unmatched", "csd_ipis", "csd_no_ipi_queued",
                "ipis_unmatched", "timestamp_resolution_ns"):
        assert r[key] == ref[key], key
    return r


def test_a_trace_that_starts_inside_a_handler(tmp_path: Path) -> None:
    """The trace begins inside CPU 1's call-function interrupt: its entry, and the detach of CPU 1's queue,
    came before the first line. The handler runs sched_ttwu_pending for a batch queued before the trace
    (its pointer 0xA was never seen queued) and a flush_tlb_func of CSD 0xB, also queued before.
    CPU 0 wakes a task on CPU 1 at 9 us (pointer 0xC): the queue was already detached, so this wakeup is
    not in the running batch even though its csd_queue_cpu comes before the batch's run in the trace; it
    waits for the next interrupt, 20 us, running at 21 us: 12 us. CPU 0 then queues CSD 0xB again at 30
    us, run at 36 us: 6 us. The two runs at the start pair with nothing (runs_unmatched 2): 0xB's first run
    is not the run of its later queueing."""
    lines = [
        queue(9, 0, 1, 0xC, WAKE_SITE, TTWU), send_one(9, 0, 1, WAKE_SITE),
        ev(10, 1, f"csd_function_entry: func={TTWU}, csd={0xA:016x}", "<idle>", "d.h1."),
        ev(11, 1, f"csd_function_exit: func={TTWU}, csd={0xA:016x}", "<idle>", "d.h1."),
        ev(11, 1, f"csd_function_entry: func=flush_tlb_func, csd={0xB:016x}", "<idle>", "d.h1."),
        ev(12, 1, f"csd_function_exit: func=flush_tlb_func, csd={0xB:016x}", "<idle>", "d.h1."),
        ev(12, 1, "call_function_single_exit: vector=251", "<idle>", "d.h1."),
        *handler(20, 1, 251, 0xC, func=TTWU),
        queue(30, 0, 1, 0xB, SINGLE_SITE), send_one(30, 0, 1, SINGLE_SITE),
        *handler(35, 1, 251, 0xB),
    ]
    r = both_audits(write(tmp_path, lines))
    assert waits_us(r, TTWU) == (1, 12, 12, 12, 12)
    assert waits_us(r, "flush_tlb_func") == (1, 6, 6, 6, 6)
    assert (r["runs_unmatched"], r["runs_unseen"]) == (2, 0)


def test_a_single_call_queued_behind_another(tmp_path: Path) -> None:
    """CPU 0 sends nohz_csd_func to CPU 1 on the single-target path (CSD 0xA, IPI at 10 us), then another
    (0xB, 12 us) that finds CPU 1's queue waiting for that IPI: no send. CPU 1's interrupt at 20 us runs
    0xA at 21 and 0xB at 22: waits 11 and 10 us. At 30 us CPU 0 sends do_sync_core (0xC) with an IPI of
    its own, run at 45 us: 15 us. The IPI at 30 us is 0xC's, not the still undecided 0xB's: per function,
    nohz_csd_func got 1 IPI and 1 call queued behind, do_sync_core 1 IPI; none unmatched. nohz_csd_func's
    waits 10 and 11 us: p50 (rank 1 of 2) 10, p90 (rank 2) and max 11."""
    nohz, sync = "nohz_csd_func", "do_sync_core"
    lines = [
        queue(10, 0, 1, 0xA, SINGLE_SITE, nohz), send_one(10, 0, 1, SINGLE_SITE),
        queue(12, 0, 1, 0xB, SINGLE_SITE, nohz),
        *handler(20, 1, 251, 0xA, 0xB, func=nohz),
        queue(30, 0, 1, 0xC, SINGLE_SITE, sync), send_one(30, 0, 1, SINGLE_SITE),
        *handler(44, 1, 251, 0xC, func=sync),
    ]
    r = both_audits(write(tmp_path, lines))
    assert (r["csd_ipis"], r["csd_no_ipi_queued"], r["ipis_unmatched"], r["csds_undecided"]) == (2, 1, 0, 0)
    by_func = {f: (t["ipis"], t["no_ipi_queued"]) for f, t in r["by"]["func"].items()}
    assert by_func == {nohz: (1, 1), sync: (1, 0)}
    assert waits_us(r, nohz) == (2, 10, 11, 11, 11)
    assert waits_us(r, sync) == (1, 15, 15, 15, 15)


def test_one_wakeup_run_serves_its_whole_batch(tmp_path: Path) -> None:
    """CPUs 0, 2 and 3 wake tasks on CPU 1 at 10, 12 and 14 us (pointers 0xA, 0xB, 0xC; only the first
    sends an IPI). CPU 1's interrupt at 20 us calls sched_ttwu_pending once, at 21 us, traced with the first
    pointer: it runs all three, waits 11, 9 and 7 us. CPU 0 wakes 0xD at 22 us, after that run (so after
    the detach), and CPU 2 wakes 0xB again at 30 us; the next interrupt (40 us) runs 0xD's batch at 41 us:
    0xD waited 19 us and 0xB 11 us. Waits 7, 9, 11, 11, 19: p50 (rank 3) 11, p90 and max 19. No run is
    missing: each wakeup's run is its batch's."""
    lines = [
        queue(10, 0, 1, 0xA, WAKE_SITE, TTWU), send_one(10, 0, 1, WAKE_SITE),
        queue(12, 2, 1, 0xB, WAKE_SITE, TTWU),
        queue(14, 3, 1, 0xC, WAKE_SITE, TTWU),
        *handler(20, 1, 251, 0xA, func=TTWU),
        queue(22, 0, 1, 0xD, WAKE_SITE, TTWU), send_one(22, 0, 1, WAKE_SITE),
        queue(30, 2, 1, 0xB, WAKE_SITE, TTWU),
        *handler(40, 1, 251, 0xD, func=TTWU),
    ]
    r = both_audits(write(tmp_path, lines))
    assert waits_us(r, TTWU) == (5, 11, 19, 19, 19)
    assert (r["runs_unmatched"], r["runs_unseen"]) == (0, 0)
    assert r["function_ns"][TTWU]["p50"] == 0  # entry and exit in the same microsecond


def test_times_below_the_resolution_print_as_such_in_analyze_and_report(tmp_path: Path) -> None:
    """The batch above, as people read it: runs that took under a microsecond print "< 1 us" (not "1 ns"),
    the waits in microseconds, in both `analyze` and the HTML `report`, each saying the resolution."""
    lines = [
        queue(10, 0, 1, 0xA, WAKE_SITE, TTWU), send_one(10, 0, 1, WAKE_SITE),
        queue(12, 2, 1, 0xB, WAKE_SITE, TTWU),
        *handler(20, 1, 251, 0xA, func=TTWU),
    ]
    path = write(tmp_path, lines)
    proc = subprocess.run([sys.executable, "-m", "ipilab.cli", "analyze", str(path)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})  # wide enough for whole names
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith(f"│ {TTWU}"))
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    # function, waits, wait p50/p90/p99/max (9 and 11 us), runs, run p50/p99
    assert cells == [TTWU, "2", "9 us", "11 us", "11 us", "11 us", "1", "< 1 us", "< 1 us"]
    assert "timestamps resolve 1 us" in proc.stdout
    page = tmp_path / "r.html"
    proc = ipilab("report", str(path), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    assert "timestamps resolve 1 us" in html
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", html, re.S)]
    assert [TTWU, "2", "9 us", "11 us", "11 us", "11 us", "1", "&lt; 1 us", "&lt; 1 us"] in rows
