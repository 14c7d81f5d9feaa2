"""The scheduler, as far as the page allocator's drain needs it: work queued on another CPU runs there in a
kworker, which the wakeup's reschedule IPI brings onto that CPU.

In 4.12, queue_work_on (kernel/workqueue.c) wakes the CPU's worker with try_to_wake_up; when the worker
preempts the running task that ends in resched_curr -> smp_send_reschedule, a RESCHEDULE_VECTOR IPI
(ttwu_queue_remote sends one too when the CPUs share no cache). The worker runs the work, sleeps again, and
the task resumes.

Approximations, each bounded in docs/reproduce.md ("zone->lock, the per-CPU page lists and drain_all_pages"):
- By default every wakeup preempts, at once. With `cfs` (the workload's worker_wakeup=cfs) a wakeup preempts
  as 4.12's CFS lets it: only a worker that slept longer than the wakeup granularity (kernel/sched/fair.c
  wakeup_preempt_entity: 4 ms on 8+ CPUs; place_entity caps the sleeper's credit at 12 ms); one woken sooner
  waits for the task's 12 ms slice to end. It is not the default because what damps it in 4.12 is missing:
  an allocation falls back to the other node's zone before it reclaims or drains.
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

# kernel/sched/fair.c (4.12): sysctl_sched_latency and sysctl_sched_wakeup_granularity before scaling; both
# scale by 1 + log2 of the CPUs, at most 8 (SCHED_TUNABLESCALING_LOG, get_update_sysctl_factor).
SCHED_LATENCY_NS = 6_000_000
SCHED_WAKEUP_GRANULARITY_NS = 1_000_000
NEVER = -(1 << 50)  # a worker that has not run yet: it slept long enough for anything


class Workqueue:
    """Each CPU's queued work items, and whether its worker is woken and yet to run (TIF_NEED_RESCHED set, its
    reschedule IPI not yet taken). With `cfs`, a wakeup preempts only as 4.12's CFS lets it (see queue_work_on)."""

    def __init__(self, ncpus: int, cfs: bool = False) -> None:
        self.pending: list[list[Work]] = [[] for _ in range(ncpus)]
        self.resched_pending = [False] * ncpus
        self.resched_ipis = 0  # reschedule IPIs sent (the RES row of /proc/interrupts)
        self.worker_waits = 0  # wakeups that did not preempt: the worker waited for the task's slice to end
        self.cfs = cfs
        factor = 1 + (min(ncpus, 8).bit_length() - 1)
        self.wakeup_granularity = SCHED_WAKEUP_GRANULARITY_NS * factor
        # place_entity's sleeper credit (GENTLE_FAIR_SLEEPERS: half the latency), and a task's slice when it
        # shares the CPU with one woken worker of the same weight (sched_slice: half the latency period).
        self.sleeper_credit = self.slice = SCHED_LATENCY_NS * factor // 2
        self.last_ran = [NEVER] * ncpus  # when each CPU's worker last went back to sleep
        self.run_at = [0] * ncpus  # when a woken worker may run


def queue_work_on(p: Platform, wq: Workqueue, src: int, dst: int, work: Work, same_socket: bool) -> KernelCode:
    """Queue `work` on `dst` from `src` and wake its worker: the target runqueue's line, then, if the worker
    preempts, one reschedule IPI (smp_send_reschedule: one ICR write, interrupts off).

    Without `cfs` every wakeup preempts. With it, as 4.12: the woken worker's vruntime trails the running task's
    by the time it slept, capped at the sleeper credit, and it preempts only past the wakeup granularity
    (wakeup_preempt_entity); otherwise it runs at the tick that ends the task's slice, counted from the worker's
    last run (check_preempt_tick; taken here at that instant, not at the next tick). A wakeup that does not
    preempt sends an IPI only across sockets (ttwu_queue_remote: CPUs that share no cache), whose handler then
    finds nothing to run yet."""
    wq.pending[dst].append(work)
    yield Busy(p.cacheline(src, dst), "try_to_wake_up")
    if wq.resched_pending[dst]:
        return
    wq.resched_pending[dst] = True
    preempt = not wq.cfs or min(p.now - wq.last_ran[dst], wq.sleeper_credit) > wq.wakeup_granularity
    if preempt:
        wq.run_at[dst] = p.now
    else:
        wq.worker_waits += 1
        wq.run_at[dst] = wq.last_ran[dst] + wq.slice
        p.raise_at(dst, wq.run_at[dst], RESCHEDULE_VECTOR)
    if preempt or not same_socket:
        wq.resched_ipis += 1
        yield IRQS_OFF
        yield Busy(p.cost(CostId.ICR_WRITE, src), "smp_send_reschedule")
        p.raise_ipi(src, dst, RESCHEDULE_VECTOR)
        yield IRQS_ON


def run_worker(p: Platform, wq: Workqueue, cpu: int) -> KernelCode:
    """The worker's turn on `cpu`: a switch to it, every work item queued so far, a switch back."""
    wq.resched_pending[cpu] = False
    yield Busy(p.cost(CostId.CONTEXT_SWITCH, cpu), "context_switch")
    while wq.pending[cpu]:
        work = wq.pending[cpu].pop(0)
        yield from work(cpu)
    yield Busy(p.cost(CostId.CONTEXT_SWITCH, cpu), "context_switch")
    wq.last_ran[cpu] = p.now


def scheduler_ipi(p: Platform, wq: Workqueue, cpu: int) -> KernelCode:
    """The reschedule interrupt (or the tick that ends a slice), and the worker it lets run if its time has come."""
    yield Busy(p.cost(CostId.IRQ_ENTRY, cpu), "irq_entry")
    if wq.pending[cpu] and p.now >= wq.run_at[cpu]:
        yield from run_worker(p, wq, cpu)
    yield Busy(p.cost(CostId.IRQ_EXIT, cpu), "irq_exit")
