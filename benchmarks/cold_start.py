"""A first `ipilab reproduce seed` on a fresh install against a later one, on the same machine, in one run.

Each is a child process, `python -m ipilab.cli reproduce seed --json`, with NUMBA_CACHE_DIR pointed at a
new empty folder: the first (cold) finds numba's cache empty and compiles the fast engine, the second
(warm) loads what the first cached there. Times are host wall seconds from starting the child to its
exit (Python's start-up included) and the CPU seconds the child and its workers used (user + system);
on a shared machine CPU seconds move less with what else runs. The ratio cold / warm is the goal's
measure (within 3x). Pass --runs N to repeat the warm run and keep its fastest.

    PYTHONPATH=src python3 benchmarks/cold_start.py [--runs 1] [-- extra reproduce seed options]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child_run(cache: str, extra: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, the child and its workers) and stderr of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "ipilab.cli", "reproduce", "seed", "--json", *extra],
                       env={**os.environ, "NUMBA_CACHE_DIR": cache}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"cold_start: reproduce seed failed ({p.returncode}):\n{p.stderr}")
    json.loads(p.stdout)  # --json must stay clean whatever the compile notice says
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="warm runs (the fastest is kept)")
    ap.add_argument("extra", nargs="*", help="options passed to reproduce seed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipilab-numba-") as cache:
        cold_wall, cold_cpu, cold_err = child_run(cache, args.extra)
        warm = [child_run(cache, args.extra) for _ in range(args.runs)]
    warm_wall = min(w for w, _, _ in warm)
    warm_cpu = min(c for _, c, _ in warm)
    compiled = [line for line in cold_err.splitlines() if "compiled in" in line]
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (1 min) at the end")
    print(f"cold reproduce seed (empty numba cache): {cold_wall:6.1f} s wall, {cold_cpu:6.1f} s CPU")
    if compiled:
        print(f"  of which the notice reports: {compiled[0].removeprefix('ipilab: ')}")
    print(f"warm reproduce seed (cache filled):       {warm_wall:6.1f} s wall, {warm_cpu:6.1f} s CPU"
          f" (fastest of {len(warm)})")
    print(f"cold / warm: {cold_wall / warm_wall:.2f}x wall, {cold_cpu / warm_cpu:.2f}x CPU (goal: within 3x)")


if __name__ == "__main__":
    main()
