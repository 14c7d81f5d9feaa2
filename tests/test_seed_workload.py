"""The swap-w-seq-mt workload: its bookkeeping, the kernel's rules it follows, and sanity across sizes.

Small machines keep these fast; the costs are round numbers unless a test takes the Broadwell preset's.
"""

from __future__ import annotations

from conftest import tiny_machine

from ipilab.events import CALL_FUNCTION_SINGLE_VECTOR, CALL_FUNCTION_VECTOR
from ipilab.kernel.features import resolve_kernel
from ipilab.machine.model import RECLAIM_COST_FIELDS, Machine, load_machine
from ipilab.sim.engine import Engine
from ipilab.sim.machine import SimMachine
from ipilab.sim.run import simulate
from ipilab.workloads import workload_from_settings
from ipilab.workloads.swap import SwapWSeqMt, min_free_kbytes, watermarks

RECLAIM_COSTS = dict.fromkeys(RECLAIM_COST_FIELDS, 100) | {"swap_writepage": 500, "lru_page": 20}


def reclaim_machine(ncpus: int) -> Machine:
    return tiny_machine(ncpus, icr_write=50, ipi_latency_same_socket=200, irq_entry=100, irq_exit=100,
                        tlb_flush_full=100, page_fault=300, cacheline_same_socket=40, **RECLAIM_COSTS)


def small_broadwell(cores: int) -> Machine:
    """The Broadwell preset's costs on one socket of `cores` cores without SMT."""
    data = load_machine("broadwell-ep-2s-88t").model_dump()
    data["topology"].update(sockets=1, cores_per_socket=cores, threads_per_core=1, numa_nodes=1)
    return Machine.model_validate(data)


def test_watermarks_follow_the_4_12_formulas_worked_by_hand():
    # 32 GB: lowmem 33,554,432 KB -> min_free_kbytes = isqrt(536,870,912) = 23,170 (under the 65,536 cap).
    assert min_free_kbytes(33_554_432) == 23_170
    # Two nodes of 4,194,304 pages: min = 23,170 / 4 / 2 = 2,896 pages; the gap is the larger of
    # min / 4 = 724 and 0.1% of the node = 4,194: low = 7,090, high = 11,284.
    assert watermarks(33_554_432, 2) == (2_896, 7_090, 11_284)
    # 1 TB hits the cap: 65,536 KB -> 16,384 pages on one node; the 0.1% gap (268,435) dominates.
    assert watermarks(1 << 30, 1) == (16_384, 16_384 + 268_435, 16_384 + 2 * 268_435)


def test_threads_spread_over_cores_first_and_kswapd_takes_an_idle_cpu_of_its_node():
    m = load_machine("broadwell-ep-2s-88t")
    usemem, kswapd = SwapWSeqMt.placement(m, 80)
    # Linux numbers first threads 0-43 (socket 0: 0-21, socket 1: 22-43), then their siblings 44-87.
    # 80 threads fill the 44 cores and 18 siblings per socket; 62-65 and 84-87 stay idle.
    assert usemem == list(range(0, 62)) + list(range(66, 84))
    assert kswapd == [62, 84]
    assert {m.node_of(c) for c in (62, 84)} == {0, 1} and m.node_of(62) == 0


def test_every_unmapped_page_is_flushed_before_it_is_reused_and_faults_match_writes():
    m = reclaim_machine(6)
    for flush in ("per-page", "per-batch"):
        sim = SimMachine(m, resolve_kernel("v4.13"), Engine())
        w = SwapWSeqMt(threads=5, memory_gb=1, ram_gb=0.01, flush=flush, zone_lock=True)
        w.start(sim, seed=3)
        run = w._run
        stale_seen = []

        def check(run=run, stale_seen=stale_seen):
            # A page on a free list (the buddy lists or a per-CPU list) must not be mapped by any TLB any more.
            for node in run.mem.nodes:
                stale_seen.extend(p.pfn for p in node.free if p.tlb_stale or p.mapped)
                for pcp in node.zone.pcp.values():
                    stale_seen.extend(p.pfn for p in pcp if p.tlb_stale or p.mapped)

        sim.engine.run(2_000_000, check=check)
        assert stale_seen == []
        s = run.mem.stats
        assert s.pages_reclaimed > 100 and s.tlb_flushes > 0
        if flush == "per-page":
            # Every dirty page its own shootdown; a reclaimer may be between one and the page's write-out.
            reclaimers = w.threads + len(run.kswapd_cpus)
            assert s.pages_reclaimed <= s.tlb_flushes <= s.pages_reclaimed + reclaimers
        else:
            assert s.tlb_flushes * w.batch >= s.pages_reclaimed > (s.tlb_flushes - 5) * w.batch
        written = sum(run.written)
        # A thread is between its fault and the end of its write at most once.
        assert written <= s.faults <= written + w.threads
        assert s.pages_allocated == s.faults
        assert s.pages_reused_before_flush == 0


def test_before_the_patch_every_csd_sends_its_own_ipi_and_only_the_apic_merges():
    m = small_broadwell(12)
    w = SwapWSeqMt(threads=10, ram_gb=0.05, memory_gb=1)  # small watermarks: reclaim from the start
    r = simulate(m, resolve_kernel("v4.12"), w, seconds=0.001, seed=1)
    decided = r["csd_enqueues"] - r["csds_undecided_at_end"]
    assert r["csd_enqueues"] > 5_000
    assert r["ipis_sent"] == decided  # no CSD of a multi-target call goes without its IPI
    assert r["csd_no_ipi_queued"] == 0
    assert r["apic_merged"] > 0
    assert r["cal_interrupts"] + r["apic_merged"] <= r["ipis_sent"]


def test_after_the_patch_only_adds_to_an_empty_queue_send():
    m = small_broadwell(12)
    sim = SimMachine(m, resolve_kernel("v4.13"), Engine())
    w = SwapWSeqMt(threads=10, ram_gb=0.05, memory_gb=1)
    w.start(sim, seed=1)
    sim.engine.run(1_000_000)
    s = sim.smp.stats
    undecided = s.csd_enqueues - s.csd_ipis - s.csd_no_ipi_queued
    assert 0 <= undecided <= w.threads * m.ncpus
    assert s.csd_no_ipi_queued > 0 and s.csd_ipis > 0 and s.ipis_to_nonempty_queue == 0
    # Independent count of what is still owed: queued CSDs on CPUs with no IPI pending or in flight.
    pending = sum(len(sim.smp.call_single_queue[c.id]) > 0 and not (
        c.ipis_in_flight or {CALL_FUNCTION_VECTOR, CALL_FUNCTION_SINGLE_VECTOR} & c.irr
        or any(ctx.kind == "irq" for ctx in c.stack)) for c in sim.cpus)
    assert pending <= w.threads  # only senders still between their llist_add and their send


def test_more_reclaimers_flush_together_and_share_more_of_each_interrupt():
    m = small_broadwell(16)
    per_interrupt = []
    for threads in (3, 8, 14):
        w = SwapWSeqMt(threads=threads, ram_gb=0.05, memory_gb=1)
        r = simulate(m, resolve_kernel("v4.13"), w, seconds=0.002, seed=2, warmup=0.0005)
        per_interrupt.append(r["csds_per_interrupt"])
    assert per_interrupt[0] < per_interrupt[1] < per_interrupt[2]


def test_without_kswapd_every_cpu_can_write_and_only_the_writers_reclaim():
    m = reclaim_machine(4)
    w = SwapWSeqMt(threads=4, memory_gb=1, ram_gb=0.01, kswapd=False)
    assert SwapWSeqMt.placement(m, 4, kswapd=False) == ([0, 1, 2, 3], [])
    r = simulate(m, resolve_kernel("v4.13"), w, seconds=0.002, seed=1)
    wc = r["workload_counts"]
    assert wc["pages_reclaimed"] > 0 and wc["reclaimed_by_kswapd"] == 0
    assert wc["alloc_direct_reclaim"] > 0


def test_as_processes_each_page_is_flushed_only_on_its_owners_cpu():
    # swap-w-seq: 4 processes on 4 CPUs, no kswapd. A page's mm runs on its owner's CPU alone, so a reclaimer's
    # shootdown queues one CSD (to the owner) or none (its own page): never more CSDs than shootdowns. As
    # threads of one process (swap-w-seq-mt), each shootdown queues one CSD on each of the 3 other CPUs. (A
    # shootdown counts when it ends, its CSDs when queued: each CPU may have one astride each end of the window.)
    m = reclaim_machine(4)
    settings = {"threads": "4", "memory_gb": "1", "ram_gb": "0.01", "kswapd": "false"}
    procs = simulate(m, resolve_kernel("v4.13"), workload_from_settings("swap-w-seq", settings), seconds=0.003,
                     seed=2)
    threads = simulate(m, resolve_kernel("v4.13"), workload_from_settings("swap-w-seq-mt", settings),
                       seconds=0.003, seed=2)
    assert procs["engine"] == "reference"  # the fast engine refuses it rather than run it as threads
    flushes = procs["workload_counts"]["tlb_flushes"]
    assert flushes > 20
    astride = 4 * 2
    assert 0 < procs["csd_enqueues"] <= flushes + astride
    assert abs(threads["csd_enqueues"] - 3 * threads["workload_counts"]["tlb_flushes"]) <= 3 * astride


def test_two_writers_on_one_socket_share_its_memory_bandwidth(monkeypatch):
    # Two usemem threads on one socket start together (no stagger) in the fill phase; a page write costs 300 ns of
    # CPU, and 200 ns per page of the socket's bandwidth; faults, LRU adds and zone->lock cost nothing. CPU0 starts
    # its first write at 0 alone: 300 ns. CPU1 starts at 0 while CPU0 writes: 2 x 200 = 400 ns. From then on each
    # write starts while the other CPU is writing: 400 ns each. Written by 1000 ns: CPU0 at 300 and 700, CPU1 at 400
    # and 800. Without the bandwidth, 300 ns each: three pages per CPU.
    monkeypatch.setattr("ipilab.workloads.swap.STAGGER_NS", 1)
    m = tiny_machine(2, **(dict.fromkeys(RECLAIM_COST_FIELDS, 0) | {"user_write_page": 300, "mem_write_page": 200}))
    for bandwidth, expected in ((True, [2, 2]), (False, [3, 3])):
        sim = SimMachine(m, resolve_kernel("v4.12"), Engine())
        w = SwapWSeqMt(threads=2, memory_gb=1, ram_gb=0.5, phase="fill", kswapd=False, mem_bandwidth=bandwidth)
        w.start(sim, seed=1)
        sim.engine.run(1000)
        assert w._run.written == expected, bandwidth
