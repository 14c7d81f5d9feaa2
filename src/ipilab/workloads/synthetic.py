"""N sender CPUs calling smp_call_function_many() on a cpumask, wait=1, at a given rate."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from ipilab.cpulist import parse_cpulist
from ipilab.kernel.smp import SmpFunc
from ipilab.kernel.steps import Busy, KernelCode, Platform
from ipilab.sim.machine import SimMachine
from ipilab.workloads.base import Workload


class Synthetic(Workload):
    name = "synthetic"
    summary = "sender CPUs call smp_call_function_many(mask, func, wait) with exponential gaps (Poisson)"

    senders: str = Field("0-1", description="CPU list of the senders")
    targets: str = Field("all", description="CPU list the calls go to (each sender skips itself)")
    rate: float = Field(100_000.0, gt=0, le=1e8, description="calls per second per sender")
    func_ns: int = Field(500, ge=0, le=10_000_000, description="what the called function costs (ns)")
    wait: bool = Field(True, description="the sender waits for every target (wait=1)")
    others: Literal["idle", "busy"] = Field("busy", description="what non-sender CPUs run")

    def start(self, sim: SimMachine, seed: int) -> None:
        n = sim.ncpus
        senders = parse_cpulist(self.senders, n, "senders")
        targets = parse_cpulist(self.targets, n, "targets")
        cost = self.func_ns

        def body(p: Platform, cpu: int, info: object) -> KernelCode:
            yield Busy(cost, "synthetic_func")

        func = SmpFunc("synthetic_func", body)
        for cpu in range(n):
            if cpu in senders:
                rng = np.random.default_rng([seed, cpu])
                sim.start(cpu, self._sender(sim, cpu, targets, func, rng), "synthetic", 1000 + cpu)
            elif self.others == "busy":
                sim.start(cpu, _user_loop(), "busyloop", 2000 + cpu)
            else:
                sim.start(cpu, None)

    def _sender(self, sim: SimMachine, cpu: int, targets: list[int], func: SmpFunc,
                rng: np.random.Generator) -> KernelCode:
        mean_gap = 1e9 / self.rate
        smp = sim.smp
        while True:
            yield Busy(int(rng.exponential(mean_gap)), "user")
            t0 = sim.now
            yield from smp.smp_call_function_many_cond(cpu, targets, func, None, wait=self.wait,
                                                       callsite="synthetic_sender+0x0/0x0")
            smp.stats.call_latencies_ns.append(sim.now - t0)


def _user_loop() -> KernelCode:
    while True:
        yield Busy(1_000_000, "user")
