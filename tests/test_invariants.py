"""Invariants of the cross-call path over random small runs, checked in every state the run passes.

Each example: 2-6 CPUs, random costs, a random kernel version, senders making a few random calls
(multi- or single-target, wait or not), the other CPUs idle or busy. Then the run drains. What must hold:
- no lost wakeup: a non-empty call_single_queue always has an IPI owed by a sender that is about to
  send it, travelling, pending in the APIC, a handler running, or a polling idle CPU about to flush;
- every queued CSD runs exactly once, on its target; every call returns; nothing stays locked;
- cal_interrupts <= ipis_sent, and after the drain ipis_sent = cal_interrupts + apic_merged;
- with coalesce_many (and always on the single path) an IPI goes only where the add found the queue empty.
"""

from __future__ import annotations

from collections import Counter

from conftest import tiny_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipilab.events import CALL_FUNCTION_SINGLE_VECTOR, CALL_FUNCTION_VECTOR, Event
from ipilab.kernel import vmscan
from ipilab.kernel.features import VERSIONS, resolve_kernel
from ipilab.kernel.page_alloc import PCP_HIGH
from ipilab.kernel.smp import LOCAL_CSD_POINTER, CallSingleQueue, SmpFunc
from ipilab.kernel.steps import Busy
from ipilab.sim.machine import SimMachine
from ipilab.workloads.swap import SwapWSeqMt

FN_VECTORS = {CALL_FUNCTION_VECTOR, CALL_FUNCTION_SINGLE_VECTOR}


@st.composite
def scenarios(draw):
    n = draw(st.integers(2, 6))
    costs = {
        "icr_write": draw(st.integers(0, 500)),
        "ipi_latency_same_socket": draw(st.integers(0, 3000)),
        "irq_entry": draw(st.integers(0, 500)),
        "irq_exit": draw(st.integers(0, 500)),
        "cacheline_same_socket": draw(st.integers(0, 200)),
        "idle_exit": draw(st.integers(0, 2000)),
        "poll_notice": draw(st.integers(0, 300)),
    }
    poll = draw(st.sampled_from([0, 3000]))
    kernel = draw(st.sampled_from([*sorted(VERSIONS), "v4.12+coalesce_many", "v6.18-sync_first_flush"]))
    cpus = list(range(n))
    call = st.tuples(
        st.integers(0, 4000),  # gap before the call
        st.booleans(),  # many (True) or single
        st.lists(st.sampled_from(cpus), min_size=1, max_size=n, unique=True),
        st.booleans(),  # wait
        st.integers(0, 1500),  # function cost
    )
    plans = {cpu: draw(st.lists(call, max_size=4)) for cpu in cpus}
    busy = {cpu: draw(st.booleans()) for cpu in cpus}
    return n, costs, poll, kernel, plans, busy


class QueueAudit(CallSingleQueue):
    """A call_single_queue that remembers how many adds found it empty."""

    def __init__(self) -> None:
        super().__init__()
        self.adds_to_empty = 0

    def llist_add(self, csd):
        was_empty = super().llist_add(csd)
        self.adds_to_empty += was_empty
        return was_empty


def user_loop():
    while True:
        yield Busy(100_000, "user")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_hold_in_every_state(scenario):
    n, costs, poll, kernel_name, plans, busy = scenario
    m = tiny_machine(n, **costs).model_copy(deep=True)
    m.topology.halt_poll_ns = poll
    kernel = resolve_kernel(kernel_name)
    events: list[Event] = []
    sim = SimMachine(m, kernel, tracer=events.append)
    sim.smp.call_single_queue = [QueueAudit() for _ in range(n)]
    returned = Counter()

    # An IPI is owed from the moment an add finds the queue empty until the sender sends it (or sets
    # NEED_RESCHED on a polling target instead). Track that from the outside, by wrapping.
    owed = Counter()
    add = QueueAudit.llist_add

    def llist_add(queue, csd):
        was_empty = add(queue, csd)
        if was_empty:
            owed[csd.dst] += 1
        return was_empty

    for q in sim.smp.call_single_queue:
        q.llist_add = llist_add.__get__(q)
    raise_ipi, set_nr = sim.raise_ipi, sim.set_nr_if_polling

    def raise_and_pay(src, dst, vector):
        owed[dst] = max(0, owed[dst] - 1)
        raise_ipi(src, dst, vector)

    def set_nr_and_pay(cpu):
        skipped = set_nr(cpu)
        if skipped:
            owed[cpu] = max(0, owed[cpu] - 1)
        return skipped

    sim.raise_ipi, sim.set_nr_if_polling = raise_and_pay, set_nr_and_pay
    sim.smp.p = sim  # the kernel model calls back through these wrappers

    def sender(cpu, plan):
        for gap, many, mask, wait, cost in plan:
            yield Busy(gap, "user")

            def body(p, c, info, cost=cost):
                yield Busy(cost, "f")

            f = SmpFunc("f", body)
            if many:
                yield from sim.smp.smp_call_function_many_cond(cpu, mask, f, None, wait=wait, run_local=True)
            else:
                yield from sim.smp.smp_call_function_single(cpu, mask[0], f, None, wait)
            returned[cpu] += 1
        if busy[cpu]:
            yield from user_loop()

    for cpu in range(n):
        if plans[cpu] or busy[cpu]:
            sim.start(cpu, sender(cpu, plans[cpu]), "t", 100 + cpu)
        else:
            sim.start(cpu, None)

    def no_lost_wakeup():
        for c in sim.cpus:
            if len(sim.smp.call_single_queue[c.id]) == 0:
                continue
            served = (owed[c.id] > 0 or c.ipis_in_flight > 0 or c.irr & FN_VECTORS
                      or any(ctx.kind == "irq" for ctx in c.stack) or c.idle.need_resched)
            assert served, f"t={sim.now}: CPU{c.id}'s queue holds CSDs and nothing will flush it"

    sim.engine.run(50_000_000, check=no_lost_wakeup)

    s = sim.smp.stats
    assert returned == Counter({cpu: len(plan) for cpu, plan in plans.items() if plan})
    assert all(len(q) == 0 for q in sim.smp.call_single_queue)
    assert not any(csd.locked for row in sim.smp.cfd_csd for csd in row)
    assert not any(csd.locked for csd in sim.smp.csd_data)
    assert all(c.ipis_in_flight == 0 and not (c.irr & FN_VECTORS) for c in sim.cpus)
    assert s.cal_interrupts <= s.csd_ipis
    assert s.csd_ipis == s.cal_interrupts + sim.stats.apic_merged

    # Every queued CSD ran exactly once, on its target: per (target, csd) the queue events and the
    # function entries match one for one.
    queued = Counter((e.fields["cpu"], e.fields["csd"]) for e in events if e.name == "csd_queue_cpu")
    ran = Counter((e.cpu, e.fields["csd"]) for e in events
                  if e.name == "csd_function_entry" and e.fields["csd"] != LOCAL_CSD_POINTER)
    assert queued == ran
    assert sum(queued.values()) == s.csd_enqueues

    # IPIs only to queues that were empty, under the seed's rule (the single path always had it).
    sent = Counter()
    for e in events:
        if e.name == "ipi_send_cpu":
            sent[e.fields["cpu"]] += 1
        elif e.name == "ipi_send_cpumask":
            sent.update(e.fields["cpumask"])
    if kernel.has("coalesce_many"):
        for q_cpu, q in enumerate(sim.smp.call_single_queue):
            assert sent[q_cpu] + _polling_skips(events, q_cpu) == q.adds_to_empty
    assert sum(sent.values()) == s.csd_ipis


def _polling_skips(events: list[Event], cpu: int) -> int:
    return sum(1 for e in events if e.name == "sched_wake_idle_without_ipi" and e.fields["cpu"] == cpu)


def test_same_seed_same_events():
    """Bit for bit: two runs with one seed emit identical event streams; another seed differs."""
    from ipilab.machine.model import load_machine
    from ipilab.workloads import workload_from_settings

    def run(seed):
        out: list[Event] = []
        sim = SimMachine(load_machine("broadwell-ep-2s-88t"), resolve_kernel("v4.13"), tracer=out.append)
        workload_from_settings("synthetic", {"senders": "0-7", "rate": "200000"}).start(sim, seed)
        sim.engine.run(300_000)
        return out

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert len(a) > 100
    assert a != c


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 5), threads=st.integers(1, 4), kswapd=st.booleans(), kernel=st.sampled_from(["v4.12", "v4.13"]),
       irq=st.integers(0, 400), scan=st.integers(0, 200), flush=st.sampled_from(["per-page", "per-batch"]),
       seed=st.integers(0, 1000))
def test_reclaim_locks_and_swap_slots_hold_their_invariants_in_every_state(n, threads, kswapd, kernel, irq, scan,
                                                                          flush, seed):
    """The swap-w-seq-mt reclaim path with its locks, after every event: a lock's queue never holds more than
    the CPUs; a CPU owning a lock taken with interrupts off takes no interrupt, nor does one waiting for zone->lock;
    no swap slot is handed out twice; pages are conserved between the buddy and per-CPU lists; and every CPU's
    time by use adds up to the time simulated; the page list drains run one at a time and leave no work behind."""
    costs = {"icr_write": 50, "ipi_latency_same_socket": 300, "irq_entry": irq, "irq_exit": irq,
             "tlb_flush_full": 100, "page_fault": 300, "cacheline_same_socket": 40, "user_write_page": 300,
             "lru_page": 20, "page_referenced": 200, "add_to_swap": 100, "try_to_unmap": 100, "swap_writepage": 500,
             "remove_mapping": 100, "free_page": 50, "swap_slot_scan": scan, "zone_page": scan // 2,
             "mem_write_page": 100, "context_switch": 200}
    m = tiny_machine(n, **costs)
    threads = min(threads, n - (1 if kswapd else 0))
    sim = SimMachine(m, resolve_kernel(kernel), seed=seed)
    w = SwapWSeqMt(threads=threads, memory_gb=1, ram_gb=0.002, kswapd=kswapd, flush=flush, batch=4, zone_lock=True)
    w.start(sim, seed)
    swap = w._run.reclaim.swap
    nodes = w._run.mem.nodes
    irq_locks = [nd.lru_lock for nd in nodes] + swap.tree_locks + [nd.zone.lock for nd in nodes]
    first_free = [nd.nr_free() for nd in nodes]
    handed: list[int] = []
    original = vmscan.add_to_swap

    def add_to_swap(p, cpu, dev):  # records every slot a page is given
        offset = yield from original(p, cpu, dev)
        handed.append(offset)
        return offset

    def check():
        for lock in w.locks():
            assert 0 <= lock.next_ticket - lock.serving <= n, lock.name
        for lock in irq_locks:  # its owner takes no interrupt while it holds it (a drain's worker may own it)
            if lock.owner is not None:
                assert sim.cpus[lock.owner].irqs_taken == lock.irqs_at_acquire, lock.name
        for c in sim.cpus:  # local_irq_save before zone->lock: no interrupt is taken while waiting for it
            if c.wait is not None and c.wait[0] == "spin" and c.wait[1].what.startswith("spin_lock(zone->lock"):
                assert not c.stack[-1].irqs_on
        # Pages are conserved: those on the buddy lists and per-CPU lists are the first free ones, plus the
        # ones freed, less the ones allocated (plus any a too-small machine made on demand).
        for nd, first in zip(nodes, first_free, strict=True):
            z = nd.zone
            assert nd.nr_free() + z.pcp_pages() == first + z.pages_in - z.pages_out + z.made
            assert all(len(pcp) <= PCP_HIGH for pcp in z.pcp.values())
        # drain_all_pages: one at a time; its count of work items left never goes below zero, and none is
        # left once no drain is under way; a CPU has work queued only while a drain waits for it.
        drain = w._run.mem.pcp_drain
        assert 0 <= drain.left <= n and (drain.busy or drain.left == 0)
        assert sum(len(q) for q in sim.workqueue.pending) <= drain.left
        assert drain.busy or not any(sim.workqueue.resched_pending)
        # A CPU's pages sit on its own node's list only (the fast engine keeps one list per CPU).
        for c in range(n):
            assert sum(1 for nd in nodes if nd.zone.pcp.get(c)) <= 1
        now = sim.engine.now
        for row in sim.time_use():
            assert sum(row) == now

    vmscan.add_to_swap = add_to_swap
    try:
        sim.engine.run(1_000_000, check)
    finally:
        vmscan.add_to_swap = original
    assert w._run.mem.stats.pages_reclaimed > 0
    assert all(lock.holds_interrupted == 0 for lock in irq_locks)
    assert all(nd.zone.bulk_allocs > 0 for nd in nodes)
    assert len(handed) == len(set(handed)) and 0 not in handed  # slot 0 is the swap header
    assert swap.refills * 64 >= len(handed) > swap.refills * 64 - 64 * n
