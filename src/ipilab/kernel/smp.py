"""An executable model of kernel/smp.c: the cross-CPU function call path.

It follows the kernel's names and order of steps: `smp_call_function_many_cond` locks and queues a CSD on
every target's `call_single_queue`, sends the IPIs, maybe runs the local function, then waits;
`smp_call_function_single` / `generic_exec_single` do the same for one target; the interrupt handler
(`generic_smp_call_function_single_interrupt`) and the idle loop (`flush_smp_call_function_queue`) run
`__flush_smp_call_function_queue`. Behaviour that differs between kernel versions is chosen by
`kernel.has(feature)` (see versions.toml). Each yield is an interleaving point (see steps.py), so the same
code drives the simulator, the trace replay (analysis/replay.py) and the model checker.

Some of these were renamed over the years; the model uses 6.x's names. What to grep for in kernel/smp.c:
  the model (6.x)                             4.12, 4.13                        5.8 to 5.18
  smp_call_function_many_cond                 smp_call_function_many            smp_call_function_many_cond (5.6+)
    with run_local, before local_after_send   on_each_cpu_mask                  on_each_cpu_cond_mask
  smp_call_function_single                    the same                          the same
  generic_exec_single                         the same                          the same
  llist_add_csd (csd_queue_cpu + llist_add)   llist_add in generic_exec_single  __smp_call_single_queue, and
                                              and smp_call_function_many        inline in ..._many_cond
  generic_smp_call_function_single_interrupt  the same                          the same
  __flush_smp_call_function_queue             flush_smp_call_function_queue     flush_smp_call_function_queue
  flush_smp_call_function_queue (idle loop)   none: idle CPUs took the IPI      flush_smp_call_function_from_idle
5.19 gave the last two their 6.x names (16bf5a5e1ec5, "smp: Rename flush_smp_call_function_from_idle()").
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ipilab.events import CALL_FUNCTION_SINGLE_VECTOR, CALL_FUNCTION_VECTOR, FUNCTION_CALL_CALLBACK
from ipilab.kernel.features import Kernel
from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform, SpinUntil
from ipilab.kernel.x86 import Apic, send_IPI, send_IPI_mask
from ipilab.latency import LatencyHistogram
from ipilab.machine.costs import CostId

# What a queued call does when it runs on `cpu`: a generator of steps (its cost and effects).
FuncBody = Callable[[Platform, int, Any], KernelCode]


@dataclass(frozen=True)
class SmpFunc:
    """A function passed to smp_call_function*(): its kernel name (as traces print it) and its body."""

    name: str
    body: FuncBody


@dataclass(eq=False)
class Csd:
    """struct call_single_data: one call queued from `src` to `dst`."""

    ident: int
    src: int
    dst: int
    func: SmpFunc | None = None
    info: Any = None
    locked: bool = False
    sync: bool = False  # CSD_TYPE_SYNC: the sender waits, the receiver unlocks after the function

    @cached_property
    def pointer(self) -> str:
        """The csd= value in traces: a stable fake kernel address (made when first traced: the model
        checker builds thousands of CSDs a second and traces few)."""
        return f"{0xFFFF888100000000 + 64 * self.ident:016x}"


LOCAL_CSD_POINTER = "0000000000000000"  # how 6.x traces a function it runs locally, without a CSD


class CallSingleQueue:
    """A CPU's call_single_queue: a lock-free list whose add reports whether it was empty."""

    def __init__(self) -> None:
        self.entries: list[Csd] = []

    def llist_add(self, csd: Csd) -> bool:
        was_empty = not self.entries
        self.entries.append(csd)
        return was_empty

    def llist_del_all(self) -> list[Csd]:
        # The kernel detaches a LIFO list and reverses it; keeping arrival order gives the same FIFO.
        entries, self.entries = self.entries, []
        return entries

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class SmpStats:
    """What the cross-call path did, counted as /proc/interrupts and the tracepoints would count it."""

    csd_enqueues: int = 0  # remote CSDs queued (csd_queue_cpu)
    csd_ipis: int = 0  # function-call IPIs sent, one per target CPU (ipi_send_cpu / each CPU of ipi_send_cpumask)
    csd_no_ipi_queued: int = 0  # queued behind an earlier CSD that already had its IPI coming
    csd_no_ipi_polling: int = 0  # target was polling idle: NEED_RESCHED set instead of an IPI
    ipis_to_nonempty_queue: int = 0  # sent although the queue already waited for an IPI (pre-4.13 waste)
    icr_writes: int = 0  # writes to the ICR (or PV hypercalls) that carried those IPIs
    cal_interrupts: int = 0  # function-call interrupt handler entries (the CAL row)
    csds_run_in_irq: int = 0
    csds_run_from_idle: int = 0
    empty_interrupts: int = 0  # handlers that found the queue already emptied
    local_calls: int = 0
    calls: int = 0
    queue_windows: int = 0  # times a queue went from empty to detached (one window of coalescing each)
    queue_nonempty_ns: int = 0  # summed over those windows: first llist_add to llist_del_all
    call_latencies_ns: LatencyHistogram = field(default_factory=LatencyHistogram)  # wait=1 calls: entry to return


class Smp:
    """The cross-call subsystem of one machine: per-CPU queues and CSDs, and the kernel code around them."""

    def __init__(self, kernel: Kernel, ncpus: int, apic: Apic, platform: Platform) -> None:
        self.kernel = kernel
        self.ncpus = ncpus
        self.apic = apic
        self.p = platform
        self.call_single_queue = [CallSingleQueue() for _ in range(ncpus)]
        self._next_csd = 0
        # per_cpu(cfd_data, src).csd[dst] and per_cpu(csd_data, src): CSDs reused from call to call.
        self.cfd_csd = [[self._new_csd(src, dst) for dst in range(ncpus)] for src in range(ncpus)]
        self.csd_data = [self._new_csd(src, src) for src in range(ncpus)]
        self.stats = SmpStats()
        self._nonempty_since = [0] * ncpus  # statistics only

    def _new_csd(self, src: int, dst: int) -> Csd:
        self._next_csd += 1
        return Csd(self._next_csd, src, dst)

    # --- CSD locking -------------------------------------------------------------------------------

    def csd_lock_wait(self, cpu: int, csd: Csd) -> KernelCode:
        if csd.locked:
            yield SpinUntil(lambda: not csd.locked, csd, "csd_lock_wait")
            # Seeing the unlock pulls the CSD's line back from the CPU that unlocked it.
            yield Busy(self.p.cacheline(cpu, csd.dst), "csd_lock_wait")

    def csd_lock(self, cpu: int, csd: Csd) -> KernelCode:
        yield from self.csd_lock_wait(cpu, csd)
        csd.locked = True

    def csd_unlock(self, csd: Csd) -> None:
        csd.locked = False
        self.p.notify(csd)

    # --- queueing and sending ----------------------------------------------------------------------

    def llist_add_csd(self, cpu: int, csd: Csd, callsite: str) -> Generator[Any, Any, bool]:
        """The enqueue both call paths share: the csd_queue_cpu tracepoint, then llist_add() of `csd` onto
        its target's call_single_queue. Returns whether the queue was empty, i.e. whether the caller owes
        the target an IPI. (6.x's smp_call_function_many_cond() has these two lines inline; its
        __smp_call_single_queue() has them too and sends the single IPI itself: generic_exec_single below.)"""
        self.p.trace(cpu, "csd_queue_cpu", cpu=csd.dst, callsite=callsite, func=csd.func.name,
                     csd=csd.pointer)
        self.stats.csd_enqueues += 1  # counted where traced, so a trace and the counters agree
        yield Busy(self.p.cacheline(cpu, csd.dst), "llist_add")
        was_empty = self.call_single_queue[csd.dst].llist_add(csd)
        if was_empty:
            self._nonempty_since[csd.dst] = self.p.now
        return was_empty

    def send_call_function_single_ipi(self, cpu: int, target: int, callsite: str) -> KernelCode:
        # 5.8+: a polling idle target is woken with NEED_RESCHED instead (set_nr_if_polling).
        if self.kernel.has("skip_polling_idle") and self.p.set_nr_if_polling(target):
            self.p.trace(cpu, "sched_wake_idle_without_ipi", cpu=target)
            self.stats.csd_no_ipi_polling += 1
            return
        self.p.trace(cpu, "ipi_send_cpu", cpu=target, callsite=callsite, callback=FUNCTION_CALL_CALLBACK)
        self.stats.csd_ipis += 1
        # Count after the writes: other CPUs update the counters while this one is inside them.
        writes = yield from send_IPI(self.apic, self.p, cpu, target, CALL_FUNCTION_SINGLE_VECTOR)
        self.stats.icr_writes += writes

    def send_call_function_ipi_mask(self, cpu: int, mask: list[int], callsite: str) -> KernelCode:
        self.p.trace(cpu, "ipi_send_cpumask", cpumask=tuple(mask), callsite=callsite,
                     callback=FUNCTION_CALL_CALLBACK)
        self.stats.csd_ipis += len(mask)
        writes = yield from send_IPI_mask(self.apic, self.p, cpu, mask, CALL_FUNCTION_VECTOR, self.ncpus)
        self.stats.icr_writes += writes

    # --- the calls ---------------------------------------------------------------------------------

    def generic_exec_single(self, cpu: int, target: int, csd: Csd, callsite: str) -> KernelCode:
        """Queue `csd` on `target` and send the single-target IPI if the queue was empty (5.8+: the body of
        __smp_call_single_queue()). Without single_ipi_if_empty (before 3.14) every call sends one."""
        was_empty = yield from self.llist_add_csd(cpu, csd, callsite)
        if was_empty or not self.kernel.has("single_ipi_if_empty"):
            if not was_empty:
                self.stats.ipis_to_nonempty_queue += 1
            yield from self.send_call_function_single_ipi(cpu, target, callsite)
        else:
            self.stats.csd_no_ipi_queued += 1

    def smp_call_function_single(self, cpu: int, target: int, func: SmpFunc, info: Any, wait: bool,
                                 callsite: str = "smp_call_function_single") -> KernelCode:
        self.stats.calls += 1
        if target == cpu:
            yield from self.run_local(cpu, func, info)
            return
        yield from self._call_single_remote(cpu, target, func, info, wait, callsite)

    def _call_single_remote(self, cpu: int, target: int, func: SmpFunc, info: Any, wait: bool,
                            callsite: str) -> KernelCode:
        # A waiting caller uses a CSD on its stack; an async one reuses its per-CPU csd_data, whose previous
        # use (perhaps to another CPU) may still be pending: the CSD is locked first, and only then filled,
        # its target too, so the wait for that use's unlock still sees the CPU that will unlock it.
        csd = self._new_csd(cpu, target) if wait else self.csd_data[cpu]
        yield from self.csd_lock(cpu, csd)
        csd.dst, csd.func, csd.info, csd.sync = target, func, info, wait
        yield from self.generic_exec_single(cpu, target, csd, callsite)
        if wait:
            yield from self.csd_lock_wait(cpu, csd)

    def smp_call_function_many_cond(self, cpu: int, mask: list[int], func: SmpFunc, info: Any, *,
                                    wait: bool, run_local: bool = False,
                                    cond_func: Callable[[int, Any], bool] | None = None,
                                    callsite: str = "smp_call_function_many_cond") -> KernelCode:
        """Call `func(info)` on every CPU of `mask` (and on `cpu` itself when `run_local`).

        4.12/4.13: smp_call_function_many() (no cond_func), and on_each_cpu_mask() for `run_local`, which
        ran the local function after smp_call_function_many() returned: `run_local` without
        local_after_send. 5.6 gave it cond_func and this name; 5.13 moved the local run (and SCF_RUN_LOCAL)
        into it, between send and wait (local_after_send)."""
        k = self.kernel
        self.stats.calls += 1
        run_local = run_local and cpu in mask and (cond_func is None or cond_func(cpu, info))
        targets = [t for t in sorted(set(mask)) if t != cpu]

        if k.has("many_single_shortcut") and len(targets) == 1:
            # Before 5.13: a mask with one remote CPU (counted before cond_func) goes the
            # smp_call_function_single() way.
            if cond_func is None or cond_func(targets[0], info):
                yield from self._call_single_remote(cpu, targets[0], func, info, wait, callsite)
            if run_local:
                yield from self.run_local(cpu, func, info)
            return

        queued: list[Csd] = []
        cpumask_ipi: list[int] = []
        for target in targets:
            if cond_func is not None and not cond_func(target, info):
                continue
            csd = self.cfd_csd[cpu][target]
            yield from self.csd_lock(cpu, csd)
            csd.func, csd.info, csd.sync = func, info, wait
            was_empty = yield from self.llist_add_csd(cpu, csd, callsite)
            queued.append(csd)
            if not was_empty and k.has("coalesce_many"):  # the seed (4.13): cfd->cpumask_ipi
                self.stats.csd_no_ipi_queued += 1
            else:
                if not was_empty:
                    # Before the seed every target of the mask got its IPI, needed or not.
                    self.stats.ipis_to_nonempty_queue += 1
                cpumask_ipi.append(target)

        if k.has("single_ipi_for_one") and len(cpumask_ipi) == 1:  # 5.13+: one IPI goes the single way
            yield from self.send_call_function_single_ipi(cpu, cpumask_ipi[0], callsite)
        elif cpumask_ipi:
            yield from self.send_call_function_ipi_mask(cpu, cpumask_ipi, callsite)

        if run_local and k.has("local_after_send"):
            yield from self.run_local(cpu, func, info)
        if wait:
            for csd in queued:
                yield from self.csd_lock_wait(cpu, csd)
        if run_local and not k.has("local_after_send"):
            yield from self.run_local(cpu, func, info)

    def run_local(self, cpu: int, func: SmpFunc, info: Any) -> KernelCode:
        self.stats.local_calls += 1
        yield IRQS_OFF
        self.p.trace(cpu, "csd_function_entry", func=func.name, csd=LOCAL_CSD_POINTER)
        yield from func.body(self.p, cpu, info)
        self.p.trace(cpu, "csd_function_exit", func=func.name, csd=LOCAL_CSD_POINTER)
        yield IRQS_ON

    # --- the receiving side ------------------------------------------------------------------------

    def csd_do_func(self, cpu: int, csd: Csd, func: SmpFunc, info: Any) -> KernelCode:
        self.p.trace(cpu, "csd_function_entry", func=func.name, csd=csd.pointer)
        yield from func.body(self.p, cpu, info)
        self.p.trace(cpu, "csd_function_exit", func=func.name, csd=csd.pointer)

    def __flush_smp_call_function_queue(self, cpu: int, from_irq: bool) -> Generator[Any, Any, int]:
        """Detach the whole queue and run every entry; return how many ran. (Static in kernel/smp.c, so
        private here: its callers are the two functions below. `from_irq` is for the statistics only; the
        kernel's argument, warn_cpu_offline, is about CPU hot-unplug, which the model has none of.)"""
        yield Busy(0, "llist_del_all")
        entries = self.call_single_queue[cpu].llist_del_all()
        if entries:
            self.stats.queue_windows += 1
            self.stats.queue_nonempty_ns += self.p.now - self._nonempty_since[cpu]
        if self.kernel.has("sync_first_flush"):
            # SYNC entries first: their senders are spinning. The rest keep their order.
            entries = [c for c in entries if c.sync] + [c for c in entries if not c.sync]
        for csd in entries:
            func, info = csd.func, csd.info
            # Counted as each runs (where csd_function_entry is traced), so a trace and the counters agree.
            if from_irq:
                self.stats.csds_run_in_irq += 1
            else:
                self.stats.csds_run_from_idle += 1
            if csd.sync:
                yield from self.csd_do_func(cpu, csd, func, info)
                yield Busy(self.p.cacheline(cpu, csd.src), "csd_unlock")
                self.csd_unlock(csd)
            else:
                # An async CSD may be reused as soon as it is unlocked: copy func/info first.
                yield Busy(self.p.cacheline(cpu, csd.src), "csd_unlock")
                self.csd_unlock(csd)
                yield from self.csd_do_func(cpu, csd, func, info)
        return len(entries)

    def generic_smp_call_function_single_interrupt(self, cpu: int) -> Generator[Any, Any, int]:
        """What both function-call vectors run (generic_smp_call_function_interrupt is the same function)."""
        return (yield from self.__flush_smp_call_function_queue(cpu, from_irq=True))

    def flush_smp_call_function_queue(self, cpu: int) -> KernelCode:
        """The idle loop's flush after a polling wakeup (5.8-5.18: flush_smp_call_function_from_idle()):
        nothing if the queue is empty, else the flush with interrupts off."""
        if not len(self.call_single_queue[cpu]):
            return
        yield IRQS_OFF
        yield from self.__flush_smp_call_function_queue(cpu, from_irq=False)
        yield IRQS_ON

    def sysvec_call_function(self, cpu: int, vector: int) -> KernelCode:
        """x86's CALL_FUNCTION(_SINGLE) interrupt entry: both vectors flush the same queue."""
        name = "call_function_single" if vector == CALL_FUNCTION_SINGLE_VECTOR else "call_function"
        yield Busy(self.p.cost(CostId.IRQ_ENTRY, cpu), "irq_entry")
        self.stats.cal_interrupts += 1
        self.p.trace(cpu, f"{name}_entry", vector=vector)
        ran = yield from self.generic_smp_call_function_single_interrupt(cpu)
        if ran == 0:
            self.stats.empty_interrupts += 1
        self.p.trace(cpu, f"{name}_exit", vector=vector)
        yield Busy(self.p.cost(CostId.IRQ_EXIT, cpu), "irq_exit")
