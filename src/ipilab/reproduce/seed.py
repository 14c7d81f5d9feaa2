"""The seed experiment: swap-w-seq-mt on the 2-socket Broadwell-EP, under v4.12 and v4.13.

Aaron Lu's patch reports for it: IPIs -88% (the CAL row of /proc/interrupts over the run) and usemem
throughput +15%. Here both are predictions of the model. Each kernel is simulated in two phases:
`fill` (RAM still free: no reclaim, no shootdowns) and `reclaim` (RAM full, the steady state), each
for a window after a warm-up. A whole run writes `memory_gb`: the first `ram_gb` at the fill rate, the
rest at the reclaim rate, so

    throughput = memory / (ram / fill_rate + (memory - ram) / reclaim_rate)      (usemem's KB/s)
    CAL over the run = CAL per page written in the reclaim phase x (memory - ram) pages

and the headline ratios follow from those. Rates carry 95% confidence intervals from the window's
intervals (batch means); the ratios' intervals follow by the delta method.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import scipy.stats

from ipilab import __version__
from ipilab.kernel.locking import LOCK_COUNTER_PREFIXES
from ipilab.machine.model import Machine
from ipilab.orchestration.runconfig import RunConfig, build_run
from ipilab.sim.fast.run import warm_up
from ipilab.sim.timeuse import LOCK_USES, Use
from ipilab.validation import ConfigError
from ipilab.workloads.swap import PAGE_SIZE, SwapWSeqMt

PAPER = {
    "ipi_reduction": 0.88,
    "throughput_gain": 0.15,
    "source": "Aaron Lu, '[PATCH resend] smp: avoid sending needless IPI in smp_call_function_many()', "
              "LKML 2017-05-19",
    "setup": "80 threads of one process consuming 100G on a 2-node Broadwell-EP, 44 cores / 88 threads, "
             "32G memory; IPI number dropped 88%, throughput increased about 15%",
}
MACHINE = "broadwell-ep-2s-88t"
KERNELS = ("v4.12", "v4.13")
SECONDS = 0.05
WARMUP = 0.025  # the first ~25 ms are a transient while the threads fall out of step
INTERVALS = 10
FILL_SECONDS = 0.002
FILL_WARMUP = 0.0005
SENSITIVITY_SECONDS = 0.005
SENSITIVITY_WARMUP = 0.01  # past the ~6 ms in which the empty per-CPU page lists first fill to pcp->high
SENSITIVITY_INTERVALS = 5
SENSITIVITY_FACTORS = (0.5, 1.5)
# Spreads (p90 / median of every cost, lognormal) the --explain spread table runs, from none to about what
# the 2-vCPU VM's traces measure for the IPI path (see docs/reproduce.md: the seed with spread).
SPREAD_RATIOS = (1.0, 1.25, 1.5, 2.0, 3.0)
SEED_WORKLOAD_KEYS = tuple(k for k in SwapWSeqMt.model_fields if k != "phase")  # both phases always run
WORKLOAD = SwapWSeqMt.name


class SeedError(ConfigError):
    """A bad setting or window for the seed experiment; the message names it."""


def _job(job: dict[str, Any]) -> dict[str, Any]:
    """One simulation, in a worker process; returns the compact result the report needs."""
    r = build_run(job["machine"], job["kernel"], WORKLOAD, {**job["settings"], "phase": job["phase"]},
                  seconds=job["seconds"], warmup=job["warmup"], intervals=job["intervals"], seed=job["seed"],
                  engine=job.get("engine", "auto")).simulate()
    return {k: r[k] for k in ("kernel", "machine", "workload", "sim_seconds", "warmup_seconds", "wall_seconds",
                              "engine", "compile_seconds",
                              "engine_events", "csd_enqueues", "ipis_sent", "cal_interrupts", "apic_merged",
                              "csds_per_interrupt", "csd_no_ipi_queued", "ipis_to_nonempty_queue",
                              "icr_writes", "csds_run_in_irq", "empty_interrupts", "counts", "workload_counts",
                              "rates", "timeline", "wait_latency_ns", "per_cpu", "costs")}


def run_jobs(jobs: list[dict[str, Any]], workers: int, progress: Callable[[int, int], None] | None = None
             ) -> list[dict[str, Any]]:
    """Run simulations in up to `workers` processes (1: in this process), in order."""
    if any(job.get("engine", "auto") != "reference" for job in jobs):
        warm_up()  # compile (or load) the fast engine once, here: forked workers inherit it
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for i, job in enumerate(jobs):
            out.append(_job(job))
            if progress:
                progress(i + 1, len(jobs))
        return out
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(_job, job) for job in jobs]
        out = []
        for i, f in enumerate(futures):
            out.append(f.result())
            if progress:
                progress(i + 1, len(jobs))
        return out


def _ratio(a: float, a_ci: float | None, b: float, b_ci: float | None) -> tuple[float | None, float | None]:
    """a / b of two independent estimates (two runs) with the delta-method half-width of its 95%
    interval; None if b is 0."""
    if b == 0:
        return None, None
    r = a / b
    if a_ci is None or b_ci is None:
        return r, None
    return r, math.hypot(a_ci / b, r * b_ci / b)


def ratio_of_rates(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float | None]:
    """a / b for two rates of the same run, with a 95% interval by the delta method: the intervals'
    rates of the two move together, so their covariance counts."""
    x, y = np.asarray(a["intervals"], float), np.asarray(b["intervals"], float)
    r = a["per_second"] / b["per_second"]
    n = len(x)
    if n < 2:
        return r, None
    cov = np.cov(x, y, ddof=1) / n  # of the two means
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / b["per_second"] ** 2
    return r, float(scipy.stats.t.ppf(0.975, n - 1) * math.sqrt(max(var, 0.0)))


def summarize(reclaim: dict[str, Any], fill: dict[str, Any], workload: SwapWSeqMt) -> dict[str, Any]:
    """One kernel's row of the comparison, every number with its unit."""
    rates = reclaim["rates"]
    wc = reclaim["workload_counts"]
    window_ns = reclaim["sim_seconds"] * 1e9
    written = rates["pages_written"]
    fill_rate = fill["rates"]["pages_written"]
    if not written["per_second"] or not fill_rate["per_second"]:
        phase = "reclaim" if not written["per_second"] else "fill"
        raise SeedError(f"{reclaim['kernel']}: no page was written in the {phase} window "
                        f"({reclaim['sim_seconds'] * 1e3:g} ms after a {reclaim['warmup_seconds'] * 1e3:g} ms "
                        "warm-up): lengthen --seconds or --warmup (a reclaim pass of 32 pages takes about 2 ms)")
    total_pages = workload.memory_gb * 2**30 / PAGE_SIZE
    fill_pages = min(total_pages, workload.ram_gb * 2**30 / PAGE_SIZE)
    t_fill = fill_pages / fill_rate["per_second"]
    t_reclaim = (total_pages - fill_pages) / written["per_second"]
    run_seconds = t_fill + t_reclaim
    kb = total_pages * PAGE_SIZE / 1024
    # d(run_seconds) from the reclaim and fill rates' intervals, to first order.
    dt = math.hypot(t_reclaim * (written["ci95"] or 0) / written["per_second"],
                    t_fill * (fill_rate["ci95"] or 0) / fill_rate["per_second"])
    cal_per_page, cal_per_page_ci = ratio_of_rates(rates["cal_interrupts"], written)
    usemem = [c for c in reclaim["per_cpu"] if c["comm"] == "usemem"]
    threads = len(usemem)
    costs = reclaim["costs"]
    handler_ns = costs["irq_entry"]["ns"] + costs["irq_exit"]["ns"]
    return {
        "csd_enqueues": reclaim["csd_enqueues"],
        "ipis_sent": reclaim["ipis_sent"],
        "cal_interrupts": reclaim["cal_interrupts"],
        "apic_merged": reclaim["apic_merged"],
        "csds_per_interrupt": reclaim["csds_per_interrupt"],
        "csd_no_ipi_queued": reclaim["csd_no_ipi_queued"],
        "ipis_to_nonempty_queue": reclaim["ipis_to_nonempty_queue"],
        "icr_writes": reclaim["icr_writes"],
        "tlb_shootdowns": wc["tlb_flushes"],
        "tlb_flushes_received": reclaim["csds_run_in_irq"] + reclaim["counts"]["csds_run_from_idle"],
        "pages_written": wc["pages_written"],
        "pages_reclaimed": wc["pages_reclaimed"],
        "pcp_drains_per_second": wc.get("pcp_drains", 0) / reclaim["sim_seconds"],
        "resched_ipis_per_second": wc.get("resched_ipis", 0) / reclaim["sim_seconds"],
        "rates": {k: rates[k] for k in ("csd_enqueues", "csd_ipis", "cal_interrupts", "apic_merged",
                                        "pages_written", "pages_reclaimed", "tlb_flushes")},
        "cal_per_page": cal_per_page,
        "cal_per_page_ci95": cal_per_page_ci,
        "reclaim_throughput_kb_s": written["per_second"] * PAGE_SIZE / 1024,
        "reclaim_throughput_kb_s_ci95": (written["ci95"] or 0) * PAGE_SIZE / 1024,
        "fill_throughput_kb_s": fill_rate["per_second"] * PAGE_SIZE / 1024,
        "throughput_kb_s": kb / run_seconds,
        "throughput_kb_s_ci95": kb / run_seconds**2 * dt,
        "run_seconds": run_seconds,
        "run_seconds_fill": t_fill,
        "cal_interrupts_run": cal_per_page * (total_pages - fill_pages),
        "irq_fraction_usemem": sum(c["irq_fraction"] for c in usemem) / max(threads, 1),
        "flush_wait_fraction": wc["flush_wait_ns"] / (window_ns * (threads + len(kswapd_cpus(reclaim)))),
        "flush_wait_us_mean": wc["flush_wait_ns"] / wc["tlb_flushes"] / 1e3 if wc["tlb_flushes"] else None,
        "shootdown_wait_ns": reclaim["wait_latency_ns"],
        "concurrent_shootdowns": wc["flush_wait_ns"] / window_ns,
        "lru_lock_spin_fraction": wc["lru_lock_spin_ns"] / (window_ns * (threads + len(kswapd_cpus(reclaim)))),
        "lru_lock_contended_share": wc["lru_lock_contended"] / wc["lru_lock_acquisitions"]
        if wc["lru_lock_acquisitions"] else None,
        "lru_lock_spin_us_mean": wc["lru_lock_spin_ns"] / wc["lru_lock_contended"] / 1e3
        if wc["lru_lock_contended"] else None,
        "queue_window_us_mean": reclaim["counts"]["queue_nonempty_ns"] / reclaim["counts"]["queue_windows"] / 1e3
        if reclaim["counts"]["queue_windows"] else None,
        "csds_per_target_per_us": reclaim["csd_enqueues"] / (window_ns / 1e3) / max(threads, 1),
        "interrupt_overhead_ns": handler_ns,
        "pages_reused_before_flush": wc["pages_reused_before_flush"],
        "threads": threads,
        "sim_seconds": reclaim["sim_seconds"],
        "warmup_seconds": reclaim["warmup_seconds"],
        "wall_seconds": reclaim["wall_seconds"] + fill["wall_seconds"],
        "timeline": reclaim["timeline"],
        "per_cpu_interrupts": [c["interrupts"] for c in reclaim["per_cpu"]],
        "time_use": time_use(reclaim),
        "locks": lock_table(wc, window_ns),
    }


def time_use(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Where the usemem CPUs' and the kswapd CPUs' time went: per group, each use's share of the group's
    CPU time in the window (sim/timeuse.py; the shares of a group sum to 1)."""
    out: dict[str, dict[str, float]] = {}
    for group, cpus in (("usemem", [c for c in run["per_cpu"] if c["comm"] == "usemem"]),
                        ("kswapd", [c for c in run["per_cpu"] if c["comm"].startswith("kswapd")])):
        total = sum(sum(c["time_ns"].values()) for c in cpus)
        if total:
            out[group] = {u.key: sum(c["time_ns"][u.key] for c in cpus) / total for u in Use}
    return out


def lock_table(wc: dict[str, int], window_ns: float) -> dict[str, dict[str, float | None]]:
    """Per kind of lock, over the window: acquisitions per second, the share that had to wait, the mean spin
    of those, the mean hold, and the holds with an interrupt taken inside (share, and mean hold with and
    without one)."""
    out: dict[str, dict[str, float | None]] = {}
    for prefix in LOCK_COUNTER_PREFIXES.values():
        n = wc[f"{prefix}_acquisitions"]
        if not n:
            continue
        contended, hit = wc[f"{prefix}_contended"], wc[f"{prefix}_holds_interrupted"]
        hold, hold_hit = wc[f"{prefix}_hold_ns"], wc[f"{prefix}_hold_interrupted_ns"]
        out[prefix] = {
            "acquisitions_per_second": n / (window_ns / 1e9),
            "contended_share": contended / n,
            "spin_ns_mean": wc[f"{prefix}_spin_ns"] / contended if contended else None,
            "spin_cpus": wc[f"{prefix}_spin_ns"] / window_ns,
            "hold_ns_mean": hold / n,
            "interrupted_share": hit / n,
            "hold_ns_mean_interrupted": hold_hit / hit if hit else None,
            "hold_ns_mean_uninterrupted": (hold - hold_hit) / (n - hit) if n > hit else None,
        }
    return out


def kswapd_cpus(reclaim: dict[str, Any]) -> list[int]:
    return [c["cpu"] for c in reclaim["per_cpu"] if c["comm"].startswith("kswapd")]


def headline(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    q, q_ci = _ratio(after["cal_per_page"], after["cal_per_page_ci95"],
                     before["cal_per_page"], before["cal_per_page_ci95"])
    g, g_ci = _ratio(after["throughput_kb_s"], after["throughput_kb_s_ci95"],
                     before["throughput_kb_s"], before["throughput_kb_s_ci95"])
    s, s_ci = _ratio(after["reclaim_throughput_kb_s"], after["reclaim_throughput_kb_s_ci95"],
                     before["reclaim_throughput_kb_s"], before["reclaim_throughput_kb_s_ci95"])
    return {"ipi_reduction": None if q is None else 1 - q, "ipi_reduction_ci95": q_ci,
            "throughput_gain": g - 1, "throughput_gain_ci95": g_ci,
            "reclaim_throughput_gain": s - 1, "reclaim_throughput_gain_ci95": s_ci}


def jobs_for(kernels: tuple[str, ...], machine: str, settings: dict[str, str], seconds: float, warmup: float,
             intervals: int, seed: int, fill: bool = True, engine: str = "fast") -> list[dict[str, Any]]:
    """Both phases' simulations (`fill`: also the fill phase) under each kernel, as plain data for the workers."""
    base = {"machine": machine, "settings": settings, "seed": seed, "engine": engine}
    jobs = [{**base, "kernel": k, "phase": "reclaim", "seconds": seconds, "warmup": warmup,
             "intervals": intervals} for k in kernels]
    if fill:
        jobs += [{**base, "kernel": k, "phase": "fill", "seconds": FILL_SECONDS, "warmup": FILL_WARMUP,
                  "intervals": intervals} for k in kernels]
    return jobs


def checked(settings: dict[str, str], machine: str, seconds: float, warmup: float, intervals: int, seed: int,
            engine: str) -> RunConfig:
    """The experiment's configuration (reclaim phase, first kernel), checked before any run starts: the
    user's settings, and whether the machine has room for the threads."""
    config = build_run(machine, KERNELS[0], WORKLOAD, settings, seconds=seconds, warmup=warmup, intervals=intervals,
                       seed=seed, engine=engine, workload_keys=SEED_WORKLOAD_KEYS)
    workload = config.workload
    assert isinstance(workload, SwapWSeqMt)
    SwapWSeqMt.placement(config.machine, workload.threads, workload.kswapd)  # too many threads fails here
    return config


def run_seed(settings: dict[str, str], *, seconds: float = SECONDS, warmup: float = WARMUP,
             intervals: int = INTERVALS, seed: int = 1, workers: int | None = None, machine: str = MACHINE,
             engine: str = "fast", progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Both kernels, both phases: the comparison and the headline ratios, with the paper's values.
    `engine`: "fast" or "reference" (the same numbers; see ipilab.sim.run.simulate)."""
    config = checked(settings, machine, seconds, warmup, intervals, seed, engine)
    m, workload = config.machine, config.workload
    workers = workers or os.cpu_count() or 1
    jobs = jobs_for(KERNELS, machine, settings, seconds, warmup, intervals, seed, engine=engine)
    t0 = time.perf_counter()
    results = run_jobs(jobs, workers, progress)
    wall = time.perf_counter() - t0
    n = len(KERNELS)
    runs = {k: summarize(results[i], results[n + i], workload) for i, k in enumerate(KERNELS)}
    busy = sum(r["wall_seconds"] for r in results)
    csds = sum(r["csd_enqueues"] for r in results)
    return {
        "ipilab_version": __version__,
        "experiment": "seed",
        "machine": m.name,
        "machine_topology": m.topology.model_dump(),
        "kernels": list(KERNELS),
        "workload": workload.model_dump(),
        "seed": seed,
        "window": {"sim_seconds": seconds, "warmup_seconds": warmup, "intervals": intervals,
                   "fill_sim_seconds": FILL_SECONDS, "fill_warmup_seconds": FILL_WARMUP},
        "runs": runs,
        **headline(runs[KERNELS[0]], runs[KERNELS[1]]),
        "paper": PAPER,
        "costs": results[0]["costs"],
        "wall_seconds": round(wall, 3),
        "workers": min(workers, len(jobs)),
        "engine": engine,
        "csds_per_second": csds / wall if wall else None,
        "csds_per_second_per_worker": csds / busy if busy else None,
        "units": UNITS,
    }


def sensitivity(settings: dict[str, str], base: dict[str, Any], *, seconds: float = SENSITIVITY_SECONDS,
                warmup: float = SENSITIVITY_WARMUP, intervals: int = SENSITIVITY_INTERVALS, seed: int = 1,
                workers: int | None = None, machine: str = MACHINE, engine: str = "fast",
                progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """How the two headline ratios move when each cost the workload uses moves by -50% and +50%.

    Runs on a shorter window than the main result, against a reference run at the preset's costs on
    that same window; the fill phase is taken from the main result except for the costs the fill phase
    itself pays."""
    config = checked(settings, machine, seconds, warmup, intervals, seed, engine)
    m, workload = config.machine, config.workload
    names = sensitivity_costs(m)
    if "swap_gb_s" in settings:
        names.remove("swap_writepage")  # --set swap_gb_s fixes it in every run
    jobs = []
    for name in names:
        for f in SENSITIVITY_FACTORS:
            moved = {**settings, name: str(max(0, round(m.costs[name].ns * f)))}
            jobs += jobs_for(KERNELS, machine, moved, seconds, warmup, intervals, seed, fill=name in FILL_COSTS,
                             engine=engine)
    jobs += jobs_for(KERNELS, machine, settings, seconds, warmup, intervals, seed, fill=False, engine=engine)
    results = run_jobs(jobs, workers or os.cpu_count() or 1, progress)
    fake_fill = {k: {"rates": {"pages_written": {"per_second": base["runs"][k]["fill_throughput_kb_s"] * 1024
                                                 / PAGE_SIZE, "ci95": 0.0}}, "wall_seconds": 0.0}
                 for k in KERNELS}
    rows = []
    i = 0

    def take(with_fill: bool) -> dict[str, Any]:
        nonlocal i
        rec = results[i:i + len(KERNELS)]
        i += len(KERNELS)
        if with_fill:
            fills = results[i:i + len(KERNELS)]
            i += len(KERNELS)
        else:
            fills = [fake_fill[k] for k in KERNELS]
        runs = [summarize(r, f, workload) for r, f in zip(rec, fills, strict=True)]
        return headline(runs[0], runs[1])

    for name in names:
        row: dict[str, Any] = {"cost": name, "ns": m.costs[name].ns, "source": m.costs[name].source}
        for f in SENSITIVITY_FACTORS:
            row[f"x{f:g}"] = take(name in FILL_COSTS)
        rows.append(row)
    reference = take(False)
    for row in rows:
        row["reference"] = reference
    return rows


def spread_sensitivity(settings: dict[str, str], *, seconds: float = SENSITIVITY_SECONDS,
                       warmup: float = SENSITIVITY_WARMUP, intervals: int = SENSITIVITY_INTERVALS, seed: int = 1,
                       workers: int | None = None, machine: str = MACHINE, engine: str = "fast",
                       progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """How the two headline ratios move as every cost gets a spread: lognormal around the preset's value
    with p90 = ratio x median, for each of SPREAD_RATIOS (1: the constants), both phases rerun."""
    workload = checked(settings, machine, seconds, warmup, intervals, seed, engine).workload
    jobs = []
    for ratio in SPREAD_RATIOS:
        jobs += jobs_for(KERNELS, machine, {**settings, "spread": str(ratio)}, seconds, warmup, intervals, seed,
                         engine=engine)
    results = run_jobs(jobs, workers or os.cpu_count() or 1, progress)
    rows, n = [], len(KERNELS)
    for i, ratio in enumerate(SPREAD_RATIOS):
        part = results[2 * n * i:2 * n * (i + 1)]
        runs = [summarize(part[j], part[n + j], workload) for j in range(n)]
        rows.append({"spread": ratio, **headline(runs[0], runs[1]),
                     "csds_per_interrupt": {k: r["csds_per_interrupt"] for k, r in zip(KERNELS, runs, strict=True)}})
    return rows


# The modelling changes, added one at a time from the earliest model, each with why it is there (the kernel
# does it), and the settings that add it. The default model is the rows marked default; the others are
# assumptions a user can turn on with the same --set.
ABLATION = (
    ("constant costs, no swap locks, no tick", {"swap_locks": "false", "zone_lock": "false", "mem_bandwidth": "false"},
     False, "the model before the swap locks: a swap slot and the swap cache as plain CPU time"),
    ("+ swap slot and swap cache locks", {"zone_lock": "false", "mem_bandwidth": "false"}, False,
     "4.12 takes them for every page (mm/swap_slots.c get_swap_page, mm/swapfile.c get_swap_pages, "
     "mm/swap_state.c __add_to_swap_cache, mm/vmscan.c __remove_mapping); si->lock with interrupts on"),
    ("+ memory bandwidth per socket", {"zone_lock": "false"}, False,
     "a socket's memory writes about 56 GB/s (likwid update, Broadwell-EP): page writes at once share it"),
    ("+ zone->lock behind the per-CPU page lists, drain_all_pages", {}, True,
     "4.12 refills and drains a CPU's page list 31 pages at a time under the zone's lock, interrupts off "
     "(mm/page_alloc.c rmqueue_bulk, free_pcppages_bulk at pcp->high 186), and a direct reclaimer whose allocation "
     "still fails empties every CPU's list (drain_all_pages: a kworker per CPU, woken by a reschedule IPI)"),
    ("default + 4.12's CFS rules for the drains' workers", {"worker_wakeup": "cfs"}, False,
     "a woken kworker preempts only if it slept past the wakeup granularity (4 ms), else it waits for the task's "
     "12 ms slice to end (kernel/sched/fair.c); not in the default: without the fallback to the other node's zone "
     "(not modelled) reclaim then stalls for milliseconds and the window's intervals grow tenfold"),
    ("default + timer tick, 250 Hz", {"tick_hz": "250"}, False,
     "every busy CPU takes the tick; 250 Hz is x86_64's default CONFIG_HZ (LKP's own setting: unknown)"),
    ("default + tick + every cost spread, p90 = 1.5 x median", {"tick_hz": "250", "spread": "1.5"}, False,
     "real costs vary: the VM traces measure p90/p50 of 1.2 to 2.3 on the IPI path; 1.5 is an assumption"),
)


def ablation(settings: dict[str, str], *, seconds: float = SECONDS, warmup: float = WARMUP,
             intervals: int = INTERVALS, seed: int = 1, workers: int | None = None, engine: str = "fast",
             progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """The headline for each row of ABLATION (the user's --set applied on top of each), on the main window."""
    rows = []
    for label, extra, default, why in ABLATION:
        r = run_seed({**extra, **settings}, seconds=seconds, warmup=warmup, intervals=intervals, seed=seed,
                     workers=workers, engine=engine, progress=progress)
        rows.append({"change": label, "settings": extra, "default": default, "why": why,
                     **{k: r[k] for k in ("ipi_reduction", "ipi_reduction_ci95", "throughput_gain",
                                          "throughput_gain_ci95")}})
    return rows


# A published absolute swap-out rate of a comparable machine and kernel, for the model to predict as is.
ABSOLUTE = {
    "workload": "swap-w-seq", "processes": 32, "kernel": "v4.12", "swap_out_kb_s": 4_170_746,
    "source": "Huang Ying, 'Re: [PATCH v4 0/9] mm/swap: Regular page swap optimizations', linux-mm 2017-01-05 "
              "(Message-ID <8760lujnng.fsf@yhuang-dev.intel.com>): vm-scalability swap-w-seq, 32 processes, a Xeon "
              "E5 v3 (Haswell-EP) system, swap on RAM-simulated pmem; vmstat swap-out with the per-CPU swap slot "
              "cache, the 64 MB swap cache trees and cluster locks, the design 4.12 shipped",
    "caveats": "a Haswell-EP of unstated size, not the seed's Broadwell-EP; a v4.9-rc8 tree with those patches, "
               "not 4.12; the memory sizes are not stated; vmstat's rate is a mean over the whole run, which also "
               "fills RAM and, as processes end, frees their swap",
}
# The same message's perf profile of that run: per lock, % of all cycles sampled ("perf-profile.calltrace.
# cycles-pp" entries of _raw_spin_lock under the named caller). The mail lists four entries, so a lock it does
# not list has no figure. Keys are the model's lock counter prefixes (kernel/locking.py).
ABSOLUTE_LOCKS = (
    ("zone_lock", round(8.56 + 2.56, 2), "_raw_spin_lock in get_page_from_freelist: 8.56 from the fault's fast path "
                               "(alloc_pages_vma) + 2.56 from __alloc_pages_slowpath; the allocation side only, where "
                               "the model's figure also counts the frees' and drains' waits (free_pcppages_bulk)"),
    ("si_lock", 2.47, "_raw_spin_lock in get_swap_pages (get_swap_page, add_to_swap, shrink_page_list)"),
    ("lru_lock", None, "not among the mail's four entries (its smallest is 2.47)"),
    ("swap_cache_lock", None, "not among the mail's four entries (its smallest is 2.47)"),
    ("swap_avail_lock", None, "not among the mail's four entries (its smallest is 2.47)"),
)
# The one entry of that list the model has no counterpart for.
ABSOLUTE_UNMODELLED = ("_raw_spin_lock in swapcache_free_entries (free_swap_slot, free_swap_and_cache, "
                       "unmap_page_range): 13.91% of cycles, si->lock taken to free the swap slots of memory a "
                       "process unmaps or leaves at exit, which the steady-state model never does")
ABSOLUTE_SECONDS = 0.004
ABSOLUTE_WARMUP = 0.004


def absolute_check(settings: dict[str, str], *, seed: int = 1, machine: str = MACHINE) -> dict[str, Any]:
    """The seed's model run as ABSOLUTE's workload (processes: a page's shootdown goes to its owner's CPU
    only) on the seed's machine, against the published swap-out rate. The reference engine runs it."""
    config = build_run(machine, ABSOLUTE["kernel"], ABSOLUTE["workload"],
                       {**settings, "threads": str(ABSOLUTE["processes"])}, seconds=ABSOLUTE_SECONDS,
                       warmup=ABSOLUTE_WARMUP, intervals=4, seed=seed)
    r = config.simulate()
    wc = r["workload_counts"]
    kb_s = wc["pages_reclaimed"] * PAGE_SIZE / 1024 / r["sim_seconds"]
    modelled = lock_spin_pct(r)
    locks = [{"lock": prefix, "published_pct": pct, "published_what": what, "model_pct": modelled.get(prefix)}
             for prefix, pct, what in ABSOLUTE_LOCKS]
    return {**ABSOLUTE, "machine": machine, "model_swap_out_kb_s": kb_s,
            "model_over_published": kb_s / ABSOLUTE["swap_out_kb_s"], "time_use": time_use(r),
            "locks": locks, "unmodelled": ABSOLUTE_UNMODELLED,
            "sim_seconds": r["sim_seconds"], "warmup_seconds": r["warmup_seconds"], "engine": r["engine"]}


def lock_spin_pct(run: dict[str, Any]) -> dict[str, float]:
    """Per kind of lock the run takes, its spinning as a % of the busy (not idle) time of the usemem and kswapd
    CPUs: what a system-wide cycles profile shows, as halted CPUs count no cycles. A lock the run never takes is
    left out (not in this run's model)."""
    cpus = [c for c in run["per_cpu"] if c["comm"] == "usemem" or c["comm"].startswith("kswapd")]
    busy = sum(sum(c["time_ns"].values()) - c["time_ns"][Use.IDLE.key] for c in cpus)
    wc = run["workload_counts"]
    return {prefix: 100 * sum(c["time_ns"][LOCK_USES[kind].key] for c in cpus) / busy
            for kind, prefix in LOCK_COUNTER_PREFIXES.items() if wc.get(f"{prefix}_acquisitions")}


# Costs the fill phase pays (a change to them moves the fill rate too).
FILL_COSTS = ("page_fault", "user_write_page", "lru_page", "cacheline_smt", "cacheline_same_socket",
              "cacheline_cross_socket")
# Costs that the seed workload never pays on bare metal with idle CPUs out of the mm.
UNUSED_COSTS = ("invlpg", "madvise_syscall", "poll_notice", "idle_exit")


def sensitivity_costs(m: Machine) -> list[str]:
    return [k for k in m.costs if k not in UNUSED_COSTS]


UNITS = {
    "csd_enqueues, ipis_sent, cal_interrupts, apic_merged, tlb_*, pages_*": "counts in the reclaim-phase window",
    "rates": "per simulated second in the reclaim phase, with ci95 the half-width of a 95% confidence interval",
    "pcp_drains_per_second, resched_ipis_per_second": "drain_all_pages calls that drained, and the reschedule IPIs "
                                                      "they sent (the RES row, not CAL), per simulated second of the "
                                                      "reclaim window",
    "*_kb_s": "KB (1024 bytes) per second, summed over threads as usemem reports it",
    "throughput_kb_s": "the whole run: memory_gb written, ram_gb at the fill rate and the rest at the reclaim rate",
    "reclaim_throughput_kb_s": "the steady state once RAM is full",
    "cal_per_page": "function-call interrupts per page written in the reclaim phase",
    "ipi_reduction": "1 - CAL after / CAL before over the whole run (the paper's 'IPI number', the CAL row)",
    "throughput_gain": "throughput after / before - 1, whole run",
    "*_fraction": "share of CPU time (irq_fraction_usemem: of the usemem threads' CPUs in interrupt handlers; "
                  "flush_wait_fraction: of reclaiming tasks' time inside shootdowns; lru_lock_spin_fraction: of "
                  "usemem CPUs' time spinning on lru_lock with interrupts off)",
    "*_us_*": "microseconds",
    "time_use": "per group of CPUs (usemem, kswapd), each use's share of the group's CPU time in the reclaim "
                "window (sim/timeuse.py; a group's shares sum to 1)",
    "locks": "per kind of lock in the reclaim window: acquisitions_per_second, contended_share (acquisitions "
             "that waited), spin_ns_mean (of those), spin_cpus (spin time over the window), hold_ns_mean, "
             "interrupted_share (holds with an interrupt taken inside), hold_ns_mean_interrupted / _uninterrupted",
    "ablation": "--explain: the headline with each modelling change added in turn (settings: the --set that adds it)",
    "absolute": "--explain: the model's swap-out rate as swap-w-seq with 32 processes against a published one; "
                "locks: per lock, the published profile's % of cycles against the model's spinning as a % of its "
                "usemem and kswapd CPUs' busy time (model_pct null: that lock is not in the run)",
    "shootdown_wait_ns": "simulated ns from a TLB flush's start to its return, per waited-for shootdown: count and "
                         "max exact; p50/p90/p99 the lowest value of the log bin (under 1/128 of the value wide, "
                         "exact below 256 ns) that holds the exact percentile",
    "wall_seconds": "host seconds from the first simulation's start to the last one's end (warm-ups included)",
    "csds_per_second": "simulated CSDs (counted windows) per host second of wall_seconds",
    "csds_per_second_per_worker": "the same per worker process: CSDs over the summed run times",
}
