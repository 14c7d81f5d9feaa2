#!/usr/bin/env python3
"""Analyse tracefs text output (trace_clock=x86-tsc) of the usemem reclaim run.
Function-level tracing is unavailable on this kernel, so all durations are
intervals between TRACEPOINTS; each metric states which two events bound it."""

import collections
import itertools
import re
import sys

import numpy as np

fn = sys.argv[1] if len(sys.argv) > 1 else "trace.txt"
LINE = re.compile(r"^\s*(.+)-(\d+)\s+\[(\d+)\]\s+(\S+)\s+(\d+):\s+(\w+):\s*(.*)$")
ev = []
with open(fn) as trace_file:
    trace_lines = trace_file.readlines()
for line in trace_lines:
    m = LINE.match(line)
    if m:
        comm, pid, cpu, flags, ts, name, args = m.groups()
        ev.append((int(ts), int(cpu), int(pid), comm, flags, name, args))
ev.sort(key=lambda e: e[0])
cal = {
    e[6].split()[0]: (e[0], int(e[6].split()[1])) for e in ev if e[5] == "tracing_mark_write" and e[6].startswith("CAL")
}
CPN = (cal["CAL1"][0] - cal["CAL0"][0]) / (cal["CAL1"][1] - cal["CAL0"][1])  # TSC cycles per ns


def ns(c):
    return c / CPN


out = []


def P(*a):
    out.append(" ".join(str(x) for x in a))


P(f"TSC calibration: {CPN * 1000:.3f} MHz (trace_marker vs date +%s%N)")
stats_rows = []


def stat(label, vals, bounds):
    v = np.array(vals, dtype=float)
    if len(v) == 0:
        stats_rows.append((label, 0, "-", "-", "-", "-", bounds))
        return
    stats_rows.append(
        (
            label,
            len(v),
            f"{np.median(v):.0f}",
            f"{np.percentile(v, 10):.0f}",
            f"{np.percentile(v, 90):.0f}",
            f"{v.mean():.0f}",
            bounds,
        )
    )


def kv(args):
    return dict(re.findall(r"(\w+)=([\w|]+)", args))


# ---- per-task (process context only: flags without h/s irq markers) sequences
def irqctx(f):
    return ("h" in f) or ("H" in f) or ("s" in f)
task = collections.defaultdict(list)
percpu = collections.defaultdict(list)
for e in ev:
    percpu[e[1]].append(e)
    if e[3].startswith("usemem") and not irqctx(e[4]):
        task[e[2]].append(e)

# 1. memcg reclaim calls (try_to_free_mem_cgroup_pages): begin -> end
rec_d, rec_n, rec_windows = [], [], []
for pid, seq in task.items():
    b = None
    for e in seq:
        if e[5] == "mm_vmscan_memcg_reclaim_begin":
            b = e[0]
        elif e[5] == "mm_vmscan_memcg_reclaim_end" and b is not None:
            rec_d.append(ns(e[0] - b))
            rec_n.append(int(kv(e[6])["nr_reclaimed"]))
            rec_windows.append((pid, b, e[0]))
            b = None
stat("try_to_free_mem_cgroup_pages (memcg_reclaim_begin->end)", rec_d, "exact call bounds (tracepoints at entry/exit)")
rn = np.array(rec_n)
P(
    f"memcg reclaim calls: {len(rec_d)}, nr_reclaimed per call: median {np.median(rn):.0f}, mean {rn.mean():.1f}, min {rn.min()}, max {rn.max()}; total {rn.sum()}"
)
recl_pages = rn.sum()
d = np.array(rec_d)
n = rn
P(f"reclaim time per reclaimed page (sum of call durations / sum nr_reclaimed): {d.sum() / max(1, n.sum()):.0f} ns")

# 2. shrink_inactive_list batches: lru_isolate(inactive_anon) -> lru_shrink_inactive
bat_all, bat_rec, bat_norec = [], [], []
per_page_batch = []
scanned, reclaimed, taken = [], [], []
flush_remote_in_batches = 0
flush_local_in_batches = 0
ws_in_batches = 0
wf_in_batches = 0
rec_in_batches = 0
page_int, seg_unmap, seg_flush, seg_write, seg_tail, seg_head = [], [], [], [], [], []
iso_hold = []  # contention_end(lock acquired) -> lru_isolate, when adjacent
for _pid, seq in task.items():
    iso = None
    win = []
    for i, e in enumerate(seq):
        if e[5] == "mm_vmscan_lru_isolate" and "lru=inactive_anon" in e[6]:
            iso = e
            win = []
            if i > 0 and seq[i - 1][5] == "contention_end":
                iso_hold.append(ns(e[0] - seq[i - 1][0]))
            continue
        if iso is None:
            continue
        if e[5] == "mm_vmscan_lru_shrink_inactive":
            k = kv(e[6])
            dur = ns(e[0] - iso[0])
            nrr = int(k["nr_reclaimed"])
            bat_all.append(dur)
            (bat_rec if nrr > 0 else bat_norec).append(dur)
            scanned.append(int(k["nr_scanned"]))
            reclaimed.append(nrr)
            taken.append(int(kv(iso[6])["nr_taken"]))
            if nrr > 0:
                per_page_batch.append(dur / nrr)
            rec_in_batches += nrr
            # per-page segment analysis inside this batch
            wfs = [x for x in win if x[5] == "mm_vmscan_write_folio"]
            wf_in_batches += len(wfs)
            for a, b in itertools.pairwise(wfs):
                page_int.append(ns(b[0] - a[0]))
            last_wf = None
            last_ipi = None
            last_ws = None
            first = True
            for x in win:
                if x[5] == "tlb_flush" and "remote IPI send" in x[6]:
                    flush_remote_in_batches += 1
                    if last_wf is not None:
                        seg_unmap.append(ns(x[0] - last_wf))
                    elif first:
                        seg_head.append(ns(x[0] - iso[0]))
                    last_ipi = x[0]
                    first = False
                elif x[5] == "tlb_flush" and "local shootdown" in x[6]:
                    flush_local_in_batches += 1
                elif x[5] == "block_bio_queue" and " WS " in x[6]:
                    ws_in_batches += 1
                    if last_ipi is not None:
                        seg_flush.append(ns(x[0] - last_ipi))
                    last_ws = x[0]
                    last_ipi = None
                elif x[5] == "mm_vmscan_write_folio":
                    if last_ws is not None:
                        seg_write.append(ns(x[0] - last_ws))
                    last_wf = x[0]
                    last_ws = None
            if wfs:
                seg_tail.append(ns(e[0] - wfs[-1][0]))
            iso = None
            win = []
            continue
        win.append(e)
stat(
    "shrink_inactive_list after isolation, all batches (lru_isolate->lru_shrink_inactive)",
    bat_all,
    "~shrink_folio_list+move_folios_to_lru+lock",
)
stat("  same, batches with nr_reclaimed>0", bat_rec, "idem")
stat("  same, batches with nr_reclaimed=0", bat_norec, "idem")
stat("  same, divided by nr_reclaimed (ns/page)", per_page_batch, "idem")
stat("per reclaimed page: write_folio->next write_folio (same batch)", page_int, "one page of shrink_folio_list loop")
stat(
    "  seg A: write_folio(prev) -> tlb_flush remote IPI send",
    seg_unmap,
    "~__remove_mapping/unlock of prev + folio_referenced+folio_alloc_swap+try_to_unmap of next",
)
stat(
    "  seg B: tlb_flush IPI send -> block_bio_queue WS",
    seg_flush,
    "~try_to_unmap_flush_dirty (IPI+wait) + pageout up to submit_bio",
)
stat("  seg C: block_bio_queue WS -> write_folio", seg_write, "~zram write of one page + bio end + rest of pageout")
stat("  head: lru_isolate -> first IPI send", seg_head, "lru unlock + first page up to its flush")
stat(
    "  tail: last write_folio -> lru_shrink_inactive",
    seg_tail,
    "~try_to_unmap_flush+free_unref_folios+lru lock+move_folios_to_lru",
)
sc, rc, tk = map(np.array, (scanned, reclaimed, taken))
P(
    f"shrink_inactive_list calls: {len(sc)}; nr_taken median {np.median(tk):.0f} mean {tk.mean():.2f}; nr_scanned median {np.median(sc):.0f} mean {sc.mean():.2f}; "
    f"nr_reclaimed median {np.median(rc):.0f} mean {rc.mean():.2f}; calls with nr_reclaimed>0: {(rc > 0).sum()}, their mean nr_reclaimed {rc[rc > 0].mean():.2f}, "
    f"share with nr_reclaimed==32: {(rc == 32).mean():.3f}"
)
P(
    f"in-batch totals: reclaimed {rec_in_batches}, write_folio {wf_in_batches}, bio WS {ws_in_batches}, remote-IPI TLB flushes {flush_remote_in_batches}, "
    f"local shootdowns (process ctx) {flush_local_in_batches}"
)
P(
    f"remote-IPI TLB flushes per reclaimed page (in shrink batches): {flush_remote_in_batches / max(1, rec_in_batches):.3f}; per write_folio: {flush_remote_in_batches / max(1, wf_in_batches):.3f}"
)

# flush totals over the whole trace
c = collections.Counter()
for e in ev:
    if e[5] == "tlb_flush":
        r = re.search(r"reason:(.*) \(\d+\)", e[6]).group(1)
        c[(r, "irq" if irqctx(e[4]) else "proc", e[3].startswith("usemem"))] += 1
P("tlb_flush events over whole trace (reason, context, by-usemem):", dict(c))

# 3. flush_tlb_func executions (csd_function_entry -> exit), IPI handler, IPI latency
csd_local, csd_remote, cfs = [], [], []
ipi_lat = []
for _cpu, seq in percpu.items():
    st = {}
    for e in seq:
        if e[5] == "csd_function_entry" and "flush_tlb_func" in e[6]:
            st["csd"] = e
        elif e[5] == "csd_function_exit" and "flush_tlb_func" in e[6] and "csd" in st:
            (csd_remote if "h" in st["csd"][4] else csd_local).append(ns(e[0] - st["csd"][0]))
            del st["csd"]
        elif e[5] == "call_function_single_entry":
            st["cfs"] = e
        elif e[5] == "call_function_single_exit" and "cfs" in st:
            cfs.append(ns(e[0] - st["cfs"][0]))
            del st["cfs"]
# IPI send (sender) -> call_function_single_entry (target): global x86-tsc clock
pending = {}
for e in ev:
    if e[5] == "ipi_send_cpu" and "on_each_cpu_cond_mask" in e[6]:
        pending[int(kv(e[6])["cpu"])] = e[0]
    elif e[5] == "call_function_single_entry" and e[1] in pending:
        ipi_lat.append(ns(e[0] - pending.pop(e[1])))
stat(
    "flush_tlb_func on remote CPU (csd_function_entry->exit, hardirq)",
    csd_remote,
    "exact call bounds; includes 1 nested tlb_flush tracepoint",
)
stat("flush_tlb_func local part on sender (csd_function_entry->exit)", csd_local, "idem")
stat(
    "IPI handler sysvec_call_function_single (call_function_single_entry->exit)",
    cfs,
    "handler bounds; includes 3 nested tracepoints",
)
stat("IPI send (ipi_send_cpu) -> call_function_single_entry on target", ipi_lat, "IPI delivery latency (virtualised)")

# 4. lock contention waits
cont_all, cont_irqoff = [], []
addrs = collections.Counter()
for _pid, seq in task.items():
    b = None
    for e in seq:
        if e[5] == "contention_begin" and "SPIN" in e[6]:
            b = e
        elif e[5] == "contention_end" and b is not None:
            dd = ns(e[0] - b[0])
            cont_all.append(dd)
            if "d" in b[4]:
                cont_irqoff.append(dd)
                addrs[b[6].split()[0]] += 1
            b = None
stat("spinlock contention wait, all (contention_begin->end, usemem)", cont_all, "only contended acquisitions")
stat("  of which taken with IRQs off (spin_lock_irq*: lru_lock candidates)", cont_irqoff, "idem")
stat(
    "contended lock acquired -> lru_isolate (adjacent events)",
    iso_hold,
    "lower bound of LRU-lock irq-off hold: isolate_lru_folios part only",
)
P("top irq-off contended lock addresses (hashed):", addrs.most_common(4))

# 5. page-fault-to-page-fault intervals with nothing else in between
pf_anon, pf_swapin = [], []
for _pid, seq in task.items():
    idx = [i for i, e in enumerate(seq) if e[5] == "page_fault_user"]
    for i, j in itertools.pairwise(idx):
        between = [seq[k][5] for k in range(i + 1, j)]
        if not between:
            pf_anon.append(ns(seq[j][0] - seq[i][0]))
        elif between == ["block_bio_queue"] and " RS " in seq[i + 1][6]:
            pf_swapin.append(ns(seq[j][0] - seq[i][0]))
stat(
    "fault->next fault, no other event between (anon fault w/o reclaim + 4KB memset)",
    pf_anon,
    "page_fault_user tracepoints; includes user memset",
)
stat("fault->next fault with only a swap-in read between (swap-in fault + memset)", pf_swapin, "idem")

# 6. tracepoint cost estimate: gap between adjacent events with ~no code between
g1 = []
for _cpu, seq in percpu.items():
    for a, b2 in itertools.pairwise(seq):
        if a[5] == "call_function_single_entry" and b2[5] == "csd_function_entry":
            g1.append(ns(b2[0] - a[0]))
g2 = []
for _pid, seq in task.items():
    for a, b2 in itertools.pairwise(seq):
        if a[5] == "contention_end" and b2[5] == "contention_begin" and a[6].split()[0] == b2[6].split()[0]:
            g2.append(ns(b2[0] - a[0]))
stat(
    "tracepoint cost probe: call_function_single_entry->csd_function_entry gap", g1, "upper bound on cost of one event"
)
stat(
    "tracepoint cost probe: contention_end->contention_begin same lock gap",
    g2,
    "upper bound (incl. a lock release + retry)",
)

P("")
P("| metric | count | median ns | p10 ns | p90 ns | mean ns | what bounds it |")
P("|---|---|---|---|---|---|---|")
for r in stats_rows:
    P("| " + " | ".join(str(x) for x in r) + " |")
print("\n".join(out))
