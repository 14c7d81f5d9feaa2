"""Page reclaim of anonymous memory to swap, as in mm/vmscan.c and mm/rmap.c of 4.12.

One reclaim pass (`shrink_node`) moves SWAP_CLUSTER_MAX pages from the tail of the active list to the
inactive list (`shrink_active_list`: new anonymous pages start active), then isolates as many from the
inactive tail and reclaims them (`shrink_inactive_list` -> `shrink_page_list`). Both isolate and put
back under the node's `lru_lock`, taken with interrupts off.

In `shrink_page_list` each page is added to swap (swapfile.py: a slot, and the swap cache), unmapped
(`try_to_unmap` with TTU_BATCH_FLUSH only gathers the mm's CPUs into the task's flush batch), and because
it is dirty the batch is flushed before the page is written out (`try_to_unmap_flush_dirty`): a swapped
anonymous page costs one TLB shootdown of its own, a full flush on every CPU of the mm, waited for.
`flush="per-batch"` instead flushes once per batch before any page is written: what a clean-page batch
does, kept as a what-if.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from ipilab.kernel.locking import spin_lock_irq, spin_unlock_irq
from ipilab.kernel.mm import SWAP_CLUSTER_MAX, Memory, Page, PgData
from ipilab.kernel.page_alloc import free_hot_cold_page_list
from ipilab.kernel.smp import Smp
from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform, SpinUntil
from ipilab.kernel.swapfile import SwapDevice, add_to_swap, remove_mapping
from ipilab.kernel.tlb import flush_tlb_batched
from ipilab.machine.costs import CostId


@dataclass(eq=False)
class TlbUbc:
    """current->tlb_ubc: the CPUs whose TLBs must be flushed before the unmapped pages are reused."""

    cpumask: set[int] = field(default_factory=set)
    pages: list[Page] = field(default_factory=list)
    flush_required: bool = False
    writable: bool = False


@dataclass(eq=False)
class Reclaim:
    """The reclaim side of one machine: the cross-call path it flushes through, and its settings.

    With a swap device, add_to_swap and __remove_mapping take the swap locks as 4.12 does (swapfile.py);
    without one (an ablation), their work is plain CPU time and __remove_mapping only turns interrupts off.
    """

    smp: Smp
    mem: Memory
    flush: str = "per-page"
    batch: int = SWAP_CLUSTER_MAX
    swap: SwapDevice | None = None

    # --- rmap: unmapping and the batched flush ------------------------------------------------------

    def try_to_unmap(self, cpu: int, ubc: TlbUbc, page: Page) -> KernelCode:
        p = self.smp.p
        yield Busy(p.cost(CostId.TRY_TO_UNMAP, cpu), "try_to_unmap")
        page.mapped = False
        page.tlb_stale = True
        # set_tlb_ubc_flush_pending: the PTE was dirty (the page was written), so writable.
        ubc.cpumask.update((page.mm or self.mem.mm).cpumask)
        ubc.pages.append(page)
        ubc.flush_required = True
        ubc.writable = True

    def try_to_unmap_flush(self, cpu: int, ubc: TlbUbc) -> KernelCode:
        if not ubc.flush_required:
            return
        p = self.smp.p
        t0 = p.now
        yield from flush_tlb_batched(self.smp, cpu, sorted(ubc.cpumask))
        self.mem.stats.tlb_flushes += 1
        self.mem.stats.flush_wait_ns += p.now - t0
        self.smp.stats.call_latencies_ns.append(p.now - t0)
        for page in ubc.pages:
            page.tlb_stale = False
        ubc.cpumask.clear()
        ubc.pages.clear()
        ubc.flush_required = ubc.writable = False

    def try_to_unmap_flush_dirty(self, cpu: int, ubc: TlbUbc) -> KernelCode:
        if ubc.writable:
            yield from self.try_to_unmap_flush(cpu, ubc)

    # --- vmscan ----------------------------------------------------------------------------------

    def _isolate(self, cpu: int, pgdat: PgData, lru: Any, n: int) -> Generator[Any, Any, list[Page]]:
        p = self.smp.p
        yield from spin_lock_irq(p, cpu, pgdat.lru_lock)
        yield Busy(n * p.cost(CostId.LRU_PAGE, cpu), "isolate_lru_pages")
        pages = [pgdat.lru_tail(lru) for _ in range(n)]
        yield from spin_unlock_irq(p, cpu, pgdat.lru_lock)
        return pages

    def shrink_active_list(self, cpu: int, pgdat: PgData) -> KernelCode:
        p = self.smp.p
        pages = yield from self._isolate(cpu, pgdat, pgdat.active, self.batch)
        # page_referenced() clears the accessed bits; anonymous pages are deactivated even if young.
        yield Busy(len(pages) * p.cost(CostId.PAGE_REFERENCED, cpu), "page_referenced")
        yield from spin_lock_irq(p, cpu, pgdat.lru_lock)
        yield Busy(len(pages) * p.cost(CostId.LRU_PAGE, cpu), "move_active_pages_to_lru")
        pgdat.inactive.extendleft(pages)
        yield from spin_unlock_irq(p, cpu, pgdat.lru_lock)
        self.mem.stats.pages_deactivated += len(pages)

    def shrink_page_list(self, cpu: int, pages: list[Page]) -> Generator[Any, Any, list[Page]]:
        p = self.smp.p
        ubc = TlbUbc()
        freed: list[Page] = []
        for page in pages:
            yield Busy(p.cost(CostId.PAGE_REFERENCED, cpu), "page_referenced")
            if self.swap is None:
                yield Busy(p.cost(CostId.ADD_TO_SWAP, cpu), "add_to_swap")
            else:
                page.swap_offset = yield from add_to_swap(p, cpu, self.swap)
            yield from self.try_to_unmap(cpu, ubc, page)
            if self.flush == "per-page":
                yield from self.try_to_unmap_flush_dirty(cpu, ubc)
                yield from self._pageout(cpu, page, freed)
        if self.flush == "per-batch":
            yield from self.try_to_unmap_flush(cpu, ubc)
            for page in pages:
                yield from self._pageout(cpu, page, freed)
        yield from self.try_to_unmap_flush(cpu, ubc)
        return freed

    def _pageout(self, cpu: int, page: Page, freed: list[Page]) -> KernelCode:
        p = self.smp.p
        yield Busy(p.cost(CostId.SWAP_WRITEPAGE, cpu), "swap_writepage")
        if self.swap is None:
            # __remove_mapping: the swap cache's tree_lock is taken with interrupts off.
            yield IRQS_OFF
            yield Busy(p.cost(CostId.REMOVE_MAPPING, cpu), "__remove_mapping")
            yield IRQS_ON
        else:
            yield from remove_mapping(p, cpu, self.swap, page.swap_offset)
        freed.append(page)
        self.mem.stats.pages_reclaimed += 1

    def shrink_inactive_list(self, cpu: int, pgdat: PgData) -> Generator[Any, Any, int]:
        p = self.smp.p
        pages = yield from self._isolate(cpu, pgdat, pgdat.inactive, self.batch)
        self.mem.stats.pages_scanned += len(pages)
        freed = yield from self.shrink_page_list(cpu, pages)
        # putback_inactive_pages() runs under lru_lock even when every page was freed.
        yield from spin_lock_irq(p, cpu, pgdat.lru_lock)
        yield from spin_unlock_irq(p, cpu, pgdat.lru_lock)
        if pgdat.zone is not None:
            yield from free_hot_cold_page_list(p, cpu, pgdat, freed)
        else:
            yield Busy(len(freed) * p.cost(CostId.FREE_PAGE, cpu), "free_hot_cold_page_list")
            pgdat.free.extend(freed)
        return len(freed)

    def shrink_node(self, cpu: int, pgdat: PgData) -> Generator[Any, Any, int]:
        yield from self.shrink_active_list(cpu, pgdat)
        return (yield from self.shrink_inactive_list(cpu, pgdat))

    def try_to_free_pages(self, p: Platform, cpu: int, mem: Memory, pgdat: PgData) -> KernelCode:
        """Direct reclaim by an allocating task (the signature __alloc_pages calls it with)."""
        yield from self.shrink_node(cpu, pgdat)

    def kswapd(self, cpu: int, pgdat: PgData) -> KernelCode:
        """Reclaim while the node is below its high watermark; sleep until woken below low."""
        while True:
            if pgdat.nr_free() >= pgdat.high_wmark:
                pgdat.kswapd_awake = False
                # Sleeping in the model is spinning on the wakeup: kswapd's CPU runs nothing else.
                yield SpinUntil(lambda: pgdat.kswapd_awake, pgdat.kswapd_wait, "kswapd sleep")
            n = yield from self.shrink_node(cpu, pgdat)
            self.mem.stats.reclaimed_by_kswapd += n
