"""Where a simulated CPU's time goes: every nanosecond of a run, by what the CPU was doing.

A simulated CPU is always inside exactly one wait (a Busy step, a spin, a halt, or waking from one), and no
time passes between two waits, so charging each wait's whole length to one use, when the next wait starts,
accounts for every nanosecond exactly once. A use is decided by the step's label and the context it runs in
(the same flush_tlb_func body is the sender's own flush in a task, and handler work in an interrupt).

The fast engine (sim/fast/engine.py) charges the same uses by program counter; the differential test checks
that both engines' tables are identical.
"""

from __future__ import annotations

from enum import IntEnum

from ipilab.kernel.locking import LOCK_COUNTER_PREFIXES


class Use(IntEnum):
    """What a CPU spends time on. The lower-case name is the key in results."""

    USER = 0  # the workload's own instructions: usemem's page writes, start-up stagger
    PAGE_FAULT = 1  # fault entry, allocation (rmqueue_bulk's hold), zeroing, the LRU add of new pages and its hold
    RECLAIM = 2  # reclaim: LRU isolation and moves, page_referenced, add_to_swap, unmap, swap-out, freeing (bulk too)
    SHOOTDOWN_SEND = 3  # csd_lock, llist_add, ICR writes, the sender's own flush
    SHOOTDOWN_WAIT = 4  # csd_lock_wait: waiting for the targets to run the flush
    IRQ_ENTRY_EXIT = 5  # interrupt entry and exit paths (function-call and timer)
    IRQ_FUNCTIONS = 6  # queued calls run by handlers or the idle loop: flush_tlb_func, csd_unlock
    TICK = 7  # the timer tick's handler body
    IDLE = 8  # halted, waking, polling, kswapd asleep
    STOLEN = 9  # a vCPU descheduled by its host
    SPIN_LRU_LOCK = 10  # waiting for and pulling the line of pgdat->lru_lock (interrupts off)
    SPIN_SWAP_AVAIL_LOCK = 11  # swap_avail_lock (interrupts on)
    SPIN_SI_LOCK = 12  # swap_info_struct->lock (interrupts on)
    SPIN_SWAP_CACHE_LOCK = 13  # the swap cache's address_space tree_lock (interrupts off)
    SPIN_ZONE_LOCK = 14  # zone->lock behind the per-CPU page lists (interrupts off)
    MEM_BANDWIDTH = 15  # a page write's wait for the socket's memory bandwidth beyond its own CPU time
    PCP_DRAIN = 16  # drain_all_pages: waking the CPUs' workers, context switches, waiting in flush_work
    OTHER = 17  # steps of code outside the kernel model's own (a test's, a replayed trace's)

    @property
    def key(self) -> str:
        return self.name.lower()


NUSES = len(Use)

# Spinning on each kind of lock, named after its counters in results (lru_lock -> SPIN_LRU_LOCK).
LOCK_USES = {kind: Use["SPIN_" + prefix.upper()] for kind, prefix in LOCK_COUNTER_PREFIXES.items()}

_BUSY = {
    "usemem write": Use.USER, "usemem start": Use.USER, "thread start": Use.USER, "user": Use.USER,
    "page_fault": Use.PAGE_FAULT, "madvise": Use.PAGE_FAULT, "__pagevec_lru_add": Use.PAGE_FAULT,
    "isolate_lru_pages": Use.RECLAIM, "page_referenced": Use.RECLAIM, "move_active_pages_to_lru": Use.RECLAIM,
    "add_to_swap": Use.RECLAIM, "add_to_swap_cache": Use.RECLAIM, "scan_swap_map_slots": Use.RECLAIM,
    "try_to_unmap": Use.RECLAIM, "swap_writepage": Use.RECLAIM, "__remove_mapping": Use.RECLAIM,
    "free_hot_cold_page_list": Use.RECLAIM, "free_pcppages_bulk": Use.RECLAIM, "rmqueue_bulk": Use.PAGE_FAULT,
    "memory bandwidth": Use.MEM_BANDWIDTH,
    "try_to_wake_up": Use.PCP_DRAIN, "smp_send_reschedule": Use.PCP_DRAIN, "context_switch": Use.PCP_DRAIN,
    "llist_add": Use.SHOOTDOWN_SEND, "icr_write": Use.SHOOTDOWN_SEND, "csd_lock_wait": Use.SHOOTDOWN_SEND,
    "irq_entry": Use.IRQ_ENTRY_EXIT, "irq_exit": Use.IRQ_ENTRY_EXIT,
    "csd_unlock": Use.IRQ_FUNCTIONS, "llist_del_all": Use.IRQ_FUNCTIONS, "synthetic_func": Use.IRQ_FUNCTIONS,
    "func": Use.IRQ_FUNCTIONS,
    "local_apic_timer_interrupt": Use.TICK,
    "poll_notice": Use.IDLE,
    "vcpu descheduled": Use.STOLEN,
}
_SPIN = {"csd_lock_wait": Use.SHOOTDOWN_WAIT, "poll_idle": Use.IDLE, "kswapd sleep": Use.IDLE,
         "flush_work": Use.PCP_DRAIN}


def lock_use(name: str) -> Use:
    """The use of spinning on (or pulling the line of) the lock called `name`."""
    return LOCK_USES.get(name.split("/", 1)[0], Use.OTHER)


def use_of(what: str, kind: str, spin: bool) -> Use:
    """The use of a Busy step (or, with `spin`, a SpinUntil) labelled `what` in a context of `kind`."""
    if what.startswith("spin_lock("):
        return lock_use(what[len("spin_lock("):-1])
    if spin:
        return _SPIN.get(what, Use.OTHER)
    if what == "flush_tlb_func":  # the sender's own flush in its task; a target's in a handler or idle
        return Use.SHOOTDOWN_SEND if kind == "task" else Use.IRQ_FUNCTIONS
    return _BUSY.get(what, Use.OTHER)
