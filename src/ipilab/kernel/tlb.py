"""x86 TLB shootdown (arch/x86/mm/tlb.c) on top of the cross-call path.

`flush_tlb_mm_range` flushes up to `tlb_single_page_flush_ceiling` (33) pages one INVLPG at a time and
anything larger with a full flush, on this CPU and, with wait=1, on every other CPU of the mm's
cpumask. Before 5.13 the local flush comes first and the remote ones follow through
smp_call_function_many(); from 5.13 on_each_cpu_cond_mask() sends, flushes locally, then waits. With
`tlb_skip_lazy`, CPUs in lazy-TLB mode are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ipilab.kernel.smp import Smp, SmpFunc
from ipilab.kernel.steps import Busy, KernelCode, Platform
from ipilab.machine.costs import CostId

TLB_SINGLE_PAGE_FLUSH_CEILING = 33
TLB_FLUSH_ALL = -1


@dataclass(frozen=True)
class FlushTlbInfo:
    pages: int  # TLB_FLUSH_ALL for a full flush


def _flush_tlb_func(p: Platform, cpu: int, info: Any) -> KernelCode:
    pages = info.pages
    if pages == TLB_FLUSH_ALL or pages > TLB_SINGLE_PAGE_FLUSH_CEILING:
        yield Busy(p.cost(CostId.TLB_FLUSH_FULL, cpu), "flush_tlb_func")
    else:
        yield Busy(pages * p.cost(CostId.INVLPG, cpu), "flush_tlb_func")


flush_tlb_func = SmpFunc("flush_tlb_func", _flush_tlb_func)


def flush_tlb_mm_range(smp: Smp, cpu: int, mm_cpumask: list[int], pages: int) -> KernelCode:
    """Flush `pages` pages (or TLB_FLUSH_ALL) of an mm active on `mm_cpumask`, waiting for all CPUs."""
    yield from _flush_tlb_on(smp, cpu, mm_cpumask, pages)


def flush_tlb_batched(smp: Smp, cpu: int, cpumask: list[int]) -> KernelCode:
    """Reclaim's batched flush: a full flush on this CPU if it is in the gathered mask, and on every other
    CPU of it. In 4.12 try_to_unmap_flush() does this itself (local_flush_tlb, then flush_tlb_others);
    from 4.13 it calls arch_tlbbatch_flush()."""
    yield from _flush_tlb_on(smp, cpu, cpumask, TLB_FLUSH_ALL)


def _flush_tlb_on(smp: Smp, cpu: int, cpumask: list[int], pages: int) -> KernelCode:
    k = smp.kernel
    info = FlushTlbInfo(pages)
    not_lazy = (lambda c, _info: not smp.p.is_lazy_tlb(c)) if k.has("tlb_skip_lazy") else None
    local = cpu in cpumask
    others = any(c != cpu for c in cpumask)
    if k.has("local_after_send"):
        if others:
            yield from smp.smp_call_function_many_cond(
                cpu, cpumask, flush_tlb_func, info, wait=True, run_local=local,
                cond_func=not_lazy, callsite="on_each_cpu_cond_mask+0x20/0x60")
        elif local:
            yield from smp.run_local(cpu, flush_tlb_func, info)
        return
    if local:
        yield from smp.run_local(cpu, flush_tlb_func, info)
    if others:
        yield from smp.smp_call_function_many_cond(
            cpu, [c for c in cpumask if c != cpu], flush_tlb_func, info, wait=True,
            cond_func=not_lazy, callsite="native_flush_tlb_others+0x0/0x0")
