"""Litmus cases for spinlocks, taken with interrupts off or on: who gets the lock when, and when an IPI is taken.

Costs are zero except the ones named, so every time below is worked out by hand.
"""

from __future__ import annotations

from conftest import tiny_machine

from ipilab.kernel.features import resolve_kernel
from ipilab.kernel.locking import SpinLock, spin_lock, spin_lock_irq, spin_unlock, spin_unlock_irq
from ipilab.kernel.smp import SmpFunc
from ipilab.kernel.steps import Busy
from ipilab.sim.engine import Engine
from ipilab.sim.machine import SimMachine
from ipilab.sim.timeuse import Use


def _holder(sim, cpu, lock, start, hold, log):
    yield Busy(start, "before")
    yield from spin_lock_irq(sim, cpu, lock)
    log.append((cpu, "got", sim.now))
    yield Busy(hold, "critical section")
    yield from spin_unlock_irq(sim, cpu, lock)
    log.append((cpu, "released", sim.now))


def test_waiters_get_the_lock_in_arrival_order_and_pay_the_line_transfer():
    # CPU0 takes the lock at 0 and holds it 1000 ns. CPU2 arrives at 100, CPU1 at 200: CPU2 is served
    # first (FIFO), at 1000 + 10 (the lock's line moves from CPU0), holds 500 -> releases at 1510;
    # CPU1 gets it at 1510 + 10 = 1520, releases at 1820.
    m = tiny_machine(3, cacheline_same_socket=10)
    sim = SimMachine(m, resolve_kernel("v4.13"), Engine())
    lock = SpinLock("test")
    log: list = []
    sim.start(0, _holder(sim, 0, lock, 0, 1000, log))
    sim.start(1, _holder(sim, 1, lock, 200, 300, log))
    sim.start(2, _holder(sim, 2, lock, 100, 500, log))
    sim.engine.run(10_000)
    assert log == [(0, "got", 0), (0, "released", 1000), (2, "got", 1010), (2, "released", 1510),
                   (1, "got", 1520), (1, "released", 1820)]
    assert lock.acquisitions == 3 and lock.contended == 2
    # Spinning ends when the holder releases (1000, 1510); the line transfer after it is not spin time.
    assert lock.spin_ns == (1000 - 100) + (1510 - 200)


def test_an_ipi_waits_while_its_target_spins_with_interrupts_off():
    # CPU1 spins for the lock with interrupts off from 100 until CPU0 releases it at 1000 and then holds
    # it to 1300. CPU2 calls a function on CPU1 at 300 (ICR write and flight cost nothing here): the
    # interrupt can only be taken at 1300, when spin_unlock_irq turns interrupts back on.
    m = tiny_machine(3)
    sim = SimMachine(m, resolve_kernel("v4.13"), Engine(), tracer=(events := []).append)
    lock = SpinLock("test")
    log: list = []
    func = SmpFunc("probe", lambda p, cpu, info: iter([Busy(50, "probe")]))

    def caller():
        yield Busy(300, "before")
        yield from sim.smp.smp_call_function_single(2, 1, func, None, wait=True)
        log.append((2, "returned", sim.now))

    sim.start(0, _holder(sim, 0, lock, 0, 1000, log))
    sim.start(1, _holder(sim, 1, lock, 100, 300, log))
    sim.start(2, caller())
    sim.engine.run(10_000)
    entry = [e for e in events if e.name == "csd_function_entry" and e.cpu == 1]
    assert [e.ts for e in entry] == [1300]
    assert (2, "returned", 1350) in log


def _plain_holder(sim, cpu, lock, start, hold, log):
    """spin_lock without _irq, as get_swap_pages takes swap_avail_lock and si->lock: interrupts stay on."""
    yield Busy(start, "before")
    yield from spin_lock(sim, cpu, lock)
    log.append((cpu, "got", sim.now))
    yield Busy(hold, "critical section")
    spin_unlock(sim, cpu, lock)
    log.append((cpu, "released", sim.now))


def _ipi_at(sim, src, dst, at, log):
    func = SmpFunc("probe", lambda p, cpu, info: iter([Busy(50, "probe")]))
    yield Busy(at, "before")
    yield from sim.smp.smp_call_function_single(src, dst, func, None, wait=True)
    log.append((src, "returned", sim.now))


def test_an_interrupt_inside_a_lock_held_with_interrupts_on_stretches_the_wait_behind_it():
    # CPU0 takes si->lock (plain spin_lock) at 0 to hold it 1000 ns; CPU1 queues behind it at 100. CPU2 calls a
    # function on CPU0 at 300: llist_add pulls the queue's line (10) and the IPI lands at 310. Interrupts are
    # on, so CPU0 takes it inside its critical section: entry 20, the function 50, csd_unlock's line 10, exit
    # 30 -> back at 420 with 690 ns of the section left -> releases at 1110. CPU1 gets the lock at 1110 + 10.
    m = tiny_machine(3, cacheline_same_socket=10, irq_entry=20, irq_exit=30)
    sim = SimMachine(m, resolve_kernel("v4.13"), Engine())
    lock = SpinLock("si->lock")
    log: list = []
    sim.start(0, _plain_holder(sim, 0, lock, 0, 1000, log))
    sim.start(1, _plain_holder(sim, 1, lock, 100, 300, log))
    sim.start(2, _ipi_at(sim, 2, 0, 300, log))
    sim.engine.run(10_000)
    assert log == [(0, "got", 0), (2, "returned", 400), (0, "released", 1110), (1, "got", 1120),
                   (1, "released", 1420)]
    assert (lock.holds_interrupted, lock.hold_interrupted_ns, lock.hold_ns) == (1, 1110, 1110 + 300)
    # CPU1's wait, by what it was spent on: spinning 100 -> 1110 and the line transfer, all on si->lock.
    use = sim.time_use()
    assert use[1][Use.SPIN_SI_LOCK] == 1110 - 100 + 10
    assert (use[0][Use.IRQ_ENTRY_EXIT], use[0][Use.IRQ_FUNCTIONS], use[0][Use.OTHER]) == (50, 10, 50 + 1000)


def test_the_same_interrupt_waits_for_a_lock_held_with_interrupts_off():
    # As above with spin_lock_irq (how the swap cache's tree_lock is taken): the IPI that lands at 310 stays
    # pending until CPU0 turns interrupts on at its unlock (1000). CPU1 gets the lock at 1010; CPU0's handler
    # runs 1000 -> 1110, so CPU2's call returns at 1080 + 10 (csd_lock_wait pulls the CSD's line back), and
    # CPU0 logs its release after the handler, at 1110, though the hold ended at 1000.
    m = tiny_machine(3, cacheline_same_socket=10, irq_entry=20, irq_exit=30)
    sim = SimMachine(m, resolve_kernel("v4.13"), Engine())
    lock = SpinLock("swap_cache/0")
    log: list = []
    sim.start(0, _holder(sim, 0, lock, 0, 1000, log))
    sim.start(1, _holder(sim, 1, lock, 100, 300, log))
    sim.start(2, _ipi_at(sim, 2, 0, 300, log))
    sim.engine.run(10_000)
    assert log == [(0, "got", 0), (1, "got", 1010), (2, "returned", 1090), (0, "released", 1110),
                   (1, "released", 1310)]
    assert (lock.holds_interrupted, lock.hold_ns) == (0, 1000 + 300)
    assert sim.time_use()[1][Use.SPIN_SWAP_CACHE_LOCK] == 1000 - 100 + 10
