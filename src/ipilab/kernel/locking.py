"""Spinlocks as reclaim takes them: queued, and often with interrupts off.

x86 uses qspinlock: under contention waiters queue and are served in arrival order, each spinning on
its own node. `spin_lock_irq` disables interrupts before it starts spinning, so a CPU waiting for a
contended lock takes no interrupt until it has held and released the lock: IPIs sent to it meanwhile
wait in its APIC (where same-vector ones merge).
"""

from __future__ import annotations

from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform, SpinUntil


class SpinLock:
    """A FIFO spinlock: a ticket per waiter, and one watch object per ticket so an unlock wakes one CPU."""

    __slots__ = (
        "_waiting",
        "acquisitions",
        "contended",
        "last_owner",
        "name",
        "next_ticket",
        "owner",
        "serving",
        "spin_ns",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.next_ticket = 0
        self.serving = 0
        self.owner: int | None = None
        self.last_owner: int | None = None
        self._waiting: dict[int, object] = {}
        self.acquisitions = 0
        self.contended = 0  # acquisitions that had to wait
        self.spin_ns = 0  # total time CPUs spent spinning on it


def spin_lock(p: Platform, cpu: int, lock: SpinLock) -> KernelCode:
    """Take `lock`, spinning behind earlier waiters; the lock's line then moves to this CPU."""
    ticket = lock.next_ticket
    lock.next_ticket += 1
    if lock.serving != ticket:
        lock.contended += 1
        watch = object()
        lock._waiting[ticket] = watch
        t0 = p.now
        yield SpinUntil(lambda: lock.serving == ticket, watch, f"spin_lock({lock.name})")
        lock.spin_ns += p.now - t0
    if lock.last_owner is not None and lock.last_owner != cpu:
        yield Busy(p.cacheline(cpu, lock.last_owner), f"spin_lock({lock.name})")
    lock.owner = cpu
    lock.acquisitions += 1


def spin_unlock(p: Platform, cpu: int, lock: SpinLock) -> None:
    lock.owner = None
    lock.last_owner = cpu
    lock.serving += 1
    watch = lock._waiting.pop(lock.serving, None)
    if watch is not None:
        p.notify(watch)


def spin_lock_irq(p: Platform, cpu: int, lock: SpinLock) -> KernelCode:
    """spin_lock_irq / spin_lock_irqsave: interrupts go off before the spin starts."""
    yield IRQS_OFF
    yield from spin_lock(p, cpu, lock)


def spin_unlock_irq(p: Platform, cpu: int, lock: SpinLock) -> KernelCode:
    spin_unlock(p, cpu, lock)
    yield IRQS_ON
