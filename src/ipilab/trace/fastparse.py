"""A compiled parser for ftrace `trace` text: the same events as read.py, as columns, at memory speed.

`parse_block` (numba) scans a block of bytes line by line and fills one row of columns per line: its
kind (an index into KINDS, or OTHER / BAD / SKIP), CPU, time (and `fdig`, how many decimals its
timestamp has: its resolution), task and the fields the audit needs. Strings (task, callsite, func,
callback) become 64-bit FNV-1a hashes; `names_of` turns the hashes back into text from the block. A
line it cannot read is marked BAD and read.py reads it again to say why, so both parsers report the
same warnings. read.py stays the reference: tests compare the two on every trace.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

KINDS = ("csd_queue_cpu", "csd_function_entry", "csd_function_exit", "ipi_send_cpu", "ipi_send_cpumask",
         "call_function_entry", "call_function_exit", "call_function_single_entry", "call_function_single_exit",
         "reschedule_entry", "reschedule_exit", "sched_wake_idle_without_ipi", "cpu_idle")
OTHER, BAD, SKIP = -1, -2, -3
MASK_WORDS = 8  # cpumasks up to 512 CPUs

_NAME_BYTES = np.zeros((len(KINDS), 32), dtype=np.uint8)
_NAME_LENS = np.zeros(len(KINDS), dtype=np.int64)
for _i, _n in enumerate(KINDS):
    _NAME_BYTES[_i, : len(_n)] = np.frombuffer(_n.encode(), dtype=np.uint8)
    _NAME_LENS[_i] = len(_n)

# Field keys: cpu callsite func csd callback cpumask vector state cpu_id
_KEYS = ("cpu", "callsite", "func", "csd", "callback", "cpumask", "vector", "state", "cpu_id")
_KEY_BYTES = np.zeros((len(_KEYS), 16), dtype=np.uint8)
_KEY_LENS = np.zeros(len(_KEYS), dtype=np.int64)
for _i, _n in enumerate(_KEYS):
    _KEY_BYTES[_i, : len(_n)] = np.frombuffer(_n.encode(), dtype=np.uint8)
    _KEY_LENS[_i] = len(_n)
# Which keys each kind needs (bit i = _KEYS[i]).
_NEEDS = np.array([0b1111, 0b1100, 0b1100, 0b10011, 0b110010, 1 << 6, 1 << 6, 1 << 6, 1 << 6, 1 << 6, 1 << 6,
                   0b1, 0b110000000], dtype=np.int64)

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


@njit(cache=True, nogil=True)
def _hash(buf, a, b):
    h = np.uint64(0xCBF29CE484222325)
    for i in range(a, b):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    return h


@njit(cache=True, nogil=True)
def _match(buf, a, b, table, lens, k):
    n = b - a
    if n != lens[k]:
        return False
    for i in range(n):
        if buf[a + i] != table[k, i]:
            return False
    return True


@njit(cache=True, nogil=True)
def _int(buf, a, b):
    v = 0
    if a >= b:
        return -1
    for i in range(a, b):
        c = buf[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@njit(cache=True, nogil=True)
def _hexval(c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@njit(cache=True, nogil=True)
def parse_block(buf, starts, lo, hi, end_all, kind, cpu, ts, hirq, task, pid, target, site, func, csd, resched,
                vector, state, mrow, mask, other, fdig):
    """Parse lines lo..hi-1 of those beginning at `starts` (each ends before the next start, the last at
    `end_all`). A cpumask goes to its own row of `mask` (rows lo.. in order), `mrow` says which.
    Returns how many mask rows were used, or -1 if `mask` ran out of rows."""
    n = len(starts)
    m_used = 0
    m_base = lo // 4
    for r in range(lo, hi):
        a = starts[r]
        e = starts[r + 1] if r + 1 < n else end_all
        # the line without its newline (read.py's order: blank and comment lines first, then the newline)
        cut = not (e > a and buf[e - 1] == 10)
        if not cut:
            e -= 1
        blank = True
        for x in range(a, e):
            ch = buf[x]
            if not (ch == 32 or 9 <= ch <= 13):
                blank = False
                break
        if blank or buf[a] == 35:  # blank, or '#' in the first column
            kind[r] = SKIP
            continue
        if cut:
            kind[r] = BAD
            continue
        i = a
        while i < e and buf[i] == 32:
            i += 1
        # find "[ddd]"
        j = i
        lb = -1
        while j < e:
            if buf[j] == 91:  # '['
                k = j + 1
                while k < e and 48 <= buf[k] <= 57:
                    k += 1
                if k < e and buf[k] == 93 and k > j + 1:
                    lb = j
                    break
            j += 1
        if lb < 0:
            kind[r] = BAD
            continue
        rb = j + 1
        while buf[rb] != 93:
            rb += 1
        c = _int(buf, lb + 1, rb)
        # task-pid before '[' (maybe with a "( tgid)" column between)
        p = lb - 1
        while p > i and buf[p] == 32:
            p -= 1
        if buf[p] == 41:  # ')': skip "(  tgid)"
            while p > i and buf[p] != 40:
                p -= 1
            p -= 1
            while p > i and buf[p] == 32:
                p -= 1
        pe = p + 1
        while p > i and 48 <= buf[p] <= 57:
            p -= 1
        if buf[p] != 45 or p + 1 >= pe:  # '-'
            kind[r] = BAD
            continue
        the_pid = _int(buf, p + 1, pe)
        # flags, timestamp
        q = rb + 1
        while q < e and buf[q] == 32:
            q += 1
        fa = q
        while q < e and buf[q] != 32:
            q += 1
        if q - fa < 4 or q - fa > 5:
            kind[r] = BAD
            continue
        for x in range(fa, q):
            ch = buf[x]
            if not (ch == 46 or 48 <= ch <= 57 or 65 <= ch <= 90 or 97 <= ch <= 122):
                fa = -1
        if fa < 0:
            kind[r] = BAD
            continue
        h = buf[fa + 2] == 104 or buf[fa + 2] == 72  # the hardirq column: 'h' / 'H'
        while q < e and buf[q] == 32:
            q += 1
        sa = q
        while q < e and 48 <= buf[q] <= 57:
            q += 1
        if q == sa or q >= e or buf[q] != 46:
            kind[r] = BAD
            continue
        secs = _int(buf, sa, q)
        q += 1
        fa2 = q
        while q < e and 48 <= buf[q] <= 57:
            q += 1
        if q == fa2 or q >= e or buf[q] != 58:
            kind[r] = BAD
            continue
        frac = 0
        digits = 0
        for x in range(fa2, q):
            if digits < 9:
                frac = frac * 10 + (buf[x] - 48)
                digits += 1
        fdig[r] = min(q - fa2, 9)  # the timestamp's decimals: its resolution
        while digits < 9:
            frac *= 10
            digits += 1
        q += 1
        while q < e and buf[q] == 32:
            q += 1
        na = q
        while q < e and (buf[q] == 95 or 48 <= buf[q] <= 57 or 65 <= buf[q] <= 90 or 97 <= buf[q] <= 122):
            q += 1
        nb = q
        if q == na or q >= e:
            kind[r] = BAD
            continue
        if buf[q] != 58:  # no ':' after the name: a system call's entry `sys_x(...` or exit `sys_x -> ret`
            if buf[q] == 40:
                syscall_end = q + 1
            elif q + 3 < e and buf[q] == 32 and buf[q + 1] == 45 and buf[q + 2] == 62 and buf[q + 3] == 32:
                syscall_end = q + 3
            else:
                kind[r] = BAD
                continue
            cpu[r] = c
            ts[r] = secs * 1000000000 + frac
            hirq[r] = h
            pid[r] = the_pid
            task[r] = _hash(buf, i, p)
            kind[r] = OTHER
            other[r] = _hash(buf, na, syscall_end)  # "sys_x(" or "sys_x ->": entry and exit apart
            continue
        k_found = OTHER
        for k in range(len(_NAME_LENS)):
            if _match(buf, na, nb, _NAME_BYTES, _NAME_LENS, k):
                k_found = k
                break
        cpu[r] = c
        ts[r] = secs * 1000000000 + frac
        hirq[r] = h
        pid[r] = the_pid
        task[r] = _hash(buf, i, p)
        if k_found == OTHER:
            kind[r] = OTHER
            other[r] = _hash(buf, na, nb)
            continue
        # fields
        q += 1
        have = 0
        target[r] = -1
        resched[r] = False
        mrow[r] = -1
        bad = False
        while q < e:
            while q < e and (buf[q] == 32 or buf[q] == 44):
                q += 1
            if q >= e:
                break
            ka = q
            while q < e and buf[q] != 61 and buf[q] != 32:
                q += 1
            if q >= e or buf[q] != 61:
                bad = True
                break
            kb = q
            q += 1
            va = q
            while q < e and buf[q] != 32 and not (buf[q] == 44 and q + 1 < e and buf[q + 1] == 32):
                q += 1
            vb = q
            if vb == va:  # read.py's field pattern needs a value: "key=" alone is no field
                bad = True
                break
            if vb > va and buf[vb - 1] == 44:
                vb -= 1
            key = -1
            for k in range(len(_KEY_LENS)):
                if _match(buf, ka, kb, _KEY_BYTES, _KEY_LENS, k):
                    key = k
                    break
            if key < 0:
                bad = True
                break
            have |= 1 << key
            if key == 0 or key == 8:  # cpu, cpu_id
                v = _int(buf, va, vb)
                if v < 0:
                    bad = True
                    break
                target[r] = v
            elif key == 6 or key == 7:  # vector, state
                v = _int(buf, va, vb)
                if v < 0:
                    bad = True
                    break
                if key == 6:
                    vector[r] = v
                else:
                    state[r] = v
            elif key == 1 or key == 2 or key == 4:  # symbols: hash without +off/size
                sb = va
                while sb < vb and buf[sb] != 43:
                    sb += 1
                hv = _hash(buf, va, sb)
                if key == 1:
                    site[r] = hv
                elif key == 2:
                    func[r] = hv
                else:
                    resched[r] = (vb - va == 3 and buf[va] == 48 and buf[va + 1] == 120 and buf[va + 2] == 48)
            elif key == 3:  # csd pointer
                v2 = np.uint64(0)
                x = va
                if vb - va == 5 and buf[va] == 40:  # (nil)
                    x = vb
                elif vb - va > 2 and buf[va] == 48 and buf[va + 1] == 120:
                    x = va + 2
                while x < vb:
                    d = _hexval(buf[x])
                    if d < 0:
                        bad = True
                        break
                    v2 = (v2 << np.uint64(4)) | np.uint64(d)
                    x += 1
                csd[r] = v2
            elif key == 5:  # cpumask: hex words, most significant first
                mr = m_base + m_used
                if mr >= mask.shape[0] or (r + 1 < n and mr >= (lo + (hi - lo)) // 4 + (hi - lo) // 4 + 16
                                           and False):
                    return -1
                if mr >= m_base + (hi - lo) // 4 + 16:
                    return -1
                m_used += 1
                mrow[r] = mr
                for w in range(mask.shape[1]):
                    mask[mr, w] = 0
                bit = 0
                x = vb - 1
                while x >= va:
                    ch = buf[x]
                    if ch == 44:
                        x -= 1
                        continue
                    d = _hexval(ch)
                    if d < 0:
                        bad = True
                        break
                    for b4 in range(4):
                        if (d >> b4) & 1:
                            pos = bit + b4
                            if pos >= 64 * mask.shape[1]:
                                bad = True
                            else:
                                mask[mr, pos // 64] |= np.uint64(1) << np.uint64(pos % 64)
                    bit += 4
                    x -= 1
            if bad:
                break
        if bad or have != _NEEDS[k_found]:
            kind[r] = BAD
            continue
        kind[r] = k_found
    return m_used


@njit(cache=True, nogil=True)
def line_starts(buf):
    """Offsets of every line's first byte."""
    count = 1
    for i in range(len(buf) - 1):
        if buf[i] == 10:
            count += 1
    out = np.empty(count, dtype=np.int64)
    out[0] = 0
    k = 1
    for i in range(len(buf) - 1):
        if buf[i] == 10:
            out[k] = i + 1
            k += 1
    return out


def parse(buf: np.ndarray, starts: np.ndarray, threads: int = 2) -> dict[str, np.ndarray]:
    """Columns for every line, parsed in `threads` parallel slices (the parser releases the GIL)."""
    n = len(starts)
    cols = {
        "kind": np.empty(n, np.int8), "cpu": np.empty(n, np.int32), "ts": np.empty(n, np.int64),
        "hirq": np.empty(n, np.bool_), "task": np.empty(n, np.uint64), "pid": np.empty(n, np.int32),
        "target": np.empty(n, np.int32), "site": np.empty(n, np.uint64), "func": np.empty(n, np.uint64),
        "csd": np.empty(n, np.uint64), "resched": np.empty(n, np.bool_), "vector": np.empty(n, np.int32),
        "state": np.empty(n, np.int64), "mrow": np.empty(n, np.int64),
        "mask": np.empty((n // 4 + 16 * (threads + 1), MASK_WORDS), np.uint64), "other": np.empty(n, np.uint64),
        "fdig": np.zeros(n, np.int8),
    }
    bounds = [n * k // threads for k in range(threads + 1)]
    args = [cols[k] for k in ("kind", "cpu", "ts", "hirq", "task", "pid", "target", "site", "func", "csd",
                              "resched", "vector", "state", "mrow", "mask", "other", "fdig")]

    def run(k: int) -> int:
        return parse_block(buf, starts, bounds[k], bounds[k + 1], len(buf), *args)

    if threads > 1 and n > 100_000:
        with ThreadPoolExecutor(threads) as pool:
            used = list(pool.map(run, range(threads)))
    else:
        used = [parse_block(buf, starts, 0, n, len(buf), *args)]
    cols["mask_overflow"] = np.array([u < 0 for u in used])
    return cols


def fnv1a(text: str) -> int:
    """The same 64-bit hash parse_block gives a string, for looking names up."""
    h = int(FNV_OFFSET)
    for byte in text.encode():
        h = ((h ^ byte) * int(FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return h
