"""Threads of one process, one per CPU, each touching pages and dropping them with madvise(MADV_DONTNEED).

Every madvise ends in flush_tlb_mm_range() over the process's mm_cpumask (the CPUs its threads run
on), waiting for all of them: the classic TLB-shootdown storm.
"""

from __future__ import annotations

from pydantic import Field

from ipilab.kernel.steps import Busy, KernelCode
from ipilab.kernel.tlb import flush_tlb_mm_range
from ipilab.sim.machine import SimMachine
from ipilab.workloads.base import Workload, parse_cpulist


class TlbStorm(Workload):
    name = "tlbstorm"
    summary = "threads on CPUs of one mm: touch N pages, madvise(MADV_DONTNEED) them, repeat"

    cpus: str = Field("all", description="CPU list the threads run on, one thread each")
    pages: int = Field(16, ge=1, le=512, description="pages written and dropped per iteration")
    idle_mm_cpus: str = Field("", description="CPU list where the process ran before and that now idle "
                              "(in its mm_cpumask, lazy-TLB)")

    def start(self, sim: SimMachine, seed: int) -> None:
        n = sim.ncpus
        cpus = parse_cpulist(self.cpus, n, "cpus")
        extra = parse_cpulist(self.idle_mm_cpus, n, "idle_mm_cpus") if self.idle_mm_cpus else []
        mm_cpumask = sorted(set(cpus) | set(extra))
        for cpu in range(n):
            if cpu in cpus:
                sim.start(cpu, self._thread(sim, cpu, mm_cpumask), "tlbstorm", 3000 + cpus.index(cpu))
            else:
                sim.start(cpu, None)

    def _thread(self, sim: SimMachine, cpu: int, mm_cpumask: list[int]) -> KernelCode:
        fault = sim.cost("page_fault", cpu)
        madvise = sim.cost("madvise_syscall", cpu)
        smp = sim.smp
        while True:
            yield Busy(self.pages * fault, "page_fault")
            yield Busy(madvise, "madvise")
            t0 = sim.now
            yield from flush_tlb_mm_range(smp, cpu, mm_cpumask, self.pages)
            smp.stats.call_latencies_ns.append(sim.now - t0)
