"""What kernel code yields to whoever runs it: the atomic steps between which other CPUs may act.

The kernel model is written as Python generators. Code between two yields happens at one instant and
atomically; a yield hands control back to the runner (the simulator, which advances time, or the model
checker, which picks which CPU moves next). So the yields are exactly the kernel's interleaving points.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ipilab.machine.costs import CostId


@dataclass(frozen=True, slots=True)
class Busy:
    """The CPU executes for `ns` nanoseconds (0 is allowed: a pure interleaving point)."""

    ns: int
    what: str


@dataclass(frozen=True, slots=True)
class SpinUntil:
    """The CPU spins until `cond()` holds. The runner re-tests it whenever `watch` is notified.

    With `timeout_ns`, the spin gives up after that long; the runner sends back whether `cond()` held.
    """

    cond: Callable[[], bool]
    watch: object
    what: str
    timeout_ns: int | None = None


@dataclass(frozen=True, slots=True)
class LocalIrq:
    """local_irq_disable() / local_irq_enable(): pending interrupts are taken when enabled."""

    enable: bool


@dataclass(frozen=True, slots=True)
class Halt:
    """The idle CPU executes HLT: it stops until an interrupt arrives."""


Step = Busy | SpinUntil | LocalIrq | Halt
KernelCode = Generator[Step, Any, Any]

IRQS_OFF = LocalIrq(False)
IRQS_ON = LocalIrq(True)


class Platform(Protocol):
    """What the kernel model needs from the machine it runs on (simulated, replayed or model-checked)."""

    @property
    def now(self) -> int:
        """The current time in nanoseconds (for statistics only: the model's behaviour never reads it)."""
        ...

    def cost(self, what: CostId, cpu: int) -> int:
        """Nanoseconds that operation `what` takes on `cpu` this time (a distribution is drawn anew)."""
        ...

    def cacheline(self, cpu: int, other: int) -> int:
        """Nanoseconds for `cpu` to pull a cache line that `other` wrote last (by their distance)."""
        ...

    def raise_ipi(self, src: int, dst: int, vector: int) -> None:
        """The ICR write for `dst` has completed: the interrupt is on its way."""
        ...

    def notify(self, watch: object) -> None:
        """State that a spinning CPU may be watching has changed."""
        ...

    def trace(self, cpu: int, name: str, /, **fields: object) -> None:
        """A tracepoint fires on `cpu` now."""
        ...

    def queue_work_on(self, src: int, dst: int, work: Callable[[int], KernelCode]) -> KernelCode:
        """Code for `src` that queues `work` for `dst`'s kernel worker and wakes it (kernel/sched.py; only the
        simulator runs code that needs it)."""
        ...

    def run_work_here(self, cpu: int, work: Callable[[int], KernelCode]) -> KernelCode:
        """Code for `cpu` that runs `work` in its own worker at once, as when the caller goes to sleep."""
        ...

    def raise_at(self, cpu: int, ns: int, vector: int) -> None:
        """`vector` becomes pending on `cpu` at time `ns` (a local interrupt, not an IPI), unless it already is."""
        ...

    def set_nr_if_polling(self, cpu: int) -> bool:
        """If `cpu` is idle and polling, set its NEED_RESCHED and return True (it needs no IPI)."""
        ...

    def interrupts_taken(self, cpu: int) -> int:
        """How many interrupts `cpu` has taken so far (for statistics only)."""
        ...

    def is_lazy_tlb(self, cpu: int) -> bool:
        """`cpu` runs no user mm of its own (idle or a kernel thread), so its TLB is flushed lazily."""
        ...
