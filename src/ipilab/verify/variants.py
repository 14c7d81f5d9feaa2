"""Known-broken changes to the cross-call protocol, each a subclass of the kernel model that overrides
exactly the step it breaks (the correct code in kernel/smp.py stays as it is). `ipilab verify --variant`
must find each one's violation."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ipilab.kernel.smp import Csd, Smp, SmpFunc
from ipilab.kernel.steps import Busy, KernelCode


class CheckThenAdd(Smp):
    """The queue is tested for emptiness and then added to, as two steps instead of one atomic llist_add:
    between them the target may detach the (non-empty) queue, so the CSD lands on an empty queue and its
    sender, having seen it non-empty, sends no IPI."""

    def llist_add_csd(self, cpu: int, csd: Csd, callsite: str) -> Generator[Any, Any, bool]:
        self.p.trace(cpu, "csd_queue_cpu", cpu=csd.dst, callsite=callsite, func=csd.func.name, csd=csd.pointer)
        self.stats.csd_enqueues += 1
        queue = self.call_single_queue[csd.dst]
        yield Busy(self.p.cacheline(cpu, csd.dst), "llist_empty")
        was_empty = len(queue) == 0
        yield Busy(self.p.cacheline(cpu, csd.dst), "llist_add")
        queue.llist_add(csd)
        return was_empty


class IpiBeforeAdd(Smp):
    """The single-target path (generic_exec_single, which 2-CPU multi-target calls also take) sends the IPI
    first and queues the CSD after it: the interrupt may run and find the queue still empty."""

    def generic_exec_single(self, cpu: int, target: int, csd: Csd, callsite: str) -> KernelCode:
        yield from self.send_call_function_single_ipi(cpu, target, callsite)
        yield from self.llist_add_csd(cpu, csd, callsite)


class UnlockBeforeFuncSync(Smp):
    """A synchronous CSD is unlocked before its function runs, as an async one is: the waiting sender
    returns while its function has not run yet."""

    def csd_do_func(self, cpu: int, csd: Csd, func: SmpFunc, info: Any) -> KernelCode:
        if csd.sync:
            yield Busy(self.p.cacheline(cpu, csd.src), "csd_unlock (early)")
            self.csd_unlock(csd)
        yield from super().csd_do_func(cpu, csd, func, info)


class NoCsdLock(Smp):
    """csd_lock() takes the lock without waiting for the previous use to be unlocked: a CSD still queued
    (or still running its function) gets the next call's func and info."""

    def csd_lock(self, cpu: int, csd: Csd) -> KernelCode:
        csd.locked = True
        return
        yield


@dataclass(frozen=True)
class Variant:
    name: str
    smp_class: type[Smp]
    summary: str
    expected: str  # the violation the checker must find


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("check-then-add", CheckThenAdd, "test the queue for emptiness, then add, as two steps",
            "lost-wakeup"),
    Variant("ipi-before-add", IpiBeforeAdd, "send the IPI before queuing the CSD (single-target path)",
            "lost-wakeup"),
    Variant("unlock-before-func-sync", UnlockBeforeFuncSync,
            "unlock a waiting sender's CSD before its function ran", "early-return"),
    Variant("no-csd-lock", NoCsdLock, "reuse a CSD without waiting for its lock", "reuse-while-locked"),
)}
