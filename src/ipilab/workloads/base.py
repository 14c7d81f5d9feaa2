"""What every workload is: typed parameters, and threads started on a simulated machine."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ipilab.sim.machine import SimMachine


class WorkloadError(ValueError):
    """A bad workload name or parameter; the message names the field and what is allowed."""


class Workload(BaseModel):
    """Parameters of a workload. Subclasses say what runs on which CPU in `start`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    name: ClassVar[str]
    summary: ClassVar[str]
    costs_needed: ClassVar[tuple[str, ...]] = ()  # machine costs beyond the required ones

    def start(self, sim: SimMachine, seed: int) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """Monotone counters of the workload's own progress, sampled during the run."""
        return {}


def parse_cpulist(text: str, ncpus: int, field: str) -> list[int]:
    """`all`, or a kernel cpulist such as `0-3,8,10-11`, checked against the machine."""
    if text.strip() == "all":
        return list(range(ncpus))
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last >= ncpus:  # before the range is built: `0-99999999999999` must not fill the memory
                raise WorkloadError(f"field {field}: CPU(s) {last} outside the machine's CPUs 0-{ncpus - 1}")
            cpus.update(range(first, last + 1))
    except ValueError as e:
        if isinstance(e, WorkloadError):
            raise
        raise WorkloadError(f"field {field}: {text!r} is not a CPU list like 0-3,8") from None
    bad = sorted(c for c in cpus if not 0 <= c < ncpus)
    if bad or not cpus:
        shown = ",".join(map(str, bad[:4])) + (",..." if len(bad) > 4 else "") if bad else text
        raise WorkloadError(f"field {field}: CPU(s) {shown} outside the machine's CPUs 0-{ncpus - 1}")
    return sorted(cpus)


def make_workload(cls: type[Workload], settings: dict[str, str]) -> Workload:
    try:
        return cls.model_validate(settings)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(workload)"
        allowed = ", ".join(f"{k}" for k in cls.model_fields)
        hint = f"; known fields: {allowed}" if err["type"] == "extra_forbidden" else ""
        raise WorkloadError(f"workload {cls.name}: field {field}: {err['msg']}{hint}") from None
