"""Small machines with round-number costs, so that tests can work out the timing by hand."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ipilab.machine.model import COST_FIELDS, Machine
from ipilab.sim.fast.run import warm_up

# The team's real traces: ../shared/traces beside the checkout (or beside a directory above it, as from a
# git worktree). Tests that need one skip, saying where they looked, when it is absent.
SHARED_TRACES = next((p / "shared" / "traces" for p in Path(__file__).resolve().parents
                      if (p / "shared" / "traces").is_dir()),
                     Path(__file__).resolve().parents[2] / "shared" / "traces")


def sigint_default() -> None:
    """A Popen preexec_fn: a child started from a background job inherits SIGINT ignored (so Python would
    never raise KeyboardInterrupt); the Ctrl-C tests need it delivered as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tiny_machine(ncpus: int = 3, apic_mode: str = "x2apic_phys", **costs: int) -> Machine:
    """One socket of `ncpus` cores; every cost 0 unless given, so only the named costs take time."""
    values = dict.fromkeys(COST_FIELDS, 0)
    values.update(costs)
    return Machine.model_validate({
        "name": f"tiny-{ncpus}",
        "description": "test machine with hand-picked costs",
        "topology": {"sockets": 1, "cores_per_socket": ncpus, "threads_per_core": 1,
                     "llc_mb_per_socket": 1.0, "numa_nodes": 1, "apic_mode": apic_mode,
                     "cpu_model": "test", "halt_poll_ns": 0},
        "costs": {k: {"ns": v, "source": "test value"} for k, v in values.items()},
    })


@pytest.fixture(scope="session", autouse=True)
def fast_engine_compiled() -> None:
    """Compile the fast engine (or load numba's cache) once, before any test: the CLI tests' subprocesses
    then load the cached code instead of each compiling it under their timeouts."""
    warm_up()
