"""Spinlocks as reclaim takes them: queued, and often with interrupts off.

x86 uses qspinlock: under contention waiters queue and are served in arrival order, each spinning on
its own node. `spin_lock_irq` disables interrupts before it starts spinning, so a CPU waiting for a
contended lock takes no interrupt until it has held and released the lock: IPIs sent to it meanwhile
wait in its APIC (where same-vector ones merge).
"""

from __future__ import annotations

from collections.abc import Iterable

from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform, SpinUntil

# Each kind of lock (a SpinLock's name up to any "/instance") and the prefix of its counters in results.
LOCK_COUNTER_PREFIXES = {"lru_lock": "lru_lock", "swap_avail_lock": "swap_avail_lock", "si->lock": "si_lock",
                         "swap_cache": "swap_cache_lock", "zone->lock": "zone_lock"}
LOCK_STATS = ("acquisitions", "contended", "spin_ns", "hold_ns", "holds_interrupted", "hold_interrupted_ns")


class SpinLock:
    """A FIFO spinlock: a ticket per waiter, and one watch object per ticket so an unlock wakes one CPU."""

    __slots__ = (
        "_waiting",
        "acquired_at",
        "acquisitions",
        "contended",
        "hold_interrupted_ns",
        "hold_ns",
        "holds_interrupted",
        "irqs_at_acquire",
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
        # Statistics of the holds: how long, and how many had an interrupt taken inside (which stretches
        # the hold for every waiter behind it: only possible for a lock taken with interrupts on).
        self.acquired_at = 0
        self.irqs_at_acquire = 0
        self.hold_ns = 0
        self.holds_interrupted = 0
        self.hold_interrupted_ns = 0


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
    lock.acquired_at = p.now
    lock.irqs_at_acquire = p.interrupts_taken(cpu)


def spin_unlock(p: Platform, cpu: int, lock: SpinLock) -> None:
    held = p.now - lock.acquired_at
    lock.hold_ns += held
    if p.interrupts_taken(cpu) != lock.irqs_at_acquire:
        lock.holds_interrupted += 1
        lock.hold_interrupted_ns += held
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


def lock_counters(locks: Iterable[SpinLock]) -> dict[str, int]:
    """Every LOCK_STATS counter summed by kind of lock, named `<prefix>_<stat>` (0 for a kind not taken)."""
    locks = list(locks)
    out: dict[str, int] = {}
    for kind, prefix in LOCK_COUNTER_PREFIXES.items():
        mine = [lk for lk in locks if lk.name.split("/", 1)[0] == kind]
        for stat in LOCK_STATS:
            out[f"{prefix}_{stat}"] = sum(getattr(lk, stat) for lk in mine)
    return out
