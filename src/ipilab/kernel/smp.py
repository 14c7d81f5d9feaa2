"""An executable model of kernel/smp.c: the cross-CPU function call path.

It follows the kernel's names and order of steps: `smp_call_function_many_cond` locks and queues a CSD on
every target's `call_single_queue`, sends the IPIs, maybe runs the local function, then waits;
`generic_exec_single` does the same for one target; the interrupt handler and the idle loop run
`flush_smp_call_function_queue`. Behaviour that differs between kernel versions is chosen by
`kernel.has(feature)` (see versions.toml). Each yield is an interleaving point (see steps.py), so the same
code drives the simulator, the replay and the model checker.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
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
    pointer: str = field(init=False)  # the csd= value in traces: a stable fake kernel address

    def __post_init__(self) -> None:
        self.pointer = f"{0xFFFF888100000000 + 64 * self.ident:016x}"


LOCAL_CSD_POINTER = "0000000000000000"  # how 6.x traces a function it runs locally, without a CSD


# --- the IPI decisions, as pure functions of what the sender sees ------------------------------------
# The generators below and the trace replay (analysis/replay.py) both decide with these, so a replayed
# trace and a simulated run follow one set of rules.

def single_needs_ipi(kernel: Kernel, was_empty: bool) -> bool:
    """generic_exec_single(): does this enqueue owe its target an IPI?"""
    return was_empty or not kernel.has("single_ipi_if_empty")


def many_needs_ipi(kernel: Kernel, was_empty: bool) -> bool:
    """smp_call_function_many_cond(): does this target go into cpumask_ipi?"""
    return was_empty or not kernel.has("coalesce_many")


def many_goes_single(kernel: Kernel, remote_targets: int) -> bool:
    """Pre-5.13: a multi-CPU call with exactly one remote target takes the smp_call_function_single() way."""
    return kernel.has("many_single_shortcut") and remote_targets == 1


def many_sends_single(kernel: Kernel, ipi_targets: int) -> bool:
    """5.13+: when one target of a multi-CPU call needs an IPI, it goes out on the single-target path."""
    return kernel.has("single_ipi_for_one") and ipi_targets == 1


def polling_skips_ipi(kernel: Kernel) -> bool:
    """send_call_function_single_ipi() sets NEED_RESCHED on a polling idle target instead of an IPI."""
    return kernel.has("skip_polling_idle")


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

    def __smp_call_single_queue(self, cpu: int, csd: Csd, callsite: str) -> Generator[Any, Any, bool]:
        """Queue `csd` on its target; return whether the queue was empty (the caller owes an IPI)."""
        self.p.trace(cpu, "csd_queue_cpu", cpu=csd.dst, callsite=callsite, func=csd.func.name,
                     csd=csd.pointer)
        self.stats.csd_enqueues += 1  # counted where traced, so a trace and the counters agree
        yield Busy(self.p.cacheline(cpu, csd.dst), "llist_add")
        was_empty = self.call_single_queue[csd.dst].llist_add(csd)
        if was_empty:
            self._nonempty_since[csd.dst] = self.p.now
        return was_empty

    def send_call_function_single_ipi(self, cpu: int, target: int, callsite: str) -> KernelCode:
        if polling_skips_ipi(self.kernel) and self.p.set_nr_if_polling(target):
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
        was_empty = yield from self.__smp_call_single_queue(cpu, csd, callsite)
        if single_needs_ipi(self.kernel, was_empty):
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
        """Call `func(info)` on every CPU of `mask` (and on `cpu` itself when `run_local`)."""
        k = self.kernel
        self.stats.calls += 1
        run_local = run_local and cpu in mask and (cond_func is None or cond_func(cpu, info))
        targets = [t for t in sorted(set(mask)) if t != cpu]

        if many_goes_single(k, len(targets)):
            # Pre-5.13: one remote target goes the smp_call_function_single() way.
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
            was_empty = yield from self.__smp_call_single_queue(cpu, csd, callsite)
            queued.append(csd)
            if not many_needs_ipi(k, was_empty):
                self.stats.csd_no_ipi_queued += 1
            else:
                if not was_empty:
                    # Before the seed every target of the mask got its IPI, needed or not.
                    self.stats.ipis_to_nonempty_queue += 1
                cpumask_ipi.append(target)

        if many_sends_single(k, len(cpumask_ipi)):
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

    def flush_smp_call_function_queue(self, cpu: int, from_irq: bool) -> Generator[Any, Any, int]:
        """Detach the whole queue and run every entry; return how many ran."""
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

    def sysvec_call_function(self, cpu: int, vector: int) -> KernelCode:
        """The CALL_FUNCTION(_SINGLE) interrupt: both vectors flush the same queue."""
        name = "call_function_single" if vector == CALL_FUNCTION_SINGLE_VECTOR else "call_function"
        yield Busy(self.p.cost(CostId.IRQ_ENTRY, cpu), "irq_entry")
        self.stats.cal_interrupts += 1
        self.p.trace(cpu, f"{name}_entry", vector=vector)
        ran = yield from self.flush_smp_call_function_queue(cpu, from_irq=True)
        if ran == 0:
            self.stats.empty_interrupts += 1
        self.p.trace(cpu, f"{name}_exit", vector=vector)
        yield Busy(self.p.cost(CostId.IRQ_EXIT, cpu), "irq_exit")
