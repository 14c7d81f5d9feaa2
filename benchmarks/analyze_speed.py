"""How fast `ipilab analyze` reads a trace, against a plain one-regex-per-line Python loop.

Both read the same decompressed ftrace text from disk in the same run; the loop only matches each line
with one regex and counts event names (no audit). The ratio analyze/loop is what to track; issue 4's
target is >= 5. Loading the compiled code (numba's cache; compiling on the very first run) is a warm-up,
timed and printed apart. Peak memory is printed for the trace and for the trace twice over: it streams,
so the two should match.

    python3 benchmarks/analyze_speed.py [TRACE]   (default: shared/traces/reclaim-usemem-4x96.trace.xz)
"""

from __future__ import annotations

import lzma
import re
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from ipilab.analysis.audit import audit_trace

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "reclaim-usemem-4x96.trace.xz"
LINE = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+(\S+)\s+(\d+\.\d+):\s+(\w+):\s*(.*)$")


def regex_loop(path: Path) -> tuple[int, float]:
    names: Counter = Counter()
    t0 = time.perf_counter()
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                names[m[6]] += 1
    return sum(names.values()), time.perf_counter() - t0


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "trace.txt"
        opener = lzma.open if source.suffix == ".xz" else open
        with opener(source, "rb") as src, open(plain, "wb") as dst:
            dst.write(src.read())
        with open(plain) as f:
            lines = sum(1 for _ in f)
        n_loop, t_loop = regex_loop(plain)
        small = Path(tmp) / "warmup.txt"
        with open(plain) as f, open(small, "w") as out:
            out.writelines(line for _, line in zip(range(2000), f, strict=False))
        t0 = time.perf_counter()
        audit_trace(small)
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = audit_trace(plain)
        t_analyze = time.perf_counter() - t0
        twice = Path(tmp) / "twice.txt"
        with open(twice, "wb") as out:
            out.write(plain.read_bytes() * 2)
        peaks = []
        for path in (plain, twice):
            tracemalloc.start()  # separate, slower passes for the memory peaks alone
            audit_trace(path)
            peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.stop()
    print(f"trace: {source.name}, {lines:,} lines ({n_loop:,} events)")
    print(f"plain regex loop : {lines / t_loop:12,.0f} lines/s")
    print(f"ipilab analyze   : {lines / t_analyze:12,.0f} lines/s  ({result['csd_enqueues']:,} calls audited; "
          f"warm-up {t_warm:.2f} s apart)")
    print(f"peak memory      : {peaks[0]:.0f} MiB for the trace, {peaks[1]:.0f} MiB for it twice over")
    print(f"ratio analyze/loop: {t_loop / t_analyze:.2f}  (target >= 5)")


if __name__ == "__main__":
    main()
