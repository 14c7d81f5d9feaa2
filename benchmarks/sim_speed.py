"""How fast the simulator runs the seed scenario: the fast (compiled) engine, the reference engine, and a
minimal SimPy model as the floor, in one run on one core.

The scenario is `ipilab reproduce seed`'s reclaim phase: swap-w-seq-mt (80 threads) on
broadwell-ep-2s-88t. Both engines simulate the same simulated window after the same simulated warm-up,
with the same seed (so they do exactly the same work: the same CSDs and engine events); only the
window's wall time counts. The warm-up's wall time and the fast engine's compile (or cache-load) time
are printed apart. The floor is SimPy, the usual Python discrete-event library, running the least a
model of this machine can do: one process per CPU, one timeout per step, nothing else, for as many
events as the engines processed.

    PYTHONPATH=src python3 benchmarks/sim_speed.py [--seconds 0.005] [--warmup 0.005] [--kernel v4.12]
"""

from __future__ import annotations

import argparse
import time

import simpy

from ipilab.kernel.features import resolve_kernel
from ipilab.machine.model import load_machine
from ipilab.sim.fast.run import warm_up
from ipilab.sim.run import simulate
from ipilab.workloads import workload_from_settings

MACHINE = "broadwell-ep-2s-88t"


def simpy_floor(ncpus: int, events: int) -> float:
    """Events per wall second of SimPy with `ncpus` processes that each only wait, step after step."""
    env = simpy.Environment()
    steps = events // ncpus

    def cpu(i: int) -> simpy.events.ProcessGenerator:
        for _ in range(steps):
            yield env.timeout(100 + i)

    for i in range(ncpus):
        env.process(cpu(i))
    t0 = time.perf_counter()
    env.run()
    return steps * ncpus / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.005, help="simulated window measured (default 0.005)")
    ap.add_argument("--warmup", type=float, default=0.005, help="simulated warm-up, not measured (default 0.005)")
    ap.add_argument("--kernel", default="v4.12", help="kernel version (default v4.12: the most IPIs)")
    args = ap.parse_args()
    compile_s = warm_up()
    m = load_machine(MACHINE)
    runs = {}
    for engine in ("fast", "reference"):
        r = simulate(m, resolve_kernel(args.kernel), workload_from_settings("swap-w-seq-mt", {}),
                     seconds=args.seconds, warmup=args.warmup, seed=1, engine=engine)
        runs[engine] = r
    fast, ref = runs["fast"], runs["reference"]
    assert fast["csd_enqueues"] == ref["csd_enqueues"] and fast["engine_events"] == ref["engine_events"]
    events = fast["engine_events"]
    floor = simpy_floor(m.ncpus, events)
    print(f"scenario: swap-w-seq-mt (80 threads) on {MACHINE}, {args.kernel}, seed 1: {args.seconds * 1e3:g} ms "
          f"simulated after a {args.warmup * 1e3:g} ms warm-up")
    print(f"  work in the window: {fast['csd_enqueues']:,} CSDs queued, {events:,} engine events (both engines)")
    print(f"fast engine compile or cache load: {compile_s:.2f} s (not counted)")
    rates = {}
    for name, r in runs.items():
        window = r["wall_seconds"] - r["warmup_wall_seconds"]
        rates[name] = (r["csd_enqueues"] / window, r["engine_events"] / window)
        print(f"{name + ' engine:':18} {rates[name][0]:>13,.0f} simulated CSDs/s  {rates[name][1]:>13,.0f} events/s  "
              f"(window {window:.3f} s, warm-up {r['warmup_wall_seconds']:.3f} s not counted)")
    print(f"{'SimPy floor:':18} {'':>13}                    {floor:>13,.0f} events/s  (one process per CPU, "
          f"a timeout per step)")
    print(f"fast / reference:      {rates['fast'][0] / rates['reference'][0]:.1f}x")
    print(f"fast / SimPy floor:    {rates['fast'][1] / floor:.1f}x (events/s)")
    print(f"reference / SimPy:     {rates['reference'][1] / floor:.2f}x (events/s)")


if __name__ == "__main__":
    main()
