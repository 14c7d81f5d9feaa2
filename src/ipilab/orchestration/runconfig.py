"""One simulation's configuration, built from what a user gives: a machine, a kernel, a workload, the window,
the seed, the engine and `--set KEY=VALUE` settings. `simulate`, `export --from-sim`, `reproduce seed` and
`sweep` build every run here, so a setting means the same thing in each and is refused with the same message.

A setting goes where its key says:
- a field of the workload (`ipilab simulate --help` lists each workload's);
- a machine field: topology (TOPOLOGY_KEYS), background interrupts (BACKGROUND_KEYS), or `spread` (every
  constant cost becomes lognormal with p90 = spread x median);
- a machine cost, in whole nanoseconds (`ipilab machines` lists them).
A key that is both a workload field and a machine field or cost is refused, naming both, rather than guessed.
Every refusal is a ConfigError (or one of its kinds: MachineError, KernelSpecError, WorkloadError).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ipilab.kernel.features import Kernel, resolve_kernel
from ipilab.machine.model import ALL_COST_FIELDS, MAX_COST_NS, Background, Machine, MachineError, Topology, load_machine
from ipilab.sim.run import check_window, choose_engine, simulate
from ipilab.validation import ConfigError, first_error
from ipilab.workloads import WORKLOADS, Workload, WorkloadError, workload_from_settings

TOPOLOGY_KEYS = tuple(k for k in Topology.model_fields if k != "cpu_model")
BACKGROUND_KEYS = tuple(k for k in Background.model_fields if k != "source")
MACHINE_KEYS = (*TOPOLOGY_KEYS, *BACKGROUND_KEYS, "spread")
# Every key `--set` takes for some workload (a sweep's settings and varied parameters are checked against it).
SETTING_KEYS = tuple(dict.fromkeys([*(k for w in WORKLOADS.values() for k in w.model_fields), *MACHINE_KEYS,
                                    *ALL_COST_FIELDS]))


@dataclass(frozen=True)
class Settings:
    """`--set` settings sorted by what they change."""

    workload: dict[str, str]
    machine: dict[str, str]  # topology and background fields, and spread
    costs: dict[str, int]  # ns


@dataclass(frozen=True)
class RunConfig:
    """What one simulation runs: everything `ipilab.sim.run.simulate` takes."""

    machine: Machine
    kernel: Kernel
    workload: Workload
    seconds: float  # the window measured, after the warm-up (simulated seconds)
    warmup: float
    intervals: int  # parts of the window: confidence intervals and the per-CPU timeline
    seed: int
    engine: str  # "fast" or "reference": what "auto" chose for this configuration

    def simulate(self, trace_out: Path | None = None) -> dict[str, Any]:
        return simulate(self.machine, self.kernel, self.workload, seconds=self.seconds, seed=self.seed,
                        trace_out=trace_out, warmup=self.warmup, intervals=self.intervals, engine=self.engine)


def parse_pairs(pairs: Iterable[str], option: str = "--set") -> dict[str, str]:
    """`KEY=VALUE` strings of a repeatable option as a dict (a later key wins)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} takes key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def cost_ns(option: str, key: str, value: str | int) -> int:
    """A machine cost given on the command line or in a spec: whole nanoseconds within MAX_COST_NS."""
    try:
        ns = int(value)
    except ValueError:
        raise ConfigError(f"{option} {key}: a cost is whole nanoseconds, got {value!r}") from None
    if not 0 <= ns <= MAX_COST_NS:
        raise ConfigError(f"{option} {key}={ns}: a cost must be greater than or equal to 0 and at most "
                          f"{MAX_COST_NS:,} ns")
    return ns


def _meanings(key: str, workload: str, workload_keys: tuple[str, ...]) -> list[str]:
    """Every thing `key` names, in words."""
    out = []
    if key in workload_keys:
        out.append(f"a field of workload {workload}")
    if key in TOPOLOGY_KEYS:
        out.append("a machine topology field")
    if key in BACKGROUND_KEYS:
        out.append("a machine background field")
    if key == "spread":
        out.append("the spread of the machine's costs")
    if key in ALL_COST_FIELDS:
        out.append("a machine cost")
    return out


def route_settings(settings: Mapping[str, str], workload: str, workload_keys: tuple[str, ...] | None = None
                   ) -> Settings:
    """Sort `--set` settings into workload fields (`workload_keys`: all of the workload's fields by default),
    machine fields and costs."""
    if workload_keys is None:
        workload_keys = tuple(WORKLOADS[workload].model_fields)
    routed = Settings({}, {}, {})
    for key, value in settings.items():
        meanings = _meanings(key, workload, workload_keys)
        if len(meanings) > 1:
            raise ConfigError(f"--set {key}: ambiguous: it is both {meanings[0]} and {meanings[1]}; the model "
                              "cannot tell which is meant (rename one of them)")
        if not meanings:
            raise ConfigError(f"--set {key}: unknown; workload fields: {', '.join(workload_keys)}; "
                              f"machine: {', '.join(MACHINE_KEYS)}; or a cost name (`ipilab machines`)")
        if key in workload_keys:
            routed.workload[key] = value
        elif key in ALL_COST_FIELDS:
            routed.costs[key] = cost_ns("--set", key, value)
        else:
            routed.machine[key] = value
    return routed


def build_machine(name: str, fields: Mapping[str, str], costs: Mapping[str, int]) -> Machine:
    """A preset or machine file with `--set`'s machine fields (topology, background, `spread`) and costs."""
    m = load_machine(name)
    fields = dict(fields)
    spread = fields.pop("spread", None)
    # Costs first: the background a --set turns on may need the costs the same command line gives.
    costs = {key: cost_ns("--set", key, ns) for key, ns in costs.items()}
    if costs:
        m = m.with_costs(**costs)
    if fields:
        data = m.model_dump()
        data["topology"].update({k: v for k, v in fields.items() if k not in BACKGROUND_KEYS})
        data["background"].update({k: v for k, v in fields.items() if k in BACKGROUND_KEYS})
        if any(k in BACKGROUND_KEYS for k in fields):
            data["background"]["source"] = "set by the user"
        try:
            m = Machine.model_validate(data)
        except ValidationError as e:
            # a field's own error names the field; a check across fields (ncpus) names its table
            err = first_error(e, drop=1)
            raise MachineError(f"--set {err.field or '(machine)'}: {err.message}") from None
    if spread is not None:
        try:
            ratio = float(spread)
        except ValueError:
            raise MachineError(f"--set spread: a p90/median ratio such as 2, got {spread!r}") from None
        m = m.with_spread(ratio)
    return m


def build_run(machine: str, kernel: str, workload: str, settings: Mapping[str, str] | None = None, *,
              costs: Mapping[str, str] | None = None, seconds: float, warmup: float = 0.0, intervals: int = 0,
              seed: int = 1, engine: str = "auto", workload_keys: tuple[str, ...] | None = None,
              option_prefix: str = "--") -> RunConfig:
    """Check and build one run. `settings`: `--set` pairs; `costs`: `--cost NAME=NS` pairs (costs only; they
    win over a --set of the same cost); `workload_keys`: the workload fields a user may set, when not all
    (the seed experiment sets its phase itself); `engine`: "auto", "fast" or "reference" (forcing fast on
    what only the reference engine models is refused); `option_prefix`: how the window's names are written
    in a message ("--" as options, "" as a spec's fields). Raises ConfigError naming the option or field."""
    if workload not in WORKLOADS:
        raise WorkloadError(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    routed = route_settings(settings or {}, workload, workload_keys)
    for key in costs or {}:
        if key not in ALL_COST_FIELDS:
            raise ConfigError(f"--cost: unknown cost {key!r}; known: {', '.join(ALL_COST_FIELDS)}")
    given_costs = {key: cost_ns("--cost", key, value) for key, value in (costs or {}).items()}
    m = build_machine(machine, routed.machine, {**routed.costs, **given_costs})
    k = resolve_kernel(kernel)
    w = workload_from_settings(workload, routed.workload)
    check_window(seconds, warmup, intervals, option_prefix)
    return RunConfig(m, k, w, seconds, warmup, intervals, seed, choose_engine(m, k, w, engine))
