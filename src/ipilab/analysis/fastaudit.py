"""The IPI audit compiled: the same rules as audit.py's `Audit`, over the columns of trace/fastparse.py.

`audit_block` (numba) walks a block of parsed lines in file order and updates the audit's state, kept
in arrays and typed dicts between blocks so that memory stays flat. Its waits follow queues.py's
`CallQueues` rule for rule (`_queue_call`, `_run_call`): the one queue model, compiled. `fast_audit`
drives it over an ftrace text file and returns exactly what `Audit` returns. It declines (returns None)
when a trace needs something it does not do (another format, more waiting calls or wakeups or deeper
nesting than it keeps), and the caller then uses `Audit`; the tests hold the two to the same output.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from hdrh.histogram import HdrHistogram
from numba import njit, types
from numba.typed import Dict

from ipilab.analysis.auditrules import SINGLE_CALLSITES, TIME_DOCS, new_histogram, percentiles
from ipilab.analysis.queues import TTWU_FUNC
from ipilab.events import symbol_name
from ipilab.trace.fastparse import BAD, OTHER, SKIP, fnv1a, line_starts, parse
from ipilab.trace.read import (
    DECOMPRESS_ERRORS,
    FORMATS,
    FTRACE,
    ReadStats,
    TraceFormatError,
    TraceWarning,
    binary_format,
    decompressed,
    detect_format,
    event_name,
    parse_fields,
)

# Counter slots.
(ENQ, LOCAL, IPIS, QUEUED, POLLING, UNDECIDED, UNMATCHED, RESCHED_IPIS, CAL, RES, RUN_IRQ, RUN_ELSE, TLB,
 RUNS_UNMATCHED, MATCHED, SAW_SENDS, FIRST_TS, LAST_TS, DECLINE, NEXT_FLUSH) = range(20)
COUNTER_NAMES = {ENQ: "csd_enqueues", LOCAL: "local_runs", IPIS: "csd_ipis", QUEUED: "csd_no_ipi_queued",
                 POLLING: "csd_no_ipi_polling", UNDECIDED: "csds_undecided", UNMATCHED: "ipis_unmatched",
                 RESCHED_IPIS: "reschedule_ipis", CAL: "cal_interrupts", RES: "reschedule_interrupts",
                 RUN_IRQ: "csds_run_in_irq", RUN_ELSE: "csds_run_elsewhere", TLB: "tlb_flushes_received"}
# Per-CPU slots.
PC_CAL, PC_RES, PC_RUN_IRQ, PC_RUN_ELSE, PC_IPIS, PC_TLB = range(6)
PER_CPU_NAMES = ("cal_interrupts", "reschedule_interrupts", "csds_run_in_irq", "csds_run_elsewhere",
                 "ipis_received", "tlb_flushes_received")
GROUPS = ("callsite", "func", "sender", "target", "cpu")
FLUSH_TLB_FUNC = np.uint64(fnv1a("flush_tlb_func"))
TTWU_FUNC_HASH = np.uint64(fnv1a(TTWU_FUNC))
# Per-CPU queue-model slots: the open handler's flush and its first run's row, the idle loop's flush and
# its first run's row, the last two flushes that ran a queued call; then the runs counted without a wait.
Q_CAL, Q_CAL_FIRST, Q_IDLE, Q_IDLE_FIRST, Q_RAN_PREV, Q_RAN_LAST, Q_UNSEEN, Q_UNMATCHED = range(8)
TTWU_CAP = 1024  # remote wakeups queued on one CPU and not yet run
ID_CAP = 1 << 16  # distinct callsites + functions, or tasks, a trace may name
STACK_CAP = 256  # functions entered and not (yet) exited on one CPU
BLOCK = 16 << 20  # bytes of text per block: what memory use is bounded by


@njit(cache=True)
def _quantize(v):
    """The lowest value HdrHistogram(1, ..., 3 digits) files `v` with: keep its top 11 bits."""
    bits = 0
    x = v
    while x > 0:
        bits += 1
        x >>= 1
    shift = bits - 11
    if shift <= 0:
        return v
    return (v >> shift) << shift


@njit(cache=True)
def _tally(tallies, order, norder, g, key, col):
    """Count one call in group `g` (callsite, func, sender, target, cpu) under dense id `key`."""
    if key >= tallies.shape[1]:
        return False
    if order[g, key] < 0:  # first touch fixes where the name sorts among equals, as dict order does
        order[g, key] = norder[g]
        norder[g] += 1
    tallies[g, key, col] += 1
    return True


@njit(cache=True)
def _decide(C, PC, wanted, tallies, order, norder, w_target, w_site, w_func, w_task, w_cpu, w_dec, c, j, d):
    w_dec[c, j] = d
    t = w_target[c, j]
    if not wanted[t]:
        return
    if d == 1:
        C[MATCHED] += 1
        PC[t, PC_IPIS] += 1
    elif d == 2:
        C[QUEUED] += 1
    else:
        C[POLLING] += 1
    ok = _tally(tallies, order, norder, 0, w_site[c, j], d)
    ok &= _tally(tallies, order, norder, 1, w_func[c, j], d)
    ok &= _tally(tallies, order, norder, 2, w_task[c, j], d)
    ok &= _tally(tallies, order, norder, 3, t, d)
    ok &= _tally(tallies, order, norder, 4, w_cpu[c], d)
    if not ok:
        C[DECLINE] = 3


@njit(cache=True)
def _close(C, PC, wanted, tallies, order, norder, w_n, w_target, w_site, w_func, w_task, w_cpu, w_dec, c):
    for j in range(w_n[c]):
        if w_dec[c, j] == 0:
            _decide(C, PC, wanted, tallies, order, norder, w_target, w_site, w_func, w_task, w_cpu, w_dec, c, j, 2)
    w_n[c] = 0


@njit(cache=True)
def _new_flush(C):
    C[NEXT_FLUSH] += 1
    return C[NEXT_FLUSH]


@njit(cache=True)
def _wait(wanted, lat_f, lat_v, n_lat, target, func, queued_ts, run_ts):
    """One queued call's final run (CallQueues' on_run): a wait sample if its target is audited."""
    if wanted[target]:
        lat_f[n_lat] = func
        lat_v[n_lat] = _quantize(max(np.int64(0), run_ts - queued_ts))
        return n_lat + 1
    return n_lat


@njit(cache=True)
def _drop_wakeup(tw_csd, tw_seq, tw_n, target, key):
    for i in range(tw_n[target]):
        if tw_csd[target, i] == key:
            last = tw_n[target] - 1
            tw_csd[target, i] = tw_csd[target, last]
            tw_seq[target, i] = tw_seq[target, last]
            tw_n[target] = last
            return


@njit(cache=True)
def _queue_call(C, Q, qp, bat, tw_csd, tw_seq, tw_n, wanted, lat_f, lat_v, n_lat, g, t, key, when, fn, ttwu_id):
    """CallQueues.enqueue: a call queued on `t` with csd `key` at row `g`. Returns the wait samples made."""
    if key in bat:  # its pointer is queued again: the batch it ran in stands
        b = bat[key]
        del bat[key]
        n_lat = _wait(wanted, lat_f, lat_v, n_lat, b[0], b[3], b[1], b[2])
    if key in qp:  # queued again before its run shows: it ran unseen
        old = qp[key]
        del qp[key]
        Q[old[0], Q_UNSEEN] += 1
        if old[3] == ttwu_id:
            _drop_wakeup(tw_csd, tw_seq, tw_n, old[0], key)
    qp[key] = (t, g, when, fn)
    if fn == ttwu_id:
        n = tw_n[t]
        if n >= tw_csd.shape[1]:
            C[DECLINE] = 5
            return n_lat
        tw_csd[t, n] = key
        tw_seq[t, n] = g
        tw_n[t] = n + 1
    return n_lat


@njit(cache=True)
def _run_call(C, Q, qp, bat, tw_csd, tw_seq, tw_n, wanted, lat_f, lat_v, n_lat, g, c, key, when, fn, ttwu_id):
    """CallQueues._run: csd_function_entry of csd `key` (not a local run) on CPU `c` at row `g`."""
    idle = Q[c, Q_CAL] < 0
    if idle and Q[c, Q_IDLE] < 0:
        Q[c, Q_IDLE] = _new_flush(C)
        Q[c, Q_IDLE_FIRST] = -1
    hit = False
    if key in qp:
        hit = qp[key][0] == c
    if idle and Q[c, Q_IDLE_FIRST] >= 0 and hit and qp[key][1] > Q[c, Q_IDLE_FIRST]:
        # queued after this idle-loop flush began running: the idle loop flushes again
        Q[c, Q_IDLE] = _new_flush(C)
        Q[c, Q_IDLE_FIRST] = -1
    slot = Q_IDLE if idle else Q_CAL
    if Q[c, slot + 1] < 0:
        Q[c, slot + 1] = g
        Q[c, Q_RAN_PREV] = Q[c, Q_RAN_LAST]
        Q[c, Q_RAN_LAST] = Q[c, slot]
    flush = Q[c, slot]
    first = Q[c, slot + 1]
    if not hit:
        if key in bat:
            b = bat[key]
            del bat[key]
            if b[0] == c and b[4] == Q[c, Q_RAN_PREV]:  # a batched wakeup runs on its own in the next flush
                return _wait(wanted, lat_f, lat_v, n_lat, b[0], b[3], b[1], when)
            n_lat = _wait(wanted, lat_f, lat_v, n_lat, b[0], b[3], b[1], b[2])
        Q[c, Q_UNMATCHED] += 1  # queued before the trace began
        return n_lat
    q = qp[key]
    del qp[key]
    if q[3] == ttwu_id:
        _drop_wakeup(tw_csd, tw_seq, tw_n, c, key)
    n_lat = _wait(wanted, lat_f, lat_v, n_lat, c, q[3], q[2], when)
    if fn == ttwu_id:  # one run for the whole batch of wakeups queued before this flush's first run
        i = 0
        while i < tw_n[c]:
            if tw_seq[c, i] < first:
                k2 = tw_csd[c, i]
                w = qp[k2]
                del qp[k2]
                bat[k2] = (c, w[2], when, w[3], flush)
                last = tw_n[c] - 1
                tw_csd[c, i] = tw_csd[c, last]
                tw_seq[c, i] = tw_seq[c, last]
                tw_n[c] = last
            else:
                i += 1
    return n_lat


@njit(cache=True)
def audit_block(kind, cpu, ts, hirq, task, target, site, func, csd, resched, mrow, mask,
                C, PC, wanted, in_cal, w_n, w_target, w_site, w_func, w_task, w_cpu, w_dec,
                s_n, s_func, s_csd, s_ts, Q, qp, bat, tw_csd, tw_seq, tw_n, tallies, order, norder, top, single,
                lat_f, lat_v, dur_f, dur_v, tlb_id, ttwu_id, row0):
    """Feed one block's rows to the audit state; returns how many latency and duration samples it made."""
    n_lat = 0
    n_dur = 0
    tmp = np.empty(64 * mask.shape[1], np.int64)  # the targets of one send
    for r in range(len(kind)):
        k = kind[r]
        if k < 0:
            continue
        c = cpu[r]
        if C[FIRST_TS] < 0:
            C[FIRST_TS] = ts[r]
        C[LAST_TS] = ts[r]
        g = row0 + r
        if k != 1 and k != 2:  # anything else on this CPU ends an idle-loop flush
            Q[c, Q_IDLE] = -1
        # The sending context: the CPU, and whether it is inside an interrupt handler (see audit.py).
        x = 2 * c + (1 if hirq[r] else 0)
        if k == 0:  # csd_queue_cpu
            t = target[r]
            for j in range(w_n[x]):
                # A call already waiting on a single-target path, from another callsite, or to this target
                # is another call: its send is past, so it found the queue waiting.
                if single[w_site[x, j]] or w_site[x, j] != site[r] or w_target[x, j] == t:
                    _close(C, PC, wanted, tallies, order, norder, w_n, w_target, w_site, w_func, w_task, w_cpu,
                           w_dec, x)
                    break
            n = w_n[x]
            if n >= w_target.shape[1]:
                C[DECLINE] = 1
                return n_lat, n_dur
            w_target[x, n] = t
            w_site[x, n] = site[r]
            w_func[x, n] = func[r]
            w_task[x, n] = task[r]
            w_dec[x, n] = 0
            w_cpu[x] = c
            w_n[x] = n + 1
            n_lat = _queue_call(C, Q, qp, bat, tw_csd, tw_seq, tw_n, wanted, lat_f, lat_v, n_lat, g, t, csd[r], ts[r],
                                func[r], ttwu_id)
            if wanted[t]:
                C[ENQ] += 1
                ok = _tally(tallies, order, norder, 0, site[r], 0)
                ok &= _tally(tallies, order, norder, 1, func[r], 0)
                ok &= _tally(tallies, order, norder, 2, task[r], 0)
                ok &= _tally(tallies, order, norder, 3, t, 0)
                ok &= _tally(tallies, order, norder, 4, c, 0)
                if not ok:
                    C[DECLINE] = 3
                tk = (np.int64(t), task[r], site[r])
                if tk in top:
                    prev = top[tk]
                    top[tk] = (prev[0] + 1, prev[1])
                else:
                    top[tk] = (np.int64(1), np.int64(len(top)))
        elif k == 3 or k == 4:  # ipi_send_cpu / ipi_send_cpumask
            nt = 0
            if k == 3:
                tmp[0] = target[r]
                nt = 1
            else:
                words = mask.shape[1]
                row = mrow[r]
                for wi in range(words):
                    v = mask[row, wi]
                    for b in range(64):
                        if (v >> np.uint64(b)) & np.uint64(1):
                            tmp[nt] = wi * 64 + b
                            nt += 1
            if resched[r]:
                for i in range(nt):
                    if wanted[tmp[i]]:
                        C[RESCHED_IPIS] += 1
                continue
            C[SAW_SENDS] = 1
            for i in range(nt):
                t = tmp[i]
                if wanted[t]:
                    C[IPIS] += 1
                found = -1
                for j in range(w_n[x]):
                    if w_target[x, j] == t and w_dec[x, j] == 0:
                        found = j
                        break
                if found < 0:
                    if wanted[t]:
                        C[UNMATCHED] += 1
                else:
                    _decide(C, PC, wanted, tallies, order, norder, w_target, w_site, w_func, w_task, w_cpu, w_dec,
                            x, found, 1)
            _close(C, PC, wanted, tallies, order, norder, w_n, w_target, w_site, w_func, w_task, w_cpu, w_dec, x)
        elif k == 11:  # sched_wake_idle_without_ipi
            t = target[r]
            found = -1
            for j in range(w_n[x]):
                if w_target[x, j] == t and w_dec[x, j] == 0:
                    found = j
                    break
            if found >= 0:
                C[SAW_SENDS] = 1
                _decide(C, PC, wanted, tallies, order, norder, w_target, w_site, w_func, w_task, w_cpu, w_dec, x,
                        found, 3)
                _close(C, PC, wanted, tallies, order, norder, w_n, w_target, w_site, w_func, w_task, w_cpu, w_dec, x)
        elif k == 5 or k == 7:  # call_function(_single)_entry
            Q[c, Q_CAL] = _new_flush(C)
            Q[c, Q_CAL_FIRST] = -1
            in_cal[c] += 1
            if wanted[c]:
                C[CAL] += 1
                PC[c, PC_CAL] += 1
        elif k == 9:  # reschedule_entry
            if wanted[c]:
                C[RES] += 1
                PC[c, PC_RES] += 1
        elif k == 6 or k == 8:
            Q[c, Q_CAL] = -1
            in_cal[c] = max(0, in_cal[c] - 1)
        elif k == 1:  # csd_function_entry
            sn = s_n[c]
            if sn >= s_func.shape[1]:
                C[DECLINE] = 4
                return n_lat, n_dur
            s_func[c, sn] = func[r]
            s_csd[c, sn] = csd[r]
            s_ts[c, sn] = ts[r]
            s_n[c] = sn + 1
            if csd[r] == 0:
                if wanted[c]:
                    C[LOCAL] += 1
                if not hirq[r]:
                    _close(C, PC, wanted, tallies, order, norder, w_n, w_target, w_site, w_func, w_task, w_cpu,
                           w_dec, 2 * c)
                continue
            n_lat = _run_call(C, Q, qp, bat, tw_csd, tw_seq, tw_n, wanted, lat_f, lat_v, n_lat, g, c, csd[r], ts[r],
                              func[r], ttwu_id)
            if not wanted[c]:
                continue
            if in_cal[c] > 0:
                C[RUN_IRQ] += 1
                PC[c, PC_RUN_IRQ] += 1
            else:
                C[RUN_ELSE] += 1
                PC[c, PC_RUN_ELSE] += 1
            if func[r] == tlb_id:
                C[TLB] += 1
                PC[c, PC_TLB] += 1
        elif k == 2:  # csd_function_exit
            sn = s_n[c]
            if sn > 0:
                s_n[c] = sn - 1
                if s_csd[c, sn - 1] != 0 and wanted[c]:
                    dur_f[n_dur] = s_func[c, sn - 1]
                    dur_v[n_dur] = _quantize(max(np.int64(0), ts[r] - s_ts[c, sn - 1]))
                    n_dur += 1
        elif k == 12:  # cpu_idle
            if not hirq[r]:
                _close(C, PC, wanted, tallies, order, norder, w_n, w_target, w_site, w_func, w_task, w_cpu, w_dec,
                       2 * c)
    return n_lat, n_dur


@njit(cache=True)
def dense_ids(hashes, use, known, next_id, new_rows):
    """Replace each used row's hash by a small id (the same id for the same hash across blocks); the
    rows where a hash is seen first are listed in `new_rows`. Returns how many rows were listed."""
    out = np.full(len(hashes), -1, np.int64)
    n_new = 0
    for r in range(len(hashes)):
        if not use[r]:
            continue
        h = hashes[r]
        if h in known:
            out[r] = known[h]
        else:
            i = next_id[0]
            known[h] = i
            next_id[0] = i + 1
            out[r] = i
            new_rows[n_new] = r
            n_new += 1
    return out, n_new


@njit(cache=True)
def export_top(top):
    n = len(top)
    target = np.empty(n, np.int64)
    task = np.empty(n, np.int64)
    site = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    order = np.empty(n, np.int64)
    i = 0
    for k, v in top.items():
        target[i] = k[0]
        task[i] = k[1]
        site[i] = k[2]
        count[i] = v[0]
        order[i] = v[1]
        i += 1
    return target, task, site, count, order


@njit(cache=True)
def batched_waits(bat, wanted):
    """The waits of the wakeups still taken as batched at the trace's end: their batch's run stands."""
    f = np.empty(len(bat), np.int64)
    v = np.empty(len(bat), np.int64)
    n = 0
    for b in bat.values():
        n = _wait(wanted, f, v, n, b[0], b[3], b[1], b[2])
    return n, f, v


@njit(cache=True)
def finish(C, wanted, w_n, w_target, w_dec):
    for c in range(len(w_n)):
        for j in range(w_n[c]):
            if w_dec[c, j] == 0 and wanted[w_target[c, j]]:
                C[UNDECIDED] += 1


def fast_audit(path: Path, cpus: set[int] | None, stats: ReadStats,
               progress: Callable[[int, int], None] | None = None, top_n: int = 5) -> dict[str, Any] | None:
    """The audit of an ftrace text file (see the module doc); None when it declines."""
    try:
        with open(path, "rb") as raw:
            if binary_format(raw.read(16)) is not None:
                return None  # printed by its tool in trace-cmd or perf text, which read.py reads
            raw.seek(0)
            with decompressed(raw, path) as stream:
                return _fast_audit(path, raw, stream, cpus, stats, progress, top_n)
    except (TraceFormatError, OSError):
        return None  # the reference reader says what is wrong


def _fast_audit(path: Path, raw: BinaryIO, stream: BinaryIO, cpus: set[int] | None, stats: ReadStats,
                progress: Callable[[int, int], None] | None, top_n: int) -> dict[str, Any] | None:
    state: dict[str, Any] | None = None  # sized once the first block shows how many CPUs there are
    names: dict[int, str] = {}
    tasks: dict[int, str] = {}
    other: dict[int, int] = {}
    other_names: dict[int, str] = {}
    lat: dict[int, HdrHistogram] = {}
    dur: dict[int, HdrHistogram] = {}
    total = path.stat().st_size
    line_base = 0
    carry = b""
    first = True
    while True:
        try:
            chunk = stream.read(BLOCK)
        except DECOMPRESS_ERRORS:
            return None  # the reference reader says what is wrong with the data
        data = carry + chunk
        if not data:
            break
        if chunk:
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            data, carry = data[:cut], data[cut:]
        else:
            carry = b""
        if first:
            head = data[:1 << 16].decode("utf-8", "replace").splitlines(keepends=True)[:64]
            if detect_format(head) != "ftrace" or (head and head[0].startswith("cpus=")):
                return None
            stats.format = "ftrace"
            first = False
        buf = np.frombuffer(data, dtype=np.uint8)
        starts = line_starts(buf)
        if len(data) and data.endswith(b"\n") and len(starts) and starts[-1] == len(data):
            starts = starts[:-1]
        cols = parse(buf, starts)
        if cols["mask_overflow"].any():
            return None
        kind = cols["kind"]
        stats.lines += int(np.count_nonzero(kind != SKIP))
        for r in np.nonzero(kind == BAD)[0]:
            a = int(starts[r])
            b = int(starts[r + 1]) if r + 1 < len(starts) else len(data)
            line = data[a:b].decode("utf-8", "replace")
            message = _why_bad(line)
            if message is None:
                return None  # read.py reads this line: the compiled parser was too strict
            if message == SKIPPED:
                stats.lines -= 1
                continue
            stats.warn(TraceWarning(str(path), line_base + int(r) + 1, message))
        known = kind >= 0
        stats.events += int(np.count_nonzero(known))
        stats.ts_decimals = max(stats.ts_decimals, int(cols["fdig"][known].max(initial=0)))
        o = cols["other"][kind == OTHER]
        if len(o):
            hashes, first_idx, counts = np.unique(o, return_index=True, return_counts=True)
            rows = np.nonzero(kind == OTHER)[0]
            for h, i, n in zip(hashes.tolist(), first_idx.tolist(), counts.tolist(), strict=True):
                other[h] = other.get(h, 0) + n
                if h not in other_names:
                    other_names[h] = _line_field(data, starts, int(rows[i]), "name")
        top_cpu = _max_cpu(cols)
        if state is None:
            state = _new_state(max(8, 1 << int(top_cpu).bit_length()), cpus)
        if top_cpu >= state["ncpu"]:
            return None  # a CPU the first block did not show: the reference audit sizes as it goes
        n = len(kind)
        lat_f = np.empty(n, np.int64)
        lat_v = np.empty(n, np.int64)
        dur_f = np.empty(n, np.uint64)
        dur_v = np.empty(n, np.int64)
        st = state
        site = _ids(data, starts, cols, "site", np.isin(kind, (0, 3, 4)), st, "symbols", names, "callsite")
        func = _ids(data, starts, cols, "func", np.isin(kind, (0, 1, 2)), st, "symbols", names, "func")
        task = _ids(data, starts, cols, "task", kind == 0, st, "tasks", tasks, "task")
        if st["next_id"].max() >= ID_CAP:
            return None
        for i in range(st["singles_known"], int(st["next_id"][0])):
            st["single"][i] = names.get(i) in SINGLE_CALLSITES
        st["singles_known"] = int(st["next_id"][0])
        tlb_id = st["symbols"].get(FLUSH_TLB_FUNC, -2)
        ttwu_id = st["symbols"].get(TTWU_FUNC_HASH, -2)
        n_lat, n_dur = audit_block(kind, cols["cpu"].astype(np.int64), cols["ts"], cols["hirq"], task,
                                   cols["target"].astype(np.int64), site, func, cols["csd"],
                                   cols["resched"], cols["mrow"], cols["mask"], *(st[k] for k in STATE_ORDER),
                                   lat_f, lat_v, dur_f, dur_v, tlb_id, ttwu_id, line_base)
        if st["C"][DECLINE]:
            return None
        _record(lat, lat_f[:n_lat], lat_v[:n_lat])
        _record(dur, dur_f[:n_dur], dur_v[:n_dur])
        line_base += len(starts)
        if progress is not None:
            progress(raw.tell(), total)
        if not chunk:
            break
    if first or state is None:
        return None  # no text at all: the reference reader says so
    st = state
    finish(st["C"], st["wanted"], st["w_n"], st["w_target"], st["w_dec"])
    # Wakeups still taken as batched: their batch's run stands (CallQueues.finish).
    n_left, left_f, left_v = batched_waits(st["bat"], st["wanted"])
    _record(lat, left_f[:n_left], left_v[:n_left])
    wanted = st["wanted"]
    Q = st["Q"]
    st["C"][RUNS_UNMATCHED] = int(Q[wanted, Q_UNMATCHED].sum())
    st["runs_unseen"] = int(Q[wanted, Q_UNSEEN].sum())
    stats.other_events = {other_names[h]: n for h, n in other.items()}
    return _result(st, names, tasks, lat, dur, cpus, top_n)


STATE_ORDER = ("C", "PC", "wanted", "in_cal", "w_n", "w_target", "w_site", "w_func", "w_task", "w_cpu",
               "w_dec", "s_n", "s_func", "s_csd", "s_ts", "Q", "qp", "bat", "tw_csd", "tw_seq", "tw_n", "tallies",
               "order", "norder", "top", "single")


def _max_cpu(cols: dict[str, np.ndarray]) -> int:
    known = cols["kind"] >= 0
    top = int(cols["cpu"][known].max(initial=0))
    with_target = known & np.isin(cols["kind"], (0, 3, 11))
    top = max(top, int(cols["target"][with_target].max(initial=0)))
    rows = cols["mrow"][cols["kind"] == 4]
    if len(rows):
        masks = cols["mask"][rows]
        for w in range(masks.shape[1] - 1, -1, -1):
            word = int(np.bitwise_or.reduce(masks[:, w]))
            if word:
                top = max(top, 64 * w + word.bit_length() - 1)
                break
    return top


def _new_state(ncpu: int, cpus: set[int] | None) -> dict[str, Any]:
    wait = 4096 if ncpu <= 128 else 4 * ncpu  # undecided calls one CPU may pile up
    wanted = np.ones(ncpu, np.bool_) if cpus is None else np.isin(np.arange(ncpu), sorted(cpus))
    C = np.zeros(20, np.int64)
    C[FIRST_TS] = -1
    Q = np.full((ncpu, 8), -1, np.int64)
    Q[:, Q_UNSEEN:] = 0
    return {
        "ncpu": ncpu, "C": C, "PC": np.zeros((ncpu, 6), np.int64), "wanted": wanted,
        "in_cal": np.zeros(ncpu, np.int64),
        # waiting calls per sending context 2 * cpu + (in an interrupt handler)
        "w_n": np.zeros(2 * ncpu, np.int64), "w_target": np.zeros((2 * ncpu, wait), np.int64),
        "w_site": np.zeros((2 * ncpu, wait), np.int64), "w_func": np.zeros((2 * ncpu, wait), np.int64),
        "w_task": np.zeros((2 * ncpu, wait), np.int64), "w_cpu": np.zeros(2 * ncpu, np.int64),
        "w_dec": np.zeros((2 * ncpu, wait), np.int8),
        "s_n": np.zeros(ncpu, np.int64), "s_func": np.zeros((ncpu, STACK_CAP), np.int64),
        "s_csd": np.zeros((ncpu, STACK_CAP), np.uint64), "s_ts": np.zeros((ncpu, STACK_CAP), np.int64),
        # The queue model (queues.py): per CPU its flushes (Q_* slots); csd -> (target, row, ts, func) of each
        # call queued and not yet run; csd -> (target, ts, run ts, func, flush) of each wakeup taken in another's
        # batch whose run may still move; per CPU the wakeups queued and not yet run (csd, row).
        "Q": Q,
        "qp": Dict.empty(types.uint64, types.UniTuple(types.int64, 4)),
        "bat": Dict.empty(types.uint64, types.UniTuple(types.int64, 5)),
        "tw_csd": np.zeros((ncpu, TTWU_CAP), np.uint64), "tw_seq": np.zeros((ncpu, TTWU_CAP), np.int64),
        "tw_n": np.zeros(ncpu, np.int64),
        # per group (callsite, func, sender, target, cpu) and dense id: enqueues, ipis, queued, polling
        "tallies": np.zeros((len(GROUPS), max(ID_CAP, ncpu), 4), np.int64),
        "order": np.full((len(GROUPS), max(ID_CAP, ncpu)), -1, np.int64), "norder": np.zeros(len(GROUPS), np.int64),
        "top": Dict.empty(types.UniTuple(types.int64, 3), types.UniTuple(types.int64, 2)),
        # per symbol id: a callsite on a single-target path (audit.py's SINGLE_CALLSITES)
        "single": np.zeros(ID_CAP, np.bool_),
        # hash -> dense id, for callsites and functions together, and for tasks
        "symbols": Dict.empty(types.uint64, types.int64), "tasks": Dict.empty(types.uint64, types.int64),
        "next_id": np.zeros(2, np.int64), "singles_known": 0,
    }


SKIPPED = "skip"


def _why_bad(line: str) -> str | None:
    """What read.py says about a line the compiled parser refused: its warning, SKIPPED (a blank line
    by Python's idea of whitespace), or None (read.py reads it as an event)."""
    if not line.strip() or line.startswith("#"):
        return SKIPPED
    if not line.endswith("\n"):
        return "last line is cut short (no newline)"
    m = FTRACE.match(line)
    if m is None:
        return f"not a ftrace event line: {line.strip()[:60]!r}"
    if event_name(m) not in FORMATS:
        return None
    try:
        parse_fields(m["name"], m["rest"])
    except ValueError as e:
        return f"{m['name']}: {e}"
    return None


def _line_field(data: bytes, starts: np.ndarray, r: int, what: str) -> str:
    a = int(starts[r])
    b = int(starts[r + 1]) if r + 1 < len(starts) else len(data)
    m = FTRACE.match(data[a:b].decode("utf-8", "replace"))
    if m is None:
        return "?"
    if what == "name":
        return event_name(m)
    if what == "task":
        return m["task"].strip()
    field = re_field(m["rest"], what)
    return symbol_name(field) if field is not None else "?"


def re_field(rest: str, key: str) -> str | None:
    for token in rest.replace(", ", " ").split():
        k, _, v = token.partition("=")
        if k == key:
            return v
    return None


def _ids(data: bytes, starts: np.ndarray, cols: dict[str, np.ndarray], column: str, use: np.ndarray,
         state: dict[str, Any], table: str, names: dict[int, str], field: str) -> np.ndarray:
    """Dense ids for a hash column, learning the text of each name the first time it is seen."""
    known = state[table]
    slot = 0 if table == "symbols" else 1
    counter = state["next_id"][slot:slot + 1]
    new_rows = np.empty(len(use), np.int64)
    ids, n_new = dense_ids(cols[column], use, known, counter, new_rows)
    state["next_id"][slot] = counter[0]
    for r in new_rows[:n_new].tolist():
        names[int(ids[r])] = _line_field(data, starts, r, field)
    return ids


def _record(hists: dict[int, HdrHistogram], funcs: np.ndarray, values: np.ndarray) -> None:
    """Add (function id, ns) samples, each distinct pair once with its count (values are < 2**47 ns)."""
    if not len(funcs):
        return
    pairs, counts = np.unique((funcs.astype(np.int64) << 47) | np.minimum(values, (1 << 47) - 1),
                              return_counts=True)
    for key, n in zip(pairs.tolist(), counts.tolist(), strict=True):
        f, v = key >> 47, key & ((1 << 47) - 1)
        h = hists.get(f)
        if h is None:
            h = hists[f] = new_histogram()
        h.record_value(v, n)


def _result(st: dict[str, Any], names: dict[int, str], tasks: dict[int, str], lat: dict[int, HdrHistogram],
            dur: dict[int, HdrHistogram], cpus: set[int] | None, top_n: int) -> dict[str, Any]:
    C, PC, tallies, order = st["C"], st["PC"], st["tallies"], st["order"]
    counts = {name: int(C[i]) for i, name in COUNTER_NAMES.items()}
    if not C[SAW_SENDS]:
        counts["csds_undecided"] += counts["csd_no_ipi_queued"]
        counts["csd_no_ipi_queued"] = 0
        tallies[:, :, 2] = 0
    keys = ("csd_enqueues", "local_runs", "csd_ipis", "csd_no_ipi_queued", "csd_no_ipi_polling", "csds_undecided",
            "ipis_unmatched", "reschedule_ipis", "cal_interrupts", "reschedule_interrupts", "csds_run_in_irq",
            "csds_run_elsewhere", "tlb_flushes_received", "runs_unseen", "runs_unmatched")
    counts["runs_unseen"] = st["runs_unseen"]
    counts["runs_unmatched"] = int(C[RUNS_UNMATCHED])
    out: dict[str, Any] = {k: counts[k] for k in keys}
    cal = counts["cal_interrupts"]
    out["csds_per_interrupt"] = counts["csds_run_in_irq"] / cal if cal else None
    out["decisions_known"] = bool(C[SAW_SENDS])
    out["duration_ns"] = int(C[LAST_TS] - C[FIRST_TS]) if C[FIRST_TS] >= 0 else 0
    out["by"] = {}
    for g, group in enumerate(GROUPS):
        touched = np.nonzero(order[g] >= 0)[0]
        rows = []
        for key in touched.tolist():
            t = tallies[g, key]
            name = names.get(key, "?") if g < 2 else tasks.get(key, "?") if g == 2 else str(key)
            rows.append((-int(t[0]), int(order[g, key]), name, {"enqueues": int(t[0]), "ipis": int(t[1]),
                                                               "no_ipi_queued": int(t[2]),
                                                               "no_ipi_polling": int(t[3])}))
        out["by"][group] = {name: d for _, _, name, d in sorted(rows)}
    out["by_callsite"] = out["by"]["callsite"]
    out["per_cpu"] = {str(c): {PER_CPU_NAMES[j]: int(PC[c, j]) for j in sorted(range(6), key=lambda j: PER_CPU_NAMES[j])
                               if PC[c, j]} for c in range(len(PC)) if PC[c].any()}
    senders: dict[int, list[tuple[int, int, str, str]]] = {}
    for target, task, site, n, first in zip(*(a.tolist() for a in export_top(st["top"])), strict=True):
        senders.setdefault(int(target), []).append((int(n), int(first), tasks.get(int(task), "?"),
                                                    names.get(int(site), "?")))
    out["top_senders"] = {
        str(t): [{"task": task, "callsite": site, "enqueues": n}
                 for n, _, task, site in sorted(rows, key=lambda x: (-x[0], x[1]))[:top_n]]
        for t, rows in sorted(senders.items())}
    out["latency_ns"] = {names.get(f, "?"): percentiles(h) for f, h in lat.items()}
    out["latency_ns"] = dict(sorted(out["latency_ns"].items()))
    out["function_ns"] = dict(sorted({names.get(f, "?"): percentiles(h) for f, h in dur.items()}.items()))
    out["times"] = TIME_DOCS
    out["cpus"] = sorted(cpus) if cpus is not None else None
    return out

