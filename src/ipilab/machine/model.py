"""A machine: its topology and what each operation on it costs, every cost with its source."""

from __future__ import annotations

import itertools
import math
import tomllib
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.special
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ipilab.files import TomlFileError, read_toml
from ipilab.kernel.x86 import APIC_MODES, Apic
from ipilab.validation import ConfigError, first_error

# Costs every preset must give (nanoseconds), with what they mean.
COST_FIELDS: dict[str, str] = {
    "icr_write": "sender time for one ICR write (WRMSR with its fence) or one PV-IPI hypercall",
    "ipi_latency_same_socket": "ICR write done -> interrupt pending in a target on the same socket",
    "ipi_latency_cross_socket": "ICR write done -> interrupt pending in a target on the other socket",
    "irq_entry": "interrupt acceptance to the handler's first instruction (entry code, irq_enter)",
    "irq_exit": "handler's last instruction to the interrupted code (irq_exit, IRET)",
    "idle_exit": "extra latency when the interrupt finds the CPU halted in its idle state",
    "poll_notice": "a polling idle CPU notices NEED_RESCHED and leaves its poll loop",
    "cacheline_smt": "cache-line transfer between SMT siblings",
    "cacheline_same_socket": "cache-line transfer between cores of one socket",
    "cacheline_cross_socket": "cache-line transfer between sockets",
    "invlpg": "one INVLPG: flushing one page from the TLB",
    "tlb_flush_full": "a full TLB flush (CR3 reload) including the refills it causes soon after",
    "page_fault": "anonymous page fault on a dropped page: entry, allocation, zeroing, PTE set, return",
    "madvise_syscall": "madvise(MADV_DONTNEED) without its TLB flush: syscall, page-table walk, zap",
}

# Costs of background interrupts; needed only when the machine's [background] turns them on.
BACKGROUND_COST_FIELDS: dict[str, str] = {
    "tick": "the local timer interrupt's handler body (local_timer_entry -> local_timer_exit)",
    "vcpu_run": "how long a vCPU runs between two times its host deschedules it (background.vcpu_preemption)",
    "vcpu_preempt": "how long a descheduled vCPU stays off its physical CPU (background.vcpu_preemption)",
}

# Costs of the reclaim path (the swap-w-seq-mt workload); a preset may leave them out if no workload
# it runs needs them.
RECLAIM_COST_FIELDS: dict[str, str] = {
    "user_write_page": "the workload's own write of one 4 KB page (usemem's store loop)",
    "lru_page": "moving one page on or off an LRU list while holding lru_lock",
    "page_referenced": "trylock_page and the rmap walk that tests and clears a page's accessed bits",
    "add_to_swap": "a swap slot from the per-CPU cache and the page's insertion into the swap cache",
    "try_to_unmap": "the rmap walk that clears the page's PTE and records the batched flush",
    "swap_writepage": "writing one 4 KB page to the swap device (pmem: a synchronous copy)",
    "remove_mapping": "__remove_mapping: dropping the page from the swap cache, interrupts off",
    "free_page": "returning one reclaimed page to the page allocator",
    "swap_slot_scan": "scan_swap_map_slots' work per slot handed out, under si->lock (interrupts on)",
    "zone_page": "one page moved between the buddy lists and a per-CPU list under zone->lock (rmqueue_bulk, "
                 "free_pcppages_bulk; interrupts off)",
    "context_switch": "one switch between a task and a kernel worker (the drain's kworker), either way",
    "mem_write_page": "4 KB of DRAM writes at a socket's whole memory bandwidth: n pages written at once on a socket "
                      "take n times this each",
}
ALL_COST_FIELDS = {**COST_FIELDS, **RECLAIM_COST_FIELDS, **BACKGROUND_COST_FIELDS}


# z such that P(Z <= z) = 0.9 for a standard normal: a lognormal's p90 is median * exp(sigma * Z90).
Z90 = 1.2815515655446004
# The simulators keep CPU x CPU tables: 4,096 CPUs took 5.7 GB and 44 s for 0.1 ms (reference engine), and
# 65,536 (the field bounds' product) filled 15 GB before it was stopped; the fast engine stops at 1,024, and
# larger machines run on the reference engine.
MAX_MACHINE_CPUS = 4096
MAX_COST_NS = 1_000_000_000  # 1 s: a vCPU may run for hundreds of ms between two descheduling stretches


class Cost(BaseModel):
    """What one operation costs: a constant, or a distribution every use draws from (see machine/costs.py).

    - constant: `ns = 300`
    - lognormal (for hand-written presets, from a published median and spread): `dist = "lognormal"`,
      `median`, `p90`
    - empirical (as `ipilab calibrate` writes it): `dist = "empirical"`, `quantiles`: the sample's value at
      probabilities 0, 1/(k-1), ..., 1 (k >= 2 values, non-decreasing); a draw interpolates between them.

    `ns` is the cost's nominal value: the constant, or a distribution's median (filled in when absent); the
    sensitivity tables scale it. `n`, `estimator`, `trace` and `p50`/`p90`/`p99` record where a measured
    distribution came from."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=3)
    ns: int | None = Field(None, ge=0, le=MAX_COST_NS)
    dist: Literal["constant", "lognormal", "empirical"] = "constant"
    median: int | None = Field(None, ge=0, le=MAX_COST_NS)
    p90: int | None = Field(None, ge=0, le=MAX_COST_NS)
    quantiles: list[int] | None = Field(None, min_length=2, max_length=10_001)
    n: int | None = Field(None, ge=0, description="sample size behind a measured distribution")
    estimator: str | None = Field(None, description="what was measured, between which events")
    trace: str | None = Field(None, description="the trace(s) it was measured on")
    p50: int | None = Field(None, ge=0)
    p99: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> Cost:
        if self.dist == "constant":
            if self.ns is None:
                raise ValueError("a constant cost needs ns (whole nanoseconds, 0 to 1,000,000,000)")
            if self.median is not None or self.quantiles is not None:
                raise ValueError('median/p90/quantiles belong to a distribution: set dist = "lognormal" or '
                                 '"empirical"')
        elif self.dist == "lognormal":
            if self.median is None or self.p90 is None:
                raise ValueError('dist = "lognormal" needs median and p90 (ns)')
            if not 0 < self.median <= self.p90:
                raise ValueError(f"lognormal: need 0 < median <= p90, got median {self.median}, p90 {self.p90}")
            if self.ns is None:
                self.ns = self.median
        else:
            q = self.quantiles
            if q is None:
                raise ValueError('dist = "empirical" needs quantiles (ns at evenly spaced probabilities 0..1)')
            if any(v < 0 or v > MAX_COST_NS for v in q):
                raise ValueError(f"quantiles must be 0 to {MAX_COST_NS:,} ns")
            if any(b < a for a, b in itertools.pairwise(q)):
                raise ValueError("quantiles must be non-decreasing")
            if self.ns is None:
                self.ns = round(float(np.interp(0.5, np.linspace(0, 1, len(q)), q)))
        return self

    @property
    def is_constant(self) -> bool:
        return self.dist == "constant" or (self.dist == "empirical" and self.quantiles[0] == self.quantiles[-1])

    def sample(self, u: np.ndarray) -> np.ndarray:
        """The cost at each uniform draw `u` in [0, 1) (inverse transform), as whole nanoseconds."""
        if self.dist == "constant":
            return np.full(len(u), self.ns, np.int64)
        if self.dist == "lognormal":
            sigma = math.log(self.p90 / self.median) / Z90
            x = self.median * np.exp(sigma * scipy.special.ndtri(u))
        else:
            x = np.interp(u, np.linspace(0, 1, len(self.quantiles)), self.quantiles)
        return np.minimum(np.rint(x), MAX_COST_NS).astype(np.int64)

    def describe(self) -> str:
        """The cost in a few words: `300 ns`, `lognormal p50 300 ns, p90 600 ns`, `empirical p50 ... (n=...)`."""
        if self.dist == "constant":
            return f"{self.ns} ns"
        if self.dist == "lognormal":
            return f"lognormal p50 {self.median} ns, p90 {self.p90} ns"
        q = np.array(self.quantiles, float)
        p = np.linspace(0, 1, len(q))
        p50, p90, p99 = (round(float(np.interp(x, p, q))) for x in (0.5, 0.9, 0.99))
        n = f", n={self.n:,}" if self.n is not None else ""
        return f"empirical p50 {p50} ns, p90 {p90} ns, p99 {p99} ns{n}"


class Background(BaseModel):
    """What takes CPUs away from the cross-CPU calls without being one: the periodic timer tick, and in a
    VM the host descheduling vCPUs."""

    model_config = ConfigDict(extra="forbid")
    tick_hz: int = Field(0, ge=0, le=10_000, description="local timer interrupts per second on each CPU that "
                         "is not halted (0: none; CONFIG_HZ is 100 to 1000); the handler's body costs `tick`")
    vcpu_preemption: bool = Field(False, description="the host deschedules each running vCPU for `vcpu_preempt` "
                                  "ns after every `vcpu_run` ns (an overcommitted VM); nothing runs on it meanwhile")
    source: str = Field("none: no background interrupts modelled", min_length=3)


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sockets: int = Field(ge=1, le=16)
    cores_per_socket: int = Field(ge=1, le=512)
    threads_per_core: int = Field(ge=1, le=8)
    llc_mb_per_socket: float = Field(gt=0, le=100_000)
    numa_nodes: int = Field(ge=1, le=64)
    apic_mode: str
    cpu_model: str
    halt_poll_ns: int = Field(0, ge=0, le=MAX_COST_NS,
                              description="guest halt-poll window: idle CPUs poll this long first")

    @model_validator(mode="after")
    def _known_apic_mode(self) -> Topology:
        if self.apic_mode not in APIC_MODES:
            raise ValueError(f"apic_mode must be one of {', '.join(APIC_MODES)}, got {self.apic_mode!r}")
        if self.ncpus > MAX_MACHINE_CPUS:
            raise ValueError(f"sockets x cores_per_socket x threads_per_core = {self.sockets} x "
                             f"{self.cores_per_socket} x {self.threads_per_core} = {self.ncpus:,} CPUs; "
                             f"at most {MAX_MACHINE_CPUS:,}")
        if self.sockets % self.numa_nodes:
            raise ValueError(f"numa_nodes ({self.numa_nodes}) must divide sockets ({self.sockets}): nodes are "
                             "whole sockets here")
        return self

    @property
    def ncpus(self) -> int:
        return self.sockets * self.cores_per_socket * self.threads_per_core


class Machine(BaseModel):
    """A machine preset. CPUs are numbered as Linux numbers them on Intel servers: the first thread of
    every core, socket by socket, then the second threads in the same order."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    topology: Topology
    costs: dict[str, Cost]
    background: Background = Field(default_factory=Background)

    @model_validator(mode="after")
    def _all_costs_given(self) -> Machine:
        missing = sorted(set(COST_FIELDS) - self.costs.keys())
        unknown = sorted(self.costs.keys() - set(ALL_COST_FIELDS))
        if missing or unknown:
            raise ValueError(f"costs: missing {missing}, unknown {unknown}; allowed: {sorted(ALL_COST_FIELDS)}")
        if self.background.tick_hz and "tick" not in self.costs:
            raise ValueError("background.tick_hz is set but costs.tick (the timer handler's body) is not given")
        if self.background.vcpu_preemption and not {"vcpu_run", "vcpu_preempt"} <= self.costs.keys():
            raise ValueError("background.vcpu_preemption needs costs.vcpu_run and costs.vcpu_preempt")
        return self

    @property
    def ncpus(self) -> int:
        return self.topology.ncpus

    @cached_property
    def _placement(self) -> list[tuple[int, int, int]]:
        t = self.topology
        out = []
        for thread in range(t.threads_per_core):
            for socket in range(t.sockets):
                for core in range(t.cores_per_socket):
                    out.append((socket, core, thread))
        return out

    def socket_of(self, cpu: int) -> int:
        return self._placement[cpu][0]

    def core_of(self, cpu: int) -> int:
        return self._placement[cpu][1]

    def thread_of(self, cpu: int) -> int:
        return self._placement[cpu][2]

    def node_of(self, cpu: int) -> int:
        """NUMA node: sockets split evenly into `numa_nodes` (one node per socket on the presets)."""
        t = self.topology
        return self.socket_of(cpu) * t.numa_nodes // t.sockets

    def distance(self, a: int, b: int) -> int:
        """0: same core (or same CPU), 1: same socket, 2: across sockets."""
        sa, ca, _ = self._placement[a]
        sb, cb, _ = self._placement[b]
        if sa != sb:
            return 2
        return 0 if ca == cb else 1

    def apic(self, use_shorthand: bool) -> Apic:
        # x2APIC logical cluster = APIC ID >> 4; APIC IDs are (socket, core, thread) packed, so a
        # cluster holds 8 cores' two threads (or 16 cores without SMT).
        t = self.topology
        per_cluster = 16 // t.threads_per_core if t.threads_per_core <= 16 else 1
        clusters = tuple(s * 1000 + c // per_cluster for s, c, _ in self._placement)
        return Apic(t.apic_mode, clusters, use_shorthand)

    def with_costs(self, **ns: int) -> Machine:
        """A copy with some costs changed (the sensitivity and sweep tools use this)."""
        costs = dict(self.costs)
        for key, value in ns.items():
            if key not in ALL_COST_FIELDS:
                raise KeyError(key)
            was = f"preset: {costs[key].ns} ns" if key in costs else "not in the preset"
            costs[key] = Cost(ns=value, source=f"set by the user ({was})")
        return self.model_copy(update={"costs": costs})

    def with_spread(self, ratio: float) -> Machine:
        """A copy whose constant costs (above 0) become lognormal around the same median with p90 = ratio x
        median: a stated assumption of spread where no measurement gives one (`--set spread=R`)."""
        if not 1 <= ratio <= 100:
            raise MachineError(f"spread: a p90/median ratio from 1 (none) to 100, got {ratio:g}")
        if ratio == 1:
            return self
        costs = {}
        for key, cost in self.costs.items():
            if cost.dist == "constant" and cost.ns:
                cost = Cost(dist="lognormal", median=cost.ns, p90=max(cost.ns, round(cost.ns * ratio)),
                            source=f"{cost.source} [spread assumed: lognormal, p90 = {ratio:g} x median]")
            costs[key] = cost
        return self.model_copy(update={"costs": costs})


class MachineError(ConfigError):
    """A machine that cannot be loaded or built; the message names the file or option and the field."""


def preset_names() -> list[str]:
    folder = resources.files("ipilab.machine").joinpath("presets")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_machine(name_or_path: str) -> Machine:
    """A preset name (`ipilab machines`) or the path of a TOML file of the same shape."""
    if name_or_path.endswith(".toml"):
        where = name_or_path
        try:
            data = read_toml(Path(name_or_path))
        except TomlFileError as e:
            raise MachineError(str(e)) from None
    else:
        if name_or_path not in preset_names():
            raise MachineError(f"unknown machine {name_or_path!r}; known: {', '.join(preset_names())}")
        where = f"preset {name_or_path}"
        data = tomllib.loads(
            resources.files("ipilab.machine").joinpath("presets").joinpath(f"{name_or_path}.toml").read_text())
    try:
        return Machine.model_validate(data)
    except ValidationError as e:
        err = first_error(e)
        raise MachineError(f"{where}: field {err.field or '(top)'}: {err.message}") from None
