"""How fast `ipilab analyze` reads a trace, against a plain one-regex-per-line Python loop.

Both read the same decompressed ftrace text from disk in the same run; the loop only matches each line
with one regex and counts event names (no audit). The ratio analyze/loop is what to track; issue 4's
target is >= 5. Peak memory of the analysis is printed too (it streams: flat in the trace's length).

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
        t0 = time.perf_counter()
        result = audit_trace(plain)
        t_analyze = time.perf_counter() - t0
        tracemalloc.start()  # a second, slower pass for the memory peak alone
        audit_trace(plain)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    print(f"trace: {source.name}, {lines:,} lines ({n_loop:,} events)")
    print(f"plain regex loop : {lines / t_loop:12,.0f} lines/s")
    print(f"ipilab analyze   : {lines / t_analyze:12,.0f} lines/s  (peak Python memory {peak / 2**20:.1f} MiB, "
          f"{result['csd_enqueues']:,} calls audited)")
    print(f"ratio analyze/loop: {t_loop / t_analyze:.2f}  (target >= 5)")


if __name__ == "__main__":
    main()
