"""How fast the reference engine simulates: CSDs and engine events per wall-clock second.

Runs the 88-CPU TLB-shootdown storm (broadwell-ep-2s-88t, tlbstorm, v4.13) for a fixed simulated window
and prints the rates next to a floor measured in the same run: a bare heapq loop that pops and pushes the
same number of events doing nothing else. The ratio engine/floor is what to track (wall-clock numbers on
these shared machines are noisy; compare ratios from one run). Issue 7's fast engine will be added here.

    python3 benchmarks/sim_speed.py [--seconds 0.002]
"""

from __future__ import annotations

import argparse
import heapq
import time

from ipilab.kernel.features import resolve_kernel
from ipilab.machine.model import load_machine
from ipilab.sim.run import simulate
from ipilab.workloads import workload_from_settings


def heapq_floor(n: int) -> float:
    queue = [(i, i) for i in range(1000)]
    heapq.heapify(queue)
    t0 = time.perf_counter()
    for i in range(n):
        when, _ = heapq.heappop(queue)
        heapq.heappush(queue, (when + 1000, i))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.002, help="simulated window (default 0.002)")
    args = ap.parse_args()
    r = simulate(load_machine("broadwell-ep-2s-88t"), resolve_kernel("v4.13"),
                 workload_from_settings("tlbstorm", {}), seconds=args.seconds, seed=1)
    wall = r["wall_seconds"]
    events_per_s = r["engine_events"] / wall
    floor = heapq_floor(r["engine_events"])
    print(f"scenario: tlbstorm on broadwell-ep-2s-88t, v4.13, {args.seconds * 1e3:g} ms simulated")
    print(f"reference engine: {r['csd_enqueues']:,} CSDs, {r['engine_events']:,} events in {wall:.2f} s")
    print(f"  simulated CSDs per wall second:  {r['csd_enqueues'] / wall:,.0f}")
    print(f"  engine events per wall second:   {events_per_s:,.0f}")
    print(f"floor, bare heapq pop+push loop:   {floor:,.0f} events/s")
    print(f"ratio engine / floor:              {events_per_s / floor:.3f}")


if __name__ == "__main__":
    main()
