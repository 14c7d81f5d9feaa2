"""`ipilab replay`: hand-built litmus traces whose decisions are worked out here, the real traces with their
ipi_send_* and sched_wake_idle_without_ipi lines removed (predicted against the removed truth), and a
round trip through the simulator (its trace, replayed under its own kernel, gives its own decisions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_TRACES
from test_cli import assert_user_error, ipilab

from ipilab.analysis.replay import (
    DECISION_EVENTS,
    NEVER,
    predict,
    read_model,
    read_with_and_without_decisions,
    replay_trace,
    trace_events,
)
from ipilab.kernel.features import resolve_kernel
from ipilab.machine.model import load_machine
from ipilab.sim.run import simulate
from ipilab.trace.read import ReadStats
from ipilab.workloads import WorkloadError, workload_from_settings

TRACES = SHARED_TRACES
REAL = sorted(TRACES.glob("*.xz"))
needs_traces = pytest.mark.skipif(not REAL, reason=f"no real traces in {TRACES}")
SENDS = DECISION_EVENTS
CALLBACK = "callback=generic_smp_call_function_single_interrupt+0x0/0x10"


# --- litmus traces: ftrace text, one helper per kind of line ----------------------------------------------

def ev(ts_us: int, cpu: int, text: str, task: str = "sender", flags: str = "...1.") -> str:
    pid = 0 if task == "<idle>" else 100 + cpu
    return f"{task:>16}-{pid:<7} [{cpu:03d}] {flags} {ts_us // 1_000_000:5d}.{ts_us % 1_000_000:06d}: {text}"


def queue(ts: int, cpu: int, target: int, csd: int, site: str = "on_each_cpu_cond_mask+0x20/0x60",
          func: str = "flush_tlb_func") -> str:
    return ev(ts, cpu, f"csd_queue_cpu: cpu={target} callsite={site} func={func} csd={csd:016x}")


def send_mask(ts: int, cpu: int, mask: int) -> str:
    return ev(ts, cpu, f"ipi_send_cpumask: cpumask={mask:08x} callsite=on_each_cpu_cond_mask+0x20/0x60 {CALLBACK}")


def send_one(ts: int, cpu: int, target: int, site: str = "on_each_cpu_cond_mask+0x20/0x60") -> str:
    return ev(ts, cpu, f"ipi_send_cpu: cpu={target} callsite={site} {CALLBACK}")


def no_ipi_polling(ts: int, cpu: int, target: int) -> str:
    return ev(ts, cpu, f"sched_wake_idle_without_ipi: cpu={target}")


def handler(ts: int, cpu: int, vector: int, *csds: int, func: str = "flush_tlb_func") -> list[str]:
    """An interrupt on idle `cpu` that runs `csds`, one microsecond each."""
    name = "call_function_single" if vector == 251 else "call_function"
    lines = [ev(ts, cpu, f"{name}_entry: vector={vector}", "<idle>", "d.h1.")]
    for i, csd in enumerate(csds):
        lines += [ev(ts + 1 + i, cpu, f"csd_function_entry: func={func}, csd={csd:016x}", "<idle>", "d.h1."),
                  ev(ts + 1 + i, cpu, f"csd_function_exit: func={func}, csd={csd:016x}", "<idle>", "d.h1.")]
    return [*lines, ev(ts + 1 + len(csds), cpu, f"{name}_exit: vector={vector}", "<idle>", "d.h1.")]


def idle_flush(ts: int, cpu: int, csd: int, func: str = "sched_ttwu_pending") -> list[str]:
    """The idle loop's own flush, no interrupt: NEED_RESCHED set, interrupts off."""
    return [ev(ts, cpu, f"csd_function_entry: func={func}, csd={csd:016x}", "<idle>", "dN.1."),
            ev(ts, cpu, f"csd_function_exit: func={func}, csd={csd:016x}", "<idle>", "dN.1.")]


def switch(ts: int, cpu: int, to_idle: bool) -> str:
    prev, nxt = ("task", f"swapper/{cpu}") if to_idle else (f"swapper/{cpu}", "task")
    ppid, npid = (100 + cpu, 0) if to_idle else (0, 100 + cpu)
    return ev(ts, cpu, f"sched_switch: prev_comm={prev} prev_pid={ppid} prev_prio=120 prev_state=S ==> "
                       f"next_comm={nxt} next_pid={npid} next_prio=120", "task" if to_idle else "<idle>", "d..2.")


def cpu_idle(ts: int, cpu: int, state: int) -> str:
    return ev(ts, cpu, f"cpu_idle: state={state} cpu_id={cpu}", "<idle>", "d..1.")


HALT, WAKE = 1, 4294967295


def write(tmp_path: Path, lines: list[str], name: str = "litmus.trace", drop: frozenset[str] = frozenset()) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(x for x in lines if not any(f" {d}: " in x for d in drop)) + "\n")
    return path


def replay(path: Path, *kernels: str, **kw: object) -> dict:
    return replay_trace(path, [resolve_kernel(k) for k in kernels], **kw)  # type: ignore[arg-type]


def by_kernel(r: dict) -> dict[str, dict]:
    return {k["kernel"]: k for k in r["kernels"]}


def decisions(path: Path, kernel: str, **kw: object) -> list[str]:
    m = read_model(trace_events(path, ReadStats()))
    p = predict(m, resolve_kernel(kernel), **kw)  # type: ignore[arg-type]
    return [p.decisions[q.seq] for q in m.enqueues]


# --- the seed's case: three multi-CPU calls queue on one CPU before it flushes ---------------------------

def three_calls_on_cpu2() -> list[str]:
    """CPUs 0, 3 and 5 each flush TLBs on CPU 2 and one other CPU (1, 4, 6), all three before CPU 2's
    handler runs. The 6.18 kernel that traced it: CPU 0 finds both queues empty (one mask IPI to 1 and 2);
    CPUs 3 and 5 find CPU 2's queue waiting, so only their other target needs an IPI, sent on the single
    path. CPU 2 then runs all three calls in one interrupt."""
    return [
        queue(10, 0, 1, 0x10), queue(11, 0, 2, 0x12), send_mask(12, 0, 0b110),
        queue(20, 3, 2, 0x32), queue(21, 3, 4, 0x34), send_one(22, 3, 4),
        queue(30, 5, 2, 0x52), queue(31, 5, 6, 0x56), send_one(32, 5, 6),
        *handler(40, 1, 252, 0x10), *handler(41, 4, 251, 0x34), *handler(42, 6, 251, 0x56),
        *handler(50, 2, 252, 0x12, 0x32, 0x52),
    ]


def test_three_calls_queued_before_one_flush_need_one_ipi_from_v4_13_three_before(tmp_path: Path) -> None:
    r = by_kernel(replay(write(tmp_path, three_calls_on_cpu2()), "v6.18", "v4.13", "v4.12"))
    # v4.13 and later: CPU 2 gets one IPI (the first call's), the other two calls queue behind it; CPUs 1,
    # 4 and 6 one each. 4 IPIs, 4 interrupts, 2 calls without an IPI.
    for k in ("v6.18", "v4.13"):
        assert (r[k]["ipis"], r[k]["cal_interrupts"], r[k]["csd_no_ipi_queued"]) == (4, 4, 2), k
        assert r[k]["csds_per_interrupt"] == 6 / 4
    # v4.12: every target of a multi-CPU call gets its IPI: three to CPU 2 (two to a queue already
    # waiting). All three are vector 252, pending together in CPU 2's APIC: they merge into one interrupt.
    v412 = r["v4.12"]
    assert (v412["ipis"], v412["ipis_to_nonempty_queue"], v412["csd_no_ipi_queued"]) == (6, 2, 0)
    assert (v412["apic_merged"], v412["cal_interrupts"]) == (2, 4)
    # On the 6.18 paths, CPUs 4 and 6 hear vector 251 (one IPI in the call), CPUs 1 and 2 vector 252.
    assert (r["v6.18"]["ipis_single"], r["v6.18"]["ipis_mask"]) == (2, 2)
    assert (r["v4.13"]["ipis_single"], r["v4.13"]["ipis_mask"]) == (0, 4)
    # The trace's own kernel agrees with the trace on every call; older kernels are not compared.
    a = r["v6.18"]["agreement"]
    assert (a["compared"], a["matching"], a["mismatches"]) == (6, 6, {})
    assert r["v4.12"]["agreement"] is None


def test_without_send_lines_the_same_decisions_are_predicted(tmp_path: Path) -> None:
    full = write(tmp_path, three_calls_on_cpu2(), "full.trace")
    bare = write(tmp_path, three_calls_on_cpu2(), "bare.trace", drop=SENDS)
    assert "ipi_send" not in bare.read_text()
    for k in ("v6.18", "v4.12"):
        assert decisions(bare, k) == decisions(full, k)
    r = replay(bare, "v6.18")
    assert r["decisions_known"] is False and r["real"]["ipis"] is None
    assert r["kernels"][0]["agreement"] is None and r["kernels"][0]["ipis"] == 4


def test_a_call_queued_on_its_own_cpu_is_run_locally_not_decided(tmp_path: Path) -> None:
    """CPU 0 queues a call on CPU 1, then (as only a malformed trace shows) one on itself. The kernel runs a
    call for its own CPU locally, never queuing it, and so does the model that decides the replay: the
    call on CPU 1 found an empty queue and gets an IPI; the one on CPU 0 gets no decision at all."""
    site = "generic_exec_single+0x36/0x150"
    path = write(tmp_path, [queue(10, 0, 1, 0x10, site), queue(20, 0, 0, 0x20, site), *handler(30, 1, 251, 0x10)])
    m = read_model(trace_events(path, ReadStats()))
    for k in ("v6.18", "v4.12"):
        p = predict(m, resolve_kernel(k))
        assert [p.decisions.get(q.seq) for q in m.enqueues] == ["ipi", None], k
        assert (p.counts["ipis"], p.counts["csd_no_ipi_queued"], p.counts["csd_no_ipi_polling"]) == (1, 0, 0)


# --- when the queue is detached ---------------------------------------------------------------------------

def test_a_call_belongs_to_the_flush_that_runs_it(tmp_path: Path) -> None:
    """CPU 1's interrupt begins at 20 µs; CPU 0 queues call B at 21 µs, before the handler's first run.
    If the handler runs B, the detach came after B's enqueue: A was still queued, so B needed no IPI.
    If B runs only in the next interrupt, the detach came first: B found the queue empty and owed one."""
    def trace(b_in_first: bool) -> list[str]:
        site = "generic_exec_single+0x36/0x150"
        lines = [queue(10, 0, 1, 0xA, site, "nohz_csd_func"), send_one(11, 0, 1, site),
                 ev(20, 1, "call_function_single_entry: vector=251", "<idle>", "d.h1."),
                 queue(21, 0, 1, 0xB, site, "nohz_csd_func")]
        if not b_in_first:
            lines.append(send_one(21, 0, 1, site))
        runs = [0xA, 0xB] if b_in_first else [0xA]
        for i, csd in enumerate(runs):
            lines += [ev(22 + i, 1, f"csd_function_entry: func=nohz_csd_func, csd={csd:016x}", "<idle>", "d.h1."),
                      ev(22 + i, 1, f"csd_function_exit: func=nohz_csd_func, csd={csd:016x}", "<idle>", "d.h1.")]
        lines.append(ev(25, 1, "call_function_single_exit: vector=251", "<idle>", "d.h1."))
        if not b_in_first:
            lines += handler(30, 1, 251, 0xB, func="nohz_csd_func")
        return [*lines, switch(60, 0, to_idle=True)]  # CPU 0 moves on: B got no IPI unless the trace says so

    assert decisions(write(tmp_path, trace(True), drop=SENDS), "v6.18") == ["ipi", "queued"]
    assert decisions(write(tmp_path, trace(False), drop=SENDS), "v6.18") == ["ipi", "ipi"]
    for b_in_first in (True, False):
        a = replay(write(tmp_path, trace(b_in_first)), "v6.18")["kernels"][0]["agreement"]
        assert a["matching"] == a["compared"] == 2


def test_which_call_found_the_queue_empty(tmp_path: Path) -> None:
    """csd_queue_cpu fires just before llist_add. CPU 0 queues an async nohz kick (A) on CPU 1, CPU 2 a
    TLB flush (S) that waits; CPU 1's interrupt runs S before A (5.8+ runs SYNC calls first).
    200 us apart, the trace's order holds: A was added first and owed the IPI. 50 us apart (RACE_NS is
    100 us) the two may have raced to llist_add, and the run order says which was first: S. A wakeup
    queued first keeps its place: wakeups run last whenever they came."""
    def trace(gap_us: int) -> list[str]:
        g = "generic_exec_single+0x36/0x150"
        return [queue(10, 0, 1, 0xA, g, "nohz_csd_func"), queue(10 + gap_us, 2, 1, 0x5),
                ev(30, 1, "call_function_single_entry: vector=251", "<idle>", "d.h1."),
                ev(31, 1, "csd_function_entry: func=flush_tlb_func, csd=0000000000000005", "<idle>", "d.h1."),
                ev(32, 1, "csd_function_exit: func=flush_tlb_func, csd=0000000000000005", "<idle>", "d.h1."),
                ev(33, 1, "csd_function_entry: func=nohz_csd_func, csd=000000000000000a", "<idle>", "d.h1."),
                ev(34, 1, "csd_function_exit: func=nohz_csd_func, csd=000000000000000a", "<idle>", "d.h1."),
                ev(35, 1, "call_function_single_exit: vector=251", "<idle>", "d.h1.")]

    assert decisions(write(tmp_path, trace(200)), "v6.18") == ["ipi", "queued"]
    assert decisions(write(tmp_path, trace(50)), "v6.18") == ["queued", "ipi"]


def test_one_wakeup_run_takes_the_whole_batch(tmp_path: Path) -> None:
    """Remote wakeups run as one sched_ttwu_pending call traced with the first one's pointer. CPU 0 wakes
    a task on CPU 1 (IPI), CPU 2 wakes another before CPU 1's interrupt (queued behind the first); a third
    wakeup of the second task comes after the flush: empty queue again, an IPI. Kernels before the shared
    queue (v5.8) keep wakeups off call_single_queue: no CSD, no function-call IPI."""
    site, func = "ttwu_queue_wakelist+0x11d/0x150", "sched_ttwu_pending"
    lines = [queue(10, 0, 1, 0xA, site, func), send_one(10, 0, 1, site),
             queue(12, 2, 1, 0xB, site, func),
             *handler(20, 1, 251, 0xA, func=func),
             queue(30, 2, 1, 0xB, site, func), send_one(30, 2, 1, site),
             *handler(40, 1, 251, 0xB, func=func)]
    path = write(tmp_path, lines)
    assert decisions(path, "v6.18") == ["ipi", "queued", "ipi"]
    r = by_kernel(replay(path, "v6.18", "v4.13"))
    assert r["v6.18"]["agreement"]["matching"] == 3
    assert (r["v4.13"]["wakeups_off_queue"], r["v4.13"]["ipis"], r["v4.13"]["cal_interrupts"]) == (3, 0, 0)


# --- when a target is polling -----------------------------------------------------------------------------

def polling_story() -> list[str]:
    """CPU 1 switches to its idle task at 0 µs and polls (TIF_POLLING_NRFLAG) until it halts at 300 µs.
    A wakeup at 100 µs finds it polling: no IPI, CPU 1's idle loop flushes the queue itself. A call at
    295 µs comes within the 12 µs before the traced halt, when polling is already cleared: an IPI. After
    that interrupt and the halt's end at 305 µs the idle loop polls again until it halts at 400 µs; a call at
    450 µs finds it halted: an IPI."""
    t, f = "ttwu_queue_wakelist+0x11d/0x150", "sched_ttwu_pending"
    g, n = "generic_exec_single+0x36/0x150", "nohz_csd_func"
    return [
        switch(0, 1, to_idle=True),
        queue(100, 0, 1, 0xA, t, f), no_ipi_polling(100, 0, 1), *idle_flush(104, 1, 0xA),
        switch(105, 1, to_idle=False), switch(200, 1, to_idle=True),
        queue(295, 0, 1, 0xB, g, n), send_one(295, 0, 1, g), cpu_idle(300, 1, HALT),
        *handler(302, 1, 251, 0xB, func=n), cpu_idle(305, 1, WAKE),
        cpu_idle(400, 1, HALT),
        queue(450, 0, 1, 0xC, g, n), send_one(450, 0, 1, g), *handler(455, 1, 251, 0xC, func=n),
        cpu_idle(460, 1, WAKE),
    ]


def test_polling_idle_targets_need_no_ipi_from_v5_8(tmp_path: Path) -> None:
    path = write(tmp_path, polling_story())
    assert decisions(path, "v6.18") == ["polling", "ipi", "ipi"]
    r = by_kernel(replay(path, "v6.18", "v4.13", "v6.18-skip_polling_idle"))
    assert r["v6.18"]["agreement"]["matching"] == 3
    assert (r["v6.18"]["ipis"], r["v6.18"]["csd_no_ipi_polling"], r["v6.18"]["cal_interrupts"]) == (2, 1, 2)
    # Without the polling skip the first call gets an IPI too; open loop keeps CPU 1's own flush at 104 µs,
    # where the pending IPI is taken as an interrupt: three interrupts, every call run after one.
    k = r["v6.18-skip_polling_idle"]
    assert (k["ipis"], k["cal_interrupts"], k["csd_no_ipi_polling"], k["csds_run_without_irq"]) == (3, 3, 0, 0)
    # v4.13 keeps wakeups off the queue: two calls, two IPIs.
    assert (r["v4.13"]["csd_enqueues"], r["v4.13"]["ipis"]) == (2, 2)
    # A larger clear-before-halt margin makes the 100 µs wakeup an IPI as well (it is 200 µs before the halt).
    assert decisions(path, "v6.18", poll_clear_ns=250_000) == ["ipi", "ipi", "ipi"]


def test_a_halt_poll_window_keeps_a_halting_cpu_polling(tmp_path: Path) -> None:
    """With guest halt-polling, an idle CPU polls for halt_poll_ns after entering its halting state: the
    450 µs call comes 50 µs after the halt at 400 µs, inside a 100 µs window, outside a 10 µs one."""
    path = write(tmp_path, polling_story(), drop=SENDS)
    m = read_model(trace_events(path, ReadStats()), halt_poll_ns=100_000)
    assert [predict(m, resolve_kernel("v6.18")).decisions[q.seq] for q in m.enqueues] == ["polling", "ipi", "polling"]
    m = read_model(trace_events(path, ReadStats()), halt_poll_ns=10_000)
    assert [predict(m, resolve_kernel("v6.18")).decisions[q.seq] for q in m.enqueues] == ["polling", "ipi", "ipi"]
    # The trace's own guest_halt_poll_ns events set the window when no value is given.
    lines = polling_story()
    lines.insert(lines.index(cpu_idle(400, 1, HALT)),
                 ev(399, 1, "guest_halt_poll_ns: halt_poll_ns 100000 (grow 0)", "<idle>", "...1."))
    assert decisions(write(tmp_path, lines, "haltpoll.trace"), "v6.18") == ["polling", "ipi", "polling"]


# --- the real traces, with the send lines removed ---------------------------------------------------------

@needs_traces
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_traces_without_their_send_lines_predict_the_removed_decisions(path: Path) -> None:
    full, bare = read_with_and_without_decisions(path)
    assert bare.audit_result["decisions_known"] is False
    kernel = resolve_kernel("v6.18")
    predicted = predict(bare, kernel)
    by_line = {q.lineno: predicted.decisions[q.seq] for q in bare.enqueues}
    polling_traced = full.kind_counts["sched_wake_idle_without_ipi"] > 0
    compared = agree = real_ipis = 0
    for q in full.enqueues:
        if q.seq < full.window_start or q.real is None or q.real.decision is None:
            continue
        real, pred = q.real.decision, by_line[q.lineno]
        compared += 1
        real_ipis += real == "ipi"
        # Without sched_wake_idle_without_ipi the trace cannot tell a polling target from a waiting queue.
        agree += real == pred or (not polling_traced and "ipi" not in (real, pred))
    predicted_ipis = sum(1 for q in full.enqueues if q.seq >= full.window_start and by_line[q.lineno] == "ipi")
    assert compared > 0
    assert abs(predicted_ipis - real_ipis) <= 0.01 * real_ipis, (predicted_ipis, real_ipis)
    assert agree >= 0.99 * compared, (agree, compared)


# --- round trip through the simulator ---------------------------------------------------------------------

@pytest.mark.parametrize(("machine", "kernel", "workload", "settings", "halt_poll_ns"), [
    ("vm-2cpu", "v6.18", "synthetic", {"rate": "200000", "senders": "0", "targets": "1", "others": "idle"}, 30_000),
    ("vm-2cpu", "v4.12", "synthetic", {"rate": "200000", "senders": "0", "targets": "1", "others": "idle"}, 0),
    ("broadwell-ep-2s-88t", "v4.12", "tlbstorm", {"cpus": "0-11"}, 0),
    ("broadwell-ep-2s-88t", "v6.18", "tlbstorm", {"cpus": "0-5", "idle_mm_cpus": "6-11"}, 0),
], ids=["v6.18-halt-poll", "v4.12-2cpu", "v4.12-12cpu-masks", "v6.18-12cpu-idle"])
def test_a_simulated_run_replays_to_its_own_decisions(tmp_path: Path, machine: str, kernel: str, workload: str,
                                                      settings: dict[str, str], halt_poll_ns: int) -> None:
    m = load_machine(machine)
    m = m.model_copy(update={"topology": m.topology.model_copy(update={"halt_poll_ns": halt_poll_ns})})
    out = tmp_path / "sim.trace"
    sim = simulate(m, resolve_kernel(kernel), workload_from_settings(workload, settings), seconds=0.0005, seed=3,
                   trace_out=out)
    # A simulated trace has no guest_halt_poll_ns events: the window is given, as --halt-poll-ns would.
    full, bare = read_with_and_without_decisions(out, halt_poll_ns)
    p = predict(bare, resolve_kernel(kernel))
    by_line = {q.lineno: p.decisions[q.seq] for q in bare.enqueues}
    real = {q.lineno: q.real.decision for q in full.enqueues if q.real is not None and q.real.decision is not None}
    # Calls still queued when the window closed never ran: the order they were added in, and so which
    # found the queue empty, is not in the trace (csd_queue_cpu fires before llist_add). All others count.
    ran = {q.lineno for q in bare.enqueues if q.flush is not None and q.flush.seq < NEVER}
    assert len(ran & real.keys()) >= 0.95 * len(real), "too few calls ran to test anything"
    assert {n: by_line[n] for n in real if n in ran} == {n: d for n, d in real.items() if n in ran}
    # The truth itself: the trace's sends are the simulator's own decisions, counted.
    decided = list(real.values())
    assert decided.count("ipi") == sim["ipis_sent"]
    assert decided.count("queued") == sim["csd_no_ipi_queued"]
    assert decided.count("polling") == sim["csd_no_ipi_polling"]
    if halt_poll_ns:
        assert sim["csd_no_ipi_polling"] > 0, "the run never found a polling CPU: the case is not exercised"


# --- the command ------------------------------------------------------------------------------------------

def test_replay_json_names_and_explains_every_number(tmp_path: Path) -> None:
    path = write(tmp_path, three_calls_on_cpu2())
    proc = ipilab("replay", str(path), "--json", "-k", "v6.18", "-k", "v4.12")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert [k["kernel"] for k in r["kernels"]] == ["v6.18", "v4.12"]
    for k in r["kernels"]:
        assert set(r["metrics"]) <= set(k)
    assert set(r["real"]) == set(r["real_metrics"])
    assert r["real"]["ipis"] == 4 and r["kernels"][1]["ipis"] == 6
    table = ipilab("replay", str(path), "-k", "v6.18", "-k", "v4.12")
    assert table.returncode == 0, table.stderr
    assert "agreement" in table.stdout and "6 of 6" in table.stdout


def test_replay_closed_loop_issues_the_traces_calls_on_the_simulator(tmp_path: Path) -> None:
    """The three calls again, on a simulated 8-CPU machine: every call is issued and decided; v4.12 sends
    at least the IPIs v4.13 does (never fewer: it only adds IPIs to queues already waiting)."""
    path = write(tmp_path, three_calls_on_cpu2())
    machine = tmp_path / "m8.toml"
    machine.write_text((Path(__file__).resolve().parents[1] / "src/ipilab/machine/presets/vm-2cpu.toml")
                       .read_text().replace("cores_per_socket = 2", "cores_per_socket = 8"))
    proc = ipilab("replay", str(path), "--json", "--mode", "closed", "-m", str(machine), "-k", "v4.13", "-k", "v4.12")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    v413, v412 = r["kernels"]
    for k in (v413, v412):
        assert (k["calls"], k["csd_enqueues"], k["calls_not_issued"]) == (3, 6, 0)
        assert k["ipis"] + k["csd_no_ipi_queued"] + k["csd_no_ipi_polling"] == 6
    assert v412["ipis"] >= v413["ipis"]


@pytest.mark.parametrize(("args", "words"), [
    (["-k", "v4.12+nonsense"], ["nonsense"]),
    (["--mode", "closed", "-m", "nope"], ["nope"]),
], ids=["unknown-feature", "unknown-machine"])
def test_bad_replay_input_is_one_clear_error_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    assert_user_error(ipilab("replay", str(write(tmp_path, three_calls_on_cpu2())), *args), *words)


def test_replay_of_a_missing_file_or_a_non_trace_is_one_error_line(tmp_path: Path) -> None:
    assert_user_error(ipilab("replay", str(tmp_path / "nope.trace")), "nope.trace")
    junk = tmp_path / "junk.trace"
    junk.write_text("hello\n")
    assert_user_error(ipilab("replay", str(junk)), "junk.trace")
    # A closed-loop replay on a machine with too few CPUs names the CPU and the machine's range.
    assert_user_error(ipilab("replay", str(write(tmp_path, three_calls_on_cpu2())), "--mode", "closed"), "CPU 6")
    # The closed loop's workload, as `simulate -w trace-replay` takes it, names a missing trace.
    with pytest.raises(WorkloadError, match=r"field trace: .*nope\.trace"):
        simulate(load_machine("vm-2cpu"), resolve_kernel("v6.18"),
                 workload_from_settings("trace-replay", {"trace": str(tmp_path / "nope.trace")}), seconds=0.001, seed=1)


def test_idle_events_read_in_each_format() -> None:
    """sched_switch as ftrace and perf print it, as trace-cmd prints it, and the haltpoll governor's line."""
    from ipilab.trace.read import parse_fields

    ftrace = parse_fields("sched_switch", "prev_comm=kworker/0:1 prev_pid=11 prev_prio=120 prev_state=I ==> "
                                          "next_comm=swapper/0 next_pid=0 next_prio=120")
    assert (ftrace["prev_pid"], ftrace["next_pid"], ftrace["next_comm"]) == (11, 0, "swapper/0")
    tcmd = parse_fields("sched_switch", "python3:11700 [120] S ==> swapper/1:0 [120]")
    assert (tcmd["prev_comm"], tcmd["prev_pid"], tcmd["next_pid"]) == ("python3", 11700, 0)
    assert parse_fields("guest_halt_poll_ns", "halt_poll_ns 200000 (grow 100000)")["halt_poll_ns"] == 200_000
    with pytest.raises(ValueError, match="cannot read"):
        parse_fields("sched_switch", "garbage")
