"""Anonymous memory as the seed workload exercises it: page faults, the page allocator, the LRU lists.

Follows mm/memory.c, mm/page_alloc.c and mm/swap.c as of 4.12, in their names: `do_anonymous_page`
allocates a page, zeroes it and puts it on the per-CPU LRU pagevec; a full pagevec (14 pages) goes to
the node's active list under `lru_lock` with interrupts off (`__pagevec_lru_add`). `__alloc_pages`
takes a free page while the node stays above its low watermark, wakes kswapd below it, and below the
min watermark reclaims directly (vmscan.py) before trying again; the page then comes from this CPU's
per-CPU list, refilled under zone->lock (page_alloc.py). Reclaim reads pages from the tail of the LRU
lists; pages that were there before the simulated window are made on demand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from ipilab.kernel.locking import SpinLock, spin_lock_irq, spin_unlock_irq
from ipilab.kernel.page_alloc import PcpDrain, Zone, drain_all_pages, rmqueue_pcplist
from ipilab.kernel.steps import Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

PAGEVEC_SIZE = 14  # include/linux/pagevec.h (4.12)
SWAP_CLUSTER_MAX = 32  # include/linux/swap.h: pages per reclaim batch


@dataclass(eq=False)
class MmStruct:
    """A process: the CPUs its threads run on form mm_cpumask."""

    cpumask: list[int]


@dataclass(eq=False, slots=True)
class Page:
    """struct page, as far as reclaim and the TLB flush rules care."""

    pfn: int
    node: int
    mapped: bool = False
    tlb_stale: bool = False  # PTE cleared, but another CPU's TLB may still map it until the flush
    swap_offset: int = -1  # its swap slot, once added to swap
    mm: MmStruct | None = None  # the process it belongs to (None: the workload's one process, Memory.mm)


@dataclass
class MmStats:
    faults: int = 0
    pages_allocated: int = 0
    alloc_direct_reclaim: int = 0  # allocations that had to reclaim first
    kswapd_wakeups: int = 0
    pages_deactivated: int = 0  # active -> inactive (shrink_active_list)
    pages_scanned: int = 0  # isolated from the inactive list (shrink_inactive_list)
    pages_reclaimed: int = 0  # unmapped, flushed and written to swap (freed at the end of its pass)
    reclaimed_by_kswapd: int = 0
    tlb_flushes: int = 0  # try_to_unmap_flush(): one flush_tlb_batched each
    flush_wait_ns: int = 0  # time reclaimers spent in those flushes (local flush, IPIs, waiting)
    pages_reused_before_flush: int = 0  # must stay 0: a page reallocated while a TLB may map it


class PgData:
    """One NUMA node (pglist_data): its LRU lists and lock, its free pages and watermarks, its kswapd."""

    def __init__(self, node: int, *, min_wmark: int, low_wmark: int, high_wmark: int,
                 free_pages: int, unlimited: bool, new_pfn: Any, zone_lock: bool = False) -> None:
        self.node = node
        self.lru_lock = SpinLock(f"lru_lock/{node}")
        self.active: deque[Page] = deque()  # head = left = newest
        self.inactive: deque[Page] = deque()
        self.free: deque[Page] = deque()  # the buddy lists' free pages (the zone's NR_FREE_PAGES)
        # With a zone, pages pass through per-CPU lists under zone->lock (page_alloc.py); without one (an
        # ablation), an allocation takes a free page and a free returns it directly.
        self.zone = Zone(node) if zone_lock else None
        self.min_wmark, self.low_wmark, self.high_wmark = min_wmark, low_wmark, high_wmark
        self.unlimited = unlimited  # no memory pressure: free pages never run out (the fill phase)
        self._new_pfn = new_pfn
        self.kswapd_wait = object()  # watch: kswapd sleeps on it, wakeup_kswapd notifies it
        self.kswapd_awake = False
        # With several processes, the owners of the pages made on demand, in turn (None: Memory.mm).
        self.owners: list[MmStruct] | None = None
        self._next_owner = 0
        for _ in range(free_pages):
            self.free.append(Page(new_pfn(), node))

    def nr_free(self) -> int:
        return len(self.free)

    def take_free(self) -> Page:
        if self.free:
            return self.free.popleft()
        return Page(self._new_pfn(), self.node)  # only reached when `unlimited`

    def lru_tail(self, lru: deque[Page]) -> Page:
        """Oldest page of an LRU list; pages faulted before the window are older than any listed."""
        if lru:
            return lru.pop()
        page = Page(self._new_pfn(), self.node, mapped=True)
        if self.owners:
            page.mm = self.owners[self._next_owner % len(self.owners)]
            self._next_owner += 1
        return page


@dataclass
class Memory:
    """Everything the mm model shares between CPUs."""

    nodes: list[PgData]
    mm: MmStruct
    stats: MmStats = field(default_factory=MmStats)
    pagevec: dict[int, list[Page]] = field(default_factory=dict)  # per-CPU lru_add pagevec
    pcp_drain: PcpDrain = field(default_factory=PcpDrain)  # drain_all_pages' mutex and progress


def __pagevec_lru_add(p: Platform, cpu: int, pgdat: PgData, pages: list[Page]) -> KernelCode:
    yield from spin_lock_irq(p, cpu, pgdat.lru_lock)
    yield Busy(len(pages) * p.cost(CostId.LRU_PAGE, cpu), "__pagevec_lru_add")
    pgdat.active.extendleft(pages)
    yield from spin_unlock_irq(p, cpu, pgdat.lru_lock)


def lru_cache_add_active(p: Platform, cpu: int, mem: Memory, pgdat: PgData, page: Page) -> KernelCode:
    pvec = mem.pagevec.setdefault(cpu, [])
    pvec.append(page)
    if len(pvec) == PAGEVEC_SIZE:
        mem.pagevec[cpu] = []
        yield from __pagevec_lru_add(p, cpu, pgdat, pvec)


def wakeup_kswapd(p: Platform, mem: Memory, pgdat: PgData) -> None:
    if not pgdat.kswapd_awake:
        pgdat.kswapd_awake = True
        mem.stats.kswapd_wakeups += 1
        p.notify(pgdat.kswapd_wait)


def __alloc_pages(p: Platform, cpu: int, mem: Memory, pgdat: PgData,
                  direct_reclaim: Any) -> Generator[Any, Any, Page]:
    """One order-0 page from `pgdat`: fast path above the low watermark, else kswapd, else reclaim."""
    reclaimed_first = False
    while True:
        if pgdat.unlimited or pgdat.nr_free() > pgdat.low_wmark:
            break
        wakeup_kswapd(p, mem, pgdat)
        if pgdat.nr_free() > pgdat.min_wmark:
            break
        reclaimed_first = True
        yield from direct_reclaim(p, cpu, mem, pgdat)
        if pgdat.zone is not None and pgdat.nr_free() <= pgdat.min_wmark:
            # __alloc_pages_direct_reclaim: the pages just freed may sit on per-CPU lists the watermark does
            # not count; drain them all, then try again.
            yield from drain_all_pages(p, cpu, mem.nodes, mem.pcp_drain)
    if pgdat.zone is not None:
        page = yield from rmqueue_pcplist(p, cpu, pgdat)
    else:
        page = pgdat.take_free()
    if page.tlb_stale:
        mem.stats.pages_reused_before_flush += 1
    mem.stats.pages_allocated += 1
    mem.stats.alloc_direct_reclaim += reclaimed_first
    return page


def do_anonymous_page(p: Platform, cpu: int, mem: Memory, pgdat: PgData, direct_reclaim: Any,
                      mm: MmStruct | None = None) -> Generator[Any, Any, Page]:
    """A write fault on a never-touched page of `mm` (None: Memory.mm): allocate, zero, map it and queue it
    for the LRU."""
    yield Busy(p.cost(CostId.PAGE_FAULT, cpu), "page_fault")
    page = yield from __alloc_pages(p, cpu, mem, pgdat, direct_reclaim)
    page.mapped = True
    page.mm = mm
    mem.stats.faults += 1
    yield from lru_cache_add_active(p, cpu, mem, pgdat, page)
    return page
