"""The event language shared by simulated runs and real kernel traces.

Every row is one kernel tracepoint hit: when (integer nanoseconds), on which CPU, in which task, which
tracepoint, and its fields under the kernel's own field names. A simulated run emits exactly these rows,
so every analysis reads a simulation and a real trace the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

# x86 interrupt vectors (arch/x86/include/asm/irq_vectors.h).
CALL_FUNCTION_SINGLE_VECTOR = 251
CALL_FUNCTION_VECTOR = 252
RESCHEDULE_VECTOR = 253
LOCAL_TIMER_VECTOR = 236

# The handler the kernel names as the callback of every function-call IPI it traces.
FUNCTION_CALL_CALLBACK = "generic_smp_call_function_single_interrupt+0x0/0x10"

# cpu_idle's state when a CPU leaves idle: (u32)PWR_EVENT_EXIT.
CPU_IDLE_EXIT = 4294967295


class Kind(Enum):
    """How a field is printed, so a writer and a parser agree on it."""

    INT = "int"  # decimal
    PTR = "ptr"  # %p: 16 hex digits (hashed in ftrace text)
    SYM = "sym"  # %pS / %ps: a kernel symbol, maybe with +off/size
    MASK = "mask"  # %*pb: hex bitmap, comma every 32 bits
    STR = "str"


@dataclass(frozen=True)
class EventFormat:
    """One tracepoint: its subsystem, its fields in print order, and how they are joined."""

    system: str
    fields: tuple[tuple[str, Kind], ...]
    separator: str = " "


# The tracepoints ipilab reads and writes, with the field order of their TP_printk in Linux 6.x.
FORMATS: dict[str, EventFormat] = {
    "csd_queue_cpu": EventFormat(
        "csd", (("cpu", Kind.INT), ("callsite", Kind.SYM), ("func", Kind.SYM), ("csd", Kind.PTR))
    ),
    "csd_function_entry": EventFormat("csd", (("func", Kind.SYM), ("csd", Kind.PTR)), ", "),
    "csd_function_exit": EventFormat("csd", (("func", Kind.SYM), ("csd", Kind.PTR)), ", "),
    "ipi_send_cpu": EventFormat("ipi", (("cpu", Kind.INT), ("callsite", Kind.SYM), ("callback", Kind.SYM))),
    "ipi_send_cpumask": EventFormat(
        "ipi", (("cpumask", Kind.MASK), ("callsite", Kind.SYM), ("callback", Kind.SYM))
    ),
    "call_function_entry": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "call_function_exit": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "call_function_single_entry": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "call_function_single_exit": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "reschedule_entry": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "reschedule_exit": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "sched_wake_idle_without_ipi": EventFormat("sched", (("cpu", Kind.INT),)),
    "cpu_idle": EventFormat("power", (("state", Kind.INT), ("cpu_id", Kind.INT))),
}

# Tracepoints a simulated run also writes that no audit reads: the background interrupts (the timer tick).
# Readers count them as other events (calibrate reads them, trace/read.py CALIBRATE_EVENTS).
BACKGROUND_FORMATS: dict[str, EventFormat] = {
    "local_timer_entry": EventFormat("irq_vectors", (("vector", Kind.INT),)),
    "local_timer_exit": EventFormat("irq_vectors", (("vector", Kind.INT),)),
}
WRITTEN_FORMATS = {**FORMATS, **BACKGROUND_FORMATS}

HANDLER_ENTRY = {"call_function_entry", "call_function_single_entry"}
HANDLER_EXIT = {"call_function_exit", "call_function_single_exit"}


@dataclass(frozen=True, slots=True)
class Event:
    """One tracepoint hit.

    `fields` holds the tracepoint's fields by the kernel's names: integers for INT fields, a sorted tuple
    of CPU numbers for a cpumask, strings otherwise. `flags` is ftrace's irqs-off/need-resched/hardirq/
    preempt-depth/migrate-disable column.
    """

    ts: int
    cpu: int
    name: str
    task: str = "<idle>"
    pid: int = 0
    flags: str = "....."
    fields: dict[str, object] = field(default_factory=dict)


def symbol_name(sym: str) -> str:
    """`flush_tlb_func+0x0/0x1a0` -> `flush_tlb_func`: the function without its offset/size."""
    return sym.split("+", 1)[0]
