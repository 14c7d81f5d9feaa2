"""A sweep specification (TOML): a base configuration, the parameters to vary, and the seeds.

    [base]                        # what every run shares (these are the defaults)
    machine = "vm-2cpu"           # a preset or a machine TOML file
    kernel = "v6.18"              # a version, a what-if (v4.12+coalesce_many) or a kernel TOML file
    workload = "synthetic"
    seconds = 0.01                # simulated window measured, after `warmup`
    warmup = 0.0
    intervals = 5                 # parts of the window: confidence intervals and the per-CPU timeline
    [base.set]                    # anything `ipilab simulate --set` / `reproduce seed --set` takes:
    rate = 50000                  # a workload field, a topology field, or a machine cost (ns)

    [vary]                        # crossed: every combination runs
    kernel = ["v4.12", "v4.13"]   # a list of values ...
    cores_per_socket = {from = 1, to = 4, step = 1}   # ... or an inclusive range

    [seeds]
    first = 1                     # seeds first, first+1, ... (each combination runs once per seed)
    count = 3

A parameter is one of machine, kernel, workload, seconds, warmup, intervals, seed, or a setting. The
whole grid is built and every run's machine, kernel and workload validated before any run starts, so a
bad spec fails at once, naming the field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ipilab.files import TomlFileError, read_toml
from ipilab.orchestration.runconfig import SETTING_KEYS, RunConfig, build_run
from ipilab.validation import ConfigError, first_error

Scalar = bool | int | float | str
BASE_KEYS = ("machine", "kernel", "workload", "seconds", "warmup", "intervals")
MAX_RUNS = 1_000_000


class SpecError(ConfigError):
    """A bad sweep spec; the message names the file and the field."""


class Range(BaseModel):
    """An inclusive range: from, from+step, ... up to `to`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)
    start: float = Field(alias="from")
    to: float
    step: float = Field(1, gt=0)

    @model_validator(mode="after")
    def _not_empty(self) -> Range:
        if self.start > self.to:
            raise ValueError(f"empty range: from ({self.start:g}) is above to ({self.to:g})")
        if (self.to - self.start) / self.step >= MAX_RUNS:
            raise ValueError(f"range of more than {MAX_RUNS:,} values")
        return self

    def values(self) -> list[int | float]:
        n = math.floor((self.to - self.start) / self.step + 1e-9) + 1
        if all(float(x).is_integer() for x in (self.start, self.step)):
            return [int(self.start + i * self.step) for i in range(n)]
        return [round(self.start + i * self.step, 12) for i in range(n)]


class Base(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    machine: str = "vm-2cpu"
    kernel: str = "v6.18"
    workload: str = "synthetic"
    # their bounds are every run's: configure() checks them (sim.run.check_window), varied or not
    seconds: float = 0.01
    warmup: float = 0.0
    intervals: int = 5
    set: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("set")
    @classmethod
    def _known_settings(cls, v: dict[str, Scalar]) -> dict[str, Scalar]:
        for key in v:
            if key not in SETTING_KEYS:
                raise ValueError(f"{key}: unknown setting; known: {', '.join(SETTING_KEYS)}")
        return v


class Seeds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first: int = Field(1, ge=0, le=2**63 - 1)
    count: int = Field(1, ge=1, le=100_000)

    @model_validator(mode="after")
    def _last_seed_fits(self) -> Seeds:
        if self.first + self.count - 1 > 2**63 - 1:
            raise ValueError(f"the last seed, first + count - 1 = {self.first + self.count - 1}, is past 2^63-1")
        return self


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: Base = Field(default_factory=Base)
    vary: dict[str, list[Scalar] | Range] = Field(default_factory=dict)
    seeds: Seeds | None = None

    @field_validator("vary", mode="before")
    @classmethod
    def _known_parameters(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        known = (*BASE_KEYS, "seed", *SETTING_KEYS)
        out: dict[str, Any] = {}
        for key, values in v.items():
            if key not in known:
                raise ValueError(f"{key}: unknown parameter; known: {', '.join(known)}")
            if isinstance(values, list) and not values:
                raise ValueError(f"{key}: empty list")
            if isinstance(values, dict):  # a range: its own errors, named
                try:
                    values = Range.model_validate(values)
                except ValidationError as e:
                    err = first_error(e)
                    msg = "unknown field; a range takes from, to, step" if err.unknown else err.message
                    raise ValueError(f"{key}{'.' + err.field if err.field else ''}: {msg}") from None
            elif not isinstance(values, list):
                raise ValueError(f"{key}: a list of values or a range {{from, to, step}}, got {values!r}")
            out[key] = values
        return out

    @model_validator(mode="after")
    def _one_source_of_seeds(self) -> SweepSpec:
        if "seed" in self.vary and self.seeds is not None:
            raise ValueError("vary.seed and [seeds] both give the seeds: use one")
        return self

    def axes(self) -> dict[str, list[Scalar]]:
        """The varied parameters and their values, in spec order (seed excluded)."""
        return {k: (v.values() if isinstance(v, Range) else list(v)) for k, v in self.vary.items() if k != "seed"}

    def seed_list(self) -> list[int]:
        if "seed" in self.vary:
            v = self.vary["seed"]
            seeds = v.values() if isinstance(v, Range) else v
            for seed in seeds:
                if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                    raise ValueError(f"vary.seed: {seed!r} is not a whole number from 0 to 2^63-1")
            return seeds  # type: ignore[return-value]
        s = self.seeds or Seeds()
        return list(range(s.first, s.first + s.count))


def configure(params: dict[str, Scalar], seed: int = 1) -> RunConfig:
    """One run's configuration from its parameters (BASE_KEYS plus `--set` settings), by the same builder as
    `ipilab simulate`. Raises ConfigError naming the field."""
    try:
        seconds, warmup, intervals = float(params["seconds"]), float(params["warmup"]), int(params["intervals"])
    except (TypeError, ValueError):
        raise ConfigError("seconds and warmup are numbers, intervals a whole number") from None
    settings = {k: str(v) for k, v in params.items() if k not in BASE_KEYS}
    return build_run(str(params["machine"]), str(params["kernel"]), str(params["workload"]), settings,
                     seconds=seconds, warmup=warmup, intervals=intervals, seed=seed, option_prefix="")


def run_id(params: dict[str, Scalar], seed: int) -> str:
    """A run's identity: its parameters and seed (what --resume matches)."""
    text = json.dumps({"params": params, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Run:
    index: int  # position in the grid: parameters crossed in spec order, seeds innermost
    run_id: str
    params: dict[str, Scalar]  # every parameter: BASE_KEYS, the base settings, the varied ones
    seed: int


def load_spec(path: Path) -> SweepSpec:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise SpecError(str(e)) from None
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        err = first_error(e)
        msg = "unknown field; " + _allowed(err.field.split(".")) if err.unknown else err.message
        raise SpecError(f"{path}: {err.field or '(top)'}: {msg}") from None


def _why(e: Exception) -> str:
    """A config error's message, without the command-line wording of the --set path."""
    return str(e).removeprefix("--set ")


def _allowed(loc: list[str]) -> str:
    models: dict[str, type[BaseModel]] = {"base": Base, "seeds": Seeds}
    if len(loc) == 1:
        return "allowed: base, vary, seeds"
    if loc[0] in models:
        return "allowed: " + ", ".join(models[loc[0]].model_fields)
    return "see `ipilab sweep --help`"


def expand(spec: SweepSpec, path: Path) -> list[Run]:
    """Every run of the grid, each configuration validated (SpecError naming the field if not)."""
    base = spec.base.model_dump(exclude={"set"})
    base.update(spec.base.set)
    axes = spec.axes()
    try:
        seeds = spec.seed_list()
    except ValueError as e:
        raise SpecError(f"{path}: {e}") from None
    total = math.prod(len(v) for v in axes.values()) * len(seeds)
    if total > MAX_RUNS:
        raise SpecError(f"{path}: vary: {total:,} runs; at most {MAX_RUNS:,}")
    try:
        configure(base)
    except ConfigError as e:
        raise SpecError(f"{path}: base: {_why(e)}") from None
    # Each value alone on the base first, so that an error names vary.KEY and the value.
    for key, values in axes.items():
        for value in values:
            try:
                configure({**base, key: value})
            except ConfigError as e:
                raise SpecError(f"{path}: vary.{key} = {value!r}: {_why(e)}") from None
    runs = []
    keys = list(axes)
    for combo in itertools.product(*axes.values()):
        params = {**base, **dict(zip(keys, combo, strict=True))}
        try:
            configure(params)
        except ConfigError as e:
            where = ", ".join(f"{k} = {v!r}" for k, v in zip(keys, combo, strict=True))
            raise SpecError(f"{path}: vary ({where}): {_why(e)}") from None
        for seed in seeds:
            runs.append(Run(len(runs), run_id(params, seed), params, seed))
    return runs
