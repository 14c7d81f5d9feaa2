"""The compiled engine: the reference simulator (sim/engine.py, sim/machine.py) and the kernel model
(kernel/*.py) for the workloads it covers, as one explicit state machine over integer arrays.

numba compiles functions over numpy arrays well, and over Python objects not at all, so every object
of the reference engine (a SimCpu, a Context, a Csd, a PgData with its lru_lock) is a row of an int64
array here, and each attribute a named column named after it; an Engine timer is two int64s in the heap.
A generator of the kernel model becomes a run of program-counter states: the code between two yields is
one state, a `yield from` a call that pushes the state to return to on the context's own stack. Each state's
comment names the reference function it mirrors. Everything the reference schedules with Engine.at,
this schedules with `at`, at the same points and in the same order, so ties break the same way and
both engines produce the same events.

It all lives in this one file on purpose: numba's on-disk cache (cache=True) notices a change to the
file a function is in, not to the constants or functions it imports from elsewhere.

Speed: calls that carry the whole State cost tens of nanoseconds each, so what runs on every event or
step (the loop, run, advance, the timer queue, blocking and interrupts) is inlined into run_until, and the
rarer helpers stay calls. The inlining is LLVM's (`inlined`: numba's forceinline, LLVM's alwaysinline), not
numba's (inline="always"): numba compiles each function on its own and LLVM merges them, at the same speed.
numba's own inliner deep-copies the callee's IR for every call site, each block with the caller's whole
scope (numba issue 8989), which on this file took 64 of the 70 s CPU of a cold compile; LLVM's takes a
fraction of that. No function but the three the host calls (at, _draw, run_until) gets the CPython and
C wrappers numba compiles beside each function by default, which were a third of what remained. But
LLVM's inlining has its own waste: numba optimises and compiles to machine code every function's module
with all it calls linked in, so a function that calls advance pays for advance's LLVM work again. Only
run calls it, once, so run alone is numba-inlined into run_until (copying its IR once is cheap). And
advance is split in two (advance, advance_tail) only so that a cold compile can give each half a core
(fast/run.py _compile_on_two_cores). Nothing
allocates or frees while the loop runs, so reference counting is off (_nrt=False): with it on, every
array taken from State paid atomic increments.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit
from numba.core.compiler import CompilerBase, DefaultPassBuilder
from numba.core.typed_passes import NopythonRewrites
from numba.core.untyped_passes import InlineClosureLikes

from ipilab.events import (
    CALL_FUNCTION_SINGLE_VECTOR,
    CALL_FUNCTION_VECTOR,
    CPU_IDLE_EXIT,
    LOCAL_TIMER_VECTOR,
    RESCHEDULE_VECTOR,
)


class Lean(CompilerBase):
    """numba's nopython pipeline less two passes with nothing to do in this file but a second of CPU between
    them on a cold compile: inlining closures (there are none) and fusing array expressions (there are
    none: nothing allocates)."""

    def define_pipelines(self) -> list:
        pm = DefaultPassBuilder.define_nopython_pipeline(self.state)
        pm.passes = [p for p in pm.passes if p[0] not in (InlineClosureLikes, NopythonRewrites)]
        pm.finalize()
        return [pm]


# How the functions below are compiled (see Speed above): a helper stays a call unless LLVM inlines it on its
# own; an inlined function is always merged into its callers by LLVM. Neither can be called from Python.
helper = njit(cache=True, _nrt=False, no_cpython_wrapper=True, no_cfunc_wrapper=True, pipeline_class=Lean)
inlined = njit(cache=True, _nrt=False, no_cpython_wrapper=True, no_cfunc_wrapper=True, forceinline=True,
               pipeline_class=Lean)

# --- g: the machine's scalars (Engine, SmpStats, MmStats, machine-wide settings) ----------------------
NG = 81
(NOW, SEQ, EVENTS, HEAP_N, DRAW_LOW, W_NFREE, TRACE_ON, TRACE_N, TMASK_N, LAT_N, NCPUS, NNODES, NUSEMEM, NEXT_CSD,
 STACK_CSD0, CSD_DATA0, APIC_MODE, USE_SHORTHAND, HALT_POLL_NS, F_SINGLE_IPI_IF_EMPTY, F_MANY_SINGLE_SHORTCUT,
 F_COALESCE_MANY, F_TLB_SKIP_LAZY, F_SYNC_FIRST_FLUSH, F_SKIP_POLLING_IDLE, F_LOCAL_AFTER_SEND, F_SINGLE_IPI_FOR_ONE,
 BATCH, PER_PAGE_FLUSH, ST_CSD_ENQUEUES, ST_CSD_IPIS, ST_NO_IPI_QUEUED, ST_NO_IPI_POLLING, ST_IPIS_TO_NONEMPTY,
 ST_ICR_WRITES, ST_CAL_INTERRUPTS, ST_CSDS_RUN_IN_IRQ, ST_CSDS_RUN_FROM_IDLE, ST_EMPTY_INTERRUPTS, ST_LOCAL_CALLS,
 ST_CALLS, ST_QUEUE_WINDOWS, ST_QUEUE_NONEMPTY_NS, M_APIC_MERGED, M_IPIS_DELIVERED, MM_FAULTS, MM_PAGES_ALLOCATED,
 MM_ALLOC_DIRECT_RECLAIM, MM_KSWAPD_WAKEUPS, MM_PAGES_DEACTIVATED, MM_PAGES_SCANNED, MM_PAGES_RECLAIMED,
 MM_RECLAIMED_BY_KSWAPD, MM_TLB_FLUSHES, MM_FLUSH_WAIT_NS, MM_PAGES_WRITTEN, GAP_LOW, DRAW_MARK, TICK_PERIOD,
 M_TICKS, M_VCPU_PREEMPTIONS, M_STOLEN_NS, SWAP_LOCKS, NEXT_CLUSTER, SWAP_REFILLS, SWAP_TREES,
 ZONE_LOCKS, MEM_BANDWIDTH, PCP_REFILLS, PCP_BULK_FREES, DRAIN_BUSY, DRAIN_LEFT, PCP_DRAINS, PCP_DRAIN_SKIPS,
 PCP_DRAINED_PAGES, RESCHED_IPIS, WORKER_CFS, WAKEUP_GRANULARITY, SLEEPER_CREDIT, SLICE, WORKER_WAITS) = range(NG)
# --- cpu: one row per SimCpu (and its IdleState, call_single_queue and per-CPU kernel data) ------------
# (WAIT_SPARE is free: it held the timer to cancel, before timers were recognised by their generation)
# (IRQS_TAKEN: interrupts of any vector; USE, USE_SINCE: sim/timeuse.py; CL_*: si->percpu_cluster; SC_*: the
# swap_slots_cache; PCP: the count of its per-CPU page list, kernel/page_alloc.py; SOCKET: its socket; WRITING: in a
# page write, workloads/swap.py SwapRun.writing; WORK_PENDING, RES_PENDING: kernel/sched.py Workqueue; DRAIN_TARGET:
# in the running drain_all_pages' set of CPUs; LAST_RAN, RUN_AT: Workqueue.last_ran, run_at)
NEVER = -(1 << 50)  # kernel/sched.py NEVER
NCPU = 59
(WAIT_KIND, WAIT_END, WAIT_SPARE, WAIT_COND, WAIT_A, WAIT_B, WAIT_WATCH, WAIT_DEADLINE, WAIT_GEN, IRR, IRQ_NS,
 INTERRUPTS, APIC_MERGED, IN_FLIGHT, USER_MM, HAS_TASK, IN_IRQ, PROGRAM, NEED_RESCHED, POLLING, Q_HEAD, Q_TAIL,
 NONEMPTY_SINCE, PVEC, PGDAT, START_NS, FUNC_NS, IN_MM, SYNTH_WAIT, UBC_FLUSH_REQUIRED, UBC_WRITABLE, NTARGETS,
 NQUEUED, NIPI, NGROUPS, GAP_POS, GAP_N, STEP_NS, STEP_COND, STEP_A, STEP_B, STEP_WATCH, STEP_TIMEOUT,
 IN_STEAL, IRQS_TAKEN, USE, USE_SINCE, CL_NEXT, CL_LEFT, SC_NEXT, SC_LEFT, PCP, SOCKET, WRITING, WORK_PENDING,
 RES_PENDING, DRAIN_TARGET, LAST_RAN, RUN_AT) = range(NCPU)
# --- ctx: one row per (CPU, context): 0 the idle loop, 1 the task, 2 an interrupt handler ------------
NCTX = 36
(IRQS_ON, SAVED_KIND, SAVED_END, SAVED_COND, SAVED_A, SAVED_B, SAVED_WATCH, SAVED_DEADLINE, STARTED, PC, SP, L_RET,
 L_LOCK, L_TICKET, L_T0, L_CSD, L_TARGET, L_I, L_J, L_FUNC, L_INFO, L_WAIT, L_RUN_LOCAL, L_COND, L_CALLSITE,
 L_FROM_IRQ, L_N, L_G, L_RECLAIMED_FIRST, L_FLUSH_T0, L_VECTOR, L_LRU, L_PAGE, L_PAGES, L_LEFT,
 L_STALL) = range(NCTX)
# --- csd: one row per struct call_single_data -------------------------------------------------------
NCSD = 8
(LOCKED, SRC, DST, FUNC, INFO, SYNC, IDENT, NEXT) = range(NCSD)
# --- node: one row per pglist_data -------------------------------------------------------------------
NNODE = 8
(FREE, ACTIVE, INACTIVE, MIN_WMARK, LOW_WMARK, HIGH_WMARK, UNLIMITED, KSWAPD_AWAKE) = range(NNODE)
# --- lock: one row per SpinLock: each node's lru_lock, then swap_avail_lock, si->lock, the swap cache trees',
# then each node's zone->lock
NLK = 13
(LK_NEXT_TICKET, LK_SERVING, LK_LAST_OWNER, LK_ACQUISITIONS, LK_CONTENDED, LK_SPIN_NS, LK_IRQ, LK_ACQUIRED_AT,
 LK_IRQS_AT, LK_HOLD_NS, LK_HOLDS_INTERRUPTED, LK_HOLD_INTERRUPTED_NS, LK_USE) = range(NLK)
SWAP_SLOTS_CACHE_SIZE = 64  # kernel/swapfile.py
SWAPFILE_CLUSTER = 256
SWAP_ADDRESS_SPACE_SHIFT = 14
CLUSTERS_PER_TREE = 64
MAX_BATCH = 512  # the workload's largest batch: room for each page's swap slot
PCP_BATCH = 31  # kernel/page_alloc.py
PCP_HIGH = 186

STACK_DEPTH = 16  # the deepest call chain, usemem -> do_anonymous_page -> ... -> csd_lock_wait, is 11 deep
CTX_WIDTH = NCTX + STACK_DEPTH  # the continuation stack follows the named columns
STK = NCTX

IDLE, TASK, IRQ, STEAL = 0, 1, 2, 3  # contexts; a CPU's stack is idle [task] [irq] [steal]

# SimCpu.wait
W_NONE, W_BUSY, W_SPIN, W_HALT, W_WAKING = 0, 1, 2, 3, 4
# Context.saved
S_NONE, S_BUSY, S_SPIN, S_HALT, S_VALUE = 0, 1, 2, 3, 4
# Steps a context yields (kernel/steps.py), and the end of a handler (StopIteration)
ST_BUSY, ST_SPIN, ST_IRQS_OFF, ST_IRQS_ON, ST_HALT, ST_RETURN = 0, 1, 2, 3, 4, 5
# What a SpinUntil waits for: its cond() and watch
COND_CSD_UNLOCKED, COND_NEED_RESCHED, COND_TICKET, COND_KSWAPD_AWAKE, COND_DRAIN_DONE = 0, 1, 2, 3, 4
# Engine timers: the SimMachine method each one calls
EV_RUN, EV_BUSY_DONE, EV_SPIN_TIMEOUT, EV_SPIN_CHECK, EV_IPI_ARRIVES, EV_WOKEN, EV_TICK, EV_DESCHEDULE = range(8)
EV_CPU_SHIFT, EV_ARG_SHIFT = 3, 14  # a timer packs kind | cpu << 3 | arg << 14 (cpu < 2048, arg >= 0)
# Watcher pool columns
WP_CPU, WP_GEN, WP_NEXT = 0, 1, 2
# Task programs
P_NONE, P_USEMEM, P_KSWAPD, P_SYNTH_SENDER, P_BUSYLOOP = 0, 1, 2, 3, 4
# x86 APIC modes (kernel/x86.py APIC_MODES)
APIC_PHYS, APIC_CLUSTER, APIC_KVM_PV = 0, 1, 2
# smp functions and call sites, by index into the names the trace prints
FUNC_FLUSH_TLB, FUNC_SYNTHETIC = 0, 1
FUNC_NAMES = ("flush_tlb_func", "synthetic_func")
CS_ON_EACH_CPU_COND_MASK, CS_NATIVE_FLUSH_TLB_OTHERS, CS_SYNTHETIC = 0, 1, 2
CALLSITES = ("on_each_cpu_cond_mask+0x20/0x60", "native_flush_tlb_others+0x0/0x0", "synthetic_sender+0x0/0x0")
TLB_FLUSH_ALL = -1
TLB_SINGLE_PAGE_FLUSH_CEILING = 33
PAGEVEC_SIZE = 14
IRR_SINGLE, IRR_MANY, IRR_TIMER, IRR_RESCHED = 1, 2, 4, 8  # bits of the IRR for vectors 251, 252, 236 and 253

# Costs, by id: machine/costs.py CostId, written out here because numba's cache notices changes to this file
# only (fast/run.py checks at import that the two agree).
COST_NAMES = ("icr_write", "ipi_latency_same_socket", "ipi_latency_cross_socket", "irq_entry", "irq_exit",
              "idle_exit", "poll_notice", "cacheline_smt", "cacheline_same_socket", "cacheline_cross_socket",
              "invlpg", "tlb_flush_full", "page_fault", "madvise_syscall", "user_write_page", "lru_page",
              "page_referenced", "add_to_swap", "try_to_unmap", "swap_writepage", "remove_mapping", "free_page",
              "tick", "vcpu_run", "vcpu_preempt", "swap_slot_scan", "zone_page", "mem_write_page", "context_switch")
NCOSTS = len(COST_NAMES)
(C_ICR_WRITE, C_IPI_LATENCY_SAME_SOCKET, C_IPI_LATENCY_CROSS_SOCKET, C_IRQ_ENTRY, C_IRQ_EXIT, C_IDLE_EXIT,
 C_POLL_NOTICE, C_CACHELINE_SMT, C_CACHELINE_SAME_SOCKET, C_CACHELINE_CROSS_SOCKET, C_INVLPG, C_TLB_FLUSH_FULL,
 C_PAGE_FAULT, C_MADVISE_SYSCALL, C_USER_WRITE_PAGE, C_LRU_PAGE, C_PAGE_REFERENCED, C_ADD_TO_SWAP, C_TRY_TO_UNMAP,
 C_SWAP_WRITEPAGE, C_REMOVE_MAPPING, C_FREE_PAGE, C_TICK, C_VCPU_RUN, C_VCPU_PREEMPT, C_SWAP_SLOT_SCAN, C_ZONE_PAGE,
 C_MEM_WRITE_PAGE, C_CONTEXT_SWITCH) = range(NCOSTS)

# What time is spent on: sim/timeuse.py Use, written out here for the same reason (run.py checks them too)
USE_NAMES = ("user", "page_fault", "reclaim", "shootdown_send", "shootdown_wait", "irq_entry_exit", "irq_functions",
             "tick", "idle", "stolen", "spin_lru_lock", "spin_swap_avail_lock", "spin_si_lock",
             "spin_swap_cache_lock", "spin_zone_lock", "mem_bandwidth", "pcp_drain", "other")
NUSES = len(USE_NAMES)
(U_USER, U_PAGE_FAULT, U_RECLAIM, U_SHOOTDOWN_SEND, U_SHOOTDOWN_WAIT, U_IRQ_ENTRY_EXIT, U_IRQ_FUNCTIONS, U_TICK,
 U_IDLE, U_STOLEN, U_SPIN_LRU_LOCK, U_SPIN_SWAP_AVAIL_LOCK, U_SPIN_SI_LOCK, U_SPIN_SWAP_CACHE_LOCK,
 U_SPIN_ZONE_LOCK, U_MEM_BANDWIDTH, U_PCP_DRAIN, U_OTHER) = range(NUSES)
U_BY_LOCK = -1  # a lock's acquisition: the use of the lock in x[L_LOCK]

# Trace records: one row per tracepoint hit
TR_TS, TR_CPU, TR_NAME, TR_F0, TR_F1, TR_F2, TR_F3, TR_FLAGS = range(8)
TRACE_NAMES = ("csd_queue_cpu", "csd_function_entry", "csd_function_exit", "ipi_send_cpu", "ipi_send_cpumask",
               "call_function_entry", "call_function_exit", "call_function_single_entry",
               "call_function_single_exit", "sched_wake_idle_without_ipi", "cpu_idle", "local_timer_entry",
               "local_timer_exit")
(T_CSD_QUEUE_CPU, T_CSD_FUNCTION_ENTRY, T_CSD_FUNCTION_EXIT, T_IPI_SEND_CPU, T_IPI_SEND_CPUMASK,
 T_CALL_FUNCTION_ENTRY, T_CALL_FUNCTION_EXIT, T_CALL_FUNCTION_SINGLE_ENTRY, T_CALL_FUNCTION_SINGLE_EXIT,
 T_SCHED_WAKE_IDLE_WITHOUT_IPI, T_CPU_IDLE, T_LOCAL_TIMER_ENTRY, T_LOCAL_TIMER_EXIT) = range(len(TRACE_NAMES))
FL_IRQS_OFF, FL_NEED_RESCHED, FL_HARDIRQ, FL_TASK = 1, 2, 4, 8


class State(NamedTuple):
    """Everything one run of the compiled engine reads and writes (numba passes it as one argument)."""

    g: np.ndarray  # [NG]
    cpu: np.ndarray  # [ncpus, NCPU]
    ctx: np.ndarray  # [ncpus, 3, CTX_WIDTH]
    heap: np.ndarray  # [cap] Engine._queue: a 4-ary heap of keys when << SEQ_BITS | seq
    heap_timer: np.ndarray  # [cap] what each heap entry calls: kind | cpu << EV_CPU_SHIFT | arg << EV_ARG_SHIFT
    watch_head: np.ndarray  # SimMachine._watchers: per watch, a list of (cpu, gen) in the pool
    watch_tail: np.ndarray
    wpool: np.ndarray  # [wcap, 3]
    w_free: np.ndarray
    csd: np.ndarray  # [ncsd, NCSD]
    flushbuf: np.ndarray  # [ncpus, 3 * ncpus]: the entries one flush detached (a queue holds at most 3n)
    flushtmp: np.ndarray  # [ncpus, 3 * ncpus]: room to put SYNC entries first
    targets: np.ndarray  # [ncpus, ncpus]: the CPUs each CPU's calls go to (sorted, without itself)
    queued: np.ndarray  # [ncpus, ncpus]
    ipi: np.ndarray  # [ncpus, ncpus]: cfd->cpumask_ipi
    order: np.ndarray  # [ncpus, ncpus]: the IPI mask in ICR-write order
    gstart: np.ndarray  # [ncpus, ncpus + 1]: where each ICR write's targets start in `order`
    cacheline: np.ndarray  # [ncpus, ncpus] the cost id of a cache-line transfer from the second CPU to the first
    ipi_latency: np.ndarray  # [ncpus, ncpus] the cost id of an IPI's delivery from the first CPU to the second
    cluster_rank: np.ndarray  # [ncpus] x2APIC cluster, ranked
    by_cluster: np.ndarray  # [ncpus] the CPUs sorted by (cluster, cpu)
    mask_mark: np.ndarray  # [ncpus, ncpus] scratch: which CPUs are in the mask being sent
    cost: np.ndarray  # [NCOSTS] RunCosts.constant: ns, or VARIABLE (drawn), or ABSENT
    cost_slot: np.ndarray  # [NCOSTS] where a drawn cost's streams are in `draws` (-1: not drawn)
    draws: np.ndarray  # [ncpus, variable costs, block] each (CPU, cost) stream's next draws
    draw_pos: np.ndarray  # [ncpus, variable costs] how many of them were used
    usemem: np.ndarray  # mm_cpumask: the usemem CPUs, sorted
    node: np.ndarray  # [nnodes, NNODE]
    lock: np.ndarray  # [nlocks, NLK]
    lock_waiting: np.ndarray  # [nlocks, ncpus + 1]: lock._waiting by ticket modulo ncpus + 1
    slot: np.ndarray  # [ncpus, MAX_BATCH]: page.swap_offset of each page of the CPU's shrink_page_list batch
    use_ns: np.ndarray  # [ncpus, NUSES]: SimCpu.use_ns
    busy_use: np.ndarray  # [NPC, 2]: the use of a Busy step by the state it resumes at, [not in a task, in one]
    trace: np.ndarray  # [tcap, 8] tracepoint hits not yet written
    tmask: np.ndarray  # cpumasks of ipi_send_cpumask hits
    lat: np.ndarray  # call latencies not yet folded into the histogram
    gaps: np.ndarray  # [ncpus, gcap] the synthetic senders' pre-drawn gaps


# --- program counters: each kernel function's states, in the order its code runs ---------------------
NPC = 186  # one state per piece of code between two yields, grouped by the function they mirror
(ID_TOP, ID_POLLED, ID_HALT, ID_WOKE, ID_NOTICED, ID_FLUSH, ID_FLUSHED, ID_FLUSH_DONE,
 SV_ENTRY, SV_FLUSH, SV_FLUSHED, SV_DONE,
 FL_START, FL_DETACH, FL_NEXT, FL_SYNC_RAN, FL_SYNC_UNLOCKED, FL_ASYNC_UNLOCKED, FL_ASYNC_RAN,
 BD_START, BD_DONE,
 UM_START, UM_FAULT, UM_WRITE, UM_WRITTEN,
 DA_START, DA_ALLOC, DA_ALLOCATED, DA_DONE,
 AL_START, AL_CHECK,
 PV_START, PV_LOCKED, PV_ADD, PV_DONE,
 SN_START, SN_INACTIVE, SN_DONE,
 SA_START, SA_ISOLATED, SA_REFERENCED, SA_LOCKED, SA_MOVED, SA_DONE,
 IS_START, IS_LOCKED, IS_TAKEN, IS_DONE,
 SI_START, SI_ISOLATED, SI_LISTED, SI_PUTBACK_LOCKED, SI_PUTBACK_DONE, SI_FREED,
 SP_START, SP_NEXT, SP_ADD_TO_SWAP, SP_UNMAP, SP_UNMAPPED, SP_PAGEOUT, SP_PAGED, SP_AFTER_LOOP, SP_BATCH_OUT,
 SP_BATCH_NEXT, SP_BATCH_PAGED, SP_FINAL, SP_DONE,
 UF_START, UF_DONE,
 PO_START, PO_OFF, PO_REMOVE, PO_ON, PO_DONE, PO_LOCKED, PO_UNLOCK,
 AS_START, AS_AVAIL, AS_SI, AS_SCAN, AS_SCANNED, AS_REFILLED, AS_SLOT, AS_LOCKED, AS_ADDED, AS_DONE,
 RQ_START, RQ_CHECK, RQ_LOCKED, RQ_BULKED, RQ_TAKE, RQ_DONE, AL_TAKEN,  # advance's, so before FT_START
 FP_NEXT, FP_ADDED, FP_BULK, FP_LOCKED, FP_MOVED, FP_UNLOCKED, FP_DONE,
 UM_WROTE, UM_STALLED,
 AL_RECLAIMED,
 FT_START, FT_OTHERS, FT_DONE,
 MC_START, MC_SHORTCUT_DONE, MC_NEXT, MC_LOCKED, MC_QUEUED, MC_SEND, MC_SENT, MC_WAIT, MC_WAIT_NEXT, MC_WAITED,
 MC_LOCAL_LAST, MC_RET,
 CR_START, CR_LOCKED, CR_QUEUED, CR_DONE,
 GE_START, GE_QUEUED, GE_DONE,
 SQ_START, SQ_ADD,
 CL_START, CL_LOCKED,
 CW_START, CW_SEEN, CW_DONE,
 SS_START, SS_ICR, SS_RAISE, SS_DONE,
 SM_START, SM_WRITE, SM_RAISE, SM_DONE,
 RL_START, RL_ENTRY, RL_EXIT, RL_DONE,
 KS_TOP, KS_SHRINK, KS_DONE,
 SL_START, SL_TICKET, SL_SPUN, SL_OWN, SL_DONE,
 SU_START, SU_DONE,
 SY_GAP, SY_CALL, SY_DONE,
 BL_LOOP,
 TK_ENTRY, TK_BODY, TK_EXIT, TK_DONE,
 VS_START, VS_DONE,
 DR_START, DR_NEXT, DR_WOKEN, DR_ICR, DR_RAISE, DR_SELF, DR_SELF_OFF, DR_SELF_WORK, DR_SELF_ON, DR_SELF_OUT,
 DR_SELF_RAN, DR_WAIT, DR_DONE,
 DW_START, DW_LOCKED, DW_MOVED, DW_END,
 RS_ENTRY, RS_BODY, RS_WORK, RS_OUT, RS_DONE) = range(NPC)


def busy_use_table() -> np.ndarray:
    """State.busy_use: what each Busy step is spent on, by the state it resumes at (sim/timeuse.py use_of for the
    reference engine's labels); [pc, 0] outside a task (handlers, idle), [pc, 1] in one. -2: no Busy resumes there."""
    t = np.full((NPC, 2), -2, np.int64)
    by_resume = {
        ID_NOTICED: U_IDLE,  # poll_notice
        SV_FLUSH: U_IRQ_ENTRY_EXIT, SV_DONE: U_IRQ_ENTRY_EXIT, TK_BODY: U_IRQ_ENTRY_EXIT, TK_DONE: U_IRQ_ENTRY_EXIT,
        TK_EXIT: U_TICK,
        FL_DETACH: U_IRQ_FUNCTIONS, FL_ASYNC_UNLOCKED: U_IRQ_FUNCTIONS, FL_SYNC_UNLOCKED: U_IRQ_FUNCTIONS,
        UM_FAULT: U_USER, UM_WRITTEN: U_USER, SY_CALL: U_USER, BL_LOOP: U_USER,
        DA_ALLOC: U_PAGE_FAULT, PV_ADD: U_PAGE_FAULT,
        SA_REFERENCED: U_RECLAIM, SA_MOVED: U_RECLAIM, IS_TAKEN: U_RECLAIM, SI_FREED: U_RECLAIM,
        SP_ADD_TO_SWAP: U_RECLAIM, SP_UNMAP: U_RECLAIM, SP_UNMAPPED: U_RECLAIM, PO_OFF: U_RECLAIM, PO_ON: U_RECLAIM,
        PO_UNLOCK: U_RECLAIM, AS_SCANNED: U_RECLAIM, AS_ADDED: U_RECLAIM,
        SQ_ADD: U_SHOOTDOWN_SEND, CW_DONE: U_SHOOTDOWN_SEND, SS_RAISE: U_SHOOTDOWN_SEND, SM_RAISE: U_SHOOTDOWN_SEND,
        SL_DONE: U_BY_LOCK,
        RQ_BULKED: U_PAGE_FAULT, FP_ADDED: U_RECLAIM, FP_MOVED: U_RECLAIM,
        UM_WROTE: U_USER, UM_STALLED: U_MEM_BANDWIDTH,
        VS_DONE: U_STOLEN,
        DR_WOKEN: U_PCP_DRAIN, DR_RAISE: U_PCP_DRAIN, DR_SELF_OFF: U_PCP_DRAIN, DR_SELF_RAN: U_PCP_DRAIN,
        DW_MOVED: U_RECLAIM,
        RS_BODY: U_IRQ_ENTRY_EXIT, RS_WORK: U_PCP_DRAIN, RS_OUT: U_PCP_DRAIN, RS_DONE: U_IRQ_ENTRY_EXIT,
    }
    for pc, use in by_resume.items():
        t[pc] = use
    t[BD_DONE] = U_IRQ_FUNCTIONS, U_SHOOTDOWN_SEND  # a flush_tlb_func body: a target's, or the sender's own
    return t


# === the Engine: a 4-ary heap of (when, seq) packed in one int64, and what each entry calls ============

# A heap key is when << SEQ_BITS | seq: one integer comparison orders (when, seq) as Engine's heapq does.
# when stays below 2^(63 - SEQ_BITS) ns (about 274 s; runs are at most 120 s with the warm-up). seq
# needs to order only the timers queued at once, so before it reaches SEQ_LIMIT the host numbers the
# queued ones again from 1 in the same order (FastSim._renumber_timers); new timers still come after.
SEQ_BITS = 25
SEQ_LIMIT = 1 << (SEQ_BITS - 1)  # the host renumbers from here: half the room left for one event's pushes
WHEN_LIMIT = 1 << (63 - SEQ_BITS)
ARITY_BITS = 2
ARITY = 1 << ARITY_BITS  # children per node: 4 (8 measured slower on the seed scenario)


@njit(cache=True, _nrt=False, forceinline=True, pipeline_class=Lean)  # also called by the host
def at(s: State, when: int, kind: int, c: int, arg: int) -> None:
    """Engine.at: call `kind`(c, arg) at `when`; ties run in scheduling order.

    Keys are unique, so the queue pops in exactly Engine's order whatever its shape; four children to
    a node halve the levels a pop walks compared with heapq's two. No timer is ever cancelled here:
    the reference cancels exactly the Busy and spin-timeout timers whose wait has ended another way,
    and run_until recognises those by their wait generation instead (see there)."""
    g = s.g
    h = s.heap
    hs = s.heap_timer
    if g[HEAP_N] == len(h):
        raise RuntimeError("fast engine: timer heap full")
    if when >= WHEN_LIMIT or g[SEQ] >= (1 << SEQ_BITS) - 1:
        raise RuntimeError("fast engine: timer key out of range")
    g[SEQ] += 1
    key = (when << SEQ_BITS) | g[SEQ]
    slot = kind | (c << EV_CPU_SHIFT) | (arg << EV_ARG_SHIFT)
    n = g[HEAP_N]
    g[HEAP_N] = n + 1
    i = np.uint64(n)  # unsigned, as in _heap_pop: no wraparound
    while i > 0:  # sift up
        parent = (i - np.uint64(1)) >> np.uint64(ARITY_BITS)
        if h[parent] < key:
            break
        h[i] = h[parent]
        hs[i] = hs[parent]
        i = parent
    h[i] = key
    hs[i] = slot


@inlined
def _heap_pop(s: State) -> None:
    """Remove the root. Floyd's way: the hole walks down to a leaf along the smallest children, then the
    last entry rises from there; it belongs near the bottom, so this skips a hard-to-predict compare
    per level."""
    g = s.g
    h = s.heap
    hs = s.heap_timer
    last = g[HEAP_N] - 1
    g[HEAP_N] = last
    key, slot = h[last], hs[last]
    # Indices are unsigned here: numba then skips the negative-index wraparound on every access.
    one, bits = np.uint64(1), np.uint64(ARITY_BITS)
    n = np.uint64(last)
    i = np.uint64(0)
    while True:
        first = (i << bits) + one
        if first >= n:
            break
        best = first
        bk = h[first]
        if first + np.uint64(ARITY) <= n:  # a full set of children: a loop of fixed length, unrolled, branch-free
            for d in range(1, ARITY):
                child = first + np.uint64(d)
                ck = h[child]
                if ck < bk:
                    best, bk = child, ck
        else:
            child = first + one
            while child < n:
                ck = h[child]
                if ck < bk:
                    best, bk = child, ck
                child += one
        h[i] = bk
        hs[i] = hs[best]
        i = best
    while i > 0:
        parent = (i - one) >> bits
        if h[parent] < key:
            break
        h[i] = h[parent]
        hs[i] = hs[parent]
        i = parent
    h[i] = key
    hs[i] = slot


# === SimMachine's platform: notify, raise_ipi, trace, set_nr_if_polling, is_lazy_tlb =================

@helper
def w_csd(s: State, csd: int) -> int:
    return csd


@helper
def w_idle(s: State, c: int) -> int:
    return len(s.csd) + c


@helper
def w_kswapd(s: State, node: int) -> int:
    return len(s.csd) + s.g[NCPUS] + node


@helper
def w_drain(s: State) -> int:
    """PcpDrain.done: after every lock's tickets."""
    return len(s.watch_head) - 1


@helper
def w_ticket(s: State, lock: int, ticket: int) -> int:
    """lock._waiting[ticket]: at most one ticket per CPU is outstanding, so ticket mod (ncpus + 1) is unique."""
    n = s.g[NCPUS] + 1
    return len(s.csd) + s.g[NCPUS] + s.g[NNODES] + lock * n + ticket % n


@helper
def watch_add(s: State, watch: int, c: int, gen: int) -> None:
    """_watchers[watch].append((c, gen))"""
    g = s.g
    if g[W_NFREE] == 0:
        raise RuntimeError("fast engine: watcher pool full")
    g[W_NFREE] -= 1
    e = s.w_free[g[W_NFREE]]
    s.wpool[e, WP_CPU] = c
    s.wpool[e, WP_GEN] = gen
    s.wpool[e, WP_NEXT] = -1
    tail = s.watch_tail[watch]
    if tail >= 0:
        s.wpool[tail, WP_NEXT] = e
    else:
        s.watch_head[watch] = e
    s.watch_tail[watch] = e


@helper
def watch_remove(s: State, watch: int, c: int) -> None:
    """SimMachine._unwatch: drop CPU `c`'s entry from `watch`'s list (its spin ended without a notify)."""
    prev = -1
    e = s.watch_head[watch]
    while e >= 0:
        nxt = s.wpool[e, WP_NEXT]
        if s.wpool[e, WP_CPU] == c:
            if prev >= 0:
                s.wpool[prev, WP_NEXT] = nxt
            else:
                s.watch_head[watch] = nxt
            if s.watch_tail[watch] == e:
                s.watch_tail[watch] = prev
            s.w_free[s.g[W_NFREE]] = e
            s.g[W_NFREE] += 1
            return
        prev = e
        e = nxt


@helper
def notify(s: State, watch: int) -> None:
    """SimMachine.notify: every CPU spinning on `watch` re-tests its condition now (a _spin_check each)."""
    e = s.watch_head[watch]
    s.watch_head[watch] = -1
    s.watch_tail[watch] = -1
    while e >= 0:
        at(s, s.g[NOW], EV_SPIN_CHECK, s.wpool[e, WP_CPU], s.wpool[e, WP_GEN])
        nxt = s.wpool[e, WP_NEXT]
        s.w_free[s.g[W_NFREE]] = e
        s.g[W_NFREE] += 1
        e = nxt


@helper
def raise_ipi(s: State, src: int, dst: int, vector: int) -> None:
    s.cpu[dst, IN_FLIGHT] += 1
    at(s, s.g[NOW] + cost(s, src, s.ipi_latency[src, dst]), EV_IPI_ARRIVES, dst, vector)


@inlined
def top_ctx(s: State, c: int) -> int:
    if s.cpu[c, IN_STEAL]:
        return STEAL
    if s.cpu[c, IN_IRQ]:
        return IRQ
    return TASK if s.cpu[c, HAS_TASK] else IDLE


@helper
def trace(s: State, c: int, name: int, f0: int, f1: int, f2: int, f3: int) -> None:
    """SimMachine.trace: a tracepoint hit with the flags column's inputs, kept until the host writes it out.
    Callers test g[TRACE_ON] first: an untraced run pays nothing."""
    g = s.g
    i = g[TRACE_N]
    if i == len(s.trace):
        raise RuntimeError("fast engine: trace buffer full within one event")
    g[TRACE_N] = i + 1
    flags = 0
    if not s.ctx[c, top_ctx(s, c), IRQS_ON]:
        flags |= FL_IRQS_OFF
    if s.cpu[c, NEED_RESCHED]:
        flags |= FL_NEED_RESCHED
    if s.cpu[c, IN_IRQ]:
        flags |= FL_HARDIRQ
    if s.cpu[c, HAS_TASK]:
        flags |= FL_TASK
    r = s.trace[i]
    r[TR_TS] = g[NOW]
    r[TR_CPU] = c
    r[TR_NAME] = name
    r[TR_F0] = f0
    r[TR_F1] = f1
    r[TR_F2] = f2
    r[TR_F3] = f3
    r[TR_FLAGS] = flags


@helper
def set_nr_if_polling(s: State, c: int) -> bool:
    if not s.cpu[c, POLLING]:
        return False
    s.cpu[c, NEED_RESCHED] = 1
    notify(s, w_idle(s, c))
    return True


@helper
def is_lazy_tlb(s: State, c: int) -> bool:
    return not (s.cpu[c, USER_MM] and s.cpu[c, HAS_TASK])


@inlined
def cond_holds(s: State, cond: int, a: int, b: int) -> bool:
    """The cond() of a SpinUntil."""
    if cond == COND_CSD_UNLOCKED:
        return s.csd[a, LOCKED] == 0
    if cond == COND_NEED_RESCHED:
        return s.cpu[a, NEED_RESCHED] != 0
    if cond == COND_TICKET:
        return s.lock[a, LK_SERVING] == b
    if cond == COND_DRAIN_DONE:
        return s.g[DRAIN_LEFT] == 0
    return s.node[a, KSWAPD_AWAKE] != 0


@helper
def _latency(s: State, ns: int) -> None:
    """SmpStats.call_latencies_ns.append(ns)"""
    i = s.g[LAT_N]
    if i == len(s.lat):
        raise RuntimeError("fast engine: latency buffer full within one event")
    s.lat[i] = ns
    s.g[LAT_N] = i + 1


@inlined
def cost(s: State, c: int, k: int) -> int:
    """SimMachine.cost: what cost `k` takes on CPU `c` this time: its constant, or the next draw of its stream."""
    ns = s.cost[k]
    if ns >= 0:
        return ns
    return _draw(s, c, k)


@njit(cache=True, _nrt=False, pipeline_class=Lean)
def _draw(s: State, c: int, k: int) -> int:
    slot = s.cost_slot[k]
    if slot < 0:
        raise RuntimeError("fast engine: a cost the machine does not give was used")
    i = s.draw_pos[c, slot]
    if i == s.draws.shape[2]:
        raise RuntimeError("fast engine: a cost's draws ran out within one event")
    s.draw_pos[c, slot] = i + 1
    if i >= s.g[DRAW_MARK]:
        s.g[DRAW_LOW] = 1
    return s.draws[c, slot, i]


# === the kernel model: one step of a context (kernel/*.py) ===========================================

@helper
def _call(x: np.ndarray, entry: int, ret: int) -> None:
    """`yield from f()` in context row `x`: remember where to come back to, go to f's first state."""
    x[STK + x[SP]] = ret
    x[SP] += 1
    x[PC] = entry


@helper
def _return(x: np.ndarray) -> None:
    x[SP] -= 1
    x[PC] = x[STK + x[SP]]


@helper
def _busy(cpu: np.ndarray, x: np.ndarray, ns: int, nxt: int) -> int:
    """`yield Busy(ns)`, resuming at `nxt`."""
    cpu[STEP_NS] = ns
    x[PC] = nxt
    return ST_BUSY


@helper
def _spin(cpu: np.ndarray, x: np.ndarray, cond: int, a: int, b: int, watch: int, timeout: int, nxt: int) -> int:
    """`yield SpinUntil(cond, watch, timeout)` (-1: none), resuming at `nxt`."""
    cpu[STEP_COND] = cond
    cpu[STEP_A] = a
    cpu[STEP_B] = b
    cpu[STEP_WATCH] = watch
    cpu[STEP_TIMEOUT] = timeout
    x[PC] = nxt
    return ST_SPIN


@helper
def _step(x: np.ndarray, step: int, nxt: int) -> int:
    """`yield IRQS_OFF` / `IRQS_ON` / `Halt()`, resuming at `nxt`."""
    x[PC] = nxt
    return step


@helper
def func_cost(s: State, c: int, func: int, info: int) -> int:
    """The body of an SmpFunc on CPU `c`: tlb.py _flush_tlb_func, or the synthetic workload's function."""
    if func == FUNC_FLUSH_TLB:
        if info == TLB_FLUSH_ALL or info > TLB_SINGLE_PAGE_FLUSH_CEILING:
            return cost(s, c, C_TLB_FLUSH_FULL)
        return info * cost(s, c, C_INVLPG)
    return info


@helper
def csd_unlock(s: State, csd: int) -> None:
    s.csd[csd, LOCKED] = 0
    notify(s, w_csd(s, csd))


@helper
def wakeup_kswapd(s: State, nd: int) -> None:
    if not s.node[nd, KSWAPD_AWAKE]:
        s.node[nd, KSWAPD_AWAKE] = 1
        s.g[MM_KSWAPD_WAKEUPS] += 1
        notify(s, w_kswapd(s, nd))


@helper
def tree_lock(s: State, offset: int) -> int:
    """kernel/swapfile.py SwapDevice.tree_lock: the lock row of the swap cache tree holding slot `offset`."""
    return s.g[NNODES] + 2 + (offset >> SWAP_ADDRESS_SPACE_SHIFT) % s.g[SWAP_TREES]


@helper
def zone_lock(s: State, node: int) -> int:
    """The lock row of `node`'s zone->lock: after the swap cache trees' (kernel/page_alloc.py Zone.lock)."""
    return s.g[NNODES] + 2 + s.g[SWAP_TREES] + node


@helper
def _ipi_mask_order(s: State, c: int) -> None:
    """kernel/x86.py send_IPI_mask: which targets each ICR write carries, in order."""
    g = s.g
    cpu = s.cpu[c]
    n = cpu[NIPI]
    order = s.order[c]
    starts = s.gstart[c]
    for i in range(n):
        order[i] = s.ipi[c, i]
    if (g[USE_SHORTHAND] and n == g[NCPUS] - 1) or g[APIC_MODE] == APIC_KVM_PV:
        starts[0] = 0
        starts[1] = n
        cpu[NGROUPS] = 1
        return
    if g[APIC_MODE] == APIC_PHYS:
        for i in range(n + 1):
            starts[i] = i
        cpu[NGROUPS] = n
        return
    # x2APIC cluster mode: the mask (sorted) stably sorted by cluster, one write per cluster. `by_cluster`
    # lists every CPU in that order already; keep the ones in the mask.
    mark = s.mask_mark[c]
    for i in range(n):
        mark[order[i]] = 1
    m = 0
    groups = 0
    last = -1
    for cpu_ in s.by_cluster:
        if mark[cpu_]:
            mark[cpu_] = 0
            order[m] = cpu_
            if s.cluster_rank[cpu_] != last:
                starts[groups] = m
                groups += 1
                last = s.cluster_rank[cpu_]
            m += 1
    starts[groups] = n
    cpu[NGROUPS] = groups


@inlined
def advance(s: State, c: int, k: int, value: int) -> int:
    """Resume context `k` of CPU `c` with `value` (-1 None, 0 False, 1 True) until its next step; -1 when it
    reaches a state from FT_START on, which are advance_tail's: numba compiles the two halves apart (in
    parallel on a cold start, fast/run.py) and LLVM merges them back into run."""
    g = s.g
    cpu = s.cpu[c]
    x = s.ctx[c, k]
    while True:
        pc = x[PC]
        # --- kernel/idle.py do_idle ------------------------------------------------------------------
        if pc == ID_TOP:
            if g[TRACE_ON]:
                trace(s, c, T_CPU_IDLE, 1, c, 0, 0)
            if g[HALT_POLL_NS] > 0:
                cpu[POLLING] = 1
                return _spin(cpu, x, COND_NEED_RESCHED, c, 0, w_idle(s, c), g[HALT_POLL_NS], ID_POLLED)
            x[PC] = ID_HALT
        elif pc == ID_POLLED:
            cpu[POLLING] = 0
            x[PC] = ID_WOKE if value == 1 else ID_HALT
        elif pc == ID_HALT:
            return _step(x, ST_HALT, ID_WOKE)
        elif pc == ID_WOKE:
            if g[TRACE_ON]:
                trace(s, c, T_CPU_IDLE, CPU_IDLE_EXIT, c, 0, 0)
            if cpu[NEED_RESCHED]:
                return _busy(cpu, x, cost(s, c, C_POLL_NOTICE), ID_NOTICED)
            x[PC] = ID_TOP
        elif pc == ID_NOTICED:  # kernel/smp.py flush_smp_call_function_queue, the idle loop's flush
            if cpu[Q_HEAD] >= 0:
                return _step(x, ST_IRQS_OFF, ID_FLUSH)
            cpu[NEED_RESCHED] = 0
            x[PC] = ID_TOP
        elif pc == ID_FLUSH:
            x[L_FROM_IRQ] = 0
            _call(x, FL_START, ID_FLUSHED)
        elif pc == ID_FLUSHED:
            return _step(x, ST_IRQS_ON, ID_FLUSH_DONE)
        elif pc == ID_FLUSH_DONE:
            cpu[NEED_RESCHED] = 0
            x[PC] = ID_TOP
        # --- kernel/smp.py sysvec_call_function, generic_smp_call_function_single_interrupt -----------
        elif pc == SV_ENTRY:
            return _busy(cpu, x, cost(s, c, C_IRQ_ENTRY), SV_FLUSH)
        elif pc == SV_FLUSH:
            g[ST_CAL_INTERRUPTS] += 1
            single = x[L_VECTOR] == CALL_FUNCTION_SINGLE_VECTOR
            if g[TRACE_ON]:
                trace(s, c, T_CALL_FUNCTION_SINGLE_ENTRY if single else T_CALL_FUNCTION_ENTRY, x[L_VECTOR], 0, 0, 0)
            x[L_FROM_IRQ] = 1
            _call(x, FL_START, SV_FLUSHED)
        elif pc == SV_FLUSHED:
            if x[L_RET] == 0:
                g[ST_EMPTY_INTERRUPTS] += 1
            single = x[L_VECTOR] == CALL_FUNCTION_SINGLE_VECTOR
            if g[TRACE_ON]:
                trace(s, c, T_CALL_FUNCTION_SINGLE_EXIT if single else T_CALL_FUNCTION_EXIT, x[L_VECTOR], 0, 0, 0)
            return _busy(cpu, x, cost(s, c, C_IRQ_EXIT), SV_DONE)
        elif pc == SV_DONE:
            return ST_RETURN
        # --- kernel/smp.py __flush_smp_call_function_queue ----------------------------------------------
        elif pc == FL_START:
            return _busy(cpu, x, 0, FL_DETACH)  # llist_del_all costs nothing of its own
        elif pc == FL_DETACH:
            # llist_del_all: the entries are copied out, since a CSD may be queued again while they run.
            m = 0
            e = cpu[Q_HEAD]
            while e >= 0:
                s.flushbuf[c, m] = e
                m += 1
                e = s.csd[e, NEXT]
            cpu[Q_HEAD] = -1
            cpu[Q_TAIL] = -1
            if m:
                g[ST_QUEUE_WINDOWS] += 1
                g[ST_QUEUE_NONEMPTY_NS] += g[NOW] - cpu[NONEMPTY_SINCE]
            if g[F_SYNC_FIRST_FLUSH]:
                buf = s.flushbuf[c]
                tmp = s.flushtmp[c]
                for i in range(m):
                    tmp[i] = buf[i]
                j = 0
                for want in (1, 0):
                    for i in range(m):
                        if s.csd[tmp[i], SYNC] == want:
                            buf[j] = tmp[i]
                            j += 1
            x[L_I] = 0
            x[L_N] = m
            x[PC] = FL_NEXT
        elif pc == FL_NEXT:
            if x[L_I] == x[L_N]:
                x[L_RET] = x[L_N]
                _return(x)
                continue
            csd = s.flushbuf[c, x[L_I]]
            x[L_CSD] = csd
            x[L_FUNC] = s.csd[csd, FUNC]
            x[L_INFO] = s.csd[csd, INFO]
            if x[L_FROM_IRQ]:
                g[ST_CSDS_RUN_IN_IRQ] += 1
            else:
                g[ST_CSDS_RUN_FROM_IDLE] += 1
            if s.csd[csd, SYNC]:
                if g[TRACE_ON]:
                    trace(s, c, T_CSD_FUNCTION_ENTRY, x[L_FUNC], s.csd[csd, IDENT], 0, 0)
                _call(x, BD_START, FL_SYNC_RAN)
            else:
                # An async CSD may be reused as soon as it is unlocked: func and info were copied first.
                return _busy(cpu, x, cost(s, c, s.cacheline[c, s.csd[csd, SRC]]), FL_ASYNC_UNLOCKED)
        elif pc == FL_SYNC_RAN:
            csd = x[L_CSD]
            if g[TRACE_ON]:
                trace(s, c, T_CSD_FUNCTION_EXIT, x[L_FUNC], s.csd[csd, IDENT], 0, 0)
            return _busy(cpu, x, cost(s, c, s.cacheline[c, s.csd[csd, SRC]]), FL_SYNC_UNLOCKED)
        elif pc == FL_SYNC_UNLOCKED:
            csd_unlock(s, x[L_CSD])
            x[L_I] += 1
            x[PC] = FL_NEXT
        elif pc == FL_ASYNC_UNLOCKED:
            csd = x[L_CSD]
            csd_unlock(s, csd)
            if g[TRACE_ON]:
                trace(s, c, T_CSD_FUNCTION_ENTRY, x[L_FUNC], s.csd[csd, IDENT], 0, 0)
            _call(x, BD_START, FL_ASYNC_RAN)
        elif pc == FL_ASYNC_RAN:
            if g[TRACE_ON]:
                trace(s, c, T_CSD_FUNCTION_EXIT, x[L_FUNC], s.csd[x[L_CSD], IDENT], 0, 0)
            x[L_I] += 1
            x[PC] = FL_NEXT
        # --- the called function's body (tlb.py _flush_tlb_func, synthetic_func) ------------------------
        elif pc == BD_START:
            return _busy(cpu, x, func_cost(s, c, x[L_FUNC], x[L_INFO]), BD_DONE)
        elif pc == BD_DONE:
            _return(x)
        # --- workloads/swap.py _usemem -----------------------------------------------------------------
        elif pc == UM_START:
            return _busy(cpu, x, cpu[START_NS], UM_FAULT)
        elif pc == UM_FAULT:
            _call(x, DA_START, UM_WRITE)
        elif pc == UM_WRITE:
            if g[MEM_BANDWIDTH]:
                ns = cost(s, c, C_USER_WRITE_PAGE)
                # The socket's memory serves the CPUs writing at once in turn, not counting a write an interrupt
                # has set aside (see workloads/swap.py).
                writing = 1
                for i in range(g[NUSEMEM]):
                    o = s.usemem[i]
                    if s.cpu[o, WRITING] and s.cpu[o, SOCKET] == cpu[SOCKET] and top_ctx(s, o) == TASK:
                        writing += 1
                x[L_STALL] = writing * cost(s, c, C_MEM_WRITE_PAGE) - ns
                cpu[WRITING] = 1
                return _busy(cpu, x, ns, UM_WROTE)
            return _busy(cpu, x, cost(s, c, C_USER_WRITE_PAGE), UM_WRITTEN)
        elif pc == UM_WROTE:
            if x[L_STALL] > 0:
                return _busy(cpu, x, x[L_STALL], UM_STALLED)
            x[PC] = UM_STALLED
        elif pc == UM_STALLED:
            cpu[WRITING] = 0
            x[PC] = UM_WRITTEN
        elif pc == UM_WRITTEN:
            g[MM_PAGES_WRITTEN] += 1
            x[PC] = UM_FAULT
        # --- kernel/mm.py do_anonymous_page, lru_cache_add_active --------------------------------------
        elif pc == DA_START:
            return _busy(cpu, x, cost(s, c, C_PAGE_FAULT), DA_ALLOC)
        elif pc == DA_ALLOC:
            _call(x, AL_START, DA_ALLOCATED)
        elif pc == DA_ALLOCATED:
            g[MM_FAULTS] += 1
            cpu[PVEC] += 1
            if cpu[PVEC] == PAGEVEC_SIZE:
                cpu[PVEC] = 0
                _call(x, PV_START, DA_DONE)
            else:
                _return(x)
        elif pc == DA_DONE:
            _return(x)
        # --- kernel/mm.py __alloc_pages ------------------------------------------------------------------
        elif pc == AL_START:
            x[L_RECLAIMED_FIRST] = 0
            x[PC] = AL_CHECK
        elif pc == AL_CHECK:
            nd = cpu[PGDAT]
            node = s.node[nd]
            take = node[UNLIMITED] != 0 or node[FREE] > node[LOW_WMARK]
            if not take:
                wakeup_kswapd(s, nd)
                take = node[FREE] > node[MIN_WMARK]
            if not take:
                x[L_RECLAIMED_FIRST] = 1
                _call(x, SN_START, AL_RECLAIMED)  # try_to_free_pages, then try again
                continue
            if g[ZONE_LOCKS]:
                _call(x, RQ_START, AL_TAKEN)
                continue
            # take_free(); no page is ever reused before its flush here (pages_reused_before_flush stays 0):
            # reclaimed pages reach the free list only after their TLB flush completed.
            if node[FREE] > 0:
                node[FREE] -= 1
            x[PC] = AL_TAKEN
        elif pc == AL_TAKEN:
            g[MM_PAGES_ALLOCATED] += 1
            g[MM_ALLOC_DIRECT_RECLAIM] += x[L_RECLAIMED_FIRST]
            _return(x)
        # --- kernel/page_alloc.py rmqueue_pcplist, rmqueue_bulk --------------------------------------------
        elif pc == RQ_START:
            return _step(x, ST_IRQS_OFF, RQ_CHECK)  # local_irq_save
        elif pc == RQ_CHECK:
            if cpu[PCP] == 0:
                x[L_LOCK] = zone_lock(s, cpu[PGDAT])
                _call(x, SL_START, RQ_LOCKED)
            else:
                x[PC] = RQ_TAKE
        elif pc == RQ_LOCKED:
            node = s.node[cpu[PGDAT]]
            x[L_PAGES] = PCP_BATCH if node[UNLIMITED] else max(1, min(PCP_BATCH, node[FREE]))
            return _busy(cpu, x, x[L_PAGES] * cost(s, c, C_ZONE_PAGE), RQ_BULKED)
        elif pc == RQ_BULKED:
            node = s.node[cpu[PGDAT]]
            cpu[PCP] += x[L_PAGES]
            node[FREE] = max(0, node[FREE] - x[L_PAGES])  # an unlimited zone makes its pages on demand
            g[PCP_REFILLS] += 1
            x[L_LOCK] = zone_lock(s, cpu[PGDAT])
            _call(x, SU_START, RQ_TAKE)
        elif pc == RQ_TAKE:
            cpu[PCP] -= 1
            return _step(x, ST_IRQS_ON, RQ_DONE)  # local_irq_restore
        elif pc == RQ_DONE:
            _return(x)
        elif pc == AL_RECLAIMED:
            node = s.node[cpu[PGDAT]]
            if g[ZONE_LOCKS] and node[FREE] <= node[MIN_WMARK]:
                _call(x, DR_START, AL_CHECK)  # the freed pages may sit on per-CPU lists: drain them all
            else:
                x[PC] = AL_CHECK
        # --- kernel/mm.py __pagevec_lru_add ----------------------------------------------------------------
        elif pc == PV_START:
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SL_START, PV_LOCKED)
        elif pc == PV_LOCKED:
            return _busy(cpu, x, PAGEVEC_SIZE * cost(s, c, C_LRU_PAGE), PV_ADD)
        elif pc == PV_ADD:
            s.node[cpu[PGDAT], ACTIVE] += PAGEVEC_SIZE
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SU_START, PV_DONE)
        elif pc == PV_DONE:
            _return(x)
        # --- kernel/vmscan.py shrink_node ------------------------------------------------------------------
        elif pc == SN_START:
            _call(x, SA_START, SN_INACTIVE)
        elif pc == SN_INACTIVE:
            _call(x, SI_START, SN_DONE)
        elif pc == SN_DONE:
            _return(x)
        # --- kernel/vmscan.py shrink_active_list -----------------------------------------------------------
        elif pc == SA_START:
            x[L_LRU] = ACTIVE
            _call(x, IS_START, SA_ISOLATED)
        elif pc == SA_ISOLATED:
            return _busy(cpu, x, g[BATCH] * cost(s, c, C_PAGE_REFERENCED), SA_REFERENCED)
        elif pc == SA_REFERENCED:
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SL_START, SA_LOCKED)
        elif pc == SA_LOCKED:
            return _busy(cpu, x, g[BATCH] * cost(s, c, C_LRU_PAGE), SA_MOVED)
        elif pc == SA_MOVED:
            s.node[cpu[PGDAT], INACTIVE] += g[BATCH]
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SU_START, SA_DONE)
        elif pc == SA_DONE:
            g[MM_PAGES_DEACTIVATED] += g[BATCH]
            _return(x)
        # --- kernel/vmscan.py _isolate (pages from the tail; older pages are made on demand) -------------
        elif pc == IS_START:
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SL_START, IS_LOCKED)
        elif pc == IS_LOCKED:
            return _busy(cpu, x, g[BATCH] * cost(s, c, C_LRU_PAGE), IS_TAKEN)
        elif pc == IS_TAKEN:
            node = s.node[cpu[PGDAT]]
            node[x[L_LRU]] = max(0, node[x[L_LRU]] - g[BATCH])
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SU_START, IS_DONE)
        elif pc == IS_DONE:
            _return(x)
        # --- kernel/vmscan.py shrink_inactive_list ----------------------------------------------------------
        elif pc == SI_START:
            x[L_LRU] = INACTIVE
            _call(x, IS_START, SI_ISOLATED)
        elif pc == SI_ISOLATED:
            g[MM_PAGES_SCANNED] += g[BATCH]
            _call(x, SP_START, SI_LISTED)
        elif pc == SI_LISTED:
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SL_START, SI_PUTBACK_LOCKED)  # putback_inactive_pages
        elif pc == SI_PUTBACK_LOCKED:
            x[L_LOCK] = cpu[PGDAT]
            _call(x, SU_START, SI_PUTBACK_DONE)
        elif pc == SI_PUTBACK_DONE:
            if g[ZONE_LOCKS]:
                x[L_LEFT] = g[BATCH]
                x[PC] = FP_NEXT
                continue
            return _busy(cpu, x, g[BATCH] * cost(s, c, C_FREE_PAGE), SI_FREED)  # every page was freed
        # --- kernel/page_alloc.py free_hot_cold_page_list, free_pcppages_bulk (every page was freed) ----------
        elif pc == FP_NEXT:
            if x[L_LEFT] == 0:
                x[PC] = FP_DONE
                continue
            x[L_PAGES] = min(PCP_HIGH - cpu[PCP], x[L_LEFT])  # pages until the list reaches pcp->high
            return _busy(cpu, x, x[L_PAGES] * cost(s, c, C_FREE_PAGE), FP_ADDED)
        elif pc == FP_ADDED:
            cpu[PCP] += x[L_PAGES]
            x[L_LEFT] -= x[L_PAGES]
            if cpu[PCP] >= PCP_HIGH:
                return _step(x, ST_IRQS_OFF, FP_BULK)  # local_irq_save
            x[PC] = FP_NEXT
        elif pc == FP_BULK:
            x[L_LOCK] = zone_lock(s, cpu[PGDAT])
            _call(x, SL_START, FP_LOCKED)
        elif pc == FP_LOCKED:
            return _busy(cpu, x, PCP_BATCH * cost(s, c, C_ZONE_PAGE), FP_MOVED)
        elif pc == FP_MOVED:
            cpu[PCP] -= PCP_BATCH
            s.node[cpu[PGDAT], FREE] += PCP_BATCH
            g[PCP_BULK_FREES] += 1
            x[L_LOCK] = zone_lock(s, cpu[PGDAT])
            _call(x, SU_START, FP_UNLOCKED)
        elif pc == FP_UNLOCKED:
            return _step(x, ST_IRQS_ON, FP_NEXT)  # local_irq_restore
        elif pc == FP_DONE:
            x[L_RET] = g[BATCH]
            _return(x)
        elif pc == SI_FREED:
            s.node[cpu[PGDAT], FREE] += g[BATCH]
            x[L_RET] = g[BATCH]
            _return(x)
        # --- kernel/vmscan.py shrink_page_list, try_to_unmap ---------------------------------------------
        elif pc == SP_START:
            cpu[UBC_FLUSH_REQUIRED] = 0
            cpu[UBC_WRITABLE] = 0
            x[L_PAGE] = 0
            x[PC] = SP_NEXT
        elif pc == SP_NEXT:
            if x[L_PAGE] == g[BATCH]:
                x[PC] = SP_AFTER_LOOP
                continue
            return _busy(cpu, x, cost(s, c, C_PAGE_REFERENCED), SP_ADD_TO_SWAP)
        elif pc == SP_ADD_TO_SWAP:
            if g[SWAP_LOCKS]:
                _call(x, AS_START, SP_UNMAP)
                continue
            return _busy(cpu, x, cost(s, c, C_ADD_TO_SWAP), SP_UNMAP)
        elif pc == SP_UNMAP:
            return _busy(cpu, x, cost(s, c, C_TRY_TO_UNMAP), SP_UNMAPPED)
        elif pc == SP_UNMAPPED:
            cpu[UBC_FLUSH_REQUIRED] = 1
            cpu[UBC_WRITABLE] = 1
            if g[PER_PAGE_FLUSH]:
                _call(x, UF_START, SP_PAGEOUT)  # try_to_unmap_flush_dirty: the page is writable
            else:
                x[L_PAGE] += 1
                x[PC] = SP_NEXT
        elif pc == SP_PAGEOUT:
            _call(x, PO_START, SP_PAGED)
        elif pc == SP_PAGED:
            x[L_PAGE] += 1
            x[PC] = SP_NEXT
        elif pc == SP_AFTER_LOOP:
            if g[PER_PAGE_FLUSH]:
                x[PC] = SP_FINAL
            else:
                _call(x, UF_START, SP_BATCH_OUT)
        elif pc == SP_BATCH_OUT:
            x[L_PAGE] = 0
            x[PC] = SP_BATCH_NEXT
        elif pc == SP_BATCH_NEXT:
            if x[L_PAGE] == g[BATCH]:
                x[PC] = SP_FINAL
            else:
                _call(x, PO_START, SP_BATCH_PAGED)
        elif pc == SP_BATCH_PAGED:
            x[L_PAGE] += 1
            x[PC] = SP_BATCH_NEXT
        elif pc == SP_FINAL:
            _call(x, UF_START, SP_DONE)
        elif pc == SP_DONE:
            _return(x)
        # --- kernel/vmscan.py try_to_unmap_flush ------------------------------------------------------------
        elif pc == UF_START:
            if not cpu[UBC_FLUSH_REQUIRED]:
                _return(x)
                continue
            x[L_FLUSH_T0] = g[NOW]
            _call(x, FT_START, UF_DONE)
        elif pc == UF_DONE:
            g[MM_TLB_FLUSHES] += 1
            g[MM_FLUSH_WAIT_NS] += g[NOW] - x[L_FLUSH_T0]
            _latency(s, g[NOW] - x[L_FLUSH_T0])
            cpu[UBC_FLUSH_REQUIRED] = 0
            cpu[UBC_WRITABLE] = 0
            _return(x)
        # --- kernel/vmscan.py _pageout -------------------------------------------------------------------------
        elif pc == PO_START:
            return _busy(cpu, x, cost(s, c, C_SWAP_WRITEPAGE), PO_OFF)
        elif pc == PO_OFF:
            if g[SWAP_LOCKS]:
                x[L_LOCK] = tree_lock(s, s.slot[c, x[L_PAGE]])
                _call(x, SL_START, PO_LOCKED)
                continue
            return _step(x, ST_IRQS_OFF, PO_REMOVE)
        elif pc == PO_REMOVE:
            return _busy(cpu, x, cost(s, c, C_REMOVE_MAPPING), PO_ON)
        elif pc == PO_ON:
            return _step(x, ST_IRQS_ON, PO_DONE)
        elif pc == PO_DONE:
            g[MM_PAGES_RECLAIMED] += 1
            _return(x)
        # --- kernel/swapfile.py remove_mapping: __remove_mapping under the swap cache tree's lock ----------------
        elif pc == PO_LOCKED:
            return _busy(cpu, x, cost(s, c, C_REMOVE_MAPPING), PO_UNLOCK)
        elif pc == PO_UNLOCK:
            x[L_LOCK] = tree_lock(s, s.slot[c, x[L_PAGE]])
            _call(x, SU_START, PO_DONE)
        # --- kernel/swapfile.py add_to_swap, get_swap_page, get_swap_pages, scan_swap_map_slots ---------------
        elif pc == AS_START:
            if cpu[SC_LEFT] == 0:
                x[L_LOCK] = g[NNODES]  # swap_avail_lock
                _call(x, SL_START, AS_AVAIL)
            else:
                x[PC] = AS_SLOT
        elif pc == AS_AVAIL:
            x[L_LOCK] = g[NNODES]
            _call(x, SU_START, AS_SI)
        elif pc == AS_SI:
            x[L_LOCK] = g[NNODES] + 1  # si->lock
            _call(x, SL_START, AS_SCAN)
        elif pc == AS_SCAN:
            return _busy(cpu, x, SWAP_SLOTS_CACHE_SIZE * cost(s, c, C_SWAP_SLOT_SCAN), AS_SCANNED)
        elif pc == AS_SCANNED:
            if cpu[CL_LEFT] == 0:  # free_cluster(): the trees' first clusters in turn, then their second...
                trees = g[SWAP_TREES]
                k = g[NEXT_CLUSTER] % (trees * CLUSTERS_PER_TREE)
                cpu[CL_NEXT] = ((k % trees) * CLUSTERS_PER_TREE + k // trees) * SWAPFILE_CLUSTER
                cpu[CL_LEFT] = SWAPFILE_CLUSTER
                g[NEXT_CLUSTER] += 1
            cpu[SC_NEXT] = cpu[CL_NEXT]
            cpu[CL_NEXT] += SWAP_SLOTS_CACHE_SIZE
            cpu[CL_LEFT] -= SWAP_SLOTS_CACHE_SIZE
            x[L_LOCK] = g[NNODES] + 1
            _call(x, SU_START, AS_REFILLED)
        elif pc == AS_REFILLED:
            cpu[SC_LEFT] = SWAP_SLOTS_CACHE_SIZE
            g[SWAP_REFILLS] += 1
            x[PC] = AS_SLOT
        elif pc == AS_SLOT:
            offset = cpu[SC_NEXT]
            cpu[SC_NEXT] += 1
            cpu[SC_LEFT] -= 1
            s.slot[c, x[L_PAGE]] = offset
            x[L_LOCK] = tree_lock(s, offset)
            _call(x, SL_START, AS_LOCKED)
        elif pc == AS_LOCKED:
            return _busy(cpu, x, cost(s, c, C_ADD_TO_SWAP), AS_ADDED)
        elif pc == AS_ADDED:
            x[L_LOCK] = tree_lock(s, s.slot[c, x[L_PAGE]])
            _call(x, SU_START, AS_DONE)
        elif pc == AS_DONE:
            _return(x)
        elif pc >= FT_START:
            return -1
        else:
            raise RuntimeError("fast engine: unknown program counter")


@inlined
def advance_tail(s: State, c: int, k: int, value: int) -> int:
    """advance, continued: the states from FT_START on; -1 when the context reaches one of advance's."""
    g = s.g
    cpu = s.cpu[c]
    x = s.ctx[c, k]
    n = g[NCPUS]
    while True:
        pc = x[PC]
        if pc < FT_START:
            return -1
        # --- kernel/tlb.py _flush_tlb_on (flush_tlb_batched: a full flush on mm_cpumask) -------------------
        elif pc == FT_START:
            x[L_FUNC] = FUNC_FLUSH_TLB
            x[L_INFO] = TLB_FLUSH_ALL
            x[L_COND] = g[F_TLB_SKIP_LAZY]
            x[L_WAIT] = 1
            local = cpu[IN_MM]
            others = cpu[NTARGETS] > 0
            if g[F_LOCAL_AFTER_SEND]:
                if others:
                    x[L_RUN_LOCAL] = local
                    x[L_CALLSITE] = CS_ON_EACH_CPU_COND_MASK
                    _call(x, MC_START, FT_DONE)
                elif local:
                    _call(x, RL_START, FT_DONE)
                else:
                    _return(x)
            elif local:
                _call(x, RL_START, FT_OTHERS)
            else:
                x[PC] = FT_OTHERS
        elif pc == FT_OTHERS:
            if cpu[NTARGETS] > 0:
                x[L_RUN_LOCAL] = 0
                x[L_CALLSITE] = CS_NATIVE_FLUSH_TLB_OTHERS
                _call(x, MC_START, FT_DONE)
            else:
                _return(x)
        elif pc == FT_DONE:
            _return(x)
        # --- kernel/smp.py smp_call_function_many_cond --------------------------------------------------------
        elif pc == MC_START:
            g[ST_CALLS] += 1
            if x[L_COND] and is_lazy_tlb(s, c):
                x[L_RUN_LOCAL] = 0
            if g[F_MANY_SINGLE_SHORTCUT] and cpu[NTARGETS] == 1:
                t = s.targets[c, 0]
                if not (x[L_COND] and is_lazy_tlb(s, t)):
                    x[L_TARGET] = t
                    _call(x, CR_START, MC_SHORTCUT_DONE)
                else:
                    x[PC] = MC_SHORTCUT_DONE
                continue
            x[L_I] = 0
            cpu[NQUEUED] = 0
            cpu[NIPI] = 0
            x[PC] = MC_NEXT
        elif pc == MC_SHORTCUT_DONE:
            if x[L_RUN_LOCAL]:
                _call(x, RL_START, MC_RET)
            else:
                _return(x)
        elif pc == MC_NEXT:
            if x[L_I] == cpu[NTARGETS]:
                x[PC] = MC_SEND
                continue
            t = s.targets[c, x[L_I]]
            if x[L_COND] and is_lazy_tlb(s, t):
                x[L_I] += 1
                continue
            x[L_TARGET] = t
            x[L_CSD] = c * n + t  # per_cpu(cfd_data, c).csd[t]
            _call(x, CL_START, MC_LOCKED)
        elif pc == MC_LOCKED:
            csd = x[L_CSD]
            s.csd[csd, FUNC] = x[L_FUNC]
            s.csd[csd, INFO] = x[L_INFO]
            s.csd[csd, SYNC] = x[L_WAIT]
            _call(x, SQ_START, MC_QUEUED)
        elif pc == MC_QUEUED:
            s.queued[c, cpu[NQUEUED]] = x[L_CSD]
            cpu[NQUEUED] += 1
            if x[L_RET]:
                s.ipi[c, cpu[NIPI]] = x[L_TARGET]
                cpu[NIPI] += 1
            elif g[F_COALESCE_MANY]:
                g[ST_NO_IPI_QUEUED] += 1
            else:
                g[ST_IPIS_TO_NONEMPTY] += 1  # before the seed every target got its IPI, needed or not
                s.ipi[c, cpu[NIPI]] = x[L_TARGET]
                cpu[NIPI] += 1
            x[L_I] += 1
            x[PC] = MC_NEXT
        elif pc == MC_SEND:
            if g[F_SINGLE_IPI_FOR_ONE] and cpu[NIPI] == 1:
                x[L_TARGET] = s.ipi[c, 0]
                _call(x, SS_START, MC_SENT)
            elif cpu[NIPI]:
                _call(x, SM_START, MC_SENT)
            else:
                x[PC] = MC_SENT
        elif pc == MC_SENT:
            if x[L_RUN_LOCAL] and g[F_LOCAL_AFTER_SEND]:
                _call(x, RL_START, MC_WAIT)
            else:
                x[PC] = MC_WAIT
        elif pc == MC_WAIT:
            x[L_J] = 0
            x[PC] = MC_WAIT_NEXT if x[L_WAIT] else MC_LOCAL_LAST
        elif pc == MC_WAIT_NEXT:
            if x[L_J] == cpu[NQUEUED]:
                x[PC] = MC_LOCAL_LAST
                continue
            x[L_CSD] = s.queued[c, x[L_J]]
            _call(x, CW_START, MC_WAITED)
        elif pc == MC_WAITED:
            x[L_J] += 1
            x[PC] = MC_WAIT_NEXT
        elif pc == MC_LOCAL_LAST:
            if x[L_RUN_LOCAL] and not g[F_LOCAL_AFTER_SEND]:
                _call(x, RL_START, MC_RET)
            else:
                _return(x)
        elif pc == MC_RET:
            _return(x)
        # --- kernel/smp.py _call_single_remote --------------------------------------------------------------
        elif pc == CR_START:
            if x[L_WAIT]:
                csd = g[STACK_CSD0] + c  # a new CSD on the caller's stack
                g[NEXT_CSD] += 1
                s.csd[csd, IDENT] = g[NEXT_CSD]
            else:
                csd = g[CSD_DATA0] + c  # per_cpu(csd_data, c)
            x[L_CSD] = csd
            _call(x, CL_START, CR_LOCKED)
        elif pc == CR_LOCKED:
            # Filled once locked, its target too: the lock's wait pulled the line from the previous target.
            csd = x[L_CSD]
            s.csd[csd, DST] = x[L_TARGET]
            s.csd[csd, FUNC] = x[L_FUNC]
            s.csd[csd, INFO] = x[L_INFO]
            s.csd[csd, SYNC] = x[L_WAIT]
            _call(x, GE_START, CR_QUEUED)
        elif pc == CR_QUEUED:
            if x[L_WAIT]:
                _call(x, CW_START, CR_DONE)
            else:
                _return(x)
        elif pc == CR_DONE:
            _return(x)
        # --- kernel/smp.py generic_exec_single -----------------------------------------------------------
        elif pc == GE_START:
            _call(x, SQ_START, GE_QUEUED)
        elif pc == GE_QUEUED:
            if x[L_RET] or not g[F_SINGLE_IPI_IF_EMPTY]:
                if not x[L_RET]:
                    g[ST_IPIS_TO_NONEMPTY] += 1
                _call(x, SS_START, GE_DONE)
            else:
                g[ST_NO_IPI_QUEUED] += 1
                _return(x)
        elif pc == GE_DONE:
            _return(x)
        # --- kernel/smp.py llist_add_csd --------------------------------------------------------------------
        elif pc == SQ_START:
            csd = x[L_CSD]
            dst = s.csd[csd, DST]
            if g[TRACE_ON]:
                trace(s, c, T_CSD_QUEUE_CPU, dst, x[L_CALLSITE], s.csd[csd, FUNC], s.csd[csd, IDENT])
            g[ST_CSD_ENQUEUES] += 1
            return _busy(cpu, x, cost(s, c, s.cacheline[c, dst]), SQ_ADD)  # llist_add
        elif pc == SQ_ADD:
            csd = x[L_CSD]
            dst = s.csd[csd, DST]
            s.csd[csd, NEXT] = -1
            tail = s.cpu[dst, Q_TAIL]
            was_empty = tail < 0
            if was_empty:
                s.cpu[dst, Q_HEAD] = csd
                s.cpu[dst, NONEMPTY_SINCE] = g[NOW]
            else:
                s.csd[tail, NEXT] = csd
            s.cpu[dst, Q_TAIL] = csd
            x[L_RET] = was_empty
            _return(x)
        # --- kernel/smp.py csd_lock, csd_lock_wait ------------------------------------------------------------
        elif pc == CL_START:
            _call(x, CW_START, CL_LOCKED)
        elif pc == CL_LOCKED:
            s.csd[x[L_CSD], LOCKED] = 1
            _return(x)
        elif pc == CW_START:
            csd = x[L_CSD]
            if s.csd[csd, LOCKED]:
                return _spin(cpu, x, COND_CSD_UNLOCKED, csd, 0, w_csd(s, csd), -1, CW_SEEN)
            _return(x)
        elif pc == CW_SEEN:
            # Seeing the unlock pulls the CSD's line back from the CPU that unlocked it.
            return _busy(cpu, x, cost(s, c, s.cacheline[c, s.csd[x[L_CSD], DST]]), CW_DONE)
        elif pc == CW_DONE:
            _return(x)
        # --- kernel/smp.py send_call_function_single_ipi, kernel/x86.py send_IPI --------------------------
        elif pc == SS_START:
            t = x[L_TARGET]
            if g[F_SKIP_POLLING_IDLE] and set_nr_if_polling(s, t):
                if g[TRACE_ON]:
                    trace(s, c, T_SCHED_WAKE_IDLE_WITHOUT_IPI, t, 0, 0, 0)
                g[ST_NO_IPI_POLLING] += 1
                _return(x)
                continue
            if g[TRACE_ON]:
                trace(s, c, T_IPI_SEND_CPU, t, x[L_CALLSITE], 0, 0)
            g[ST_CSD_IPIS] += 1
            return _step(x, ST_IRQS_OFF, SS_ICR)
        elif pc == SS_ICR:
            return _busy(cpu, x, cost(s, c, C_ICR_WRITE), SS_RAISE)
        elif pc == SS_RAISE:
            raise_ipi(s, c, x[L_TARGET], CALL_FUNCTION_SINGLE_VECTOR)
            return _step(x, ST_IRQS_ON, SS_DONE)
        elif pc == SS_DONE:
            g[ST_ICR_WRITES] += 1
            _return(x)
        # --- kernel/smp.py send_call_function_ipi_mask, kernel/x86.py send_IPI_mask ------------------------
        elif pc == SM_START:
            m = cpu[NIPI]
            if g[TRACE_ON]:
                off = g[TMASK_N]
                if off + m > len(s.tmask):
                    raise RuntimeError("fast engine: trace cpumask buffer full within one event")
                for i in range(m):
                    s.tmask[off + i] = s.ipi[c, i]
                g[TMASK_N] = off + m
                if g[TRACE_ON]:
                    trace(s, c, T_IPI_SEND_CPUMASK, off, m, x[L_CALLSITE], 0)
            g[ST_CSD_IPIS] += m
            _ipi_mask_order(s, c)
            x[L_G] = 0
            return _step(x, ST_IRQS_OFF, SM_WRITE)
        elif pc == SM_WRITE:
            if x[L_G] == cpu[NGROUPS]:
                return _step(x, ST_IRQS_ON, SM_DONE)
            return _busy(cpu, x, cost(s, c, C_ICR_WRITE), SM_RAISE)
        elif pc == SM_RAISE:
            grp = x[L_G]
            for i in range(s.gstart[c, grp], s.gstart[c, grp + 1]):
                raise_ipi(s, c, s.order[c, i], CALL_FUNCTION_VECTOR)
            x[L_G] = grp + 1
            x[PC] = SM_WRITE
        elif pc == SM_DONE:
            g[ST_ICR_WRITES] += cpu[NGROUPS]
            _return(x)
        # --- kernel/smp.py run_local --------------------------------------------------------------------------
        elif pc == RL_START:
            g[ST_LOCAL_CALLS] += 1
            return _step(x, ST_IRQS_OFF, RL_ENTRY)
        elif pc == RL_ENTRY:
            if g[TRACE_ON]:
                trace(s, c, T_CSD_FUNCTION_ENTRY, x[L_FUNC], 0, 0, 0)
            _call(x, BD_START, RL_EXIT)
        elif pc == RL_EXIT:
            if g[TRACE_ON]:
                trace(s, c, T_CSD_FUNCTION_EXIT, x[L_FUNC], 0, 0, 0)
            return _step(x, ST_IRQS_ON, RL_DONE)
        elif pc == RL_DONE:
            _return(x)
        # --- kernel/vmscan.py kswapd ----------------------------------------------------------------------------
        elif pc == KS_TOP:
            nd = cpu[PGDAT]
            x[PC] = KS_SHRINK
            if s.node[nd, FREE] >= s.node[nd, HIGH_WMARK]:
                s.node[nd, KSWAPD_AWAKE] = 0
                return _spin(cpu, x, COND_KSWAPD_AWAKE, nd, 0, w_kswapd(s, nd), -1, KS_SHRINK)
        elif pc == KS_SHRINK:
            _call(x, SN_START, KS_DONE)
        elif pc == KS_DONE:
            g[MM_RECLAIMED_BY_KSWAPD] += x[L_RET]
            x[PC] = KS_TOP
        # --- kernel/locking.py spin_lock(_irq), spin_unlock(_irq) on the lock in x[L_LOCK] -------------------
        elif pc == SL_START:
            if s.lock[x[L_LOCK], LK_IRQ]:
                return _step(x, ST_IRQS_OFF, SL_TICKET)
            x[PC] = SL_TICKET
        elif pc == SL_TICKET:
            lk = x[L_LOCK]
            lock = s.lock[lk]
            ticket = lock[LK_NEXT_TICKET]
            lock[LK_NEXT_TICKET] += 1
            x[L_TICKET] = ticket
            x[PC] = SL_OWN
            if lock[LK_SERVING] != ticket:
                lock[LK_CONTENDED] += 1
                s.lock_waiting[lk, ticket % (n + 1)] = 1
                x[L_T0] = g[NOW]
                return _spin(cpu, x, COND_TICKET, lk, ticket, w_ticket(s, lk, ticket), -1, SL_SPUN)
        elif pc == SL_SPUN:
            s.lock[x[L_LOCK], LK_SPIN_NS] += g[NOW] - x[L_T0]
            x[PC] = SL_OWN
        elif pc == SL_OWN:
            last = s.lock[x[L_LOCK], LK_LAST_OWNER]
            if last >= 0 and last != c:
                return _busy(cpu, x, cost(s, c, s.cacheline[c, last]), SL_DONE)
            x[PC] = SL_DONE
        elif pc == SL_DONE:
            lock = s.lock[x[L_LOCK]]
            lock[LK_ACQUISITIONS] += 1
            lock[LK_ACQUIRED_AT] = g[NOW]
            lock[LK_IRQS_AT] = cpu[IRQS_TAKEN]
            _return(x)
        elif pc == SU_START:
            lk = x[L_LOCK]
            lock = s.lock[lk]
            held = g[NOW] - lock[LK_ACQUIRED_AT]
            lock[LK_HOLD_NS] += held
            if cpu[IRQS_TAKEN] != lock[LK_IRQS_AT]:
                lock[LK_HOLDS_INTERRUPTED] += 1
                lock[LK_HOLD_INTERRUPTED_NS] += held
            lock[LK_LAST_OWNER] = c
            lock[LK_SERVING] += 1
            slot = lock[LK_SERVING] % (n + 1)
            if s.lock_waiting[lk, slot]:
                s.lock_waiting[lk, slot] = 0
                notify(s, w_ticket(s, lk, lock[LK_SERVING]))
            if lock[LK_IRQ]:
                return _step(x, ST_IRQS_ON, SU_DONE)
            _return(x)
        elif pc == SU_DONE:
            _return(x)
        # --- workloads/synthetic.py _sender, _user_loop ---------------------------------------------------
        elif pc == SY_GAP:
            i = cpu[GAP_POS]
            if i == cpu[GAP_N]:
                raise RuntimeError("fast engine: synthetic gaps ran out")
            cpu[GAP_POS] = i + 1
            if cpu[GAP_N] - i < 8:
                g[GAP_LOW] = 1
            return _busy(cpu, x, s.gaps[c, i], SY_CALL)
        elif pc == SY_CALL:
            x[L_FLUSH_T0] = g[NOW]
            x[L_FUNC] = FUNC_SYNTHETIC
            x[L_INFO] = cpu[FUNC_NS]
            x[L_WAIT] = cpu[SYNTH_WAIT]
            x[L_RUN_LOCAL] = 0
            x[L_COND] = 0
            x[L_CALLSITE] = CS_SYNTHETIC
            _call(x, MC_START, SY_DONE)
        elif pc == SY_DONE:
            _latency(s, g[NOW] - x[L_FLUSH_T0])
            x[PC] = SY_GAP
        elif pc == BL_LOOP:
            return _busy(cpu, x, 1_000_000, BL_LOOP)
        # --- kernel/time.py local_timer_interrupt ------------------------------------------------------------
        elif pc == TK_ENTRY:
            return _busy(cpu, x, cost(s, c, C_IRQ_ENTRY), TK_BODY)
        elif pc == TK_BODY:
            if g[TRACE_ON]:
                trace(s, c, T_LOCAL_TIMER_ENTRY, LOCAL_TIMER_VECTOR, 0, 0, 0)
            return _busy(cpu, x, cost(s, c, C_TICK), TK_EXIT)
        elif pc == TK_EXIT:
            if g[TRACE_ON]:
                trace(s, c, T_LOCAL_TIMER_EXIT, LOCAL_TIMER_VECTOR, 0, 0, 0)
            return _busy(cpu, x, cost(s, c, C_IRQ_EXIT), TK_DONE)
        elif pc == TK_DONE:
            return ST_RETURN
        # --- sim/machine.py _descheduled: the host runs something else on this vCPU's CPU --------------------
        elif pc == VS_START:
            return _busy(cpu, x, x[L_N], VS_DONE)
        elif pc == VS_DONE:
            return ST_RETURN
        # --- kernel/page_alloc.py drain_all_pages, with kernel/sched.py queue_work_on ----------------------
        elif pc == DR_START:
            if g[DRAIN_BUSY]:
                g[PCP_DRAIN_SKIPS] += 1
                _return(x)
                continue
            g[DRAIN_BUSY] = 1
            g[PCP_DRAINS] += 1
            n = 0
            for o in range(g[NCPUS]):
                has = s.cpu[o, PCP] > 0
                s.cpu[o, DRAIN_TARGET] = has
                n += has
            g[DRAIN_LEFT] = n
            x[L_I] = 0
            x[PC] = DR_NEXT
        elif pc == DR_NEXT:
            o = x[L_I]
            while o < g[NCPUS] and (o == c or not s.cpu[o, DRAIN_TARGET]):
                o += 1
            if o == g[NCPUS]:
                x[PC] = DR_SELF
                continue
            x[L_TARGET] = o
            x[L_I] = o + 1
            s.cpu[o, WORK_PENDING] += 1
            return _busy(cpu, x, cost(s, c, s.cacheline[c, o]), DR_WOKEN)  # try_to_wake_up
        elif pc == DR_WOKEN:
            o = x[L_TARGET]
            if s.cpu[o, RES_PENDING]:
                x[PC] = DR_NEXT
                continue
            s.cpu[o, RES_PENDING] = 1
            preempts = True
            if g[WORKER_CFS]:
                preempts = min(g[NOW] - s.cpu[o, LAST_RAN], g[SLEEPER_CREDIT]) > g[WAKEUP_GRANULARITY]
            if preempts:
                s.cpu[o, RUN_AT] = g[NOW]
            else:  # the tick that ends the task's slice (kernel/sched.py queue_work_on)
                g[WORKER_WAITS] += 1
                s.cpu[o, RUN_AT] = s.cpu[o, LAST_RAN] + g[SLICE]
                at(s, s.cpu[o, RUN_AT], EV_TICK, o, 1)
            if not preempts and s.cpu[o, SOCKET] == cpu[SOCKET]:
                x[PC] = DR_NEXT
                continue
            g[RESCHED_IPIS] += 1
            return _step(x, ST_IRQS_OFF, DR_ICR)
        elif pc == DR_ICR:
            return _busy(cpu, x, cost(s, c, C_ICR_WRITE), DR_RAISE)  # smp_send_reschedule
        elif pc == DR_RAISE:
            raise_ipi(s, c, x[L_TARGET], RESCHEDULE_VECTOR)
            return _step(x, ST_IRQS_ON, DR_NEXT)
        elif pc == DR_SELF:
            mine = s.cpu[c, DRAIN_TARGET]
            for o in range(g[NCPUS]):
                s.cpu[o, DRAIN_TARGET] = 0
            if mine:
                return _busy(cpu, x, cost(s, c, C_CONTEXT_SWITCH), DR_SELF_OFF)
            x[PC] = DR_WAIT
        elif pc == DR_SELF_OFF:
            return _step(x, ST_IRQS_OFF, DR_SELF_WORK)
        elif pc == DR_SELF_WORK:
            _call(x, DW_START, DR_SELF_ON)
        elif pc == DR_SELF_ON:
            return _step(x, ST_IRQS_ON, DR_SELF_OUT)
        elif pc == DR_SELF_OUT:
            return _busy(cpu, x, cost(s, c, C_CONTEXT_SWITCH), DR_SELF_RAN)
        elif pc == DR_SELF_RAN:
            cpu[LAST_RAN] = g[NOW]
            x[PC] = DR_WAIT
        elif pc == DR_WAIT:
            return _spin(cpu, x, COND_DRAIN_DONE, 0, 0, w_drain(s), -1, DR_DONE)  # flush_work
        elif pc == DR_DONE:
            g[DRAIN_BUSY] = 0
            _return(x)
        # --- kernel/page_alloc.py drain_local_pages: this CPU's list back to the buddy lists ----------------
        elif pc == DW_START:
            if cpu[PCP] > 0:
                x[L_PAGES] = cpu[PCP]
                x[L_LOCK] = zone_lock(s, cpu[PGDAT])
                _call(x, SL_START, DW_LOCKED)
            else:
                x[PC] = DW_END
        elif pc == DW_LOCKED:
            return _busy(cpu, x, x[L_PAGES] * cost(s, c, C_ZONE_PAGE), DW_MOVED)  # free_pcppages_bulk
        elif pc == DW_MOVED:
            cpu[PCP] -= x[L_PAGES]
            s.node[cpu[PGDAT], FREE] += x[L_PAGES]
            g[PCP_BULK_FREES] += 1
            g[PCP_DRAINED_PAGES] += x[L_PAGES]
            x[L_LOCK] = zone_lock(s, cpu[PGDAT])
            _call(x, SU_START, DW_END)
        elif pc == DW_END:
            g[DRAIN_LEFT] -= 1
            notify(s, w_drain(s))
            _return(x)
        # --- kernel/sched.py scheduler_ipi: the reschedule interrupt and the worker it lets run -------------
        elif pc == RS_ENTRY:
            return _busy(cpu, x, cost(s, c, C_IRQ_ENTRY), RS_BODY)
        elif pc == RS_BODY:
            if cpu[WORK_PENDING] and g[NOW] >= cpu[RUN_AT]:
                cpu[RES_PENDING] = 0
                return _busy(cpu, x, cost(s, c, C_CONTEXT_SWITCH), RS_WORK)
            return _busy(cpu, x, cost(s, c, C_IRQ_EXIT), RS_DONE)
        elif pc == RS_WORK:
            if cpu[WORK_PENDING]:
                cpu[WORK_PENDING] -= 1
                _call(x, DW_START, RS_WORK)
                continue
            return _busy(cpu, x, cost(s, c, C_CONTEXT_SWITCH), RS_OUT)
        elif pc == RS_OUT:
            cpu[LAST_RAN] = g[NOW]
            return _busy(cpu, x, cost(s, c, C_IRQ_EXIT), RS_DONE)
        elif pc == RS_DONE:
            return ST_RETURN
        else:
            raise RuntimeError("fast engine: unknown program counter")


# === SimMachine: running contexts, spinning, interrupts (sim/machine.py) ============================

@inlined
def _block(s: State, c: int, kind: int, use: int) -> None:
    cpu = s.cpu[c]
    cpu[WAIT_GEN] += 1
    cpu[WAIT_KIND] = kind
    # Time passes only inside waits: the one ending now is charged whole to what it was spent on.
    now = s.g[NOW]
    s.use_ns[c, cpu[USE]] += now - cpu[USE_SINCE]
    cpu[USE] = use
    cpu[USE_SINCE] = now


@inlined
def _busy_use(s: State, c: int, k: int) -> int:
    """The use of the Busy step context `k` (the top one) is in: by the state it resumes at."""
    x = s.ctx[c, k]
    use = s.busy_use[x[PC], 1 if k == TASK else 0]
    return s.lock[x[L_LOCK], LK_USE] if use == U_BY_LOCK else use


@inlined
def _spin_use(s: State, cond: int, a: int) -> int:
    if cond == COND_CSD_UNLOCKED:
        return U_SHOOTDOWN_WAIT
    if cond == COND_TICKET:
        return s.lock[a, LK_USE]
    if cond == COND_DRAIN_DONE:
        return U_PCP_DRAIN  # flush_work
    return U_IDLE  # polling idle, kswapd asleep


@inlined
def _block_busy(s: State, c: int, k: int, end: int) -> None:
    gen = s.cpu[c, WAIT_GEN] + 1
    at(s, end, EV_BUSY_DONE, c, gen)
    _block(s, c, W_BUSY, _busy_use(s, c, k))
    s.cpu[c, WAIT_END] = end


@inlined
def spin(s: State, c: int, cond: int, a: int, b: int, watch: int, deadline: int) -> bool:
    """SimMachine._spin: start (or resume) spinning; False if the deadline (-1: none) has passed."""
    now = s.g[NOW]
    if deadline >= 0 and deadline <= now:
        return False
    cpu = s.cpu[c]
    gen = cpu[WAIT_GEN] + 1
    if deadline >= 0:
        at(s, deadline, EV_SPIN_TIMEOUT, c, gen)
    _block(s, c, W_SPIN, _spin_use(s, cond, a))
    cpu[WAIT_COND] = cond
    cpu[WAIT_A] = a
    cpu[WAIT_B] = b
    cpu[WAIT_WATCH] = watch
    cpu[WAIT_DEADLINE] = deadline
    watch_add(s, watch, c, gen)
    return True


@inlined
def take_interrupt(s: State, c: int) -> None:
    """SimMachine._take_interrupt: the highest pending vector; its handler goes on top of the stack."""
    cpu = s.cpu[c]
    x = s.ctx[c, IRQ]
    x[PC] = SV_ENTRY
    if cpu[IRR] & IRR_RESCHED:
        vector = RESCHEDULE_VECTOR
        cpu[IRR] &= ~IRR_RESCHED
        x[PC] = RS_ENTRY
    elif cpu[IRR] & IRR_MANY:
        vector = CALL_FUNCTION_VECTOR
        cpu[IRR] &= ~IRR_MANY
    elif cpu[IRR] & IRR_SINGLE:
        vector = CALL_FUNCTION_SINGLE_VECTOR
        cpu[IRR] &= ~IRR_SINGLE
    else:
        vector = LOCAL_TIMER_VECTOR
        cpu[IRR] &= ~IRR_TIMER
        x[PC] = TK_ENTRY
    if vector == LOCAL_TIMER_VECTOR:
        s.g[M_TICKS] += 1
    elif vector != RESCHEDULE_VECTOR:
        cpu[INTERRUPTS] += 1
    cpu[IRQS_TAKEN] += 1
    cpu[IN_IRQ] = 1
    x[IRQS_ON] = 0
    x[SAVED_KIND] = S_NONE
    x[STARTED] = s.g[NOW]
    x[SP] = 0
    x[L_VECTOR] = vector


@inlined
def resume(s: State, c: int) -> tuple[bool, int]:
    """SimMachine._resume: after a handler, continue what the interrupted context was doing."""
    k = top_ctx(s, c)
    x = s.ctx[c, k]
    saved = x[SAVED_KIND]
    x[SAVED_KIND] = S_NONE
    # Never S_NONE here: whatever put a handler on top of this context recorded what it was doing first
    # (run: S_VALUE, park: S_BUSY or S_SPIN, preempt: S_HALT, this function: what it had), as the reference.
    if s.cpu[c, IRR] and x[IRQS_ON]:
        x[SAVED_KIND] = saved  # another interrupt first; run() takes it and comes back here
        take_interrupt(s, c)
        return True, -1
    if saved == S_VALUE:
        return True, x[SAVED_END]
    if saved == S_BUSY:
        _block_busy(s, c, k, s.g[NOW] + x[SAVED_END])
        return False, -1
    if saved == S_SPIN:
        if cond_holds(s, x[SAVED_COND], x[SAVED_A], x[SAVED_B]):
            return True, 1
        if spin(s, c, x[SAVED_COND], x[SAVED_A], x[SAVED_B], x[SAVED_WATCH], x[SAVED_DEADLINE]):
            return False, -1
        return True, 0
    if saved == S_HALT:
        return True, -1  # HLT returns once the interrupt is handled
    raise RuntimeError("fast engine: a handler ended over a context that recorded nothing to resume")


# numba's inliner, not LLVM's: compiled on its own, run would merge advance's two halves once more than
# run_until does (a second of CPU of the compile for nothing; see Speed).
@njit(cache=True, _nrt=False, no_cpython_wrapper=True, no_cfunc_wrapper=True, inline="always", pipeline_class=Lean)
def run(s: State, c: int, value: int) -> None:
    """SimMachine._run: run `c`'s top context until it blocks on a Busy, a spin or a halt."""
    now = s.g[NOW]
    cpu = s.cpu[c]
    while True:
        k = top_ctx(s, c)
        if cpu[IRR] and s.ctx[c, k, IRQS_ON]:
            x = s.ctx[c, k]
            if x[SAVED_KIND] == S_NONE:  # what the last step returned is the code's once the handler is done
                x[SAVED_KIND] = S_VALUE
                x[SAVED_END] = value
            take_interrupt(s, c)
            value = -1
            continue
        step = advance(s, c, k, value)
        while step < 0:  # advance's states and advance_tail's, until one of them returns a step
            step = advance_tail(s, c, k, value)
            if step < 0:
                step = advance(s, c, k, value)
        if step == ST_RETURN:  # only a handler (or a descheduled stretch) returns
            if k == STEAL:
                cpu[IN_STEAL] = 0
                s.g[M_STOLEN_NS] += now - s.ctx[c, STEAL, STARTED]
            else:
                cpu[IN_IRQ] = 0
                cpu[IRQ_NS] += now - s.ctx[c, IRQ, STARTED]
            done, value = resume(s, c)
            if not done:
                return
            continue
        value = -1
        if step == ST_BUSY:
            if cpu[STEP_NS] > 0:
                _block_busy(s, c, k, now + cpu[STEP_NS])
                return
        elif step == ST_SPIN:
            if cond_holds(s, cpu[STEP_COND], cpu[STEP_A], cpu[STEP_B]):
                value = 1
                continue
            deadline = -1 if cpu[STEP_TIMEOUT] < 0 else now + cpu[STEP_TIMEOUT]
            if not spin(s, c, cpu[STEP_COND], cpu[STEP_A], cpu[STEP_B], cpu[STEP_WATCH], deadline):
                value = 0
                continue
            return
        elif step == ST_IRQS_OFF:
            s.ctx[c, k, IRQS_ON] = 0
        elif step == ST_IRQS_ON:
            s.ctx[c, k, IRQS_ON] = 1
        else:  # ST_HALT
            _block(s, c, W_HALT, U_IDLE)
            return


@inlined
def preempt(s: State, c: int) -> bool:
    """SimMachine._preempt: an interrupt arrives while `c` waits with interrupts on. True: run `c`."""
    cpu = s.cpu[c]
    if cpu[WAIT_KIND] == W_HALT:
        # A halted CPU accepts the interrupt only once awake; meanwhile the vector stays in IRR.
        s.ctx[c, top_ctx(s, c), SAVED_KIND] = S_HALT
        _block(s, c, W_WAKING, U_IDLE)
        at(s, s.g[NOW] + cost(s, c, C_IDLE_EXIT), EV_WOKEN, c, cpu[WAIT_GEN])
        return False
    park(s, c)
    take_interrupt(s, c)
    return True  # and run(c, None)


@inlined
def park(s: State, c: int) -> None:
    """SimMachine._park: set aside the busy step or spin `c` waits in."""
    cpu = s.cpu[c]
    x = s.ctx[c, top_ctx(s, c)]
    kind = cpu[WAIT_KIND]
    cpu[WAIT_GEN] += 1
    cpu[WAIT_KIND] = W_NONE
    if kind == W_BUSY:  # the reference cancels the Busy timer: its generation has just passed
        x[SAVED_KIND] = S_BUSY
        x[SAVED_END] = cpu[WAIT_END] - s.g[NOW]
    else:  # and the spin's timeout timer, if any
        watch_remove(s, cpu[WAIT_WATCH], c)
        x[SAVED_KIND] = S_SPIN
        x[SAVED_COND] = cpu[WAIT_COND]
        x[SAVED_A] = cpu[WAIT_A]
        x[SAVED_B] = cpu[WAIT_B]
        x[SAVED_WATCH] = cpu[WAIT_WATCH]
        x[SAVED_DEADLINE] = cpu[WAIT_DEADLINE]


@inlined
def dispatch(s: State, kind: int, c: int, arg: int) -> tuple[bool, int]:
    """What a timer calls: SimMachine._run / _busy_done / _spin_timeout / _spin_check / _ipi_arrives /
    _woken. Each ends, if it does anything, in _run(c, value): returned as (True, value)."""
    cpu = s.cpu[c]
    if kind == EV_RUN:
        return True, -1
    if kind == EV_BUSY_DONE or kind == EV_SPIN_TIMEOUT or kind == EV_WOKEN:
        if cpu[WAIT_GEN] == arg:
            cpu[WAIT_KIND] = W_NONE
            if kind == EV_SPIN_TIMEOUT:
                watch_remove(s, cpu[WAIT_WATCH], c)
                return True, 0
            return True, -1
        return False, -1
    if kind == EV_SPIN_CHECK:
        if cpu[WAIT_GEN] != arg:
            return False, -1
        if cond_holds(s, cpu[WAIT_COND], cpu[WAIT_A], cpu[WAIT_B]):
            # The reference cancels the timeout timer; the CPU blocks anew (a new generation) before
            # this event ends, so the timer is recognised as cancelled when it comes up.
            cpu[WAIT_KIND] = W_NONE
            return True, 1
        watch_add(s, cpu[WAIT_WATCH], c, arg)
        return False, -1
    if kind == EV_DESCHEDULE:
        # SimMachine._deschedule: the next one first; a halted (or waking, or descheduled) vCPU loses nothing.
        off = cost(s, c, C_VCPU_PREEMPT)
        at(s, s.g[NOW] + off + cost(s, c, C_VCPU_RUN), EV_DESCHEDULE, c, 0)
        wait = cpu[WAIT_KIND]
        if wait == W_NONE or wait == W_HALT or wait == W_WAKING or cpu[IN_STEAL]:  # nor an already descheduled one
            return False, -1
        park(s, c)
        s.g[M_VCPU_PREEMPTIONS] += 1
        cpu[IN_STEAL] = 1
        x = s.ctx[c, STEAL]
        x[IRQS_ON] = 0
        x[SAVED_KIND] = S_NONE
        x[STARTED] = s.g[NOW]
        x[PC] = VS_START
        x[SP] = 0
        x[L_N] = off
        return True, -1
    if kind == EV_TICK and arg == 1:
        # SimMachine.raise_at (kernel/sched.py): the tick that ends a task's slice, for a woken worker.
        if cpu[IRR] & IRR_RESCHED:
            return False, -1
        cpu[IRR] |= IRR_RESCHED
    elif kind == EV_TICK:
        # SimMachine._tick: the next tick first; none while the CPU idles (NO_HZ idle), then _raise.
        at(s, s.g[NOW] + s.g[TICK_PERIOD], EV_TICK, c, 0)
        if top_ctx(s, c) == IDLE or cpu[IRR] & IRR_TIMER:
            return False, -1
        cpu[IRR] |= IRR_TIMER
    else:  # EV_IPI_ARRIVES
        s.g[M_IPIS_DELIVERED] += 1
        cpu[IN_FLIGHT] -= 1
        bit = IRR_MANY
        if arg == CALL_FUNCTION_SINGLE_VECTOR:
            bit = IRR_SINGLE
        elif arg == RESCHEDULE_VECTOR:
            bit = IRR_RESCHED
        if cpu[IRR] & bit:
            s.g[M_APIC_MERGED] += 1
            cpu[APIC_MERGED] += 1
            return False, -1
        cpu[IRR] |= bit
    wait = cpu[WAIT_KIND]
    if wait != W_NONE and wait != W_WAKING and s.ctx[c, top_ctx(s, c), IRQS_ON]:
        return preempt(s, c), -1
    return False, -1


@inlined
def _needs_host(s: State, margin: int) -> bool:
    """Whether a buffer lacks `margin` rows of room, gaps run low or seq needs renumbering: checked
    before every event."""
    g = s.g
    return (g[TRACE_N] + margin > len(s.trace) or g[TMASK_N] + margin * g[NCPUS] > len(s.tmask)
            or g[LAT_N] + margin > len(s.lat) or g[HEAP_N] + margin > len(s.heap)
            or g[W_NFREE] < margin or g[GAP_LOW] != 0 or g[DRAW_LOW] != 0 or g[SEQ] >= SEQ_LIMIT)


@njit(cache=True, _nrt=False, pipeline_class=Lean)
def run_until(s: State, until: int, margin: int) -> int:
    """Engine.run(until): process every timer due by `until`. Returns 1 early (between timers) when a
    buffer needs the host's attention: trace or latencies to write out, tables to grow, gaps to draw."""
    g = s.g
    while g[HEAP_N] > 0 and (s.heap[0] >> SEQ_BITS) <= until:
        if _needs_host(s, margin):
            return 1
        when = s.heap[0] >> SEQ_BITS
        timer = s.heap_timer[0]
        _heap_pop(s)
        kind = timer & ((1 << EV_CPU_SHIFT) - 1)
        c = (timer >> EV_CPU_SHIFT) & ((1 << (EV_ARG_SHIFT - EV_CPU_SHIFT)) - 1)
        arg = timer >> EV_ARG_SHIFT
        # Timer.cancelled: the reference cancels a Busy or spin-timeout timer exactly when its wait ends
        # another way (an interrupt preempts it, or the spin's condition comes true), and each of those
        # moves the CPU's wait generation past the timer's within the same event. Such a timer is skipped
        # unseen: no event, the clock stays.
        if (kind == EV_BUSY_DONE or kind == EV_SPIN_TIMEOUT) and s.cpu[c, WAIT_GEN] != arg:
            continue
        g[NOW] = when
        g[EVENTS] += 1
        go, value = dispatch(s, kind, c, arg)
        if go:
            run(s, c, value)
    g[NOW] = max(g[NOW], until)
    return 0
