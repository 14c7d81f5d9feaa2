"""An exhaustive model checker of the cross-call protocol, driving the kernel model in kernel/smp.py.

`ModelMachine` implements the `Platform` protocol (as `ipilab.sim.machine.SimMachine` does for the
simulator), but instead of time it offers choices. In a state, the possible moves are:

- `run cpuN`: CPU N's running context (its task, its idle loop, or an interrupt handler on top of them)
  executes up to its next yield, i.e. one of the kernel model's atomic steps (llist_add that reports
  emptiness, the detach-all, a CSD lock or unlock, an ICR write, interrupts off/on, ...). `Busy(ns)` is
  only an interleaving point here; a `SpinUntil` keeps the CPU from moving until its condition holds; a
  `Halt` until an interrupt is pending.
- `irq cpuN`: CPU N, with interrupts on and a vector pending in its APIC, takes the interrupt (interrupt
  entry: the highest vector leaves the IRR and the handler's context is pushed). As on the hardware and in
  the simulator, a CPU with interrupts on and a vector pending takes it before its next step.

The APIC pending bit. An ICR write sets the target's IRR bit at once, and an IPI whose vector is already
pending there is absorbed. The delivery latency is not a separate move, which halves the states. What
that leaves out: runs where a travelling IPI lands after the target accepted an earlier one of the same
vector and so causes one more interrupt (the same IPI, delivered at once, is absorbed). Every other effect
of a latency is a reordering the search does make (the target's moves before the ICR write instead of
after it). The extra interrupt only flushes the queue once more, so a run with it strands no CSD that
the same run without it (which is explored) does not strand too; no check is missed, and the IPIs sent
(counted at the ICR write) are the same either way; only interrupts and merges would differ, and they
are not reported.

LOCAL STEPS. Every access by the kernel code to state another CPU can see (queues, CSD fields, idle
flags, the APIC, the record of functions run) is noticed (`_accesses`). A `run` move keeps going while the
steps it runs touch nothing shared, and ends with the first step that does, or when the CPU blocks, or
when its interrupts have just come on (or a vector is pending with them on). This loses no behaviour: a
step that touches nothing shared commutes with every move of the other CPUs and with interrupt delivery
(the handler touches only shared state and its own locals), so the interleavings it cuts are reorderings
of ones that are kept; and a point where an interrupt could newly be taken always ends a move.

What a state is. Generators cannot be copied, so a state is reached by re-executing the kernel model
from the initial state along the schedule (the list of moves) that leads to it (`replay`), as VeriSoft
does. Its identity, for the visited set, is `ModelMachine.key()`:
  * the shared memory: every CPU's call_single_queue (as CSD names), every CSD's fields (locked, sync,
    func, info, dst), each APIC's IRR bits, the idle flags;
  * each CPU's context stack: per context, its interrupt flag, the kind of step it yielded last, and the
    exact position of its code: for every generator in the `yield from` chain, its function, its bytecode
    offset, its locals and the iterators on its evaluation stack, by value (CSDs by name);
  * what the checks need: which (call, target) pairs have run their function, and the IPIs sent so far
    (so the minimum and maximum over complete runs are read off the terminal states).
Merging two schedules that reach one key is sound because the model's future depends on nothing else: its
code reads only its locals and this shared state (costs are 0, time is never read, statistics counters
are written but never read), and CSD names do not depend on the schedule (`cfd` CSDs by sender and
target, `data` by sender, on-stack ones by sender and how many it made before). The visited set holds
64-bit hashes of keys (hash compaction, as SPIN's -DHC): two distinct states collide with probability
about n^2 / 2^65 for n states, i.e. below 1e-6 up to 6 million states.

The full search (full.py, `explore`) expands every reachable state. dpor.py expands fewer, on the same machine: it
runs one interleaving per class of interleavings that differ only in the order of independent moves,
from the accesses each move records (`_accesses`).

What is checked (each a `Violation.kind`):
  * `lost-wakeup`: a CSD sits in a queue and no flush of that queue will ever come. Stated per state: CPU
    c's queue is non-empty in state s and some continuation of s never flushes it. Every run is finite (a
    program makes finitely many calls, every interrupt consumes an IPI, every move advances a generator)
    and ends in a terminal state (no move possible), so this holds iff some terminal state reachable from
    s still has a CSD queued on c; the checker therefore tests every terminal state for a non-empty queue,
    which finds exactly the states violating the per-state form. (The weaker-looking "an IPI is pending or
    an interrupt is in progress" is NOT an invariant of the correct kernel: between llist_add and its ICR
    write the sender owes the IPI and nothing is pending yet.)
    It is also caught early, where the kernel's own rule breaks: llist_add reports that it made a queue
    non-empty, and the CPU that did so owes that queue's CPU an interrupt (an IPI, or 5.8+'s wakeup of a
    polling idle CPU). When a call returns still owing one and nothing else is due to flush that queue
    (no vector pending there, no interrupt taken that has yet to detach it, no idle wakeup), the CSD is
    stranded already. The owed IPIs are tracked beside the model (`owed`), never inside kernel/smp.py,
    and the correct kernels never break the rule (the tests run them at up to 3 CPUs x 2 calls); the
    counterexample is then as long as the breakage, not as long as every program's end.
  * `deadlock`: a terminal state in which some CPU has not finished its program (a waiting sender never
    returns, or a sender spins on a CSD lock forever), or a CSD is left locked.
  * `ran-twice` / `not-run`: every queued (call, target) runs its function exactly once: a second run is
    caught when it happens, a missing one at the terminal state.
  * `early-return`: a caller with wait=1 returned before its function ran on every target.
  * `reuse-while-locked`: a CSD got a new call's func/info while it was still locked by the previous one.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ipilab.events import Event
from ipilab.kernel.features import Kernel
from ipilab.kernel.idle import IdleState, do_idle
from ipilab.kernel.smp import CallSingleQueue, Csd, Smp, SmpFunc
from ipilab.kernel.steps import Busy, Halt, KernelCode, LocalIrq, SpinUntil, Step
from ipilab.kernel.x86 import Apic
from ipilab.machine.costs import CostId
from ipilab.trace.ftrace import irq_flags

CALL_KINDS = ("many:wait", "single:async", "many:async", "single:wait")
MAX_CPUS = 6
MAX_CALLS = 6

# When a CPU's interrupted context was halted, HLT returns once the handler is done.
RESUMED = Busy(0, "hlt returns")


@dataclass(frozen=True)
class Call:
    """One call of a CPU's program: `many` = smp_call_function_many() to every other CPU, `single` =
    smp_call_function_single() to the next CPU (cpu+1 mod N); `wait` as the kernel's wait argument."""

    kind: str  # "many" or "single"
    wait: bool

    @classmethod
    def parse(cls, text: str) -> Call:
        if text not in CALL_KINDS:
            raise ValueError(f"unknown call {text!r}; known: {', '.join(CALL_KINDS)}")
        kind, how = text.split(":")
        return cls(kind, how == "wait")

    def __str__(self) -> str:
        return f"{self.kind}:{'wait' if self.wait else 'async'}"

    def targets(self, cpu: int, ncpus: int) -> list[int]:
        if self.kind == "many":
            return [t for t in range(ncpus) if t != cpu]
        return [(cpu + 1) % ncpus]


def default_programs(ncpus: int, calls: int, mix: list[Call] | None = None) -> tuple[tuple[Call, ...], ...]:
    """CPU i's k-th call is mix[(2i + k) mod len(mix)]: with the default mix of all four kinds, 2 CPUs x 2
    calls already make every kind once (many:wait, single:async | many:async, single:wait)."""
    mix = mix or [Call.parse(k) for k in CALL_KINDS]
    return tuple(tuple(mix[(2 * i + k) % len(mix)] for k in range(calls)) for i in range(ncpus))


@dataclass(frozen=True)
class Config:
    """What is checked: the kernel, the CPUs' programs, and the (broken) variant of the model."""

    kernel: Kernel
    programs: tuple[tuple[Call, ...], ...]
    smp_class: type[Smp] = Smp
    variant: str = "none"
    merge_local_steps: bool = True  # False: every yield is a move of its own (tests hold the two equal)

    @property
    def ncpus(self) -> int:
        return len(self.programs)

    def expected_runs(self) -> frozenset[tuple[int, int, int]]:
        """Every (sender, call index, target) whose function must run exactly once."""
        return frozenset((cpu, k, t) for cpu, prog in enumerate(self.programs) for k, call in enumerate(prog)
                         for t in call.targets(cpu, self.ncpus))


@dataclass(frozen=True)
class Violation:
    kind: str
    message: str


@dataclass(eq=False)
class Context:
    code: KernelCode
    kind: str  # "task", "idle" or "irq"
    irqs_on: bool
    pending: Step | None = None  # what the code yielded last; None: not started
    key: tuple | None = None  # its part of ModelMachine.key(), kept until the context runs again


@dataclass(eq=False)
class Cpu:
    id: int
    stack: list[Context]
    idle: IdleState
    irr: set[int] = field(default_factory=set)  # vectors pending in the local APIC


Choice = tuple  # ("run", cpu) | ("irq", cpu) | ("timeout", cpu): a polling idle loop gives up


def _verify_func_body(p: Any, cpu: int, info: Any) -> KernelCode:
    """The called function: one step, then it records that it ran."""
    yield Busy(0, "verify_func")
    p.func_ran(cpu, info)


VERIFY_FUNC = SmpFunc("verify_func", _verify_func_body)


# Every read and write kernel code makes of state another CPU can see (the queues, the CSDs' fields, the
# idle flags, the APIC, the record of functions run), as (object, is_write), since the current move began:
# a step that adds nothing touched only its own CPU. The partial-order search (dpor.py) reads them as the
# move's footprint.
_accesses: list[tuple[tuple, bool]] = []
_SHARED_CSD_FIELDS = frozenset(("src", "dst", "func", "info", "locked", "sync"))


class _WatchedQueue(CallSingleQueue):
    def __init__(self, cpu: int, machine: ModelMachine) -> None:
        super().__init__()
        self.cpu, self.machine = cpu, machine
        self.obj = ("call_single_queue", cpu)

    def llist_add(self, csd: Csd) -> bool:
        _accesses.append((self.obj, True))
        was_empty = super().llist_add(csd)
        if was_empty:
            # Whoever makes the queue non-empty must interrupt its CPU (the llist_add contract).
            self.machine.owed[self.machine.running].add(self.cpu)
        return was_empty

    def llist_del_all(self) -> list[Csd]:
        _accesses.append((self.obj, True))
        self.machine.flush_due[self.cpu] = False  # this handler (or idle flush) looks at the queue no more
        return super().llist_del_all()

    def __len__(self) -> int:
        _accesses.append((self.obj, False))
        return super().__len__()


class _WatchedCsd(Csd):
    # `vname` (set once, by ModelMachine._name) is the CSD's schedule-independent name.
    def __getattribute__(self, name: str) -> Any:
        if name in _SHARED_CSD_FIELDS:
            _accesses.append(((object.__getattribute__(self, "vname"), name), False))
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        _accesses.append(((object.__getattribute__(self, "vname"), name), True))
        object.__setattr__(self, name, value)


def _watched_slot(slot: Any, field_name: str) -> property:
    def get(self: _WatchedIdleState) -> Any:
        _accesses.append((("idle", self.cpu, field_name), False))
        return slot.__get__(self)

    def put(self: _WatchedIdleState, value: Any) -> None:
        _accesses.append((("idle", self.cpu, field_name), True))
        slot.__set__(self, value)
    return property(get, put)


class _WatchedIdleState(IdleState):
    __slots__ = ("cpu",)
    polling = _watched_slot(IdleState.polling, "polling")
    need_resched = _watched_slot(IdleState.need_resched, "need_resched")

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        super().__init__()


class ModelMachine:
    """Implements `ipilab.kernel.steps.Platform` with choices instead of time (see the module doc)."""

    def __init__(self, config: Config, record: bool = False) -> None:
        self.config = config
        self.ncpus = n = config.ncpus
        self.steps = 0
        self.ipis = 0  # IPIs sent (raise_ipi calls: one per target CPU)
        self.apic_merged = 0
        self.ran: set[tuple[int, int, int]] = set()
        self.violation: Violation | None = None
        self.labels: list[str] = []  # what the last `run` move went through (for counterexamples)
        self.stack_keys: list[tuple | None] = [None] * n  # per CPU, the part of key() its own moves change
        self.events: list[Event] | None = [] if record else None
        self.running = -1  # the CPU whose move is being taken
        # Per CPU, the CPUs whose empty call_single_queue it put a CSD on and has not yet sent an IPI (or
        # woken from polling): it owes each an interrupt. Only its own moves change it.
        self.owed: list[set[int]] = [set() for _ in range(n)]
        # Per CPU, whether an interrupt it took has yet to detach its queue (set at entry, cleared by the
        # detach): the position of the handler's code says as much, so the key needs nothing more.
        self.flush_due = [False] * n
        # physical x2APIC: one ICR write (one interleaving point) per target CPU
        apic = Apic("x2apic_phys", tuple(range(n)), use_shorthand=False)
        self.smp = smp = config.smp_class(config.kernel, n, apic, self)
        self._fields: list[tuple[tuple, dict]] = []  # per CSD, its name and its fields
        self._levels: dict[int, tuple] = {}  # _gen_key's cache
        for src in range(n):
            for dst in range(n):
                self._name(smp.cfd_csd[src][dst], ("cfd", src, dst))
            self._name(smp.csd_data[src], ("data", src))
        self._stack_csds = [0] * n
        smp._new_csd = self._new_stack_csd  # on-stack CSDs get schedule-independent names
        smp.call_single_queue = [_WatchedQueue(c, self) for c in range(n)]
        self.cpus = [Cpu(i, [], _WatchedIdleState(i)) for i in range(n)]
        for c in self.cpus:
            c.stack = [Context(do_idle(smp, c.id, c.idle, 0), "idle", True),
                       Context(self._program(c.id), "task", True)]

    def _name(self, csd: Csd, name: tuple) -> None:
        object.__setattr__(csd, "vname", name)
        csd.__class__ = _WatchedCsd
        self._fields.append((name, object.__getattribute__(csd, "__dict__")))  # read without being noticed

    def _new_stack_csd(self, src: int, dst: int) -> Csd:
        self._stack_csds[src] += 1
        csd = Csd(1000 * (src + 1) + self._stack_csds[src], src, dst)
        self._name(csd, ("stack", src, self._stack_csds[src]))
        return csd

    # --- the workload: each CPU's program, written with the kernel model's own calls ---------------

    def _program(self, cpu: int) -> KernelCode:
        smp = self.smp
        for k, call in enumerate(self.config.programs[cpu]):
            targets = call.targets(cpu, self.ncpus)
            info = (cpu, k)
            if call.kind == "many":
                yield from smp.smp_call_function_many_cond(cpu, targets, VERIFY_FUNC, info, wait=call.wait)
            else:
                yield from smp.smp_call_function_single(cpu, targets[0], VERIFY_FUNC, info, call.wait)
            stranded = [t for t in sorted(self.owed[cpu]) if self._nothing_due(t)]
            if stranded:
                self.fail("lost-wakeup", f"cpu{cpu}'s call {k} ({call}) put a CSD on the empty call_single_queue of "
                                         f"cpu{','.join(map(str, stranded))} and returned without the IPI it owes: "
                                         f"none is pending there, no interrupt in progress, no flush to come")
            self.owed[cpu].clear()
            if call.wait:
                _accesses.extend((("ran", (cpu, k, t)), False) for t in targets)
                missing = [t for t in targets if (cpu, k, t) not in self.ran]
                if missing:
                    self.fail("early-return", f"cpu{cpu}'s call {k} ({call}) returned before its function ran "
                                              f"on cpu{','.join(map(str, missing))}")

    def _nothing_due(self, cpu: int) -> bool:
        """Whether CPU `cpu`'s call_single_queue holds CSDs that nothing is due to flush: no vector pending
        in its APIC, no interrupt taken that has yet to detach the queue, and its idle loop not woken to
        flush it. A check of other CPUs' state, so it reads what it looks at."""
        c = self.cpus[cpu]
        _accesses.append((("irr", cpu), False))
        return (len(self.smp.call_single_queue[cpu]) > 0 and not c.irr and not self.flush_due[cpu]
                and not (c.idle.polling or c.idle.need_resched))

    def func_ran(self, cpu: int, info: tuple[int, int]) -> None:
        run = (info[0], info[1], cpu)
        _accesses.append((("ran", run), True))
        if run in self.ran:
            self.fail("ran-twice", f"cpu{info[0]}'s call {info[1]} ran twice on cpu{cpu}")
        self.ran.add(run)

    def fail(self, kind: str, message: str) -> None:
        if self.violation is None:
            self.violation = Violation(kind, message)

    # --- Platform ------------------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.steps * 1000  # one microsecond per step: only orders the events of a counterexample

    def cost(self, what: CostId, cpu: int) -> int:
        return 0  # only the order of moves matters here, not their duration

    def cacheline(self, cpu: int, other: int) -> int:
        return 0

    def raise_ipi(self, src: int, dst: int, vector: int) -> None:
        _accesses.append((("irr", dst), True))
        self.owed[src].discard(dst)
        self.ipis += 1
        c = self.cpus[dst]
        if vector in c.irr:
            self.apic_merged += 1  # the same vector is already pending: the APIC absorbs this IPI
        else:
            c.irr.add(vector)

    def notify(self, watch: object) -> None:
        pass  # every spinning CPU's condition is re-tested in every state

    def trace(self, cpu: int, name: str, /, **fields: object) -> None:
        if self.events is None:
            return
        c = self.cpus[cpu]
        top = c.stack[-1]
        in_irq = any(ctx.kind == "irq" for ctx in c.stack)
        need_resched = IdleState.need_resched.__get__(c.idle)  # not a shared access: recording changes nothing
        flags = irq_flags(not top.irqs_on, need_resched, in_irq)
        task, pid = (f"prog{cpu}", 100 + cpu) if c.stack[1:2] and c.stack[1].kind == "task" else ("<idle>", 0)
        self.events.append(Event(self.now, cpu, name, task, pid, flags, fields))

    def set_nr_if_polling(self, cpu: int) -> bool:
        if self.cpus[cpu].idle.set_nr_if_polling():
            self.owed[self.running].discard(cpu)  # the woken CPU flushes its queue itself
            return True
        return False

    def is_lazy_tlb(self, cpu: int) -> bool:
        return False

    def interrupts_taken(self, cpu: int) -> int:
        return 0  # statistics only: the explored code takes no lock that keeps them

    # --- moves ---------------------------------------------------------------------------------------

    def choices(self) -> list[Choice]:
        out: list[Choice] = []
        for c in self.cpus:
            top = c.stack[-1]
            p = top.pending
            if top.irqs_on and c.irr:
                out.append(("irq", c.id))
            elif type(p) is SpinUntil:
                if p.cond():
                    out.append(("run", c.id))
                elif p.timeout_ns is not None:
                    out.append(("timeout", c.id))
            elif type(p) is not Halt:
                out.append(("run", c.id))
        return out

    def apply(self, choice: Choice, check: bool = True) -> None:
        """Take one move. `check=False` when replaying a schedule whose states were checked already."""
        move, cpu = choice[0], choice[1]
        self.stack_keys[cpu] = None
        if check:
            self._seen = {name: (d["info"], d["locked"]) for name, d in self._fields}
        c = self.cpus[cpu]
        self.running = cpu
        self.steps += 1
        _accesses.clear()
        if c.stack[-1].irqs_on:
            # Whether this CPU runs on or takes an interrupt depended on its IRR.
            _accesses.append((("irr", cpu), False))
        if move == "run":
            self._run(c)
        elif move == "timeout":
            self._send(c, False)
        elif move == "irq":
            _accesses.append((("irr", cpu), True))
            vector = max(c.irr)  # the APIC delivers the highest pending vector first
            c.irr.discard(vector)
            c.stack.append(Context(self.smp.sysvec_call_function(cpu, vector), "irq", False))
            self.flush_due[cpu] = True
        if check:
            self._check_reuse()

    def _run(self, c: Cpu) -> None:
        """Run CPU c's top context through its local segments up to and including the first that touches
        shared state (see LOCAL STEPS in the module doc for why that loses no behaviour)."""
        value = None
        if type(c.stack[-1].pending) is SpinUntil:
            value = c.stack[-1].pending.cond()  # True (the move was offered), read again for the footprint
        self.labels = []
        first = c.stack[-1]
        while True:
            top = c.stack[-1]
            irqs_were_on = top.irqs_on
            if self.events is not None:  # only counterexamples are described
                label = _step_label(top.pending)
                self.labels.append(label if top is first else f"then {top.kind}: {label}")
            mark = len(_accesses)
            self._send(c, value)
            value = None
            now = c.stack[-1]
            if len(_accesses) > mark or type(now.pending) in (SpinUntil, Halt) or not self.config.merge_local_steps:
                return
            if now.irqs_on:
                _accesses.append((("irr", c.id), False))  # whether an interrupt is due decides where the move ends
                if not irqs_were_on or c.irr:
                    return

    def _send(self, c: Cpu, value: Any) -> None:
        top = c.stack[-1]
        top.key = None
        try:
            step = top.code.send(value)
        except StopIteration:
            c.stack.pop()
            if top.kind == "irq" and type(c.stack[-1].pending) is Halt:
                c.stack[-1].pending = RESUMED
                c.stack[-1].key = None
            elif top.kind == "idle":
                raise RuntimeError("the idle loop returned") from None
            return
        if type(step) is LocalIrq:
            top.irqs_on = step.enable
        elif type(step) not in (Busy, SpinUntil, Halt):
            raise TypeError(f"kernel code yielded {step!r}")
        top.pending = step

    def _check_reuse(self) -> None:
        for name, d in self._fields:
            info, locked = self._seen.get(name, (None, False))
            if d["info"] != info and locked:
                self.fail("reuse-while-locked", f"CSD {_csd_label(name)} got call {d['info']} while "
                                                f"still locked by call {info}")

    def checks(self, moves: list[Choice] | dict) -> Violation | None:
        """What the checks say of this state, whose moves are `moves`: the check the last move broke, else,
        when no move is left, those of a run's end (terminal_violation)."""
        return self.violation or (None if moves else self.terminal_violation())

    def terminal_violation(self) -> Violation | None:
        """Called in a state with no move: what the checks say about how the run ended."""
        for c, q in enumerate(self.smp.call_single_queue):
            if len(q):
                names = ", ".join(_csd_label(x.vname) for x in q.entries)
                return Violation("lost-wakeup", f"CSD {names} stranded on cpu{c}'s call_single_queue: no IPI "
                                                f"pending, no interrupt in progress, no flush to come")
        for c in self.cpus:
            if c.stack[-1].kind != "idle":
                p = c.stack[-1].pending
                what = p.what if isinstance(p, Busy | SpinUntil) else type(p).__name__
                return Violation("deadlock", f"cpu{c.id} never finishes its program: stuck in {what}")
        missing = self.config.expected_runs() - self.ran
        if missing:
            return Violation("not-run", "calls never ran: " + ", ".join(
                f"cpu{s}'s call {k} on cpu{t}" for s, k, t in sorted(missing)))
        locked = [_csd_label(name) for name, d in self._fields if d["locked"]]
        if locked:
            return Violation("deadlock", f"CSDs left locked: {', '.join(locked)}")
        return None

    # --- the state's identity ------------------------------------------------------------------------

    def key(self) -> int:
        """The state's identity (see the module doc), hashed: the visited set keeps 64-bit hashes."""
        canon = self._canon
        stacks = self.stack_keys
        for i, c in enumerate(self.cpus):
            if stacks[i] is None:
                # Only a CPU's own moves change its code positions and locals (other CPUs' CSDs appear in
                # them by name, their fields are in the shared part), so the others' keys are reused; and
                # of its contexts, only those that ran (see _send).
                for ctx in c.stack:
                    if ctx.key is None:
                        ctx.key = (ctx.kind, ctx.irqs_on, _step_key(ctx.pending),
                                   _gen_key(ctx.code, canon, self._levels))
                stacks[i] = tuple(ctx.key for ctx in c.stack)
        cpus = tuple((stacks[i], tuple(sorted(c.irr)), c.idle.polling, c.idle.need_resched)
                     for i, c in enumerate(self.cpus))
        queues = tuple(tuple(x.vname for x in q.entries) for q in self.smp.call_single_queue)
        csds = tuple(sorted((name, d["dst"], d["locked"], d["sync"], d["func"] and d["func"].name, d["info"])
                            for name, d in self._fields))
        owed = tuple(tuple(sorted(o)) for o in self.owed)
        return hash((cpus, queues, csds, tuple(sorted(self.ran)), self.ipis, owed))

    def dispose(self) -> None:
        """Free the machine now, for a search that drops it: its code (generators whose frames refer back
        to it) and its kernel model (whose platform is the machine) make reference cycles, which only the
        cycle collector would free otherwise, and the searches run without it (`without_cycle_collection`)."""
        if not self.__dict__:
            return  # disposed already
        for c in self.cpus:
            for ctx in c.stack:
                ctx.code.close()
        self.smp.__dict__.clear()
        self.__dict__.clear()

    def adopt_keys(self, stack_keys: list[tuple]) -> None:
        """Take over the stack keys another machine computed in this state (one that took the same
        schedule): a replayed machine then recomputes, in key(), only the levels its next moves run, as
        the machine it stands in for would, instead of every level of every CPU (most of a replay's cost)."""
        for c, keys in zip(self.cpus, stack_keys, strict=True):
            for ctx, key in zip(c.stack, keys, strict=True):
                ctx.key = key
                gen = ctx.code
                for level in key[3]:  # as _gen_key walks the chain
                    if gen is None or not hasattr(gen, "gi_frame") or gen.gi_frame is None:
                        break
                    inner = gen.gi_yieldfrom
                    if inner is not None:
                        self._levels[id(gen)] = (gen, inner, level)
                    gen = inner
        self.stack_keys = list(stack_keys)

    def _canon(self, v: Any) -> Any:
        t = type(v)
        if t is int or t is bool or v is None or t is str or t is float:
            return v
        if t is _WatchedCsd:
            return object.__getattribute__(v, "vname")
        if t is list or t is tuple:
            return tuple([self._canon(x) for x in v])
        if type(v) in _ITERATORS:
            return (type(v).__name__, self._canon(v.__reduce__()[1:]))
        if type(v) in (SmpFunc, Call):
            return str(v) if type(v) is Call else v.name
        if v is self or isinstance(v, _ENVIRONMENT) or callable(v):
            return type(v).__name__  # the same object in every state of one run
        if type(v).__name__ == "generator":
            return _gen_key(v, self._canon)
        raise TypeError(f"model checker: cannot name a {type(v).__name__} in a kernel-model local")


_ITERATORS = tuple(type(it) for it in (iter([]), iter(()), iter(range(0)), enumerate([]), zip()))
_ENVIRONMENT = (Smp, Kernel, Apic, IdleState, Cpu, CallSingleQueue)


def _step_key(step: Step | None) -> Any:
    if step is None:
        return None
    if type(step) is LocalIrq:
        return ("irq", step.enable)
    return (type(step).__name__, getattr(step, "what", ""))


def _gen_key(gen: Any, canon: Callable[[Any], Any], cache: dict[int, tuple] | None = None) -> tuple:
    """A generator chain's position: per `yield from` level, function, bytecode offset, locals and the
    iterators on its evaluation stack.

    A level still delegating to the very generator it delegated to when its key was cached has not run
    since (it resumes only when that generator finishes), so `cache` (id -> (generator, delegate, key))
    gives its key back; holding both objects keeps their ids from being reused."""
    out = []
    while gen is not None and hasattr(gen, "gi_frame"):
        frame = gen.gi_frame
        if frame is None:
            out.append((gen.gi_code.co_qualname, "finished"))
            break
        inner = gen.gi_yieldfrom
        if cache is not None and inner is not None:
            hit = cache.get(id(gen))
            if hit is not None and hit[0] is gen and hit[1] is inner:
                out.append(hit[2])
                gen = inner
                continue
        # By name: f_locals keeps the order in which its snapshot first saw each variable bound, which
        # depends on whether it was read before, so the same state would get different keys.
        local = tuple((k, canon(v)) for k, v in sorted(frame.f_locals.items(), key=itemgetter(0)) if k != "self")
        stack = tuple(canon(r) for r in gc.get_referents(gen) if type(r) in _ITERATORS)
        level = (gen.gi_code.co_qualname, frame.f_lasti, local, stack)
        if cache is not None and inner is not None:
            cache[id(gen)] = (gen, inner, level)
        out.append(level)
        gen = inner
    return tuple(out)


def _csd_label(name: tuple) -> str:
    if name[0] == "cfd":
        return f"cfd_data[cpu{name[1]}].csd[cpu{name[2]}]"
    if name[0] == "data":
        return f"csd_data[cpu{name[1]}]"
    return f"on-stack csd #{name[2]} of cpu{name[1]}"


# --- the search ------------------------------------------------------------------------------------------

@dataclass
class Result:
    """What an exhaustive search found; see RESULT_DOCS for what each number counts."""

    config: Config
    search: str = "full"  # "full": every state (explore); "dpor": one run per trace class (dpor.py)
    states: int = 0
    executions: int = 0  # dpor: complete runs made
    transitions: int = 0
    terminal_states: int = 0
    seconds: float = 0.0
    ipis_min: int | None = None
    ipis_max: int | None = None
    violations: int = 0
    violations_by_kind: dict[str, int] = field(default_factory=dict)
    counterexample: list[Choice] | None = None
    counterexample_violation: Violation | None = None
    terminal_keys: set[int] | None = None  # the terminal states' keys, when asked for (tests compare searches)
    complete: bool = True  # False: stopped at a violation, so the counts and IPI bounds cover part of the states
    # What `shorten` established: every schedule of fewer than `fewest_moves` moves was checked and none
    # violates, so no counterexample is shorter; when it equals the counterexample's length, that one is a
    # shortest. The states and time spent looking for a shorter counterexample (not in `states`).
    fewest_moves: int | None = None
    shortest_states: int = 0
    shortest_seconds: float = 0.0
    shortest_workers: int = 1  # processes the breadth-first search ran in (shortest.py)

    @property
    def shortest(self) -> bool:
        return self.counterexample is not None and self.fewest_moves == len(self.counterexample)

    def add_violation(self, violation: Violation, schedule: Callable[[], list[Choice]]) -> None:
        """Count a violating state; the first one's schedule (asked for only then) is the counterexample."""
        self.violations += 1
        self.violations_by_kind[violation.kind] = self.violations_by_kind.get(violation.kind, 0) + 1
        if self.counterexample is None:
            self.counterexample = schedule()
            self.counterexample_violation = violation

    def add_terminal(self, m: ModelMachine, key: int) -> None:
        """Count a terminal state that passed every check, and its IPIs in the bounds."""
        self.terminal_states += 1
        self.ipis_min = m.ipis if self.ipis_min is None else min(self.ipis_min, m.ipis)
        self.ipis_max = m.ipis if self.ipis_max is None else max(self.ipis_max, m.ipis)
        if self.terminal_keys is not None:
            self.terminal_keys.add(key)


# progress(phase, states so far, depth of the current state), called every 1000 states
Progress = Callable[[str, int, int], None]


class StateLimitError(RuntimeError):
    """The search would exceed the state budget; the message says how far it got."""


def replay(config: Config, schedule: list[Choice], record: bool = False,
           stack_keys: list[tuple] | None = None) -> ModelMachine:
    """A fresh machine taken along `schedule` from the initial state. `stack_keys`: the `stack_keys` of
    the machine that took `schedule` before, which this one takes over (see `adopt_keys`)."""
    m = ModelMachine(config, record)
    for choice in schedule:
        m.apply(choice, check=False)
    if stack_keys is not None:
        m.adopt_keys(stack_keys)
    return m



def _successors(config: Config, path: list[Choice], m: ModelMachine,
                moves: list[Choice]) -> Iterator[tuple[Choice, ModelMachine]]:
    """Each of `moves` applied to a machine of its own in the state `m` stands in (reached by `path`, its
    key computed): a replayed copy for all but the last move, which takes `m` itself (no replay)."""
    keys = list(m.stack_keys)
    for i, choice in enumerate(moves):
        child = replay(config, path, stack_keys=keys) if i < len(moves) - 1 else m
        child.apply(choice)
        yield choice, child

@contextmanager
def without_cycle_collection() -> Iterator[None]:
    """Python's cycle collector off for a search. A search makes and drops thousands of machines a second
    while it holds hundreds of thousands of objects (the visited set, the machines it keeps), and the
    collector's passes over them took a third of a search's time at 3 CPUs x 2 calls; every machine a
    search drops is `dispose`d instead, which frees it without the collector."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _schedule_to(parent: list[tuple[int, Choice | None]], sid: int) -> list[Choice]:
    path = []
    while parent[sid][0] >= 0:
        path.append(parent[sid][1])
        sid = parent[sid][0]
    return path[::-1]


def footprint() -> tuple[frozenset, frozenset]:
    """What the move just taken read and wrote (see LOCAL STEPS): two sets of shared objects."""
    reads = frozenset(obj for obj, write in _accesses if not write)
    writes = frozenset(obj for obj, write in _accesses if write)
    return reads, writes


def independent(a: tuple[frozenset, frozenset], b: tuple[frozenset, frozenset]) -> bool:
    """Whether two moves of different CPUs, by their footprints, commute: neither writes what the other
    reads or writes."""
    (ra, wa), (rb, wb) = a, b
    return not (wa & rb or wa & wb or ra & wb)


def iter_steps(config: Config, schedule: list[Choice]) -> Iterator[tuple[Choice, str, list[Event]]]:
    """Re-run a schedule and say, for every step, what the moving CPU did and which events it traced."""
    m = ModelMachine(config, record=True)
    for choice in schedule:
        before = len(m.events or [])
        move, c = choice[0], m.cpus[choice[1]]
        where = {"task": "", "idle": "idle: ", "irq": "irq: "}[c.stack[-1].kind]
        vector = max(c.irr) if move == "irq" else 0
        m.apply(choice)
        if move == "irq":
            what = f"interrupt entry (vector {vector})"
        elif move == "timeout":
            what = f"{where}poll times out"
        else:
            what = where + ", ".join(m.labels)
        yield choice, what, (m.events or [])[before:]


def _step_label(step: Step | None) -> str:
    """The action a context performs when it moves on from `step` (a Busy names what comes next)."""
    if step is None:
        return "start"
    if type(step) is LocalIrq:
        return f"local_irq_{'enable' if step.enable else 'disable'}d"
    if type(step) is SpinUntil:
        return f"{step.what} sees its condition"
    if type(step) is Halt:
        return "hlt"
    return step.what
