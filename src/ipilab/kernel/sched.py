"""The scheduler, as far as the page allocator's drain needs it: work queued on another CPU runs there in a
kworker, which the wakeup's reschedule IPI brings onto that CPU.

In 4.12, queue_work_on (kernel/workqueue.c) wakes the CPU's worker with try_to_wake_up; when the worker
preempts the running task that ends in resched_curr -> smp_send_reschedule, a RESCHEDULE_VECTOR IPI
(ttwu_queue_remote sends one too when the CPUs share no cache). The worker runs the work, sleeps again, and
the task resumes.

Approximations, each bounded in docs/reproduce.md ("zone->lock, the per-CPU page lists and drain_all_pages"):
- Every wakeup preempts, at once. 4.12's CFS preempts only a worker that slept longer than the wakeup
  granularity (kernel/sched/fair.c wakeup_preempt_entity: 4 ms on 8+ CPUs; place_entity caps the sleeper's
  credit at 12 ms); one woken sooner waits for the tick that ends the task's 12 ms slice.
- The worker runs when the reschedule interrupt returns, even inside a spinlock's hold or a get_cpu() section,
  where no kernel switches; 4.12 with PREEMPT_VOLUNTARY switches at the task's next cond_resched() or return to
  user. It runs inside the interrupt's context, so other interrupts wait across its two context switches
  (`context_switch` each), not only while its work has them off.
- The caller's sleep in flush_work is a spin: the wakeup and idle exit it would cost are not charged.
"""

from __future__ import annotations

from collections.abc import Callable

from ipilab.events import RESCHEDULE_VECTOR
from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

Work = Callable[[int], KernelCode]  # a work item's function, given the CPU it runs on


class Workqueue:
    """Each CPU's queued work items, and whether its worker is woken and yet to run (TIF_NEED_RESCHED set, its
    reschedule IPI not yet taken)."""

    def __init__(self, ncpus: int) -> None:
        self.pending: list[list[Work]] = [[] for _ in range(ncpus)]
        self.resched_pending = [False] * ncpus
        self.resched_ipis = 0  # reschedule IPIs sent (the RES row of /proc/interrupts)


def queue_work_on(p: Platform, wq: Workqueue, src: int, dst: int, work: Work) -> KernelCode:
    """Queue `work` on `dst` from `src` and wake its worker: the target runqueue's line, then one reschedule IPI
    (smp_send_reschedule: one ICR write, interrupts off) unless one is already on its way."""
    wq.pending[dst].append(work)
    yield Busy(p.cacheline(src, dst), "try_to_wake_up")
    if not wq.resched_pending[dst]:
        wq.resched_pending[dst] = True
        wq.resched_ipis += 1
        yield IRQS_OFF
        yield Busy(p.cost(CostId.ICR_WRITE, src), "smp_send_reschedule")
        p.raise_ipi(src, dst, RESCHEDULE_VECTOR)
        yield IRQS_ON


def scheduler_ipi(p: Platform, wq: Workqueue, cpu: int) -> KernelCode:
    """The reschedule interrupt, and the worker it lets run: every work item queued on `cpu` so far."""
    yield Busy(p.cost(CostId.IRQ_ENTRY, cpu), "irq_entry")
    wq.resched_pending[cpu] = False
    if wq.pending[cpu]:
        yield Busy(p.cost(CostId.CONTEXT_SWITCH, cpu), "context_switch")
        while wq.pending[cpu]:
            work = wq.pending[cpu].pop(0)
            yield from work(cpu)
        yield Busy(p.cost(CostId.CONTEXT_SWITCH, cpu), "context_switch")
    yield Busy(p.cost(CostId.IRQ_EXIT, cpu), "irq_exit")
