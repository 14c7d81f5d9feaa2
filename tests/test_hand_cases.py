"""Litmus-style cases: tiny machines, fixed costs, and the exact outcome worked out by hand.

The scenario of the first tests, on 3 CPUs with every cost 0 except
    icr_write = 100 ns, IPI delivery = 1000 ns, the called function = 500 ns:

    CPU0: smp_call_function_many({1,2}, f, wait=1)     at t=0
    CPU1: smp_call_function_many({0,2}, f, wait=1)     at t=0 (right after CPU0's first step)
    CPU2: user code, interrupts on

CPU0 queues on CPU1 and CPU2; both queues were empty, so it owes both an IPI. It writes the ICR for CPU1
(t=0..100) and CPU2 (100..200): the IPIs land at 1100 and 1200. CPU1 queues on CPU0 (empty) and on CPU2,
whose queue already holds CPU0's CSD.
  v4.12: CPU1 IPIs both anyway (landing at 1100 on CPU0 and 1200 on CPU2): 4 IPIs. CPU2's two IPIs
         land at the same instant; the first is accepted at once (IRR cleared), so the second sets IRR
         again and causes a second interrupt that finds the queue empty: 4 interrupts, 1 of them empty.
  v4.13: CPU1 IPIs only CPU0: 3 IPIs, 3 interrupts, and CPU2's one interrupt runs both CSDs.
Timing (same for both): CPU0 and CPU1 take their interrupts at 1100 and run f until 1600, each
unlocking the other's CSD then. CPU2 runs CPU0's f 1200..1700 and CPU1's 1700..2200. So CPU0's call
returns at 1700 and CPU1's at 2200.
"""

from __future__ import annotations

import pytest
from conftest import tiny_machine

from ipilab.events import Event
from ipilab.kernel.features import resolve_kernel
from ipilab.kernel.smp import SmpFunc
from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy
from ipilab.machine.model import COST_FIELDS, Machine
from ipilab.sim.machine import SimMachine


def func_500(p, cpu, info):
    yield Busy(500, "f")


F = SmpFunc("f", func_500)


def user_loop():
    while True:
        yield Busy(1_000_000, "user")


def run_two_senders(kernel: str, target_code=None, until: int = 100_000, idle_exit: int = 0):
    m = tiny_machine(3, icr_write=100, ipi_latency_same_socket=1000, ipi_latency_cross_socket=1000,
                     idle_exit=idle_exit)
    events: list[Event] = []
    sim = SimMachine(m, resolve_kernel(kernel), tracer=events.append)
    returned: dict[int, int] = {}

    def sender(cpu, mask):
        yield from sim.smp.smp_call_function_many_cond(cpu, mask, F, None, wait=True)
        returned[cpu] = sim.now
        yield from user_loop()

    sim.start(0, sender(0, [1, 2]), "s0", 10)
    sim.start(1, sender(1, [0, 2]), "s1", 11)
    sim.start(2, None if target_code == "idle" else target_code or user_loop(), "t2", 12)
    sim.engine.run(until)
    return sim, returned, events


def test_v412_every_target_gets_an_ipi():
    """Before the seed: 4 IPIs; CPU2's second lands after the first was accepted, so 4 interrupts."""
    sim, returned, _ = run_two_senders("v4.12")
    s = sim.smp.stats
    assert s.csd_enqueues == 4
    assert s.csd_ipis == 4
    assert s.ipis_to_nonempty_queue == 1
    assert s.cal_interrupts == 4
    assert s.empty_interrupts == 1
    assert sim.stats.apic_merged == 0
    assert [c.interrupts for c in sim.cpus] == [1, 1, 2]
    assert returned == {0: 1700, 1: 2200}


def test_v413_ipi_only_to_empty_queue():
    """The seed: CPU1's CSD joins CPU2's non-empty queue without an IPI; one interrupt serves both."""
    sim, returned, _ = run_two_senders("v4.13")
    s = sim.smp.stats
    assert s.csd_enqueues == 4
    assert s.csd_ipis == 3
    assert s.csd_no_ipi_queued == 1
    assert s.cal_interrupts == 3
    assert s.empty_interrupts == 0
    assert [c.interrupts for c in sim.cpus] == [1, 1, 1]
    assert s.csds_run_in_irq / s.cal_interrupts == pytest.approx(4 / 3)
    assert returned == {0: 1700, 1: 2200}


def test_v618_single_ipi_for_the_one_target_that_needs_it():
    """6.18: CPU1's only IPI goes the single-target way (ipi_send_cpu, vector 251). And CPU0's mask
    {1,2} is every CPU but itself, so 6.18 sends it as one shorthand ICR write done at 100: CPU2 hears at
    1100, not 1200, and both calls return 100 ns earlier than under v4.13."""
    sim, returned, events = run_two_senders("v6.18")
    sends = [(e.cpu, e.name, e.fields.get("cpu", e.fields.get("cpumask"))) for e in events
             if e.name.startswith("ipi_send")]
    assert sends == [(0, "ipi_send_cpumask", (1, 2)), (1, "ipi_send_cpu", 0)]
    entries = [(e.cpu, e.name) for e in events if e.name.endswith("_entry") and e.name.startswith("call_")]
    assert sorted(entries) == [(0, "call_function_single_entry"), (1, "call_function_entry"),
                               (2, "call_function_entry")]
    assert sim.smp.stats.icr_writes == 2
    assert returned == {0: 1600, 1: 2100}


def irqs_off_for(ns: int):
    yield IRQS_OFF
    yield Busy(ns, "irqs off")
    yield IRQS_ON
    yield from user_loop()


def test_apic_merges_a_pending_vector():
    """CPU2 has interrupts off until 5000: its two v4.12 IPIs both wait in IRR, so the APIC merges
    them into one interrupt at 5000, which runs both CSDs (CPU1's call returns at 5000+500+500)."""
    sim, returned, _ = run_two_senders("v4.12", irqs_off_for(5000))
    assert sim.smp.stats.csd_ipis == 4
    assert sim.stats.apic_merged == 1
    assert sim.smp.stats.cal_interrupts == 3
    assert sim.cpus[2].interrupts == 1
    assert returned == {0: 5500, 1: 6000}


def test_v413_same_outcome_without_merging():
    """Under v4.13 the same case sends 3 IPIs: nothing to merge, the same 3 interrupts."""
    sim, returned, _ = run_two_senders("v4.13", irqs_off_for(5000))
    assert sim.smp.stats.csd_ipis == 3
    assert sim.stats.apic_merged == 0
    assert sim.smp.stats.cal_interrupts == 3
    assert returned == {0: 5500, 1: 6000}


def test_cluster_mode_one_icr_write_per_cluster():
    """x2APIC cluster mode: a call to 17 other CPUs of a 20-CPU socket (clusters of 16) takes 2 writes."""
    m = tiny_machine(20, apic_mode="x2apic_cluster", icr_write=100, ipi_latency_same_socket=1000)
    sim = SimMachine(m, resolve_kernel("v4.13"))

    def sender():
        yield from sim.smp.smp_call_function_many_cond(0, list(range(1, 18)), F, None, wait=True)
        yield from user_loop()

    sim.start(0, sender(), "s", 1)
    for cpu in range(1, 20):
        sim.start(cpu, user_loop(), "u", 100 + cpu)
    sim.engine.run(100_000)
    assert sim.smp.stats.csd_ipis == 17
    assert sim.smp.stats.icr_writes == 2
    assert sim.smp.stats.cal_interrupts == 17


def test_shorthand_is_one_write_for_all_but_self():
    """With ipi_shorthand (5.4+), a physical-mode call to every other CPU is one ICR write."""
    m = tiny_machine(6, icr_write=100, ipi_latency_same_socket=1000)
    for kernel, writes in (("v4.13", 5), ("v4.13+ipi_shorthand", 1)):
        sim = SimMachine(m, resolve_kernel(kernel))

        def sender(sim=sim):
            yield from sim.smp.smp_call_function_many_cond(0, list(range(6)), F, None, wait=True)
            yield from user_loop()

        sim.start(0, sender(), "s", 1)
        for cpu in range(1, 6):
            sim.start(cpu, user_loop(), "u", 100 + cpu)
        sim.engine.run(100_000)
        assert sim.smp.stats.icr_writes == writes, kernel


def test_polling_idle_target_needs_no_ipi():
    """5.8+: a single-target call to a CPU polling in idle sets NEED_RESCHED instead of an IPI; the
    idle loop runs the CSD itself (no interrupt). Without skip_polling_idle the IPI is sent."""
    m = tiny_machine(2, icr_write=100, ipi_latency_same_socket=1000).model_copy(deep=True)
    m.topology.halt_poll_ns = 1_000_000
    for kernel, ipis, from_idle in (("v6.18", 0, 1), ("v6.18-skip_polling_idle", 1, 0)):
        sim = SimMachine(m, resolve_kernel(kernel))

        def sender(sim=sim):
            yield Busy(10_000, "user")  # let CPU1 settle into its poll loop
            yield from sim.smp.smp_call_function_single(0, 1, F, None, wait=True)
            yield from user_loop()

        sim.start(0, sender(), "s", 1)
        sim.start(1, None)
        sim.engine.run(100_000)
        s = sim.smp.stats
        assert (s.csd_ipis, s.csds_run_from_idle, s.csd_no_ipi_polling) == (ipis, from_idle, 1 - ipis), kernel
        assert s.csds_run_in_irq + s.csds_run_from_idle == 1


def test_async_csd_reuse_waits_for_unlock():
    """An async smp_call_function_single reuses the sender's per-CPU CSD: the second call spins in
    csd_lock until the target has unlocked the first (before running it), never reusing it locked."""
    m = tiny_machine(2, icr_write=100, ipi_latency_same_socket=1000)
    events: list[Event] = []
    sim = SimMachine(m, resolve_kernel("v4.13"), tracer=events.append)
    queued_at: list[int] = []

    def sender():
        for _ in range(2):
            yield from sim.smp.smp_call_function_single(0, 1, F, None, wait=False)
            queued_at.append(sim.now)
        yield from user_loop()

    sim.start(0, sender(), "s", 1)
    sim.start(1, user_loop(), "u", 2)
    sim.engine.run(100_000)
    # First call: queued at 0, ICR write 0..100, returns at 100. The second must wait for CPU1's
    # interrupt at 1100 to unlock the CSD (async: unlock before the function), then queue and send.
    assert queued_at == [100, 1200]
    assert sim.smp.stats.csd_ipis == 2
    runs = [e.ts for e in events if e.name == "csd_function_entry" and e.cpu == 1]
    assert runs == [1100, 2200]


def test_a_reused_csd_gets_its_new_target_only_once_locked():
    """kernel/smp.c locks a CSD before it fills it, its target too. Litmus, 4 CPUs on one socket of 2
    cores x 2 threads (CPU2 is CPU0's SMT sibling, CPU1 is on the other core), every cost 0 except
    cache line SMT = 10 ns, same socket = 300 ns, IPI delivery = 1000 ns:

        CPU0: smp_call_function_single(1, f, wait=0); smp_call_function_single(2, f, wait=0)   at t=0
        CPU1: interrupts off until t=5000
        CPU2: user code

    Both calls use CPU0's one csd_data. The first queues on CPU1 (llist_add pulls CPU1's line: 0..300)
    and IPIs it; the interrupt waits until 5000; CPU1 pulls the CSD's line from CPU0 (5000..5300) and
    unlocks it. The second call spins in csd_lock meanwhile; seeing the unlock pulls the line back from
    CPU1, the CPU that unlocked it: 300 ns, so it queues on CPU2 at 5600. Had it set dst=2 before
    locking, CPU1 would unlock a CSD already saying dst=2 and the wait would pay CPU2's 10 ns (5310)."""
    m = Machine.model_validate({
        "name": "smt-4", "description": "2 cores x 2 threads",
        "topology": {"sockets": 1, "cores_per_socket": 2, "threads_per_core": 2, "llc_mb_per_socket": 1.0,
                     "numa_nodes": 1, "apic_mode": "x2apic_phys", "cpu_model": "test", "halt_poll_ns": 0},
        "costs": {k: {"ns": {"cacheline_smt": 10, "cacheline_same_socket": 300,
                             "ipi_latency_same_socket": 1000}.get(k, 0), "source": "test value"}
                  for k in COST_FIELDS}})
    assert [m.distance(0, c) for c in (1, 2)] == [1, 0]
    events: list[Event] = []
    sim = SimMachine(m, resolve_kernel("v4.13"), tracer=events.append)
    dst_at_unlock: list[tuple[int, int]] = []
    unlock = sim.smp.csd_unlock

    def spy_unlock(csd):
        dst_at_unlock.append((sim.now, csd.dst))
        unlock(csd)

    sim.smp.csd_unlock = spy_unlock

    def sender():
        yield from sim.smp.smp_call_function_single(0, 1, F, None, wait=False)
        yield from sim.smp.smp_call_function_single(0, 2, F, None, wait=False)
        yield from user_loop()

    sim.start(0, sender(), "s", 1)
    sim.start(1, irqs_off_for(5000), "u1", 2)
    sim.start(2, user_loop(), "u2", 3)
    sim.start(3, user_loop(), "u3", 4)
    sim.engine.run(100_000)
    assert dst_at_unlock[0] == (5300, 1)
    queued = [(e.ts, e.fields["cpu"]) for e in events if e.name == "csd_queue_cpu"]
    assert queued == [(0, 1), (5600, 2)]


def test_what_if_kernel_composes_behaviours(tmp_path):
    """v4.12 plus the seed's one behaviour, as an expression or as a TOML file, acts as v4.13 here."""
    toml = tmp_path / "seed.toml"
    toml.write_text('name = "v4.12 with the seed"\nbase = "v4.12"\nadd = ["coalesce_many"]\n')
    expected = run_two_senders("v4.13")
    for spec in ("v4.12+coalesce_many", str(toml)):
        sim, returned, _ = run_two_senders(spec)
        assert (sim.smp.stats.csd_ipis, sim.smp.stats.cal_interrupts) == (3, 3), spec
        assert returned == expected[1]
    sim, _, _ = run_two_senders("v4.13-coalesce_many")
    assert sim.smp.stats.csd_ipis == 4


def test_halted_cpu_merges_ipis_while_waking():
    """CPU2 is halted and needs 5000 ns to wake (idle_exit). Under v4.12 both IPIs reach it at 1200:
    the first starts the wake-up, the second finds the vector still pending in IRR and merges. CPU2
    takes one interrupt at 6200 and runs both CSDs (6200..6700, 6700..7200)."""
    sim, returned, _ = run_two_senders("v4.12", "idle", idle_exit=5000)
    assert sim.smp.stats.csd_ipis == 4
    assert sim.stats.apic_merged == 1
    assert sim.cpus[2].interrupts == 1
    assert returned == {0: 6700, 1: 7200}
