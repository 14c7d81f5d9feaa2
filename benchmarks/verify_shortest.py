"""The breadth-first search for a shortest counterexample in one process against several, in one run.

Both searches start from the same placeholder run (as long as the partial-order search's first
counterexample would be, so both go to the depth of the true shortest) on the same configuration, one
after the other in this process; each reports wall seconds, states and the shortest it proved. The
ratio one / several is the speed-up of `verify --workers`; the states must agree up to the depth where
the counterexample was found (that depth's count depends on how far each worker got first).

    PYTHONPATH=src python3 benchmarks/verify_shortest.py [--variant ipi-before-add] [--kernel v4.12]
        [--cpus 3] [--calls 2] [--workers N] [--in-hand 40]

The default configuration takes about 7 s in one process (1.44x faster in 2 on the 2-core VM);
`--variant check-then-add --kernel v4.12` is the slow one of docs/verify.md (about 80 s in one process).
"""

from __future__ import annotations

import argparse
import resource
import time

from ipilab.kernel.features import resolve_kernel
from ipilab.verify.explore import Config, Result, Violation, default_programs
from ipilab.verify.shortest import default_workers, shorten
from ipilab.verify.variants import VARIANTS


def one(cfg: Config, in_hand: int, workers: int) -> tuple[float, Result]:
    res = Result(cfg, counterexample=[("run", 0)] * in_hand,
                 counterexample_violation=Violation("placeholder", "a run of that many moves"))
    t0 = time.perf_counter()
    shorten(res, 10**8, workers=workers)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="ipi-before-add", choices=sorted(VARIANTS))
    ap.add_argument("--kernel", default="v4.12")
    ap.add_argument("--cpus", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--workers", type=int, default=max(2, default_workers()))
    ap.add_argument("--in-hand", type=int, default=40, help="moves of the placeholder run (a depth bound)")
    a = ap.parse_args()
    cfg = Config(resolve_kernel(a.kernel), default_programs(a.cpus, a.calls), VARIANTS[a.variant].smp_class,
                 a.variant)
    print(f"{a.variant} {a.kernel} {a.cpus} x {a.calls}, breadth-first search from a {a.in_hand}-move run")
    times = {}
    for workers in (1, a.workers):
        seconds, res = one(cfg, a.in_hand, workers)
        times[workers] = seconds
        print(f"  {workers} process{'es' if workers > 1 else ''}: {seconds:.1f} s wall, "
              f"{res.shortest_states:,} states, shortest {res.fewest_moves} moves "
              f"({res.counterexample_violation.kind})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"speed-up with {a.workers} workers: {times[1] / times[a.workers]:.2f}x "
          f"(peak memory: this process {peak:,.0f} MB, largest worker {workers_peak:,.0f} MB)")


if __name__ == "__main__":
    main()
