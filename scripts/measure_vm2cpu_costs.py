#!/usr/bin/env python3
"""The measurements behind the `vm-2cpu` preset, now taken by `ipilab calibrate`'s estimators.

The preset's costs were measured from the real 2-vCPU KVM traces in ../shared/traces (Linux 6.18). This
script used to hold its own copy of those estimators; they live in ipilab.machine.calibrate now, and this
prints what they measure on the default traces: each cost's sample (n, mean, p50/p90/p99) and the raw
delivery and handler times the preset's sources quote. ftrace timestamps are whole microseconds, so a
sub-microsecond cost is a mix of 0 and 1000 ns samples: its mean, not its median, is the estimate.

Usage: measure_vm2cpu_costs.py [TRACE ...] [--json]
(the same as `ipilab calibrate TRACE... -o FILE --json`, without writing a machine file)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ipilab.machine.calibrate import calibrate
from ipilab.machine.model import load_machine

DEFAULT_TRACES = ("reclaim-usemem-4x96.trace.xz", "madvise-threads.trace.xz", "idle-1s.trace.xz")
# ../shared/traces beside the checkout, or beside a folder above it (as from a git worktree).
DEFAULT_TRACE_DIR = next((p / "shared" / "traces" for p in Path(__file__).resolve().parents
                          if (p / "shared" / "traces").is_dir()), Path("../shared/traces"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help=f"traces (default: {', '.join(DEFAULT_TRACES)} in "
                    f"{DEFAULT_TRACE_DIR})")
    ap.add_argument("--json", action="store_true", help="print the calibration as JSON")
    ns = ap.parse_args()
    paths = ns.paths or [DEFAULT_TRACE_DIR / name for name in DEFAULT_TRACES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(f"missing trace(s): {', '.join(missing)}")
    cal = calibrate(paths, load_machine("vm-2cpu"), name="vm-2cpu-measured", tlb_flush=None)
    if ns.json:
        print(json.dumps(cal.as_json(), indent=2))
        return
    print(f"{'cost (ns)':<26} {'n':>8} {'mean':>9} {'p50':>8} {'p90':>8} {'p99':>8}")
    for key, cost in cal.measured.items():
        mean = re.search(r"mean (\d+) ns", cost.source)
        print(f"{key:<26} {cost.n:>8,} {mean[1] if mean else '-':>9} {cost.p50:>8} {cost.p90:>8} {cost.p99:>8}")
    print()
    print(f"{'raw sample (ns)':<34} {'n':>8} {'mean':>9} {'p50':>8} {'p90':>8} {'p99':>8}")
    for key, s in cal.measurements.items():
        if s.get("n"):
            print(f"{key:<34} {s['n']:>8,} {s['mean']:>9} {s['p50']:>8} {s['p90']:>8} {s['p99']:>8}")
    for note in cal.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
