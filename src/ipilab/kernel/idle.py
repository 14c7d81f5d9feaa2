"""The idle loop, as far as cross-CPU calls see it.

An idle CPU first polls for `halt_poll_ns` (a guest's haltpoll driver; 0 on bare metal) with
TIF_POLLING_NRFLAG set: a sender that sees the flag sets NEED_RESCHED instead of sending an IPI
(`skip_polling_idle`), and the CPU, on noticing, flushes its call_single_queue itself. After the poll
window it halts; then only an interrupt wakes it.
"""

from __future__ import annotations

from ipilab.events import CPU_IDLE_EXIT
from ipilab.kernel.smp import Smp
from ipilab.kernel.steps import Busy, Halt, KernelCode, SpinUntil
from ipilab.machine.costs import CostId


class IdleState:
    """The thread_info flags of a CPU's idle task that senders look at."""

    __slots__ = ("need_resched", "polling")

    def __init__(self) -> None:
        self.polling = False
        self.need_resched = False

    def set_nr_if_polling(self) -> bool:
        if not self.polling:
            return False
        self.need_resched = True
        return True


def do_idle(smp: Smp, cpu: int, idle: IdleState, halt_poll_ns: int) -> KernelCode:
    p = smp.p
    while True:
        p.trace(cpu, "cpu_idle", state=1, cpu_id=cpu)
        woken = False
        if halt_poll_ns > 0:
            idle.polling = True
            woken = yield SpinUntil(lambda: idle.need_resched, idle, "poll_idle", halt_poll_ns)
            idle.polling = False
        if not woken:
            yield Halt()
        p.trace(cpu, "cpu_idle", state=CPU_IDLE_EXIT, cpu_id=cpu)
        if idle.need_resched:
            yield Busy(p.cost(CostId.POLL_NOTICE, cpu), "poll_notice")
            # do_idle() flushes the queue itself (no interrupt taken), then schedule_idle() clears
            # NEED_RESCHED.
            yield from smp.flush_smp_call_function_queue(cpu)
            idle.need_resched = False
