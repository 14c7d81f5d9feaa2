"""The costs of one run: every cost the simulator uses, by a typed id shared by both engines, and the
seeded streams its distributions are drawn from.

A machine file gives each cost as a constant or a distribution (machine/model.py `Cost`). A run draws a
distribution's cost anew at every use, from its own stream: one numpy generator per (CPU, cost), seeded by
the run's seed, so the draws of one CPU's IPI latencies do not depend on how often another CPU faulted, and
the reference and the fast engine, which use each cost at the same points, get the same numbers. Draws are
uniform doubles turned into costs by the inverse CDF, one double per draw, so drawing in blocks of any size
gives the same sequence.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the kernel model imports CostId, and machine/model.py imports the kernel's x86 facts
    from ipilab.machine.model import Cost, Machine


class CostId(IntEnum):
    """Every cost a simulation uses; the lower-case name is its key in a machine file."""

    ICR_WRITE = 0
    IPI_LATENCY_SAME_SOCKET = 1
    IPI_LATENCY_CROSS_SOCKET = 2
    IRQ_ENTRY = 3
    IRQ_EXIT = 4
    IDLE_EXIT = 5
    POLL_NOTICE = 6
    CACHELINE_SMT = 7
    CACHELINE_SAME_SOCKET = 8
    CACHELINE_CROSS_SOCKET = 9
    INVLPG = 10
    TLB_FLUSH_FULL = 11
    PAGE_FAULT = 12
    MADVISE_SYSCALL = 13
    USER_WRITE_PAGE = 14
    LRU_PAGE = 15
    PAGE_REFERENCED = 16
    ADD_TO_SWAP = 17
    TRY_TO_UNMAP = 18
    SWAP_WRITEPAGE = 19
    REMOVE_MAPPING = 20
    FREE_PAGE = 21
    TICK = 22
    VCPU_RUN = 23
    VCPU_PREEMPT = 24
    SWAP_SLOT_SCAN = 25
    ZONE_PAGE = 26
    MEM_WRITE_PAGE = 27
    CONTEXT_SWITCH = 28

    @property
    def key(self) -> str:
        return self.name.lower()


NCOSTS = len(CostId)

# Costs that depend on which two CPUs take part, by their distance (Machine.distance: 0 same core,
# 1 same socket, 2 across sockets). The CPU that pays draws from its own stream.
CACHELINE_BY_DISTANCE = (CostId.CACHELINE_SMT, CostId.CACHELINE_SAME_SOCKET, CostId.CACHELINE_CROSS_SOCKET)
IPI_LATENCY_BY_DISTANCE = (CostId.IPI_LATENCY_SAME_SOCKET, CostId.IPI_LATENCY_SAME_SOCKET,
                           CostId.IPI_LATENCY_CROSS_SOCKET)

ABSENT = -2  # `constant` of a cost the machine does not give
VARIABLE = -1  # `constant` of a cost drawn from a distribution
STREAM_SALT = 0xC057  # keeps the cost streams apart from the workloads' generators of the same seed


class MissingCost(ValueError):
    """A run used a cost its machine does not give."""


class RunCosts:
    """The costs of one run on `machine` with `seed`: constants, and a stream per (CPU, cost) for the rest.

    `constant[id]` is the cost in ns, VARIABLE when it is drawn, ABSENT when the machine lacks it. A
    workload may pin a cost for its run (`pin`, e.g. the swap device's speed)."""

    def __init__(self, machine: Machine, seed: int) -> None:
        self.machine = machine
        self.seed = seed
        self.ncpus = machine.ncpus
        self.spec: list[Cost | None] = [machine.costs.get(c.key) for c in CostId]
        self.pinned: dict[CostId, int] = {}
        self.constant = [ABSENT if s is None else (s.ns if s.is_constant else VARIABLE) for s in self.spec]
        self._generators: dict[tuple[int, int], np.random.Generator] = {}
        dist = [[machine.distance(a, b) for b in range(self.ncpus)] for a in range(self.ncpus)]
        self.cacheline = [[CACHELINE_BY_DISTANCE[d] for d in row] for row in dist]
        self.ipi_latency = [[IPI_LATENCY_BY_DISTANCE[d] for d in row] for row in dist]

    def pin(self, cost: CostId, ns: int) -> None:
        """Make `cost` the constant `ns` for this run (before it starts)."""
        self.pinned[cost] = ns
        self.constant[cost] = ns

    def variable(self) -> list[CostId]:
        """The costs drawn from distributions in this run, in id order."""
        return [c for c in CostId if self.constant[c] == VARIABLE]

    def missing(self, cost: CostId) -> MissingCost:
        return MissingCost(f"machine {self.machine.name} gives no cost {cost.key} (add [costs.{cost.key}] with ns "
                           "and source)")

    def draw(self, cost: CostId, cpu: int, count: int) -> np.ndarray:
        """The next `count` draws of `cost` on `cpu`'s stream, as int64 nanoseconds."""
        spec = self.spec[cost]
        if spec is None:
            raise self.missing(cost)
        gen = self._generators.get((cost, cpu))
        if gen is None:
            gen = self._generators[cost, cpu] = np.random.default_rng([self.seed, STREAM_SALT, int(cost), cpu])
        return spec.sample(gen.random(count))

    def describe(self, cost: CostId) -> dict[str, object]:
        """The cost as results report it: nominal ns, its distribution in words, and its source."""
        spec = self.spec[cost]
        if spec is None:
            raise self.missing(cost)
        if cost in self.pinned:
            ns = self.pinned[cost]
            return {"ns": ns, "dist": "constant", "describe": f"{ns} ns",
                    "source": f"set by the workload ({ns} ns; machine {spec.describe()})"}
        return {"ns": spec.ns, "dist": spec.dist, "describe": spec.describe(), "source": spec.source}
