"""The seed's fill phase (RAM still free, no reclaim) under v4.12, run exactly as `ipilab reproduce seed` runs
it (its fill job: 2 ms after a 0.5 ms warm-up, seed 1), with and without zone->lock and the memory bandwidth:
the fill rate in GB/s (pages written a second x 4096 B / 1e9) and the usemem CPUs' largest uses of time, which
say what bounds it. The table of docs/reproduce.md's "Memory bandwidth" section.

    PYTHONPATH=src python3 scripts/seed_fill_phase.py    # about 10 s
"""

from __future__ import annotations

from ipilab.reproduce.seed import INTERVALS, MACHINE, SECONDS, WARMUP, jobs_for, run_jobs, time_use
from ipilab.workloads.swap import PAGE_SIZE

MODELS = {
    "neither": {"zone_lock": "false", "mem_bandwidth": "false"},
    "memory bandwidth only (the default)": {},
    "zone->lock only": {"zone_lock": "true", "mem_bandwidth": "false"},
    "zone->lock and memory bandwidth": {"zone_lock": "true"},
}


def main() -> None:
    for name, settings in MODELS.items():
        fill = [j for j in jobs_for(("v4.12",), MACHINE, settings, SECONDS, WARMUP, INTERVALS, seed=1)
                if j["phase"] == "fill"]
        run = run_jobs(fill, 1)[0]
        pages = run["rates"]["pages_written"]["per_second"]
        uses = sorted(time_use(run)["usemem"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{name}: {pages * PAGE_SIZE / 1e9:.1f} GB/s; usemem CPUs' time: "
              + ", ".join(f"{use} {share:.1%}" for use, share in uses), flush=True)


if __name__ == "__main__":
    main()
