"""The page allocator's per-CPU page lists and the zone->lock behind them, as 4.12 uses them for order-0 pages.

One zone per node (the seed's memory is all ZONE_NORMAL but for a few low megabytes). Each CPU keeps a list of
free pages per zone (`per_cpu_pages`: `count` pages). An order-0 allocation (`rmqueue_pcplist`, mm/page_alloc.c)
takes one from this CPU's list with interrupts off (`local_irq_save`); when the list is empty, `rmqueue_bulk`
first moves `pcp->batch` pages from the buddy free lists to it under `zone->lock`. A free (`free_hot_cold_page`)
puts the page on the freeing CPU's list, interrupts off (reclaim frees its pages cold: at the list's tail); when the
list reaches `pcp->high`, `free_pcppages_bulk` returns `pcp->batch` pages from the tail to the buddy lists under
`zone->lock`. zone->lock is a plain spin_lock,
but both callers take it inside local_irq_save: a CPU waiting for it, or holding it, takes no interrupt, so an
IPI sent to it waits in its APIC until the bulk move is done.

The watermarks (`zone_watermark_fast`) count the buddy lists' free pages only (NR_FREE_PAGES): pages on per-CPU
lists are neither free to the watermark check nor in use. So a direct reclaimer whose allocation still fails after
reclaiming runs `drain_all_pages` (__alloc_pages_direct_reclaim): one drain at a time (pcpu_drain_mutex, taken
with a trylock: a second caller returns at once), which empties every CPU's lists through a work item on each CPU
(mm_percpu_wq, kernel/sched.py) and waits for all of them (flush_work). Left out: the per-migratetype lists (every
page here is MIGRATE_MOVABLE).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ipilab.kernel.locking import SpinLock, spin_lock, spin_unlock
from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform, SpinUntil
from ipilab.machine.costs import CostId

if TYPE_CHECKING:
    from ipilab.kernel.mm import Page, PgData

# mm/page_alloc.c zone_batchsize() for a zone of 512 MB or more: managed pages / 1024 capped at 512 KB (128 pages),
# a quarter of that (32), then rounddown_pow_of_two(32 + 32 / 2) - 1; pageset_set_batch() sets high = 6 x batch.
PCP_BATCH = 31
PCP_HIGH = 6 * PCP_BATCH  # 186


class Zone:
    """A node's one zone: its lock, and each CPU's per-CPU page list (the buddy free pages stay in PgData.free,
    which the watermarks count)."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.lock = SpinLock(f"zone->lock/{node}")
        self.pcp: dict[int, deque[Page]] = {}  # per CPU: the list's head (hot) on the left, its tail on the right
        self.pages_in = 0  # pages freed onto a per-CPU list
        self.pages_out = 0  # pages allocated from one
        self.made = 0  # pages an unlimited (fill phase) buddy list made on demand
        self.bulk_allocs = 0  # rmqueue_bulk calls
        self.bulk_frees = 0  # free_pcppages_bulk calls

    def pcp_list(self, cpu: int) -> deque[Page]:
        pcp = self.pcp.get(cpu)
        if pcp is None:
            pcp = self.pcp[cpu] = deque()
        return pcp

    def pcp_pages(self) -> int:
        return sum(len(pcp) for pcp in self.pcp.values())


def rmqueue_bulk(p: Platform, cpu: int, pgdat: PgData, count: int) -> KernelCode:
    """Move up to `count` pages from the buddy lists to `cpu`'s list, under zone->lock (interrupts are off)."""
    zone = pgdat.zone
    yield from spin_lock(p, cpu, zone.lock)
    # The watermark check before kept more than the min watermark free; an unlimited zone (the fill phase) and a
    # machine too small for any min watermark make pages on demand, as PgData.take_free does.
    n = count if pgdat.unlimited else max(1, min(count, pgdat.nr_free()))
    yield Busy(n * p.cost(CostId.ZONE_PAGE, cpu), "rmqueue_bulk")
    pcp = zone.pcp_list(cpu)
    for _ in range(n):  # the list is empty: the pages go on it in the order taken, the first at its head
        if not pgdat.free:
            zone.made += 1
        pcp.append(pgdat.take_free())
    zone.bulk_allocs += 1
    spin_unlock(p, cpu, zone.lock)


def rmqueue_pcplist(p: Platform, cpu: int, pgdat: PgData) -> Generator[Any, Any, Page]:
    """An order-0 page from `cpu`'s list, refilled from the buddy lists first if empty."""
    zone = pgdat.zone
    yield IRQS_OFF  # local_irq_save
    pcp = zone.pcp_list(cpu)
    if not pcp:
        yield from rmqueue_bulk(p, cpu, pgdat, PCP_BATCH)
    page = pcp.popleft()  # a fault's page is hot: from the head
    zone.pages_out += 1
    yield IRQS_ON  # local_irq_restore
    return page


def free_pcppages_bulk(p: Platform, cpu: int, pgdat: PgData, count: int) -> KernelCode:
    """Return `count` pages from the tail of `cpu`'s list to the buddy lists, under zone->lock (interrupts off)."""
    zone = pgdat.zone
    yield from spin_lock(p, cpu, zone.lock)
    yield Busy(count * p.cost(CostId.ZONE_PAGE, cpu), "free_pcppages_bulk")
    pcp = zone.pcp_list(cpu)
    for _ in range(count):
        pgdat.free.append(pcp.pop())
    zone.bulk_frees += 1
    spin_unlock(p, cpu, zone.lock)


def free_hot_cold_page_list(p: Platform, cpu: int, pgdat: PgData, pages: list[Page]) -> KernelCode:
    """free_hot_cold_page(page, cold=true) for each page, as shrink_page_list frees them: onto the tail of `cpu`'s
    list; each time the list reaches pcp->high, a bulk free with interrupts off. The per-page work (cost free_page)
    runs in one step up to each bulk free."""
    zone = pgdat.zone
    pcp = zone.pcp_list(cpu)
    i = 0
    while i < len(pages):
        k = min(PCP_HIGH - len(pcp), len(pages) - i)  # pages until the list reaches pcp->high, or the rest
        yield Busy(k * p.cost(CostId.FREE_PAGE, cpu), "free_hot_cold_page_list")
        pcp.extend(pages[i:i + k])
        zone.pages_in += k
        i += k
        if len(pcp) >= PCP_HIGH:
            yield IRQS_OFF  # local_irq_save
            yield from free_pcppages_bulk(p, cpu, pgdat, PCP_BATCH)
            yield IRQS_ON  # local_irq_restore


class PcpDrain:
    """drain_all_pages' state shared by every CPU: pcpu_drain_mutex, and the work items still to run."""

    def __init__(self) -> None:
        self.busy = False  # pcpu_drain_mutex is held
        self.left = 0  # queued drains not yet done (flush_work waits for 0)
        self.done = object()  # watch: a drain finished
        self.drains = 0  # drain_all_pages calls that drained
        self.skipped = 0  # calls that found the mutex held and returned at once
        self.pages = 0  # pages the drains moved to the buddy lists


def drain_local_pages(p: Platform, cpu: int, pgdats: list[PgData], drain: PcpDrain) -> KernelCode:
    """The drain's work item on `cpu` (drain_local_pages_wq, zone NULL): each zone's list of this CPU goes back to
    the buddy lists in one bulk free. Interrupts are off (local_irq_save in drain_pages_zone)."""
    for pgdat in pgdats:
        n = len(pgdat.zone.pcp_list(cpu))
        if n:
            yield from free_pcppages_bulk(p, cpu, pgdat, n)
            drain.pages += n
    drain.left -= 1
    p.notify(drain.done)


def _drain_local_pages_irqsave(p: Platform, cpu: int, pgdats: list[PgData], drain: PcpDrain) -> KernelCode:
    """drain_local_pages from a worker's own context, where interrupts are on: drain_pages_zone turns them off."""
    yield IRQS_OFF
    yield from drain_local_pages(p, cpu, pgdats, drain)
    yield IRQS_ON


def drain_all_pages(p: Platform, cpu: int, pgdats: list[PgData], drain: PcpDrain) -> KernelCode:
    """Empty every CPU's lists (zone NULL: all zones), as a direct reclaimer does when its allocation still fails
    after reclaiming. Another drain under way makes it return at once (mutex_trylock). Each CPU with pages on a list
    gets a work item (queue_work_on, kernel/sched.py); this CPU's own runs after the others are queued, as its
    worker would once the caller sleeps in flush_work, which waits for all of them."""
    if drain.busy:
        drain.skipped += 1
        return
    drain.busy = True
    drain.drains += 1
    cpus = sorted({c for pgdat in pgdats for c, pcp in pgdat.zone.pcp.items() if pcp})
    drain.left = len(cpus)
    for c in cpus:
        if c != cpu:
            yield from p.queue_work_on(cpu, c, lambda on: drain_local_pages(p, on, pgdats, drain))
    if cpu in cpus:
        yield from p.run_work_here(cpu, lambda on: _drain_local_pages_irqsave(p, on, pgdats, drain))
    yield SpinUntil(lambda: drain.left == 0, drain.done, "flush_work")
    drain.busy = False
