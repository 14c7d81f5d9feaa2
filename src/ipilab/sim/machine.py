"""CPUs that run the kernel model in simulated time, and the APICs and wires between them.

Each CPU runs a stack of contexts: its task (a workload thread, or the idle loop) and, on top, an
interrupt handler while one runs. A context is kernel-model code (a generator of steps). A CPU is
always either executing a `Busy` step, spinning in a `SpinUntil`, or halted; an interrupt that
arrives while the running context has interrupts enabled preempts that step at once and the step
resumes, with its remaining time, when the handler returns. IPIs travel with the machine's delivery
latency, and a vector already pending in the target's IRR absorbs a second one (APIC merging).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ipilab.events import (
    CALL_FUNCTION_SINGLE_VECTOR,
    CALL_FUNCTION_VECTOR,
    LOCAL_TIMER_VECTOR,
    RESCHEDULE_VECTOR,
    Event,
)
from ipilab.kernel.features import Kernel
from ipilab.kernel.idle import IdleState, do_idle
from ipilab.kernel.sched import Work, Workqueue, queue_work_on, run_worker, scheduler_ipi
from ipilab.kernel.smp import Smp
from ipilab.kernel.steps import Busy, Halt, KernelCode, LocalIrq, SpinUntil
from ipilab.kernel.time import local_timer_interrupt, tick_phases
from ipilab.machine.costs import ABSENT, CostId, RunCosts
from ipilab.machine.model import Machine
from ipilab.sim.engine import Engine
from ipilab.sim.timeuse import NUSES, Use, use_of
from ipilab.trace.ftrace import irq_flags


@dataclass(eq=False)
class Context:
    code: KernelCode
    kind: str  # "task", "idle", "irq", or "steal" (the host has descheduled the vCPU)
    irqs_on: bool
    started: int = 0
    saved: tuple | None = None  # what the context was doing when an interrupt preempted it


def _descheduled(ns: int) -> KernelCode:
    """What a vCPU does while its host runs something else: nothing, for `ns`."""
    yield Busy(ns, "vcpu descheduled")


@dataclass(eq=False)
class SimCpu:
    id: int
    comm: str = "<idle>"
    pid: int = 0
    stack: list[Context] = field(default_factory=list)
    irr: set[int] = field(default_factory=set)  # vectors pending in the local APIC
    idle: IdleState = field(default_factory=IdleState)
    wait: tuple | None = None  # ("busy", end, timer) | ("spin", step, deadline, timer) | ("halt",) | ("waking",)
    wait_gen: int = 0
    irq_ns: int = 0
    interrupts: int = 0
    apic_merged: int = 0
    ipis_in_flight: int = 0  # sent to this CPU, not yet arrived at its APIC
    user_mm: bool = False  # runs a user task's mm (not lazy-TLB)
    irqs_taken: int = 0  # interrupts of any vector taken
    use: Use = Use.IDLE  # what the current wait is spent on (sim/timeuse.py)
    use_since: int = 0
    use_ns: list[int] = field(default_factory=lambda: [0] * NUSES)


DRAW_BLOCK = 1024  # draws taken from a cost's stream at a time (any size gives the same sequence)


@dataclass
class MachineStats:
    apic_merged: int = 0  # IPIs absorbed by a same vector already pending in the target's IRR
    ipis_delivered: int = 0
    ticks: int = 0  # local timer interrupts taken
    vcpu_preemptions: int = 0  # times the host descheduled a running vCPU
    stolen_ns: int = 0  # time vCPUs spent descheduled


class SimMachine:
    """Implements `ipilab.kernel.steps.Platform` on simulated hardware."""

    def __init__(self, machine: Machine, kernel: Kernel, engine: Engine | None = None,
                 tracer: Callable[[Event], None] | None = None, seed: int = 0) -> None:
        self.machine = machine
        self.kernel = kernel
        self.engine = engine or Engine()
        self.tracer = tracer
        self.ncpus = machine.ncpus
        self.cpus = [SimCpu(i) for i in range(self.ncpus)]
        self.smp = Smp(kernel, self.ncpus, machine.apic(kernel.has("ipi_shorthand")), self)
        self.workqueue = Workqueue(self.ncpus)
        self.stats = MachineStats()
        self._watchers: dict[int, tuple[object, list[tuple[SimCpu, int]]]] = {}
        self.costs = RunCosts(machine, seed)
        self._constant = self.costs.constant  # the same list: a workload's pin() shows here too
        # Drawn costs not used yet, per (cost, CPU), last draw first.
        self._drawn: list[list[list[int]]] = [[[] for _ in range(self.ncpus)] for _ in CostId]
        self._halt_poll_ns = machine.topology.halt_poll_ns
        self._uses: dict[tuple[str, str, bool], Use] = {}

    # --- starting work -----------------------------------------------------------------------------

    def start(self, cpu: int, code: KernelCode | None, comm: str = "<idle>", pid: int = 0,
              user_mm: bool = True) -> None:
        """Give `cpu` its task (None: idle from the start) and begin running it now. A kernel thread
        (`user_mm=False`) borrows the previous mm lazily, as idle does."""
        c = self.cpus[cpu]
        c.stack = [Context(self._idle_code(c), "idle", True)]
        if code is not None:
            c.stack.append(Context(code, "task", True))
            c.comm, c.pid, c.user_mm = comm, pid, user_mm
        self.engine.at(self.engine.now, lambda: self._run(c, None))

    def start_background(self, seed: int) -> None:
        """Start the machine's background interrupts, after the workload has started every CPU: each CPU's
        timer tick at a seeded phase within the first period (CPUs' ticks are not aligned)."""
        bg = self.machine.background
        if bg.tick_hz:
            period, phases = tick_phases(bg.tick_hz, seed, self.ncpus)
            for c in self.cpus:
                self.engine.at(self.engine.now + phases[c.id], lambda c=c: self._tick(c, period))
        if bg.vcpu_preemption:
            for c in self.cpus:
                self.engine.at(self.engine.now + self.cost(CostId.VCPU_RUN, c.id), lambda c=c: self._deschedule(c))

    def _deschedule(self, c: SimCpu) -> None:
        """The host takes `c`'s physical CPU away for a while, whatever `c` was doing (interrupts on or off):
        it runs nothing, and interrupts sent to it stay pending. A halted vCPU loses nothing, nor does one already
        descheduled (its next run time can round to 0 ns: the host cannot take a CPU the vCPU does not have)."""
        off = self.cost(CostId.VCPU_PREEMPT, c.id)
        self.engine.at(self.engine.now + off + self.cost(CostId.VCPU_RUN, c.id), lambda: self._deschedule(c))
        if c.wait is None or c.wait[0] in ("halt", "waking") or c.stack[-1].kind == "steal":
            return
        self._park(c)
        self.stats.vcpu_preemptions += 1
        c.stack.append(Context(_descheduled(off), "steal", False, self.engine.now))
        self._run(c, None)

    def _tick(self, c: SimCpu, period: int) -> None:
        """The local APIC timer fires. With NO_HZ idle the tick is stopped while a CPU idles: no interrupt."""
        self.engine.at(self.engine.now + period, lambda: self._tick(c, period))
        if c.stack[-1].kind == "idle" or LOCAL_TIMER_VECTOR in c.irr:
            return
        self._raise(c, LOCAL_TIMER_VECTOR)

    def _idle_code(self, c: SimCpu) -> KernelCode:
        return do_idle(self.smp, c.id, c.idle, self._halt_poll_ns)

    @property
    def now(self) -> int:
        return self.engine.now

    # --- Platform ----------------------------------------------------------------------------------

    def cost(self, what: CostId, cpu: int) -> int:
        ns = self._constant[what]
        if ns >= 0:
            return ns
        return self._draw(what, cpu)

    def _draw(self, what: CostId, cpu: int) -> int:
        if self._constant[what] == ABSENT:
            raise self.costs.missing(what)
        left = self._drawn[what][cpu]
        if not left:
            left.extend(reversed(self.costs.draw(what, cpu, DRAW_BLOCK).tolist()))
        return left.pop()

    def cacheline(self, cpu: int, other: int) -> int:
        return self.cost(self.costs.cacheline[cpu][other], cpu)

    def raise_ipi(self, src: int, dst: int, vector: int) -> None:
        latency = self.cost(self.costs.ipi_latency[src][dst], src)
        self.cpus[dst].ipis_in_flight += 1
        self.engine.at(self.engine.now + latency, lambda: self._ipi_arrives(self.cpus[dst], vector))

    def notify(self, watch: object) -> None:
        entry = self._watchers.pop(id(watch), None)
        if entry is None:
            return
        for c, gen in entry[1]:
            self.engine.at(self.engine.now, lambda c=c, gen=gen: self._spin_check(c, gen))

    def trace(self, cpu: int, name: str, /, **fields: object) -> None:
        if self.tracer is None:
            return
        c = self.cpus[cpu]
        top = c.stack[-1]
        in_irq = any(ctx.kind == "irq" for ctx in c.stack)
        flags = irq_flags(not top.irqs_on, c.idle.need_resched, in_irq)
        comm, pid = (c.comm, c.pid) if c.stack[1:2] and c.stack[1].kind == "task" else ("<idle>", 0)
        self.tracer(Event(self.engine.now, cpu, name, comm, pid, flags, fields))

    def queue_work_on(self, src: int, dst: int, work: Work) -> KernelCode:
        same_socket = self.machine.socket_of(src) == self.machine.socket_of(dst)
        return queue_work_on(self, self.workqueue, src, dst, work, same_socket)

    def run_work_here(self, cpu: int, work: Work) -> KernelCode:
        self.workqueue.pending[cpu].append(work)
        return run_worker(self, self.workqueue, cpu)

    def raise_at(self, cpu: int, ns: int, vector: int) -> None:
        c = self.cpus[cpu]

        def arrive() -> None:
            if vector not in c.irr:
                self._raise(c, vector)

        self.engine.at(ns, arrive)

    def set_nr_if_polling(self, cpu: int) -> bool:
        c = self.cpus[cpu]
        if c.idle.set_nr_if_polling():
            self.notify(c.idle)
            return True
        return False

    def is_lazy_tlb(self, cpu: int) -> bool:
        c = self.cpus[cpu]
        return not (c.user_mm and c.stack[1:2] and c.stack[1].kind == "task")

    # --- running contexts --------------------------------------------------------------------------

    def _block(self, c: SimCpu, wait: tuple, use: Use) -> None:
        c.wait_gen += 1
        c.wait = wait
        # Time passes only inside waits: the one ending now is charged whole to what it was spent on.
        now = self.engine.now
        c.use_ns[c.use] += now - c.use_since
        c.use, c.use_since = use, now

    def _use(self, what: str, kind: str, spin: bool) -> Use:
        key = (what, kind, spin)
        use = self._uses.get(key)
        if use is None:
            use = self._uses[key] = use_of(what, kind, spin)
        return use

    def time_use(self) -> list[list[int]]:
        """Per CPU, the nanoseconds spent so far on each `Use`, the current wait counted up to now."""
        now = self.engine.now
        out = []
        for c in self.cpus:
            row = list(c.use_ns)
            row[c.use] += now - c.use_since
            out.append(row)
        return out

    def interrupts_taken(self, cpu: int) -> int:
        return self.cpus[cpu].irqs_taken

    def _run(self, c: SimCpu, value: Any) -> None:
        """Run `c`'s top context until it blocks on a Busy, a spin or a halt."""
        now = self.engine.now
        while True:
            top = c.stack[-1]
            if c.irr and top.irqs_on:
                if top.saved is None:  # what the last step returned is the code's once the handler is done
                    top.saved = ("value", value)
                self._take_interrupt(c)
                value = None
                continue
            try:
                step = top.code.send(value)
            except StopIteration as stop:
                c.stack.pop()
                if top.kind in ("irq", "steal"):
                    if top.kind == "irq":
                        c.irq_ns += now - top.started
                    else:
                        self.stats.stolen_ns += now - top.started
                    done, value = self._resume(c)
                    if not done:
                        return
                elif top.kind == "task":
                    c.comm, c.pid, c.user_mm = "<idle>", 0, False
                    value = None
                else:
                    raise RuntimeError("the idle loop returned") from None
                if top.kind == "task":
                    value = stop.value
                continue
            value = None
            if type(step) is Busy:
                if step.ns > 0:
                    end = now + step.ns
                    gen = c.wait_gen + 1
                    timer = self.engine.at(end, lambda gen=gen: self._busy_done(c, gen))
                    use = self._use(step.what, top.kind, False)
                    self._block(c, ("busy", end, timer), use)
                    return
            elif type(step) is SpinUntil:
                if step.cond():
                    value = True
                    continue
                deadline = None if step.timeout_ns is None else now + step.timeout_ns
                if not self._spin(c, step, deadline):
                    value = False
                    continue
                return
            elif type(step) is LocalIrq:
                top.irqs_on = step.enable
            elif type(step) is Halt:
                self._block(c, ("halt",), Use.IDLE)
                return
            else:
                raise TypeError(f"kernel code yielded {step!r}")

    def _spin(self, c: SimCpu, step: SpinUntil, deadline: int | None) -> bool:
        """Start (or resume) spinning; False if the deadline has already passed."""
        now = self.engine.now
        if deadline is not None and deadline <= now:
            return False
        gen = c.wait_gen + 1
        timer = None
        if deadline is not None:
            timer = self.engine.at(deadline, lambda: self._spin_timeout(c, gen))
        self._block(c, ("spin", step, deadline, timer), self._use(step.what, c.stack[-1].kind, True))
        self._watchers.setdefault(id(step.watch), (step.watch, []))[1].append((c, gen))
        return True

    def _busy_done(self, c: SimCpu, gen: int) -> None:
        if c.wait_gen == gen:
            c.wait = None
            self._run(c, None)

    def _spin_check(self, c: SimCpu, gen: int) -> None:
        if c.wait_gen != gen:
            return
        _, step, _deadline, timer = c.wait
        if step.cond():
            if timer is not None:
                timer.cancel()
            c.wait = None
            self._run(c, True)
        else:
            self._watchers.setdefault(id(step.watch), (step.watch, []))[1].append((c, gen))

    def _spin_timeout(self, c: SimCpu, gen: int) -> None:
        if c.wait_gen == gen:
            self._unwatch(c, c.wait[1].watch)
            c.wait = None
            self._run(c, False)

    def _unwatch(self, c: SimCpu, watch: object) -> None:
        """`c` no longer spins on `watch` (its spin timed out or was set aside): drop its entry, so the
        watchers stay one per spinning CPU however often spins end that way."""
        entry = self._watchers.get(id(watch))
        if entry is not None:
            entry[1][:] = [w for w in entry[1] if w[0] is not c]
            if not entry[1]:
                del self._watchers[id(watch)]

    # --- interrupts --------------------------------------------------------------------------------

    def _ipi_arrives(self, c: SimCpu, vector: int) -> None:
        self.stats.ipis_delivered += 1
        c.ipis_in_flight -= 1
        if vector in c.irr:
            self.stats.apic_merged += 1
            c.apic_merged += 1
            return
        self._raise(c, vector)

    def _raise(self, c: SimCpu, vector: int) -> None:
        """`vector` becomes pending in `c`'s APIC, which is not already holding it, and is taken at once if
        `c` waits with interrupts on."""
        c.irr.add(vector)
        if c.wait is not None and c.wait[0] != "waking" and c.stack[-1].irqs_on:
            self._preempt(c)

    def _preempt(self, c: SimCpu) -> None:
        """An interrupt arrives while `c` waits with interrupts on: park the wait and take it."""
        if c.wait[0] == "halt":
            # A halted CPU accepts the interrupt only once awake: until then the vector stays in IRR,
            # where a second IPI of the same vector merges with it.
            c.stack[-1].saved = ("halt",)
            self._block(c, ("waking",), Use.IDLE)
            gen = c.wait_gen
            self.engine.at(self.engine.now + self.cost(CostId.IDLE_EXIT, c.id), lambda: self._woken(c, gen))
            return
        self._park(c)
        self._take_interrupt(c)
        self._run(c, None)

    def _park(self, c: SimCpu) -> None:
        """Set aside the busy step or spin `c` waits in, to be resumed when what comes on top of it ends."""
        wait, top = c.wait, c.stack[-1]
        c.wait_gen += 1
        c.wait = None
        if wait[0] == "busy":
            wait[2].cancel()
            top.saved = ("busy", wait[1] - self.engine.now, c.use)
        else:
            if wait[3] is not None:
                wait[3].cancel()
            self._unwatch(c, wait[1].watch)
            top.saved = ("spin", wait[1], wait[2])

    def _woken(self, c: SimCpu, gen: int) -> None:
        if c.wait_gen == gen:
            c.wait = None
            self._run(c, None)  # interrupts are on in the idle context: the pending one is taken first

    def _take_interrupt(self, c: SimCpu) -> None:
        vector = max(c.irr)  # the APIC delivers the highest pending vector first
        c.irr.discard(vector)
        c.irqs_taken += 1
        if vector == LOCAL_TIMER_VECTOR:
            self.stats.ticks += 1
        elif vector != RESCHEDULE_VECTOR:
            c.interrupts += 1
        c.stack.append(Context(self._handler(c, vector), "irq", False, self.engine.now))

    def _handler(self, c: SimCpu, vector: int) -> KernelCode:
        if vector in (CALL_FUNCTION_VECTOR, CALL_FUNCTION_SINGLE_VECTOR):
            yield from self.smp.sysvec_call_function(c.id, vector)
        elif vector == LOCAL_TIMER_VECTOR:
            yield from local_timer_interrupt(self, c.id)
        elif vector == RESCHEDULE_VECTOR:
            yield from scheduler_ipi(self, self.workqueue, c.id)
        else:
            raise ValueError(f"no handler for vector {vector}")

    def _resume(self, c: SimCpu) -> tuple[bool, Any]:
        """After a handler: continue what the interrupted context was doing. (False,_) if it blocks."""
        top = c.stack[-1]
        saved, top.saved = top.saved, None
        # Whatever put a handler on top of this context recorded what it was doing first (_run: a value,
        # _park: a busy step or spin, _preempt: the halt, this method: what it had), so there is always one.
        assert saved is not None, "a handler ended over a context that recorded nothing to resume"
        if c.irr and top.irqs_on:
            top.saved = saved  # another interrupt first; _run takes it and comes back here
            self._take_interrupt(c)
            return True, None
        if saved[0] == "value":
            return True, saved[1]
        if saved[0] == "busy":
            gen = c.wait_gen + 1
            end = self.engine.now + saved[1]
            timer = self.engine.at(end, lambda: self._busy_done(c, gen))
            self._block(c, ("busy", end, timer), saved[2])
            return False, None
        if saved[0] == "spin":
            step, deadline = saved[1], saved[2]
            if step.cond():
                return True, True
            return (False, None) if self._spin(c, step, deadline) else (True, False)
        return True, None  # ("halt",): HLT returns once the interrupt is handled

