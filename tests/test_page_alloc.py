"""Litmus cases for the per-CPU page lists and zone->lock (kernel/page_alloc.py): when a free or an allocation
goes to the buddy lists, how many pages move, that interrupts wait while a CPU spins on or holds zone->lock, and
how drain_all_pages empties every CPU's list through its workers (kernel/sched.py).

Costs are zero except the ones named, so every time below is worked out by hand from 4.12's pcp->batch = 31
and pcp->high = 186.
"""

from __future__ import annotations

from conftest import tiny_machine

from ipilab.kernel.features import resolve_kernel
from ipilab.kernel.mm import Page, PgData
from ipilab.kernel.page_alloc import (
    PCP_BATCH,
    PCP_HIGH,
    PcpDrain,
    drain_all_pages,
    free_hot_cold_page_list,
    rmqueue_pcplist,
)
from ipilab.kernel.smp import SmpFunc
from ipilab.kernel.steps import Busy
from ipilab.sim.engine import Engine
from ipilab.sim.machine import SimMachine


def _node(free_pages: int) -> PgData:
    pfn = iter(range(1, 1 << 30))
    return PgData(0, min_wmark=0, low_wmark=0, high_wmark=0, free_pages=free_pages, unlimited=False,
                  new_pfn=pfn.__next__, zone_lock=True)


def test_the_186th_free_sends_31_pages_from_the_tail_to_the_buddy_lists():
    # CPU0 frees 200 pages at 10 ns each onto its empty list, cold (at the tail), as reclaim does. The 186th
    # reaches pcp->high at 1860 ns: free_pcppages_bulk moves 31 from the tail (the 186th freed first, back to the
    # 156th) under zone->lock at 5 ns each, to 2015 ns; the other 14 then go on the list (140 ns): 155 + 14 =
    # 169 left on it at 2155 ns.
    assert (PCP_BATCH, PCP_HIGH) == (31, 186)
    sim = SimMachine(tiny_machine(2, free_page=10, zone_page=5), resolve_kernel("v4.12"), Engine())
    node = _node(0)
    pages = [Page(1000 + i, 0) for i in range(200)]
    done: list[int] = []

    def freer():
        yield from free_hot_cold_page_list(sim, 0, node, pages)
        done.append(sim.now)

    sim.start(0, freer())
    sim.engine.run(10_000)
    assert done == [2155]
    assert list(node.free) == pages[155:186][::-1]
    assert list(node.zone.pcp[0]) == pages[:155] + pages[186:]
    assert node.zone.bulk_frees == 1
    lock = node.zone.lock
    assert (lock.acquisitions, lock.hold_ns) == (1, 155)


def test_185_frees_stay_on_the_list():
    sim = SimMachine(tiny_machine(2, free_page=10, zone_page=5), resolve_kernel("v4.12"), Engine())
    node = _node(0)
    sim.start(0, free_hot_cold_page_list(sim, 0, node, [Page(i, 0) for i in range(185)]))
    sim.engine.run(10_000)
    assert (len(node.free), len(node.zone.pcp[0]), node.zone.lock.acquisitions) == (0, 185, 0)


def test_an_empty_list_is_refilled_with_31_pages_then_with_what_is_left():
    # 40 free pages in the buddy lists. The first allocation refills the list with 31 (31 x 5 = 155 ns under
    # zone->lock) and takes one; the next 30 take from the list; the 32nd finds it empty again and takes the
    # 9 pages left.
    sim = SimMachine(tiny_machine(2, zone_page=5), resolve_kernel("v4.12"), Engine())
    node = _node(40)
    got: list[tuple[int, int]] = []

    def allocator():
        for _ in range(32):
            page = yield from rmqueue_pcplist(sim, 0, node)
            got.append((page.pfn, sim.now))

    sim.start(0, allocator())
    sim.engine.run(10_000)
    assert got[0][1] == 155 and got[30][1] == 155 and got[31][1] == 155 + 9 * 5
    assert len({pfn for pfn, _ in got}) == 32
    assert node.nr_free() == 0 and len(node.zone.pcp[0]) == 8
    assert node.zone.bulk_allocs == 2


def test_an_ipi_waits_while_its_target_spins_on_zone_lock_and_refills():
    # CPU1 frees 186 pages (free_page 0): its bulk free holds zone->lock from 0 to 31 x 100 = 3100 ns.
    # CPU0 allocates at 100 with an empty list: interrupts off (local_irq_save), it spins until 3100, then
    # holds the lock for its own 31 pages to 6200. CPU2 calls a function on CPU0 at 500 (the IPI costs nothing
    # here): CPU0 takes it only at 6200, when local_irq_restore turns interrupts on again.
    sim = SimMachine(tiny_machine(3, zone_page=100, free_page=0), resolve_kernel("v4.12"), Engine(),
                     tracer=(events := []).append)
    node = _node(100)
    func = SmpFunc("probe", lambda p, cpu, info: iter([Busy(50, "probe")]))
    log: list = []

    def allocator():
        yield Busy(100, "before")
        yield from rmqueue_pcplist(sim, 0, node)
        log.append(("allocated", sim.now))

    def caller():
        yield Busy(500, "before")
        yield from sim.smp.smp_call_function_single(2, 0, func, None, wait=True)
        log.append(("returned", sim.now))

    sim.start(1, free_hot_cold_page_list(sim, 1, node, [Page(10_000 + i, 0) for i in range(186)]))
    sim.start(0, allocator())
    sim.start(2, caller())
    sim.engine.run(20_000)
    entry = [e.ts for e in events if e.name == "csd_function_entry" and e.cpu == 0]
    assert entry == [6200]
    assert ("returned", 6250) in log
    assert ("allocated", 6250) in log  # the handler ran first, as interrupts came back on
    lock = node.zone.lock
    assert (lock.acquisitions, lock.contended, lock.spin_ns) == (2, 1, 3000)


def test_drain_all_pages_empties_every_list_through_reschedule_ipis_worked_by_hand():
    # CPU0 drains with 3 pages on its own list; CPU1 has 10 and CPU2 5, each busy in its task. zone_page 10,
    # context_switch 100, icr_write 5, ipi latency 50, irq entry and exit 20 each; cache lines free.
    # CPU0 queues CPU1's work and sends its reschedule IPI (0-5, arrives 55), then CPU2's (5-10, arrives 60), then
    # runs its own worker: switch 10-110, its 3 pages under zone->lock 110-140, switch back 140-240, then waits
    # in flush_work. CPU1: entry 55-75, switch 75-175, lock free, 10 pages 175-275, switch 275-375, exit 375-395.
    # CPU2: entry 60-80, switch 80-180, spins for the lock 180-275, 5 pages 275-325: the last drain ends, so CPU0
    # returns at 325; CPU2's switch and exit end at 445. The tasks lose 55-395 and 60-445 of their 10,000 ns.
    sim = SimMachine(tiny_machine(4, zone_page=10, context_switch=100, icr_write=5, ipi_latency_same_socket=50,
                                  irq_entry=20, irq_exit=20), resolve_kernel("v4.12"), Engine())
    node = _node(0)
    for cpu, n in ((0, 3), (1, 10), (2, 5)):
        node.zone.pcp_list(cpu).extend(Page(1000 * cpu + i, 0) for i in range(n))
    drain = PcpDrain()
    log: list[tuple[str, int]] = []

    def drainer():
        yield from drain_all_pages(sim, 0, [node], drain)
        log.append(("drained", sim.now))

    def worker(cpu: int):
        yield Busy(10_000, "work")
        log.append((f"cpu{cpu} done", sim.now))

    def late_drainer():  # CPU3 asks for a drain while CPU0's is under way: it returns at once
        yield Busy(20, "before")
        yield from drain_all_pages(sim, 3, [node], drain)
        log.append(("skipped", sim.now))

    sim.start(0, drainer())
    sim.start(1, worker(1))
    sim.start(2, worker(2))
    sim.start(3, late_drainer())
    sim.engine.run(20_000)
    assert sorted(log, key=lambda e: e[1]) == [("skipped", 20), ("drained", 325), ("cpu1 done", 10_340),
                                                ("cpu2 done", 10_385)]
    assert node.nr_free() == 18 and all(not pcp for pcp in node.zone.pcp.values())
    assert (drain.drains, drain.skipped, drain.pages, drain.left, drain.busy) == (1, 1, 18, 0, False)
    assert sim.workqueue.resched_ipis == 2
    lock = node.zone.lock
    assert (lock.acquisitions, lock.contended, lock.spin_ns) == (3, 1, 95)
    # A reschedule interrupt is taken, but it is not a function-call interrupt.
    assert [c.irqs_taken for c in sim.cpus] == [0, 1, 1, 0] and [c.interrupts for c in sim.cpus] == [0] * 4


def test_with_cfs_a_worker_that_ran_lately_waits_for_the_slice_worked_by_hand():
    # 4 CPUs: 4.12's scaling factor is 1 + log2(4) = 3, so the wakeup granularity is 3 ms and the sleeper credit and
    # a slice 9 ms. CPU1's worker last ran at 1 ms; CPU2's never has. CPU0, with an empty list, drains at 2 ms.
    # CPU1's worker slept 1 ms, not past 3 ms: no preemption and, on the same socket, no IPI; it runs when CPU1's
    # task has had its 9 ms slice since then, at 10 ms: entry 20, switch to 10,000,120, 10 pages to 10,000,220 (the
    # drainer returns), switch and exit to 10,000,340. CPU2's worker preempts at once: IPI 2,000,000-2,000,005,
    # arrives 2,000,055, entry, switch, 5 pages to 2,000,225, switch, exit at 2,000,345.
    sim = SimMachine(tiny_machine(4, zone_page=10, context_switch=100, icr_write=5, ipi_latency_same_socket=50,
                                  irq_entry=20, irq_exit=20), resolve_kernel("v4.12"), Engine())
    sim.workqueue.cfs = True
    assert (sim.workqueue.wakeup_granularity, sim.workqueue.slice) == (3_000_000, 9_000_000)
    sim.workqueue.last_ran[1] = 1_000_000
    node = _node(0)
    for cpu, n in ((1, 10), (2, 5)):
        node.zone.pcp_list(cpu).extend(Page(1000 * cpu + i, 0) for i in range(n))
    drain = PcpDrain()
    log: list[tuple[str, int]] = []

    def drainer():
        yield Busy(2_000_000, "before")
        yield from drain_all_pages(sim, 0, [node], drain)
        log.append(("drained", sim.now))

    def worker(cpu: int):
        yield Busy(20_000_000, "work")
        log.append((f"cpu{cpu} done", sim.now))

    sim.start(0, drainer())
    sim.start(1, worker(1))
    sim.start(2, worker(2))
    sim.engine.run(30_000_000)
    assert sorted(log, key=lambda e: e[1]) == [("drained", 10_000_220), ("cpu2 done", 20_000_290),
                                                ("cpu1 done", 20_000_340)]
    wq = sim.workqueue
    assert (wq.resched_ipis, wq.worker_waits) == (1, 1)
    assert wq.last_ran[1:3] == [10_000_320, 2_000_325] and not any(wq.resched_pending)
    assert node.nr_free() == 15 and [c.irqs_taken for c in sim.cpus] == [0, 1, 1, 0]
