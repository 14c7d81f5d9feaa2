"""The scheduler, as far as the page allocator's drain needs it: work queued on another CPU runs there in a
kworker, which the wakeup's reschedule IPI brings onto that CPU.

In 4.12, queue_work_on (kernel/workqueue.c) wakes the CPU's worker with try_to_wake_up; on a busy CPU that
ends in resched_curr -> smp_send_reschedule, a RESCHEDULE_VECTOR IPI (ttwu_queue_remote sends the same IPI
when the CPUs share no cache). A woken worker preempts the running task, since its vruntime is far behind
after sleeping; it runs the work, sleeps again, and the task resumes.

Approximations: the worker runs when the reschedule interrupt returns, as in a preemptible kernel. 4.12 with
PREEMPT_VOLUNTARY switches at the interrupted task's next cond_resched() or return to user instead, at most
one page's reclaim work later. The worker runs inside the interrupt's context here, so other interrupts wait
across its two context switches (`context_switch` each), not only while its work has them off.
"""

from __future__ import annotations

from collections.abc import Callable

from ipilab.events import RESCHEDULE_VECTOR
from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

Work = Callable[[int], KernelCode]  # a work item's function, given the CPU it runs on


class Workqueue:
    """Each CPU's queued work items, and whether a reschedule IPI to it is still to be taken."""

    def __init__(self, ncpus: int) -> None:
        self.pending: list[list[Work]] = [[] for _ in range(ncpus)]
        self.ipi_pending = [False] * ncpus
        self.resched_ipis = 0  # reschedule IPIs sent (the RES row of /proc/interrupts)


def queue_work_on(p: Platform, wq: Workqueue, src: int, dst: int, work: Work) -> KernelCode:
    """Queue `work` on `dst` from `src` and wake its worker: the target runqueue's line, then one reschedule IPI
    (smp_send_reschedule: one ICR write, interrupts off) unless one is already on its way."""
    wq.pending[dst].append(work)
    yield Busy(p.cacheline(src, dst), "try_to_wake_up")
    if not wq.ipi_pending[dst]:
        wq.ipi_pending[dst] = True
        wq.resched_ipis += 1
        yield IRQS_OFF
        yield Busy(p.cost(CostId.ICR_WRITE, src), "smp_send_reschedule")
        p.raise_ipi(src, dst, RESCHEDULE_VECTOR)
        yield IRQS_ON


def scheduler_ipi(p: Platform, wq: Workqueue, cpu: int) -> KernelCode:
    """The reschedule interrupt, and the worker it lets run: every work item queued on `cpu` so far."""
    yield Busy(p.cost(CostId.IRQ_ENTRY, cpu), "irq_entry")
    wq.ipi_pending[cpu] = False
    if wq.pending[cpu]:
        yield Busy(p.cost(CostId.CONTEXT_SWITCH, cpu), "context_switch")
        while wq.pending[cpu]:
            work = wq.pending[cpu].pop(0)
            yield from work(cpu)
        yield Busy(p.cost(CostId.CONTEXT_SWITCH, cpu), "context_switch")
    yield Busy(p.cost(CostId.IRQ_EXIT, cpu), "irq_exit")
