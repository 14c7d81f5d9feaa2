"""What a bad configuration is: one error type for every option, setting and file a user gives, and one way
to say which field a pydantic model refused and why.

Every layer raises its own subclass of ConfigError (MachineError, KernelSpecError, WorkloadError, ...), so
the command line catches ConfigError alone and prints its message as one line (exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError


class ConfigError(ValueError):
    """A machine, kernel, workload, window or setting that cannot be run; the message names the option or
    field and what is allowed, on one line."""


@dataclass(frozen=True)
class FieldError:
    """The first error of a pydantic validation: where, and why."""

    field: str  # dotted location ("topology.sockets"); "" when the model as a whole was refused
    message: str  # pydantic's, without the "Value error, " it puts before a validator's own message
    unknown: bool  # the field is not one the model has (an extra key)


def first_error(e: ValidationError, drop: int = 0) -> FieldError:
    """The first of `e`'s errors. `drop`: leading parts of the location to leave out (a caller that names the
    table itself); when nothing is left, the whole location is kept."""
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    field = ".".join(loc[drop:]) or ".".join(loc)
    return FieldError(field, err["msg"].removeprefix("Value error, "), err["type"] == "extra_forbidden")
