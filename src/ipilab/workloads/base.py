"""What every workload is: typed parameters, and threads started on a simulated machine."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ipilab.sim.machine import SimMachine
from ipilab.validation import ConfigError, first_error


class WorkloadError(ConfigError):
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


def make_workload(cls: type[Workload], settings: dict[str, str]) -> Workload:
    try:
        return cls.model_validate(settings)
    except ValidationError as e:
        err = first_error(e)
        hint = f"; known fields: {', '.join(cls.model_fields)}" if err.unknown else ""
        raise WorkloadError(f"workload {cls.name}: field {err.field or '(workload)'}: {err.message}{hint}") from None
