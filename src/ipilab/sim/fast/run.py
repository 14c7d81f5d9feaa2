"""One run of the compiled engine: its state built from a machine, kernel and workload, the timers run
window by window, and the counters read back in the shape the reference engine's run has.

The set-up mirrors what the reference does before its first event: `Smp.__init__` numbers the CSDs,
the workload's `start` places its threads and calls `SimMachine.start` CPU by CPU (one timer each, in
CPU order), draws its random numbers from the same seeded generators.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import multiprocessing.connection
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numba
import numpy as np
from numba.core.registry import CPUDispatcher as Dispatcher

from ipilab.compiled import in_cache
from ipilab.cpulist import parse_cpulist
from ipilab.events import FUNCTION_CALL_CALLBACK, Event
from ipilab.kernel.features import Kernel
from ipilab.kernel.locking import LOCK_COUNTER_PREFIXES, LOCK_STATS
from ipilab.kernel.page_alloc import PCP_BATCH, PCP_HIGH
from ipilab.kernel.sched import NEVER, Workqueue
from ipilab.kernel.smp import LOCAL_CSD_POINTER, SmpStats
from ipilab.kernel.swapfile import CLUSTERS_PER_TREE, SWAP_ADDRESS_SPACE_SHIFT, SWAP_SLOTS_CACHE_SIZE, SWAPFILE_CLUSTER
from ipilab.kernel.time import tick_phases
from ipilab.latency import LatencyHistogram
from ipilab.machine.costs import CostId, RunCosts
from ipilab.machine.model import Machine, load_machine
from ipilab.sim.fast import engine as E
from ipilab.sim.machine import MachineStats
from ipilab.sim.timeuse import LOCK_USES, Use
from ipilab.trace.ftrace import irq_flags
from ipilab.workloads.base import Workload
from ipilab.workloads.swap import PAGE_SIZE, STAGGER_NS, SwapWSeq, SwapWSeqMt, watermarks
from ipilab.workloads.synthetic import Synthetic

MARGIN = 64  # room left in every buffer before an event runs; one event adds far fewer entries
TRACE_ROWS = 1 << 16
LAT_ROWS = 1 << 14
GAPS = 4096  # synthetic gaps drawn ahead per sender
MAX_CPUS = 1024  # its CPU x CPU tables (costs, CSDs, masks) take 8 x 8 bytes x ncpus^2: 64 MB here
# A drawn cost's block holds this many draws past the refill mark per CPU: one event draws at most one per
# queued entry or IPI target (3n) from one stream.
DRAW_SPARE_PER_CPU = 4
DRAW_BLOCK = 512
MAX_CPUS_DRAWN = 256  # [ncpus, drawn costs, block] grows with ncpus^2 through the spare

# The kernel features this engine implements; a kernel with any other is run by the reference engine.
# shared_queue changes nothing here: these workloads queue no remote wakeups or irq_work.
FEATURES = frozenset({"single_ipi_if_empty", "many_single_shortcut", "coalesce_many", "tlb_skip_lazy",
                      "sync_first_flush", "skip_polling_idle", "local_after_send", "single_ipi_for_one",
                      "ipi_shorthand", "shared_queue"})

if tuple(c.key for c in CostId) != E.COST_NAMES:
    raise ImportError("sim/fast/engine.py COST_NAMES and machine/costs.py CostId disagree")
if tuple(u.key for u in Use) != E.USE_NAMES:
    raise ImportError("sim/fast/engine.py USE_NAMES and sim/timeuse.py Use disagree")
if E.NEVER != NEVER:
    raise ImportError("sim/fast/engine.py NEVER and kernel/sched.py NEVER disagree")
if (E.SWAP_SLOTS_CACHE_SIZE, E.SWAPFILE_CLUSTER, E.SWAP_ADDRESS_SPACE_SHIFT, E.CLUSTERS_PER_TREE) != (
        SWAP_SLOTS_CACHE_SIZE, SWAPFILE_CLUSTER, SWAP_ADDRESS_SPACE_SHIFT, CLUSTERS_PER_TREE):
    raise ImportError("sim/fast/engine.py and kernel/swapfile.py disagree on the swap constants")
if (E.PCP_BATCH, E.PCP_HIGH) != (PCP_BATCH, PCP_HIGH):
    raise ImportError("sim/fast/engine.py and kernel/page_alloc.py disagree on pcp->batch and pcp->high")


_warm = False


def _helpers() -> list[Dispatcher]:
    """The engine's compiled functions but run_until and those numba inlines (run), in file order (numba
    compiles each on its own, the ones LLVM inlines too)."""
    return [f for f in vars(E).values() if isinstance(f, Dispatcher) and f is not E.run_until
            and f.targetoptions.get("inline") != "always"]


_pinned: set[Any] = set()  # the State types the helpers are compiled for


def _pin(f: Dispatcher, kinds: dict[str, Any]) -> None:
    """Compile (or load from numba's cache) `f` for the int64 version of its annotations, and no other."""
    params = inspect.signature(f.py_func).parameters.values()
    f.disable_compile(False)
    f.compile(tuple(kinds[p.annotation] for p in params))
    f.disable_compile()


def _pin_helpers(state: E.State) -> None:
    """Compile each helper once, for int64 arguments, and let numba compile no other version of it.

    Left alone, numba types a constant argument as its literal value (Literal[int](5)) and compiles the
    callee again for every distinct constant a call site passes: _call, _busy, _draw, _step and trace came
    to 145 versions of 22 helpers. Pinned, every call site converts its constants to the
    one int64 version. File order compiles callees before their callers (a caller's compile would
    otherwise make literal versions of a callee not yet pinned)."""
    state_type = numba.typeof(state)
    if state_type in _pinned:
        return
    kinds = {"State": state_type, "np.ndarray": numba.types.int64[::1], "int": numba.types.int64}
    helpers = _helpers()
    if (not in_cache(E.run_until) and (os.cpu_count() or 1) > 1 and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon):
        _compile_on_two_cores(helpers, kinds)
    _pin_all(helpers, kinds)  # after _compile_on_two_cores: the ones its child compiled load from numba's cache
    _pinned.add(state_type)


def _closure(roots: list[Dispatcher], helpers: list[Dispatcher]) -> set[Dispatcher]:
    """`roots` and every helper they call, directly or not (by the names their code uses)."""
    by_name = {f.py_func.__name__: f for f in helpers}
    out: set[Dispatcher] = set()
    todo = list(roots)
    while todo:
        f = todo.pop()
        if f not in out:
            out.add(f)
            todo += [by_name[n] for n in f.py_func.__code__.co_names if n in by_name]
    return out


# How long either process waits for the other before going on alone (the parent then compiles the rest itself).
CHILD_TIMEOUT_S = 300


def _compile_on_two_cores(helpers: list[Dispatcher], kinds: dict[str, Any]) -> None:
    """A cold compile takes one core (numba compiles one function at a time); this shares it with a forked
    child. The helpers split into what this process compiles (advance, dispatch and what they call) and what
    the child does (advance_tail and the rest), about half the time each. What both call goes first, half
    in each process; each then loads the other's half from numba's cache (every compile saves there) before
    going on. Whatever the child failed to do _pin_helpers compiles here after all. run_until (with run)
    needs both halves of advance, so it comes after."""
    mine = _closure([E.advance, E.dispatch], helpers)
    theirs = _closure([f for f in helpers if f not in mine], helpers)
    shared_mine, shared_theirs = _split_shared([f for f in helpers if f in mine and f in theirs], helpers)
    here, there = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=_child, args=(there, shared_theirs, shared_mine, [f for f in helpers if f in theirs and f not in mine],
                             kinds), daemon=True)
    proc.start()
    there.close()
    _pin_all(shared_mine, kinds)
    with contextlib.suppress(OSError):  # a child that died: wait() below sees it
        here.send(True)
    multiprocessing.connection.wait([here, proc.sentinel], CHILD_TIMEOUT_S)
    _pin_all(shared_theirs, kinds)  # from the cache; compiled here if the child failed
    _pin_all([f for f in helpers if f in mine and f not in theirs], kinds)
    proc.join(CHILD_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _split_shared(shared: list[Dispatcher], helpers: list[Dispatcher]) -> tuple[list[Dispatcher], list[Dispatcher]]:
    """`shared` in two halves of about the same size (by bytecode), each holding whatever its functions call,
    in file order: the groups of functions that call one another go whole to the half with less so far."""
    groups: list[set[Dispatcher]] = []
    for f in shared:
        group = _closure([f], helpers)
        for g in [g for g in groups if g & group]:
            group |= g
            groups.remove(g)
        groups.append(group)
    halves: tuple[set[Dispatcher], set[Dispatcher]] = (set(), set())
    for group in sorted(groups, key=_size, reverse=True):
        min(halves, key=lambda h: sum(map(_size, h))).update(group)
    return [f for f in shared if f in halves[0]], [f for f in shared if f in halves[1]]


def _size(f: Dispatcher | set[Dispatcher]) -> int:
    return sum(map(_size, f)) if isinstance(f, set) else len(f.py_func.__code__.co_code)


def _child(conn: Connection, first: list[Dispatcher], then: list[Dispatcher], rest: list[Dispatcher],
           kinds: dict[str, Any]) -> None:
    """The forked child's share: `first`, then (once the parent says it has) the parent's half `then`
    loaded from the cache, then `rest`. Quiet: any failure just leaves the work to the parent. It ends with
    os._exit, flushing nothing: a lock on stderr held at the fork by another thread (the compile notice's
    spinner) would hang it."""
    code = 1
    try:
        _pin_all(first, kinds)
        conn.send(True)
        if conn.poll(CHILD_TIMEOUT_S):
            _pin_all(then + rest, kinds)
            code = 0
    finally:
        os._exit(code)


def _pin_all(fs: list[Dispatcher], kinds: dict[str, Any]) -> None:
    for f in fs:
        _pin(f, kinds)


# What a cold compile of the engine took on our 2-core VM (benchmarks/cold_start.py: 7.7 and 8.0 s wall, both
# cores), for the notice.
COMPILE_SECONDS_2CORE = 10


def engine_cached() -> bool:
    """Whether numba's cache holds the engine's loop compiled from this engine.py: the next warm_up loads
    it (about a second) instead of compiling (COMPILE_SECONDS_2CORE)."""
    return in_cache(E.run_until)


def warm_up() -> float:
    """Compile the engine (or load it from numba's cache) on a tiny run; seconds it took, 0 once done."""
    global _warm
    if _warm:
        return 0.0
    t0 = time.perf_counter()
    sim = FastSim(load_machine("vm-2cpu"), Kernel("warm-up", frozenset()), Synthetic(), 1, None)
    sim.run(10_000)
    _warm = True
    return time.perf_counter() - t0


def unsupported(machine: Machine, kernel: Kernel, workload: Workload) -> str | None:
    """Why the fast engine cannot run this configuration, or None if it can."""
    if not isinstance(workload, SwapWSeqMt | Synthetic) or isinstance(workload, SwapWSeq):
        return f"workload {workload.name} is modelled by the reference engine only"
    if machine.topology.apic_mode not in ("x2apic_phys", "x2apic_cluster", "kvm_pv"):
        return f"APIC mode {machine.topology.apic_mode} is not in the fast engine"
    if machine.ncpus > MAX_CPUS:
        return f"{machine.ncpus} CPUs: the fast engine's CPU-pair tables stop at {MAX_CPUS}"
    drawn = [k for k, c in machine.costs.items() if not c.is_constant]
    if drawn and machine.ncpus > MAX_CPUS_DRAWN:
        return (f"{machine.ncpus} CPUs with drawn costs ({', '.join(drawn)}): the fast engine's draw blocks stop "
                f"at {MAX_CPUS_DRAWN} CPUs")
    missing = sorted(kernel.features - FEATURES)
    if missing:
        return f"kernel feature(s) {', '.join(missing)} are modelled by the reference engine only"
    return None


@dataclass
class _Cpu:
    id: int
    comm: str
    interrupts: int = 0
    irq_ns: int = 0
    apic_merged: int = 0


@dataclass
class _Engine:
    now: int = 0
    events_processed: int = 0


@dataclass
class _Smp:
    stats: SmpStats = field(default_factory=SmpStats)


class FastSim:
    """The compiled engine's state behind the attributes `sim.run` reads of a SimMachine."""

    def __init__(self, machine: Machine, kernel: Kernel, workload: Workload, seed: int, tracer: Any) -> None:
        self.machine = machine
        self.workload = workload
        self.tracer = tracer
        n = self.ncpus = machine.ncpus
        self.costs = RunCosts(machine, seed)
        self._seed = seed
        self.latencies = LatencyHistogram()
        self._rngs: dict[int, np.random.Generator] = {}  # the synthetic senders' generators
        self._comm = ["<idle>"] * n
        self._pid = [0] * n
        nodes = machine.topology.numa_nodes
        ncsd = n * n + 2 * n
        trees = workload.swap_trees(n) if isinstance(workload, SwapWSeqMt) else 1
        # lru_lock per node, swap_avail_lock, si->lock, the swap cache trees', zone->lock per node
        nlocks = nodes + 2 + trees + nodes
        nwatch = ncsd + n + nodes + nlocks * (n + 1) + 1  # the last: the page lists' drain (w_drain)
        cap = 8 * n + 1024
        s = self.s = E.State(
            g=np.zeros(E.NG, np.int64), cpu=np.zeros((n, E.NCPU), np.int64),
            ctx=np.zeros((n, 4, E.CTX_WIDTH), np.int64),
            heap=np.zeros(cap, np.int64), heap_timer=np.zeros(cap, np.int64),
            watch_head=np.full(nwatch, -1, np.int64), watch_tail=np.full(nwatch, -1, np.int64),
            wpool=np.zeros((cap, 3), np.int64), w_free=np.arange(cap, dtype=np.int64),
            csd=np.zeros((ncsd, E.NCSD), np.int64),
            # A queue holds at most each CPU's cfd CSD, csd_data and stack CSD for it: 3n entries.
            flushbuf=np.zeros((n, 3 * n), np.int64), flushtmp=np.zeros((n, 3 * n), np.int64),
            targets=np.zeros((n, n), np.int64), queued=np.zeros((n, n), np.int64), ipi=np.zeros((n, n), np.int64),
            order=np.zeros((n, n), np.int64), gstart=np.zeros((n, n + 1), np.int64),
            cacheline=np.array(self.costs.cacheline, np.int64), ipi_latency=np.array(self.costs.ipi_latency, np.int64),
            cluster_rank=np.zeros(n, np.int64), by_cluster=np.zeros(n, np.int64),
            mask_mark=np.zeros((n, n), np.int64), cost=np.zeros(E.NCOSTS, np.int64),
            cost_slot=np.full(E.NCOSTS, -1, np.int64), draws=np.zeros((n, 0, 1), np.int64),
            draw_pos=np.zeros((n, 0), np.int64),
            usemem=np.zeros(n, np.int64), node=np.zeros((nodes, E.NNODE), np.int64),
            lock=np.zeros((nlocks, E.NLK), np.int64), lock_waiting=np.zeros((nlocks, n + 1), np.int64),
            slot=np.zeros((n, E.MAX_BATCH), np.int64), use_ns=np.zeros((n, E.NUSES), np.int64),
            busy_use=E.busy_use_table(),
            trace=np.zeros((TRACE_ROWS if tracer else MARGIN * 2, 8), np.int64),
            tmask=np.zeros((TRACE_ROWS * 4 if tracer else MARGIN * 2 * n), np.int64),
            lat=np.zeros(LAT_ROWS, np.int64), gaps=np.zeros((n, 1), np.int64))
        g = s.g
        g[E.W_NFREE] = cap
        _pin_helpers(s)
        g[E.TRACE_ON] = tracer is not None
        g[E.NCPUS] = n
        g[E.NNODES] = nodes
        g[E.CSD_DATA0] = n * n
        g[E.STACK_CSD0] = n * n + n
        g[E.NEXT_CSD] = n * n + n
        apic = machine.apic(kernel.has("ipi_shorthand"))
        g[E.APIC_MODE] = ("x2apic_phys", "x2apic_cluster", "kvm_pv").index(apic.mode)
        g[E.USE_SHORTHAND] = apic.use_shorthand
        ranks = {cl: i for i, cl in enumerate(sorted(set(apic.cluster_of)))}
        s.cluster_rank[:] = [ranks[cl] for cl in apic.cluster_of]
        s.by_cluster[:] = sorted(range(n), key=lambda c: (s.cluster_rank[c], c))
        g[E.HALT_POLL_NS] = machine.topology.halt_poll_ns
        for name in ("single_ipi_if_empty", "many_single_shortcut", "coalesce_many", "tlb_skip_lazy",
                     "sync_first_flush", "skip_polling_idle", "local_after_send", "single_ipi_for_one"):
            g[getattr(E, "F_" + name.upper())] = kernel.has(name)
        # Smp.__init__: cfd_data CSDs (src, dst) numbered first, then each CPU's csd_data.
        for src in range(n):
            for dst in range(n):
                s.csd[src * n + dst, [E.SRC, E.DST, E.IDENT]] = src, dst, src * n + dst + 1
            s.csd[n * n + src, [E.SRC, E.DST, E.IDENT]] = src, src, n * n + src + 1
            s.csd[n * n + n + src, [E.SRC, E.DST]] = src, src
        s.cpu[:, E.Q_HEAD] = -1
        s.cpu[:, E.Q_TAIL] = -1
        s.cpu[:, E.USE] = E.U_IDLE
        s.cpu[:, E.LAST_RAN] = E.NEVER
        # The locks as the kernel model names them (sim/timeuse.py LOCK_USES), and whether taken with _irq.
        kinds = ["lru_lock"] * nodes + ["swap_avail_lock", "si->lock"] + ["swap_cache"] * trees + ["zone->lock"] * nodes
        g[E.SWAP_TREES] = trees
        s.lock[:, E.LK_LAST_OWNER] = -1
        s.lock[:, E.LK_USE] = [LOCK_USES[k] for k in kinds]
        s.lock[:, E.LK_IRQ] = [k in ("lru_lock", "swap_cache") for k in kinds]
        self._lock_kinds = kinds
        for c in range(n):
            s.ctx[c, E.IDLE, E.IRQS_ON] = 1
            s.ctx[c, E.IDLE, E.PC] = E.ID_TOP
        if isinstance(workload, SwapWSeqMt):
            self._start_swap(workload, seed)
        else:
            self._start_synthetic(workload, seed)
        self._start_draws()
        self._start_background()

    # --- workloads' start(): what runs where ---------------------------------------------------------

    def _start_task(self, c: int, program: int, comm: str, pid: int, user_mm: bool) -> None:
        """SimMachine.start with a task (each CPU's one timer is scheduled by `_start_all`)."""
        s = self.s
        s.cpu[c, E.HAS_TASK] = 1
        s.cpu[c, E.USER_MM] = user_mm
        s.cpu[c, E.PROGRAM] = program
        s.ctx[c, E.TASK, E.IRQS_ON] = 1
        s.ctx[c, E.TASK, E.PC] = {E.P_USEMEM: E.UM_START, E.P_KSWAPD: E.KS_TOP,
                                  E.P_SYNTH_SENDER: E.SY_GAP, E.P_BUSYLOOP: E.BL_LOOP}[program]
        self._comm[c], self._pid[c] = comm, pid

    def _start_all(self) -> None:
        for c in range(self.ncpus):
            E.at(self.s, 0, E.EV_RUN, c, 0)

    def _start_background(self) -> None:
        """SimMachine.start_background: each CPU's tick at a seeded phase."""
        bg = self.machine.background
        if bg.tick_hz:
            period, phases = tick_phases(bg.tick_hz, self._seed, self.ncpus)
            self.s.g[E.TICK_PERIOD] = period
            for c in range(self.ncpus):
                E.at(self.s, phases[c], E.EV_TICK, c, 0)
        if bg.vcpu_preemption:
            for c in range(self.ncpus):
                ns = self.s.cost[CostId.VCPU_RUN]  # the engine's own cost(): a constant, or its stream's next
                E.at(self.s, int(ns if ns >= 0 else E._draw(self.s, c, int(CostId.VCPU_RUN))), E.EV_DESCHEDULE, c, 0)

    def _targets(self, c: int, mask: list[int]) -> None:
        t = sorted(set(mask) - {c})
        self.s.targets[c, :len(t)] = t
        self.s.cpu[c, E.NTARGETS] = len(t)

    def _start_swap(self, w: SwapWSeqMt, seed: int) -> None:
        """workloads/swap.py SwapWSeqMt.start"""
        m, s = self.machine, self.s
        usemem, kswapd = w.placement(m, w.threads, w.kswapd)
        wmin, wlow, whigh = watermarks(int(w.ram_gb * 1024 * 1024), m.topology.numa_nodes)
        fill = w.phase == "fill"
        s.node[:, [E.MIN_WMARK, E.LOW_WMARK, E.HIGH_WMARK, E.UNLIMITED]] = wmin, wlow, whigh, fill
        s.node[:, E.FREE] = 0 if fill else wlow
        s.g[E.BATCH] = w.batch
        s.g[E.SWAP_LOCKS] = w.swap_locks
        s.g[E.ZONE_LOCKS] = w.zone_lock
        wq = Workqueue(m.ncpus, w.worker_wakeup == "cfs")  # the reference's constants, for the same ncpus
        s.g[E.WORKER_CFS] = wq.cfs
        s.g[E.WAKEUP_GRANULARITY] = wq.wakeup_granularity
        s.g[E.SLEEPER_CREDIT] = wq.sleeper_credit
        s.g[E.SLICE] = wq.slice
        s.g[E.MEM_BANDWIDTH] = w.mem_bandwidth
        s.g[E.NEXT_CLUSTER] = 1
        s.g[E.PER_PAGE_FLUSH] = w.flush == "per-page"
        s.g[E.NUSEMEM] = len(usemem)
        s.usemem[:len(usemem)] = usemem
        if w.swap_gb_s is not None:
            self.costs.pin(CostId.SWAP_WRITEPAGE, round(PAGE_SIZE / w.swap_gb_s))
        stagger = np.random.default_rng(seed).integers(0, STAGGER_NS, size=len(usemem))
        for c in range(m.ncpus):
            self._targets(c, usemem)
            s.cpu[c, E.IN_MM] = c in usemem
            s.cpu[c, E.SOCKET] = m.socket_of(c)
            if c in usemem:
                i = usemem.index(c)
                s.cpu[c, E.START_NS] = int(stagger[i])
                s.cpu[c, E.PGDAT] = m.node_of(c)
                self._start_task(c, E.P_USEMEM, "usemem", 5000 + i, True)
            elif c in kswapd and not fill:
                node = kswapd.index(c)
                s.cpu[c, E.PGDAT] = node
                self._start_task(c, E.P_KSWAPD, f"kswapd{node}", 90 + node, False)
        self._start_all()

    def _start_synthetic(self, w: Synthetic, seed: int) -> None:
        """workloads/synthetic.py Synthetic.start; the senders' gaps are drawn ahead from their generators."""
        n, s = self.ncpus, self.s
        senders = parse_cpulist(w.senders, n, "senders")
        targets = parse_cpulist(w.targets, n, "targets")
        self._rngs = {c: np.random.default_rng([seed, c]) for c in senders}
        self._mean_gap = 1e9 / w.rate
        s = self.s._replace(gaps=np.zeros((n, GAPS), np.int64))
        self.s = s
        for c in range(n):
            if c in senders:
                self._targets(c, targets)
                s.cpu[c, E.FUNC_NS] = w.func_ns
                s.cpu[c, E.SYNTH_WAIT] = w.wait
                self._draw_gaps(c)
                self._start_task(c, E.P_SYNTH_SENDER, "synthetic", 1000 + c, True)
            elif w.others == "busy":
                self._start_task(c, E.P_BUSYLOOP, "busyloop", 2000 + c, True)
        self._start_all()

    def _draw_gaps(self, c: int) -> None:
        s = self.s
        pos, end = s.cpu[c, E.GAP_POS], s.cpu[c, E.GAP_N]
        left = s.gaps[c, pos:end].copy()
        s.gaps[c, :len(left)] = left
        new = self._rngs[c].exponential(self._mean_gap, size=GAPS - len(left))
        s.gaps[c, len(left):] = new.astype(np.int64)  # int() of each draw, as _sender does
        s.cpu[c, E.GAP_POS] = 0
        s.cpu[c, E.GAP_N] = GAPS

    def _start_draws(self) -> None:
        """RunCosts into the engine's tables: constants, and a block of draws per (CPU, drawn cost)."""
        n, costs = self.ncpus, self.costs
        drawn = costs.variable()
        block = DRAW_BLOCK + DRAW_SPARE_PER_CPU * n
        s = self.s = self.s._replace(draws=np.zeros((n, len(drawn), block), np.int64),
                                     draw_pos=np.zeros((n, len(drawn)), np.int64))
        s.cost[:] = costs.constant
        for slot, k in enumerate(drawn):
            s.cost_slot[k] = slot
            for c in range(n):
                s.draws[c, slot] = costs.draw(k, c, block)
        s.g[E.DRAW_MARK] = DRAW_BLOCK
        self._drawn = drawn

    def _refill_draws(self) -> None:
        s = self.s
        mark = s.g[E.DRAW_MARK]
        for c, slot in zip(*np.nonzero(s.draw_pos >= mark), strict=True):
            pos = s.draw_pos[c, slot]
            left = s.draws[c, slot, pos:].copy()
            s.draws[c, slot, :len(left)] = left
            s.draws[c, slot, len(left):] = self.costs.draw(self._drawn[slot], int(c), int(pos))
            s.draw_pos[c, slot] = 0
        s.g[E.DRAW_LOW] = 0

    # --- running -------------------------------------------------------------------------------------

    def run(self, until: int) -> None:
        """Engine.run(until), with the host emptying and growing buffers whenever the loop asks."""
        while E.run_until(self.s, until, MARGIN):
            self._service()
        self._write_trace()
        self._fold_latencies()

    def _service(self) -> None:
        s, g = self.s, self.s.g
        self._write_trace()
        self._fold_latencies()
        if g[E.DRAW_LOW]:
            self._refill_draws()
        if g[E.GAP_LOW]:
            g[E.GAP_LOW] = 0
            for c in self._rngs:
                if s.cpu[c, E.GAP_N] - s.cpu[c, E.GAP_POS] < GAPS // 2:
                    self._draw_gaps(c)
        if g[E.HEAP_N] + MARGIN > len(s.heap):
            cap = len(s.heap)
            self.s = s = s._replace(heap=np.concatenate([s.heap, np.zeros(cap, np.int64)]),
                                    heap_timer=np.concatenate([s.heap_timer, np.zeros(cap, np.int64)]))
        if g[E.SEQ] >= E.SEQ_LIMIT:
            self._renumber_timers()
        if g[E.W_NFREE] < MARGIN:
            cap = len(s.wpool)
            self.s = s = s._replace(wpool=np.concatenate([s.wpool, np.zeros((cap, 3), np.int64)]),
                                    w_free=np.concatenate([s.w_free[:g[E.W_NFREE]],
                                                           np.arange(cap, 2 * cap, dtype=np.int64),
                                                           np.zeros(cap - g[E.W_NFREE], np.int64)]))
            g[E.W_NFREE] += cap

    def _renumber_timers(self) -> None:
        """Number the queued timers' seq 1..n again in their order (the heap keeps its shape, since the
        order of keys does not change), so seq stays within its SEQ_BITS; later timers still come after."""
        s, g = self.s, self.s.g
        n = g[E.HEAP_N]
        keys = s.heap[:n]
        rank = np.empty(n, np.int64)
        rank[np.argsort(keys)] = np.arange(1, n + 1, dtype=np.int64)
        s.heap[:n] = ((keys >> E.SEQ_BITS) << E.SEQ_BITS) | rank
        g[E.SEQ] = n

    def _fold_latencies(self) -> None:
        g = self.s.g
        if g[E.LAT_N]:
            self.latencies.extend(self.s.lat[:g[E.LAT_N]])
            g[E.LAT_N] = 0

    def clear_latencies(self) -> None:
        """SmpStats.call_latencies_ns.clear() after the warm-up."""
        self._fold_latencies()
        self.latencies.clear()

    def _write_trace(self) -> None:
        s, g = self.s, self.s.g
        if self.tracer is not None and g[E.TRACE_N]:
            rows = s.trace[:g[E.TRACE_N]].tolist()
            tmask = s.tmask[:g[E.TMASK_N]].tolist()
            for row in rows:
                self.tracer(self._event(row, tmask))
        g[E.TRACE_N] = 0
        g[E.TMASK_N] = 0

    def _event(self, row: list[int], tmask: list[int]) -> Event:
        ts, c, name, f0, f1, f2, f3, fl = row
        kind = E.TRACE_NAMES[name]
        if name == E.T_CSD_QUEUE_CPU:
            fields: dict[str, object] = {"cpu": f0, "callsite": E.CALLSITES[f1], "func": E.FUNC_NAMES[f2],
                                         "csd": _pointer(f3)}
        elif name in (E.T_CSD_FUNCTION_ENTRY, E.T_CSD_FUNCTION_EXIT):
            fields = {"func": E.FUNC_NAMES[f0], "csd": _pointer(f1)}
        elif name == E.T_IPI_SEND_CPU:
            fields = {"cpu": f0, "callsite": E.CALLSITES[f1], "callback": FUNCTION_CALL_CALLBACK}
        elif name == E.T_IPI_SEND_CPUMASK:
            fields = {"cpumask": tuple(tmask[f0:f0 + f1]), "callsite": E.CALLSITES[f2],
                      "callback": FUNCTION_CALL_CALLBACK}
        elif name == E.T_SCHED_WAKE_IDLE_WITHOUT_IPI:
            fields = {"cpu": f0}
        elif name == E.T_CPU_IDLE:
            fields = {"state": f0, "cpu_id": f1}
        else:
            fields = {"vector": f0}
        flags = irq_flags(bool(fl & E.FL_IRQS_OFF), bool(fl & E.FL_NEED_RESCHED), bool(fl & E.FL_HARDIRQ))
        comm, pid = (self._comm[c], self._pid[c]) if fl & E.FL_TASK else ("<idle>", 0)
        return Event(ts, c, kind, comm, pid, flags, fields)

    # --- what sim/run.py reads -------------------------------------------------------------------------

    @property
    def engine(self) -> _Engine:
        return _Engine(int(self.s.g[E.NOW]), int(self.s.g[E.EVENTS]))

    @property
    def smp(self) -> _Smp:
        g = self.s.g
        return _Smp(SmpStats(
            csd_enqueues=int(g[E.ST_CSD_ENQUEUES]), csd_ipis=int(g[E.ST_CSD_IPIS]),
            csd_no_ipi_queued=int(g[E.ST_NO_IPI_QUEUED]), csd_no_ipi_polling=int(g[E.ST_NO_IPI_POLLING]),
            ipis_to_nonempty_queue=int(g[E.ST_IPIS_TO_NONEMPTY]), icr_writes=int(g[E.ST_ICR_WRITES]),
            cal_interrupts=int(g[E.ST_CAL_INTERRUPTS]), csds_run_in_irq=int(g[E.ST_CSDS_RUN_IN_IRQ]),
            csds_run_from_idle=int(g[E.ST_CSDS_RUN_FROM_IDLE]), empty_interrupts=int(g[E.ST_EMPTY_INTERRUPTS]),
            local_calls=int(g[E.ST_LOCAL_CALLS]), calls=int(g[E.ST_CALLS]),
            queue_windows=int(g[E.ST_QUEUE_WINDOWS]), queue_nonempty_ns=int(g[E.ST_QUEUE_NONEMPTY_NS])))

    @property
    def stats(self) -> MachineStats:
        g = self.s.g
        return MachineStats(apic_merged=int(g[E.M_APIC_MERGED]), ipis_delivered=int(g[E.M_IPIS_DELIVERED]),
                            ticks=int(g[E.M_TICKS]), vcpu_preemptions=int(g[E.M_VCPU_PREEMPTIONS]),
                            stolen_ns=int(g[E.M_STOLEN_NS]))

    @property
    def cpus(self) -> list[_Cpu]:
        cpu = self.s.cpu
        return [_Cpu(c, self._comm[c], int(cpu[c, E.INTERRUPTS]), int(cpu[c, E.IRQ_NS]), int(cpu[c, E.APIC_MERGED]))
                for c in range(self.ncpus)]

    def counters(self) -> dict[str, int]:
        """The workload's counters(), in its order."""
        if not isinstance(self.workload, SwapWSeqMt):
            return {}
        g = self.s.g
        return {
            "pages_written": int(g[E.MM_PAGES_WRITTEN]),
            "faults": int(g[E.MM_FAULTS]),
            "pages_deactivated": int(g[E.MM_PAGES_DEACTIVATED]),
            "pages_scanned": int(g[E.MM_PAGES_SCANNED]),
            "pages_reclaimed": int(g[E.MM_PAGES_RECLAIMED]),
            "reclaimed_by_kswapd": int(g[E.MM_RECLAIMED_BY_KSWAPD]),
            "alloc_direct_reclaim": int(g[E.MM_ALLOC_DIRECT_RECLAIM]),
            "tlb_flushes": int(g[E.MM_TLB_FLUSHES]),
            "flush_wait_ns": int(g[E.MM_FLUSH_WAIT_NS]),
            "pages_reused_before_flush": 0,  # structurally 0 here: see the AL_CHECK state
            "swap_slot_refills": int(g[E.SWAP_REFILLS]),
            "pcp_refills": int(g[E.PCP_REFILLS]),
            "pcp_bulk_frees": int(g[E.PCP_BULK_FREES]),
            "pcp_drains": int(g[E.PCP_DRAINS]),
            "pcp_drain_skips": int(g[E.PCP_DRAIN_SKIPS]),
            "pcp_drained_pages": int(g[E.PCP_DRAINED_PAGES]),
            "resched_ipis": int(g[E.RESCHED_IPIS]),
            "worker_waits": int(g[E.WORKER_WAITS]),
            **self._lock_counters(),
        }

    def _lock_counters(self) -> dict[str, int]:
        """SwapWSeqMt.counters' lock statistics, by kind of lock."""
        out: dict[str, int] = {}
        lock = self.s.lock
        for kind, prefix in LOCK_COUNTER_PREFIXES.items():
            rows = [i for i, k in enumerate(self._lock_kinds) if k == kind]
            for stat in LOCK_STATS:
                out[f"{prefix}_{stat}"] = int(lock[rows, getattr(E, "LK_" + stat.upper())].sum())
        return out

    def time_use(self) -> list[list[int]]:
        """SimMachine.time_use"""
        s = self.s
        now = int(s.g[E.NOW])
        out = s.use_ns.copy()
        for c in range(self.ncpus):
            out[c, s.cpu[c, E.USE]] += now - s.cpu[c, E.USE_SINCE]
        return out.tolist()


def _pointer(ident: int) -> str:
    """Csd.pointer: the fake kernel address traces print for a CSD (0: a local call, no CSD)."""
    return LOCAL_CSD_POINTER if ident == 0 else f"{0xFFFF888100000000 + 64 * ident:016x}"
