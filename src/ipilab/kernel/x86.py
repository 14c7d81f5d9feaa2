"""The x86 end of an IPI: how many ICR writes a send takes, in which order the targets hear it.

x2APIC physical mode writes the ICR once per target CPU; cluster mode once per cluster (up to 16
logical CPUs share one write); a mask of all CPUs but the sender may go out as one shorthand write; a KVM
guest with PV IPIs sends a whole mask with one hypercall. Each write costs the sender time (`icr_write`),
so in physical mode the last target of a large mask hears its IPI late: that spread is part of what
decides how many CSDs one interrupt serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from ipilab.kernel.steps import IRQS_OFF, IRQS_ON, Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

APIC_MODES = ("x2apic_phys", "x2apic_cluster", "kvm_pv")


@dataclass(frozen=True)
class Apic:
    mode: str
    cluster_of: tuple[int, ...]  # x2APIC logical cluster of each CPU
    use_shorthand: bool  # all-but-self masks go out as one write


def send_IPI_mask(apic: Apic, p: Platform, src: int, mask: list[int], vector: int, ncpus: int) -> KernelCode:
    """Write the ICR for every target of `mask` (sorted), as the APIC mode dictates."""
    if apic.use_shorthand and len(mask) == ncpus - 1:
        writes = [mask]
    elif apic.mode == "x2apic_phys":
        writes = [[cpu] for cpu in mask]
    elif apic.mode == "x2apic_cluster":
        writes = [list(g) for _, g in groupby(sorted(mask, key=lambda c: apic.cluster_of[c]),
                                              key=lambda c: apic.cluster_of[c])]
    else:  # kvm_pv: one hypercall carries the bitmap
        writes = [mask]
    # The send loop runs with interrupts off (local_irq_save in __x2apic_send_IPI_mask and kvm_send_ipi_mask).
    yield IRQS_OFF
    for targets in writes:
        yield Busy(p.cost(CostId.ICR_WRITE, src), "icr_write")
        for dst in targets:
            p.raise_ipi(src, dst, vector)
    yield IRQS_ON
    return len(writes)


def send_IPI(apic: Apic, p: Platform, src: int, dst: int, vector: int) -> KernelCode:
    yield IRQS_OFF  # one WRMSR: an interrupt cannot come between its start and the IPI leaving
    yield Busy(p.cost(CostId.ICR_WRITE, src), "icr_write")
    p.raise_ipi(src, dst, vector)
    yield IRQS_ON
    return 1
