"""The compiled engine against the reference engine: same events, line for line, and the same results.

The reference engine (sim/engine.py, sim/machine.py and the generator kernel model) is the
specification; the fast engine (sim/fast/engine.py) is a second implementation of it. Each case below is
a small random configuration (machine shape, APIC mode, halt polling, costs including zeros, kernel
version, workload settings, window, warm-up, intervals) run on both with --trace-out: the two trace files
must be byte-identical and every number of the two results equal.
"""

from __future__ import annotations

import filecmp
import json
import random
from pathlib import Path
from typing import Any

import pytest
from test_cli import assert_user_error, ipilab

from ipilab.kernel.features import VERSIONS, resolve_kernel
from ipilab.machine.model import ALL_COST_FIELDS, Machine, load_machine
from ipilab.orchestration.runconfig import build_machine
from ipilab.reproduce.seed import run_seed
from ipilab.sim.fast.run import FastSim
from ipilab.sim.run import choose_engine, simulate
from ipilab.workloads import WorkloadError, workload_from_settings

HOST_ONLY = ("wall_seconds", "warmup_wall_seconds", "engine", "compile_seconds", "trace_out", "csds_per_second",
             "csds_per_second_per_worker")
# Costs a case may set to 0 (a Busy(0) step: an interleaving point that takes no time). The ones every
# loop iteration pays stay positive, or simulated time would stand still.
MAY_BE_ZERO = {"icr_write", "irq_entry", "irq_exit", "cacheline_smt", "free_page", "lru_page", "remove_mapping",
               "add_to_swap", "tlb_flush_full", "poll_notice", "invlpg", "zone_page", "mem_write_page"}


ADDED_LAST = ("zone_page", "mem_write_page", "context_switch")


def random_machine(rng: random.Random, added_last: bool = True) -> Machine:
    sockets = rng.choice([1, 1, 2])
    topology = {"sockets": sockets, "cores_per_socket": rng.randint(1, 3), "threads_per_core": rng.choice([1, 2]),
                "llc_mb_per_socket": 8.0, "numa_nodes": rng.choice([1, sockets]),
                "apic_mode": rng.choice(["x2apic_phys", "x2apic_cluster", "kvm_pv"]), "cpu_model": "test",
                "halt_poll_ns": rng.choice([0, 2000, 20_000, 200_000])}
    costs = {}
    spread = rng.random() < 0.5  # half the machines draw their costs from distributions
    # The costs added last are drawn last, so every earlier case keeps its machine.
    last = ADDED_LAST if added_last else ()
    for name in [*(k for k in ALL_COST_FIELDS if k not in last), *last]:
        ns = rng.choice([40, 100, 300, 1000, 3000])
        if name in MAY_BE_ZERO and rng.random() < 0.15:
            ns = 0
        costs[name] = {"ns": ns, "source": "random test value"}
        if spread and ns and rng.random() < 0.7:
            if rng.random() < 0.5:
                costs[name] = {"dist": "lognormal", "median": ns, "p90": ns * rng.choice([1, 2, 5]),
                               "source": "random test value"}
            else:
                low = 0 if name in MAY_BE_ZERO else 1
                costs[name] = {"dist": "empirical", "quantiles": sorted(rng.randint(low, 3 * ns) for _ in range(5)),
                               "source": "random test value"}
    background = {"tick_hz": rng.choice([0, 0, 1000, 10_000]), "vcpu_preemption": rng.random() < 0.3}
    return Machine.model_validate({"name": "random", "description": "a random small machine",
                                   "topology": topology, "costs": costs, "background": background})


def random_case(i: int) -> tuple[Machine, str, str, dict[str, str], dict[str, Any]]:
    rng = random.Random(i)
    m = random_machine(rng)
    while m.ncpus < 2:
        m = random_machine(rng)
    kernel = rng.choice(sorted(VERSIONS))
    if rng.random() < 0.2:
        kernel += rng.choice(["+coalesce_many", "-single_ipi_if_empty", "+skip_polling_idle", "-many_single_shortcut",
                              "-sync_first_flush", "+ipi_shorthand"])
    if i % 3 == 2:
        n = m.ncpus
        settings = {"senders": rng.choice(["0", "0-1", "all"]), "targets": rng.choice(["all", f"1-{n - 1}", "0-1"]),
                    "rate": str(rng.choice([20_000, 200_000, 2_000_000, 20_000_000])),
                    "func_ns": str(rng.choice([0, 300, 5000, 50_000])),
                    "wait": rng.choice(["true", "false"]), "others": rng.choice(["idle", "busy"])}
        workload = "synthetic"
    else:
        kswapd = rng.choice(["true", "false"])
        room = m.ncpus - (m.topology.numa_nodes if kswapd == "true" else 0)
        if room < 1:
            kswapd, room = "false", m.ncpus
        settings = {"threads": str(rng.randint(1, room)), "batch": str(rng.choice([1, 4, 32])),
                    "flush": rng.choice(["per-page", "per-batch"]), "kswapd": kswapd,
                    "phase": rng.choice(["reclaim"] * 5 + ["fill"]), "ram_gb": "0.05", "memory_gb": "1",
                    "swap_gb_s": rng.choice(["", "", "8"]), "swap_locks": rng.choice(["true", "true", "false"])}
        # Settings added later draw from a generator of their own, so every earlier case keeps its other draws.
        later = random.Random(-1 - i)
        settings.update(zone_lock=later.choice(["true", "true", "false"]),
                        mem_bandwidth=later.choice(["true", "true", "false"]),
                        worker_wakeup=later.choice(["immediate", "cfs"]))
        settings = {k: v for k, v in settings.items() if v}
        workload = "swap-w-seq-mt"
    window = {"seconds": rng.choice([0.0005, 0.001, 0.002]), "warmup": rng.choice([0.0, 0.0002]),
              "intervals": rng.choice([0, 3])}
    return m, kernel, workload, settings, window


def both(m: Machine, kernel: str, workload: str, settings: dict[str, str], window: dict[str, Any], seed: int,
         tmp: Path) -> tuple[dict[str, Any], dict[str, Any], Path, Path]:
    out = []
    for engine in ("reference", "fast"):
        trace = tmp / f"{engine}.trace"
        r = simulate(m, resolve_kernel(kernel), workload_from_settings(workload, settings), seed=seed,
                     trace_out=trace, engine=engine, **window)
        assert r["engine"] == engine
        out.append(({k: v for k, v in r.items() if k not in HOST_ONLY}, trace))
    (a, ta), (b, tb) = out
    return a, b, ta, tb


@pytest.mark.parametrize("case", range(200))
def test_random_small_configuration_gives_the_same_events_and_results(case: int, tmp_path: Path) -> None:
    m, kernel, workload, settings, window = random_case(case)
    ref, fast, ref_trace, fast_trace = both(m, kernel, workload, settings, window, case, tmp_path)
    where = f"case {case}: {kernel} {workload} {settings} {window} on {m.topology}"
    assert ref["engine_events"] > 0, where
    if not filecmp.cmp(ref_trace, fast_trace, shallow=False):
        with open(ref_trace) as a, open(fast_trace) as b:
            first = next(((i, x, y) for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        pytest.fail(f"{where}: traces differ first at line {first}")
    assert ref == fast, where + ": " + ", ".join(k for k in ref if ref[k] != fast.get(k))
    # Every nanosecond of every CPU is charged to exactly one use.
    assert all(sum(c["time_ns"].values()) == ref["sim_ns"] for c in ref["per_cpu"]), where


def test_a_descheduled_vcpu_is_not_descheduled_again(tmp_path: Path) -> None:
    """A configuration the random cases drew while zone_page and mem_write_page were drawn in ALL_COST_FIELDS' order:
    a 2 x 3 CPU machine with the tick and vCPU preemption, whose drawn run time rounds to 0 ns, so the next
    deschedule came at the instant the last one ended. The reference engine stacked a second descheduled stretch
    on the first (its stolen time counted twice), the fast engine has room for one: 4 events and 3,228 ns of
    stolen time apart (there before zone->lock, f76173b). A vCPU already off its CPU now loses nothing more."""
    rng = random.Random(147)
    m = random_machine(rng, added_last=False)
    while m.ncpus < 2:
        m = random_machine(rng, added_last=False)
    settings = {"threads": "2", "batch": "1", "flush": "per-batch", "kswapd": "true", "phase": "reclaim",
                "ram_gb": "0.05", "memory_gb": "1", "swap_gb_s": "8", "swap_locks": "true", "zone_lock": "false",
                "mem_bandwidth": "false"}
    ref, fast, _, _ = both(m, "v6.18", "swap-w-seq-mt", settings, {"seconds": 0.001, "warmup": 0.0, "intervals": 0},
                           147, tmp_path)
    assert ref == fast


# Litmus cases for paths random configurations rarely reach; each states what it must exercise.
NAMED = {
    # A polling idle target: the sender sets NEED_RESCHED instead of an IPI, the idle loop flushes.
    "poll-idle": ("vm-2cpu", {"halt_poll_ns": "200000"}, "v6.18", "synthetic",
                  {"senders": "0", "targets": "1", "rate": "100000", "others": "idle"},
                  ("csd_no_ipi_polling", "csds_run_from_idle")),
    # Every CPU calls every other, asynchronously and often: IPIs meet a same vector still pending.
    "apic-merge": ("vm-2cpu", {"cores_per_socket": "6"}, "v4.12", "synthetic",
                   {"senders": "all", "rate": "5000000", "wait": "false", "func_ns": "3000"},
                   ("apic_merged", "empty_interrupts")),
    # Reclaim on two nodes with kswapd, x2APIC cluster mode, pre-seed IPIs to non-empty queues.
    "reclaim-2-nodes": ("broadwell-ep-2s-88t", {"cores_per_socket": "4"}, "v4.12", "swap-w-seq-mt",
                        {"threads": "12", "ram_gb": "0.05", "memory_gb": "1", "zone_lock": "true"},
                        ("ipis_to_nonempty_queue", "apic_merged", "pcp_refills", "pcp_bulk_frees",
                         "zone_lock_contended", "zone_lock_spin_ns", "pcp_drains", "pcp_drain_skips",
                         "pcp_drained_pages", "resched_ipis")),
    # The same with 4.12's CFS deciding when the drains' workers run: some wakeups wait for the slice's end.
    # 8 CPUs: a 4 ms wakeup granularity and 12 ms slices, so the 30 ms window sees workers wait for them.
    "reclaim-cfs-workers": ("broadwell-ep-2s-88t", {"cores_per_socket": "2"}, "v4.12", "swap-w-seq-mt",
                            {"threads": "6", "ram_gb": "0.05", "memory_gb": "1", "worker_wakeup": "cfs"},
                            ("pcp_drains", "pcp_drain_skips", "pcp_drained_pages", "resched_ipis", "worker_waits")),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_litmus_configuration_gives_the_same_events_and_results(name: str, tmp_path: Path) -> None:
    machine, topology, kernel, workload, settings, exercised = NAMED[name]
    m = build_machine(machine, topology, {})
    window = {"seconds": 0.03 if name == "reclaim-cfs-workers" else 0.002}
    ref, fast, ref_trace, fast_trace = both(m, kernel, workload, settings, window, 1, tmp_path)
    for key in exercised:
        value = ref[key] if key in ref else ref["workload_counts"][key]
        assert value > 0, f"{name} does not exercise {key}"
    assert filecmp.cmp(ref_trace, fast_trace, shallow=False)
    assert ref == fast


def test_the_seed_scenario_gives_the_same_numbers_on_both_engines() -> None:
    """`reproduce seed` (80 threads, 88 CPUs, v4.12 and v4.13, both phases, the default model with its page list
    drains) at a short window."""
    window = {"seconds": 0.002, "warmup": 0.001, "intervals": 4, "workers": 1}
    ref = run_seed({}, engine="reference", **window)
    fast = run_seed({}, engine="fast", **window)
    for r in (ref, fast):
        for key in HOST_ONLY:
            r.pop(key, None)
        for run in r["runs"].values():
            run.pop("wall_seconds")
    assert ref["runs"]["v4.12"]["csd_enqueues"] > 1000 and ref["runs"]["v4.12"]["pcp_drains_per_second"] > 0
    assert json.dumps(ref, sort_keys=True) == json.dumps(fast, sort_keys=True)


def test_forcing_the_fast_engine_on_a_workload_it_lacks_is_a_clear_error() -> None:
    assert_user_error(ipilab("simulate", "-w", "tlbstorm", "-s", "0.0002", "--engine", "fast"),
                      "--engine fast", "tlbstorm")


def test_by_default_a_workload_the_fast_engine_lacks_runs_on_the_reference_engine() -> None:
    proc = ipilab("simulate", "-w", "tlbstorm", "-s", "0.0002", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["engine"] == "reference"
    proc = ipilab("simulate", "-w", "synthetic", "-s", "0.0002", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["engine"] == "fast"


def test_the_presets_run_on_the_fast_engine() -> None:
    for name in ("vm-2cpu", "broadwell-ep-2s-88t"):
        r = simulate(load_machine(name), resolve_kernel("v4.13"), workload_from_settings("swap-w-seq-mt",
                     {"threads": "1", "kswapd": "false"}), seconds=0.0002, seed=1, engine="fast")
        assert r["engine"] == "fast" and r["engine_events"] > 0


def test_a_fast_run_that_fails_midway_leaves_no_trace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with the reference engine: the trace appears whole or not at all."""
    original = FastSim.run

    def run(self: FastSim, until: int) -> None:
        original(self, min(until, 200_000))  # 0.2 ms of simulated, traced work first
        raise RuntimeError("failed mid-run")

    monkeypatch.setattr(FastSim, "run", run)
    target = tmp_path / "run.trace"
    with pytest.raises(RuntimeError, match="mid-run"):
        simulate(load_machine("vm-2cpu"), resolve_kernel("v6.18"), workload_from_settings("synthetic", {}),
                 seconds=0.002, seed=1, trace_out=target, engine="fast")
    assert list(tmp_path.iterdir()) == []


def test_a_machine_beyond_the_fast_engines_tables_runs_on_the_reference_engine() -> None:
    """1,536 CPUs: the fast engine's CPU x CPU tables stop at 1,024, so auto picks the reference engine and
    forcing fast is an error naming the limit."""
    m = build_machine("broadwell-ep-2s-88t", {"sockets": "16", "cores_per_socket": "48"}, {})
    assert m.ncpus == 1536
    w = workload_from_settings("synthetic", {})
    assert choose_engine(m, resolve_kernel("v4.13"), w) == "reference"
    with pytest.raises(WorkloadError, match="1024"):
        choose_engine(m, resolve_kernel("v4.13"), w, "fast")


def test_renumbering_the_queued_timers_mid_run_changes_no_event(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The heap key packs seq into SEQ_BITS, so the host numbers the queued timers again before it runs out
    (every ~16 M timers: real runs rarely get there). Here each renumbering jumps seq back to 50 short of the
    limit, so it happens every ~50 timers; the events and results must still be the reference's."""
    from ipilab.sim.fast import engine as E

    original = FastSim._renumber_timers
    calls = []

    def renumber_then_jump(self: FastSim) -> None:
        original(self)
        g, n = self.s.g, self.s.g[E.HEAP_N]
        jump = E.SEQ_LIMIT - 50 - g[E.SEQ]
        self.s.heap[:n] += jump  # every queued seq moves up alike: their order, and the heap, stay
        g[E.SEQ] += jump
        calls.append(n)

    def run_from_near_the_limit(self: FastSim, until: int) -> None:
        if not calls:
            renumber_then_jump(self)
        original_run(self, until)

    original_run = FastSim.run
    monkeypatch.setattr(FastSim, "_renumber_timers", renumber_then_jump)
    monkeypatch.setattr(FastSim, "run", run_from_near_the_limit)
    m = build_machine("vm-2cpu", {"cores_per_socket": "6"}, {})
    settings = {"senders": "all", "rate": "5000000", "wait": "false", "func_ns": "3000"}
    ref, fast, ref_trace, fast_trace = both(m, "v4.12", "synthetic", settings, {"seconds": 0.002}, 1, tmp_path)
    assert len(calls) > 100 and max(calls) > 1
    assert filecmp.cmp(ref_trace, fast_trace, shallow=False)
    assert ref == fast


def test_the_random_cases_cover_drawn_costs_and_timer_ticks() -> None:
    """The differential test above is only as good as what it exercises: enough of its machines must draw
    costs from distributions, take timer ticks and have their vCPUs descheduled."""
    machines = [random_case(i)[0] for i in range(200)]
    drawn = sum(any(not c.is_constant for c in m.costs.values()) for m in machines)
    ticking = sum(m.background.tick_hz > 0 for m in machines)
    descheduled = sum(m.background.vcpu_preemption for m in machines)
    assert drawn >= 60 and ticking >= 60 and descheduled >= 40, (drawn, ticking, descheduled)


def test_a_kernel_feature_the_fast_engine_lacks_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every feature of versions.toml is in the fast engine today; were one not, a kernel with it must run on the
    reference engine (auto) or be a clear error (forced), never run without it."""
    from ipilab.sim.fast import run as fast_run

    monkeypatch.setattr(fast_run, "FEATURES", fast_run.FEATURES - {"coalesce_many"})
    m = load_machine("vm-2cpu")
    w = workload_from_settings("synthetic", {})
    assert choose_engine(m, resolve_kernel("v4.12"), w) == "fast"
    assert choose_engine(m, resolve_kernel("v4.13"), w) == "reference"
    with pytest.raises(WorkloadError, match="coalesce_many"):
        choose_engine(m, resolve_kernel("v4.13"), w, "fast")


def test_every_kernel_feature_is_in_the_fast_engine() -> None:
    from ipilab.kernel.features import FEATURES as KERNEL_FEATURES
    from ipilab.sim.fast.run import FEATURES as FAST_FEATURES

    assert set(KERNEL_FEATURES) == set(FAST_FEATURES)
