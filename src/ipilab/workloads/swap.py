"""vm-scalability's case-swap-w-seq-mt: `usemem -t N` writing more anonymous memory than the machine has.

N threads of one process each write their own region sequentially, one new page after another: a
page fault, a zeroed page, the thread's 4 KB write. Once RAM is full (`phase="reclaim"`, the steady
state this models), every allocation below the node's min watermark reclaims first, and kswapd (one
per node) reclaims in the background: pages are deactivated, added to swap, unmapped with a TLB
shootdown to every CPU the process runs on, written to the swap device and freed. A socket's
page writes share its memory bandwidth; pages are allocated from and freed to per-CPU lists behind
each node's zone->lock, which drain_all_pages empties when a direct reclaimer's allocation still fails
(kernel/page_alloc.py). `phase="fill"` models the run's
start, while free memory lasts: the same threads without reclaim.

Threads are placed as the scheduler spreads them: one per core first, alternating sockets, then on
the second hyperthreads; each node's kswapd runs on an idle CPU of that node. With `kswapd=false`
only the writers reclaim, as in a memory cgroup at its limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr, model_validator

from ipilab.kernel.locking import SpinLock, lock_counters
from ipilab.kernel.mm import SWAP_CLUSTER_MAX, Memory, MmStruct, PgData, do_anonymous_page
from ipilab.kernel.sched import Workqueue
from ipilab.kernel.steps import Busy, KernelCode
from ipilab.kernel.swapfile import GB, SwapDevice, swap_trees
from ipilab.kernel.vmscan import Reclaim
from ipilab.machine.costs import CostId
from ipilab.machine.model import RECLAIM_COST_FIELDS, Machine
from ipilab.sim.machine import SimMachine
from ipilab.workloads.base import Workload, WorkloadError

PAGE_SIZE = 4096
STAGGER_NS = 100_000  # thread start offsets are drawn from [0, this)


def min_free_kbytes(ram_kb: int) -> int:
    """mm/page_alloc.c init_per_zone_wmark_min() (4.12): sqrt(lowmem_kbytes * 16), within [128, 65536]."""
    return max(128, min(65536, math.isqrt(ram_kb * 16)))


def watermarks(ram_kb: int, nodes: int) -> tuple[int, int, int]:
    """Per-node (min, low, high) in pages, as __setup_per_zone_wmarks() (4.12) sets them for one zone
    per node: min is the node's share of min_free_kbytes; low and high add the larger of min/4 and
    watermark_scale_factor (10 = 0.1%) of the node's memory, once and twice."""
    node_pages = ram_kb // 4 // nodes
    wmin = min_free_kbytes(ram_kb) // 4 // nodes
    step = max(wmin // 4, node_pages * 10 // 10000)
    return wmin, wmin + step, wmin + 2 * step


@dataclass(eq=False)
class SwapRun:
    """The state of one run: memory, the reclaim code, and what each thread has written."""

    mem: Memory
    reclaim: Reclaim
    written: list[int]
    usemem_cpus: list[int]
    kswapd_cpus: list[int]
    mms: dict[int, MmStruct] | None = None  # swap-w-seq: each CPU's process (None: one process for all)
    writing: list[bool] | None = None  # per CPU, whether it is in a page write (None: bandwidth not modelled)
    socket_cpus: list[list[int]] | None = None  # per socket, its usemem CPUs
    workqueue: Workqueue | None = None  # the machine's, for its reschedule IPIs and workers' waits


class SwapWSeqMt(Workload):
    name = "swap-w-seq-mt"
    summary = "usemem -t N: threads of one process writing anonymous memory past RAM into swap (the seed)"
    costs_needed = tuple(RECLAIM_COST_FIELDS)
    processes: ClassVar[bool] = False  # swap-w-seq: one process per CPU instead of threads of one

    threads: int = Field(80, ge=1, le=4096, description="usemem threads (one process, one CPU each)")
    memory_gb: float = Field(100.0, gt=0, le=1e6, description="GB written in all, over all threads")
    ram_gb: float = Field(32.0, gt=0, le=1e5, description="RAM of the machine in GB")
    swap_gb_s: float | None = Field(None, gt=0, le=1000, description="swap device write speed in GB/s per "
                                    "writer (default: the machine's swap_writepage cost)")
    batch: int = Field(SWAP_CLUSTER_MAX, ge=1, le=512, description="pages per reclaim pass "
                       "(SWAP_CLUSTER_MAX)")
    flush: Literal["per-page", "per-batch"] = Field("per-page", description="per-page: a dirty page is "
                                                    "flushed before it is written (the kernel); per-batch: "
                                                    "one flush per batch (a what-if)")
    thp: Literal["never"] = Field("never", description="transparent huge pages (only 'never' is modelled)")
    phase: Literal["reclaim", "fill"] = Field("reclaim", description="reclaim: RAM is full (steady state); "
                                              "fill: memory still free, no reclaim")
    kswapd: bool = Field(True, description="false: only the allocating threads reclaim, as in a memory cgroup "
                                           "at its limit (kswapd does not run)")

    swap_locks: bool = Field(True, description="true: a swap slot comes from the per-CPU cache, refilled 64 at a "
                             "time under swap_avail_lock and si->lock (interrupts on), and the swap cache is "
                             "updated under its tree_lock (interrupts off), as 4.12 does; false: that work as "
                             "plain CPU time (an ablation)")

    zone_lock: bool = Field(True, description="true: pages are allocated from and freed to per-CPU lists, refilled "
                            "and drained pcp->batch=31 at a time under the node's zone->lock with interrupts off "
                            "(free at pcp->high=186), and a direct reclaimer whose allocation still fails empties "
                            "every CPU's lists through drain_all_pages (a worker on each CPU, woken by a reschedule "
                            "IPI), as 4.12 does; false: straight from and to the free pages (an ablation)")
    worker_wakeup: Literal["immediate", "cfs"] = Field("immediate", description="how the page list drain's "
                                                      "kworkers get their CPU: immediate: every wakeup preempts the "
                                                      "running task at once; cfs: as 4.12's CFS, only a worker that "
                                                      "slept past the wakeup granularity (4 ms on 8+ CPUs) preempts, "
                                                      "the others run when the task's 12 ms slice ends")
    mem_bandwidth: bool = Field(True, description="true: a page write waits for its socket's memory bandwidth "
                                "(cost mem_write_page per page, times the CPUs of the socket writing at once); false: "
                                "it costs its CPU time only (an ablation)")

    _run: SwapRun | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _ram_below_memory(self) -> SwapWSeqMt:
        if self.phase == "reclaim" and self.memory_gb <= self.ram_gb:
            raise ValueError(f"memory_gb ({self.memory_gb:g}) must exceed ram_gb ({self.ram_gb:g}) for reclaim")
        return self

    # --- placement -------------------------------------------------------------------------------

    @classmethod
    def placement(cls, m: Machine, threads: int, kswapd: bool = True) -> tuple[list[int], list[int]]:
        """CPUs of the usemem threads, and of each node's kswapd (none without kswapd)."""
        t = m.topology
        order = sorted(range(m.ncpus), key=lambda c: (m.thread_of(c), m.core_of(c), m.socket_of(c)))
        nodes = t.numa_nodes if kswapd else 0
        room = m.ncpus - nodes
        if threads > room:
            less = ", less one per node for kswapd" if kswapd else ""
            raise WorkloadError(f"workload {cls.name}: field threads: {threads} is more than {room} "
                                f"(the machine's {m.ncpus} CPUs{less})")
        usemem = sorted(order[:threads])
        idle = [c for c in order[threads:]]
        kswapd = []
        for node in range(nodes):
            mine = [c for c in idle if m.node_of(c) == node and c not in kswapd]
            kswapd.append(mine[0] if mine else next(c for c in idle if c not in kswapd))
        return usemem, kswapd

    def swap_trees(self, ncpus: int) -> int:
        """Swap cache trees of the device: the swap holds what does not fit in RAM."""
        return swap_trees(max(self.memory_gb - self.ram_gb, 0) * GB, ncpus)

    # --- running -----------------------------------------------------------------------------------

    def start(self, sim: SimMachine, seed: int) -> None:
        m = sim.machine
        usemem, kswapd = self.placement(m, self.threads, self.kswapd)
        nodes = m.topology.numa_nodes
        wmin, wlow, whigh = watermarks(int(self.ram_gb * 1024 * 1024), nodes)
        pfn = iter(range(1, 1 << 62))
        fill = self.phase == "fill"
        mms = {cpu: MmStruct([cpu]) for cpu in usemem} if self.processes else None
        mem = Memory([PgData(n, min_wmark=wmin, low_wmark=wlow, high_wmark=whigh,
                             free_pages=0 if fill else wlow, unlimited=fill, new_pfn=pfn.__next__,
                             zone_lock=self.zone_lock)
                      for n in range(nodes)], MmStruct([] if mms else usemem))
        if mms:
            for pgdat in mem.nodes:  # a process allocates on its own CPU's node
                pgdat.owners = [mm for cpu, mm in mms.items() if m.node_of(cpu) == pgdat.node] or list(mms.values())
        swap = SwapDevice(m.ncpus, self.swap_trees(m.ncpus)) if self.swap_locks else None
        run = self._run = SwapRun(mem, Reclaim(sim.smp, mem, flush=self.flush, batch=self.batch, swap=swap),
                                  [0] * len(usemem), usemem, kswapd, mms,
                                  [False] * m.ncpus if self.mem_bandwidth else None,
                                  [[c for c in usemem if m.socket_of(c) == k] for k in range(m.topology.sockets)],
                                  sim.workqueue)
        sim.workqueue.cfs = self.worker_wakeup == "cfs"
        if self.swap_gb_s is not None:
            sim.costs.pin(CostId.SWAP_WRITEPAGE, round(PAGE_SIZE / self.swap_gb_s))
        # Threads start at random points of their cycle (seeded): real threads never move in lock-step.
        rng = np.random.default_rng(seed)
        stagger = rng.integers(0, STAGGER_NS, size=len(usemem))
        for cpu in range(m.ncpus):
            if cpu in usemem:
                i = usemem.index(cpu)
                sim.start(cpu, self._usemem(sim, run, cpu, i, int(stagger[i])), "usemem", 5000 + i)
            elif cpu in kswapd and not fill:
                node = kswapd.index(cpu)
                sim.start(cpu, run.reclaim.kswapd(cpu, mem.nodes[node]), f"kswapd{node}", 90 + node,
                          user_mm=False)
            else:
                sim.start(cpu, None)

    @staticmethod
    def _usemem(sim: SimMachine, run: SwapRun, cpu: int, i: int, start_ns: int) -> KernelCode:
        yield Busy(start_ns, "usemem start")
        pgdat = run.mem.nodes[sim.machine.node_of(cpu)]
        direct = run.reclaim.try_to_free_pages
        mm = run.mms[cpu] if run.mms else None
        socket = sim.machine.socket_of(cpu)
        while True:
            yield from do_anonymous_page(sim, cpu, run.mem, pgdat, direct, mm)
            ns = sim.cost(CostId.USER_WRITE_PAGE, cpu)
            if run.writing is None:
                yield Busy(ns, "usemem write")
            else:
                # The socket's memory serves the pages being written at once in turn: with n CPUs writing (this
                # one too; a write an interrupt has set aside does not count), a page takes n times its share of
                # the bandwidth, or its CPU time if that is longer.
                n = 1 + sum(1 for o in run.socket_cpus[socket]
                            if run.writing[o] and sim.cpus[o].stack[-1].kind == "task")
                stall = n * sim.cost(CostId.MEM_WRITE_PAGE, cpu) - ns
                run.writing[cpu] = True
                yield Busy(ns, "usemem write")
                if stall > 0:
                    yield Busy(stall, "memory bandwidth")
                run.writing[cpu] = False
            run.written[i] += 1

    def counters(self) -> dict[str, int]:
        if self._run is None:
            return {}
        run = self._run
        s = run.mem.stats
        return {
            "pages_written": sum(run.written),
            "faults": s.faults,
            "pages_deactivated": s.pages_deactivated,
            "pages_scanned": s.pages_scanned,
            "pages_reclaimed": s.pages_reclaimed,
            "reclaimed_by_kswapd": s.reclaimed_by_kswapd,
            "alloc_direct_reclaim": s.alloc_direct_reclaim,
            "tlb_flushes": s.tlb_flushes,
            "flush_wait_ns": s.flush_wait_ns,
            "pages_reused_before_flush": s.pages_reused_before_flush,
            "swap_slot_refills": run.reclaim.swap.refills if run.reclaim.swap else 0,
            "pcp_refills": sum(n.zone.bulk_allocs for n in run.mem.nodes if n.zone),
            "pcp_bulk_frees": sum(n.zone.bulk_frees for n in run.mem.nodes if n.zone),
            "pcp_drains": run.mem.pcp_drain.drains,
            "pcp_drain_skips": run.mem.pcp_drain.skipped,
            "pcp_drained_pages": run.mem.pcp_drain.pages,
            "resched_ipis": run.workqueue.resched_ipis if run.workqueue else 0,
            "worker_waits": run.workqueue.worker_waits if run.workqueue else 0,
            **lock_counters(self.locks()),
        }

    def locks(self) -> list[SpinLock]:
        """Every lock the run takes: each node's lru_lock, then the swap device's, then each node's zone->lock."""
        if self._run is None:
            return []
        swap = self._run.reclaim.swap
        dev = [swap.swap_avail_lock, swap.lock, *swap.tree_locks] if swap else []
        zones = [n.zone.lock for n in self._run.mem.nodes if n.zone]
        return [n.lru_lock for n in self._run.mem.nodes] + dev + zones


class SwapWSeq(SwapWSeqMt):
    """vm-scalability's case-swap-w-seq: `usemem` as N processes, each writing its own anonymous memory. The
    reclaim is the same, but a page's mm runs on one CPU only, so its shootdown goes to that CPU alone (or is
    local): what the threads' 79-CPU shootdowns cost shows as the difference between the two workloads."""

    name = "swap-w-seq"
    summary = "usemem N processes writing anonymous memory past RAM into swap (one CPU per mm: 1-CPU shootdowns)"
    processes: ClassVar[bool] = True

    threads: int = Field(80, ge=1, le=4096, description="usemem processes (one CPU each)")
