"""Machine costs as distributions: what a draw gives, which stream it comes from, and the timer tick.

The expected values here come from the distributions' definitions (a lognormal's quantiles, a uniform's
mean) or are worked out by hand from round-number costs, never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_machine
from test_cli import assert_user_error, ipilab

from ipilab.kernel.features import resolve_kernel
from ipilab.machine.costs import CostId, RunCosts
from ipilab.machine.model import Cost, Machine, MachineError, load_machine
from ipilab.sim.run import simulate
from ipilab.workloads import workload_from_settings


def machine_with(ncpus: int = 3, tick_hz: int = 0, **costs: dict) -> Machine:
    data = tiny_machine(ncpus).model_dump(exclude_none=True)
    data["costs"].update(costs)
    data["background"] = {"tick_hz": tick_hz}
    return Machine.model_validate(data)


def test_a_lognormal_cost_draws_its_median_and_p90() -> None:
    """median 300, p90 900: over 40,000 draws the sample's p50 and p90 land within 2% of them."""
    m = machine_with(icr_write={"dist": "lognormal", "median": 300, "p90": 900, "source": "test"})
    x = RunCosts(m, seed=7).draw(CostId.ICR_WRITE, 0, 40_000)
    assert abs(np.percentile(x, 50) / 300 - 1) < 0.02
    assert abs(np.percentile(x, 90) / 900 - 1) < 0.02


def test_an_empirical_cost_interpolates_its_quantiles() -> None:
    """Quantiles [0, 100, 1000] at p0, p50, p100: half the draws are uniform on [0, 100], half on [100, 1000],
    so the mean is 0.5 * 50 + 0.5 * 550 = 300 and a quarter of the draws fall below 50."""
    m = machine_with(icr_write={"dist": "empirical", "quantiles": [0, 100, 1000], "source": "test"})
    x = RunCosts(m, seed=3).draw(CostId.ICR_WRITE, 1, 50_000)
    assert abs(x.mean() - 300) < 6
    assert abs((x < 50).mean() - 0.25) < 0.01
    assert x.min() >= 0 and x.max() <= 1000


def test_streams_are_per_cpu_and_cost_and_do_not_depend_on_block_size() -> None:
    """A stream gives the same sequence drawn 1,000 at once or 300 then 700 (both engines draw in blocks of
    their own sizes); another CPU's or another cost's stream is different; another seed changes them."""
    spec = {"dist": "lognormal", "median": 300, "p90": 600, "source": "test"}
    m = machine_with(icr_write=spec, irq_entry=spec)
    whole = RunCosts(m, 1).draw(CostId.ICR_WRITE, 2, 1000)
    parts = RunCosts(m, 1)
    assert np.array_equal(whole, np.concatenate([parts.draw(CostId.ICR_WRITE, 2, 300),
                                                 parts.draw(CostId.ICR_WRITE, 2, 700)]))
    assert not np.array_equal(whole, RunCosts(m, 1).draw(CostId.ICR_WRITE, 1, 1000))
    assert not np.array_equal(whole, RunCosts(m, 1).draw(CostId.IRQ_ENTRY, 2, 1000))
    assert not np.array_equal(whole, RunCosts(m, 2).draw(CostId.ICR_WRITE, 2, 1000))


@pytest.mark.parametrize("bad, field", [
    ({"dist": "lognormal", "median": 300, "source": "test"}, "median and p90"),
    ({"dist": "lognormal", "median": 900, "p90": 300, "source": "test"}, "median <= p90"),
    ({"dist": "empirical", "quantiles": [5, 3], "source": "test"}, "non-decreasing"),
    ({"dist": "empirical", "source": "test"}, "needs quantiles"),
    ({"source": "test"}, "needs ns"),
    ({"ns": 10, "median": 10, "source": "test"}, "belong to a distribution"),
])
def test_a_bad_cost_in_a_machine_file_is_one_line_naming_it(tmp_path, bad: dict, field: str) -> None:
    data = tiny_machine(2).model_dump(exclude_none=True)
    lines = ['name = "m"', 'description = "d"', "[topology]"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in data["topology"].items()]
    for name, cost in data["costs"].items():
        lines.append(f"[costs.{name}]")
        body = bad if name == "icr_write" else cost
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in body.items()]
    path = tmp_path / "m.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MachineError, match=field) as e:
        from ipilab.machine.model import load_machine as load
        load(str(path))
    assert "costs.icr_write" in str(e.value) and "\n" not in str(e.value)
    assert_user_error(ipilab("simulate", "-m", str(path), "-s", "0.0001"), "costs.icr_write")


def test_the_same_seed_gives_the_same_run_and_another_seed_other_draws() -> None:
    spread = {"dist": "lognormal", "median": 2000, "p90": 6000, "source": "test"}
    m = machine_with(4, ipi_latency_same_socket=spread, irq_entry={**spread, "median": 100, "p90": 300})
    w = workload_from_settings("synthetic", {"senders": "all", "rate": "200000", "func_ns": "500"})
    k = resolve_kernel("v4.13")
    runs = [simulate(m, k, w, seconds=0.002, seed=s)["wait_latency_ns"] for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_timer_ticks_hand_case() -> None:
    """3 CPUs, tick 1,000 Hz, irq_entry 100 + tick 2,000 + irq_exit 50 ns, nothing else costs anything.
    CPU 0 sends a synthetic call to CPU 1 (rate 1/s: none in the window), CPUs 1 and 2 run busy loops: all
    three run tasks, so each takes a tick every 1 ms at its own phase; a 10 ms window from time 0 holds
    exactly 10 ticks per CPU, each 2,150 ns of handler: 30 ticks, 21,500 ns in handlers per CPU. With the
    busy loops off, CPU 1 and 2 idle (NO_HZ idle: no tick) and only CPU 0 ticks."""
    m = machine_with(3, tick_hz=1000, irq_entry={"ns": 100, "source": "test"},
                     irq_exit={"ns": 50, "source": "test"}, tick={"ns": 2000, "source": "test"})
    k = resolve_kernel("v4.13")
    for engine in ("reference", "fast"):
        busy = workload_from_settings("synthetic", {"senders": "0", "targets": "1", "rate": "1", "others": "busy"})
        r = simulate(m, k, busy, seconds=0.01, seed=4, engine=engine)
        assert r["ticks"] == 30, engine
        assert [c["irq_ns"] for c in r["per_cpu"]] == [21_500] * 3, engine
        assert r["cal_interrupts"] == 0 and all(c["interrupts"] == 0 for c in r["per_cpu"])
        idle = workload_from_settings("synthetic", {"senders": "0", "targets": "1", "rate": "1", "others": "idle"})
        assert simulate(m, k, idle, seconds=0.01, seed=4, engine=engine)["ticks"] == 10, engine


def test_a_tick_holds_a_function_call_interrupt_back() -> None:
    """Two CPUs; CPU 0 calls CPU 1 every ~20 us on average (rate 50,000/s), CPU 1 runs a busy loop. With a
    50 us tick handler at 10 kHz, CPU 1 spends half its time in the tick with interrupts off, so calls wait
    for the tick to end: the sender's p99 wait grows by at least most of the 50 us tick over the run
    without ticks."""
    base = dict(irq_entry={"ns": 100, "source": "test"}, irq_exit={"ns": 100, "source": "test"},
                ipi_latency_same_socket={"ns": 1000, "source": "test"}, tick={"ns": 50_000, "source": "test"})
    w = workload_from_settings("synthetic", {"senders": "0", "targets": "1", "rate": "50000", "func_ns": "200",
                                             "others": "busy"})
    k = resolve_kernel("v4.13")
    quiet = simulate(machine_with(2, tick_hz=0, **base), k, w, seconds=0.02, seed=1)["wait_latency_ns"]
    ticking = simulate(machine_with(2, tick_hz=10_000, **base), k, w, seconds=0.02, seed=1)["wait_latency_ns"]
    assert ticking["p99"] - quiet["p99"] > 25_000, (quiet, ticking)


def test_simulate_takes_tick_hz_and_topology_through_set() -> None:
    proc = ipilab("simulate", "--json", "-m", "vm-2cpu", "--set", "cores_per_socket=4", "--set", "tick_hz=250",
                  "--set", "senders=all", "-s", "0.02")
    assert proc.returncode == 0, proc.stderr
    import json
    r = json.loads(proc.stdout)
    assert len(r["per_cpu"]) == 4
    # 4 busy senders x 250 Hz x 20 ms = 20 ticks, give or take one per CPU at the window's edges.
    assert 16 <= r["ticks"] <= 24
    assert r["costs"]["tick"]["dist"] == "lognormal"
    assert_user_error(ipilab("simulate", "--set", "tick_hz=-1"), "tick_hz")


def test_distributions_break_the_lock_step_of_symmetric_threads() -> None:
    """tlbstorm on 8 CPUs of the VM preset: with every cost constant the threads run in lock-step and each
    call finds (n-2)/(n-1) of its targets already queued; a spread in the costs (the preset's tick
    measurement is the only spread there, so add one to the IPI path) moves the share away from it and
    makes it depend on the seed."""
    vm = load_machine("vm-2cpu")
    data = vm.model_dump(exclude_none=True)
    data["topology"]["cores_per_socket"] = 8
    constant = Machine.model_validate(data)
    data["costs"]["ipi_latency_same_socket"] = {"dist": "lognormal", "median": 3800, "p90": 7600, "source": "test"}
    data["costs"]["page_fault"] = {"dist": "lognormal", "median": 300, "p90": 600, "source": "test"}
    spread = Machine.model_validate(data)
    w = workload_from_settings("tlbstorm", {"pages": "16"})
    k = resolve_kernel("v6.18")

    def share(m: Machine, seed: int) -> float:
        r = simulate(m, k, w, seconds=0.003, warmup=0.001, seed=seed)
        return r["csd_no_ipi_queued"] / r["csd_enqueues"]

    assert [share(constant, s) for s in (1, 2)] == [pytest.approx(6 / 7, abs=1e-3)] * 2
    shares = [share(spread, s) for s in (1, 2)]
    assert shares[0] != shares[1]
    assert all(s < 6 / 7 - 0.005 for s in shares), shares


def test_cost_describe_says_what_a_distribution_is() -> None:
    c = Cost(dist="empirical", quantiles=list(range(0, 1001, 10)), n=1234, source="test")
    assert c.describe() == "empirical p50 500 ns, p90 900 ns, p99 990 ns, n=1,234"
    assert c.ns == 500


def test_vcpu_preemption_hand_case() -> None:
    """Two CPUs running busy loops on a host that takes each vCPU away for 50 us after every 100 us it ran
    (constant costs). From time 0 a CPU is descheduled at 100, 250, 400, ... us: 100 + 150 k < 1,400 for
    k = 0..8, so 9 times in a 1.4 ms window, each over by 1,350 us: 2 x 9 x 50 us = 900 us stolen. Ticks at
    1 kHz would land in the stretches too, so they are off here; no interrupt is lost, only delayed."""
    m = machine_with(2, vcpu_run={"ns": 100_000, "source": "test"}, vcpu_preempt={"ns": 50_000, "source": "test"})
    data = m.model_dump(exclude_none=True)
    data["background"]["vcpu_preemption"] = True
    m = Machine.model_validate(data)
    w = workload_from_settings("synthetic", {"senders": "0", "targets": "1", "rate": "1", "others": "busy"})
    for engine in ("reference", "fast"):
        r = simulate(m, resolve_kernel("v4.13"), w, seconds=0.0014, seed=2, engine=engine)
        assert (r["vcpu_preemptions"], r["stolen_ns"]) == (18, 900_000), engine


def test_a_descheduled_target_holds_its_calls() -> None:
    """CPU 0 calls CPU 1 (busy loop) with wait=1; each vCPU's host takes it away for 200 us after every 200 to
    400 us it ran (drawn: with a constant both vCPUs would be away together, and no call could span a
    stretch). A call whose IPI lands while CPU 1 is away waits until it runs again, so some waits exceed
    100 us, which none do on the same machine without preemption (IPI 1 us, handler 0.3 us, function 0.5 us)."""
    base = dict(ipi_latency_same_socket={"ns": 1000, "source": "test"}, irq_entry={"ns": 150, "source": "test"},
                irq_exit={"ns": 150, "source": "test"},
                vcpu_run={"dist": "empirical", "quantiles": [200_000, 400_000], "source": "test"},
                vcpu_preempt={"ns": 200_000, "source": "test"})
    w = workload_from_settings("synthetic", {"senders": "0", "targets": "1", "rate": "20000", "func_ns": "500",
                                             "others": "busy"})
    k = resolve_kernel("v4.13")
    data = machine_with(2, **base).model_dump(exclude_none=True)
    quiet = simulate(Machine.model_validate(data), k, w, seconds=0.01, seed=1)["wait_latency_ns"]
    data["background"]["vcpu_preemption"] = True
    stolen = simulate(Machine.model_validate(data), k, w, seconds=0.01, seed=1)["wait_latency_ns"]
    assert quiet["max"] < 100_000 < stolen["max"], (quiet, stolen)
