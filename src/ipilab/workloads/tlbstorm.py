"""Threads of one process, one per CPU, each writing its own small mapping and dropping it with
madvise(MADV_DONTNEED), over and over: the TLB-shootdown storm the project captures on real kernels.

Each thread owns a mapping of `pages` pages. An iteration writes one byte to each page (every write
faults, since the page was dropped: do_anonymous_page allocates and zeroes a new one), then madvise zaps
the range, and the zap ends in flush_tlb_mm_range() over the process's mm_cpumask (the CPUs its threads
run on), waited for. A thread that has done its `iterations` exits and its CPU goes idle (lazy TLB).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from ipilab.cpulist import parse_cpulist
from ipilab.kernel.steps import Busy, KernelCode
from ipilab.kernel.tlb import flush_tlb_mm_range
from ipilab.machine.costs import CostId
from ipilab.sim.machine import SimMachine
from ipilab.workloads.base import Workload

# Threads start at seeded random points within this window: pthread_create() starts them one after
# another, tens of microseconds apart, so they never begin in lock-step.
STAGGER_NS = 100_000


class TlbStorm(Workload):
    name = "tlbstorm"
    summary = "threads on CPUs of one mm: write N pages (each write faults), madvise(MADV_DONTNEED) them, repeat"

    cpus: str = Field("all", description="CPU list the threads run on, one thread each")
    pages: int = Field(16, ge=1, le=512, description="pages each thread's mapping has: written and dropped "
                       "per iteration")
    iterations: int = Field(0, ge=0, le=100_000_000, description="iterations per thread, after which it exits "
                            "(0: until the run ends)")
    idle_mm_cpus: str = Field("", description="CPU list where the process ran before and that now idle "
                              "(in its mm_cpumask, lazy-TLB)")

    def start(self, sim: SimMachine, seed: int) -> None:
        n = sim.ncpus
        cpus = parse_cpulist(self.cpus, n, "cpus")
        extra = parse_cpulist(self.idle_mm_cpus, n, "idle_mm_cpus") if self.idle_mm_cpus else []
        mm_cpumask = sorted(set(cpus) | set(extra))
        stagger = np.random.default_rng(seed).integers(0, STAGGER_NS, size=len(cpus))
        for cpu in range(n):
            if cpu in cpus:
                i = cpus.index(cpu)
                sim.start(cpu, self._thread(sim, cpu, mm_cpumask, int(stagger[i])), "tlbstorm", 3000 + i)
            else:
                sim.start(cpu, None)

    def _thread(self, sim: SimMachine, cpu: int, mm_cpumask: list[int], start_ns: int) -> KernelCode:
        yield Busy(start_ns, "thread start")
        smp = sim.smp
        done = 0
        while self.iterations == 0 or done < self.iterations:
            for _ in range(self.pages):
                yield Busy(sim.cost(CostId.PAGE_FAULT, cpu), "page_fault")
            yield Busy(sim.cost(CostId.MADVISE_SYSCALL, cpu), "madvise")
            t0 = sim.now
            yield from flush_tlb_mm_range(smp, cpu, mm_cpumask, self.pages)
            smp.stats.call_latencies_ns.append(sim.now - t0)
            done += 1
