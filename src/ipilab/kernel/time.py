"""The periodic timer tick: the local APIC timer interrupt every CPU takes CONFIG_HZ times a second
while it runs a task (arch/x86/kernel/apic/apic.c sysvec_apic_timer_interrupt). It calls no cross-CPU
function, but it holds a CPU in an interrupt handler with interrupts off, so a function-call IPI that
arrives meanwhile waits, and more calls queue behind it: the tick is one of the variations that
decide how many calls an interrupt serves.
"""

from __future__ import annotations

import numpy as np

from ipilab.events import LOCAL_TIMER_VECTOR
from ipilab.kernel.steps import Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

TICK_SALT = 0x71C  # keeps the tick phases' generator apart from the workloads' of the same seed


def tick_phases(hz: int, seed: int, ncpus: int) -> tuple[int, list[int]]:
    """The tick's period (ns) and each CPU's first tick within it: seeded, so CPUs' ticks are not aligned."""
    period = round(1e9 / hz)
    return period, [int(p) for p in np.random.default_rng([seed, TICK_SALT]).integers(0, period, size=ncpus)]


def local_timer_interrupt(p: Platform, cpu: int) -> KernelCode:
    """sysvec_apic_timer_interrupt: entry, the timer's work (tick_sched_timer, scheduler_tick, ...), exit."""
    yield Busy(p.cost(CostId.IRQ_ENTRY, cpu), "irq_entry")
    p.trace(cpu, "local_timer_entry", vector=LOCAL_TIMER_VECTOR)
    yield Busy(p.cost(CostId.TICK, cpu), "local_apic_timer_interrupt")
    p.trace(cpu, "local_timer_exit", vector=LOCAL_TIMER_VECTOR)
    yield Busy(p.cost(CostId.IRQ_EXIT, cpu), "irq_exit")
