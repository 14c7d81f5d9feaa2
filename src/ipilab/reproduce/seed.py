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
from ipilab.machine.model import Machine
from ipilab.orchestration.runconfig import RunConfig, build_run
from ipilab.sim.fast.run import warm_up
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
SENSITIVITY_WARMUP = 0.002
SENSITIVITY_INTERVALS = 5
SENSITIVITY_FACTORS = (0.5, 1.5)
# Spreads (p90 / median of every cost, lognormal) the --explain spread table runs, from none to about what
# the 2-vCPU VM's traces measure for the IPI path (see README: the seed with spread).
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
    }


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
    "wall_seconds": "host seconds from the first simulation's start to the last one's end (warm-ups included)",
    "csds_per_second": "simulated CSDs (counted windows) per host second of wall_seconds",
    "csds_per_second_per_worker": "the same per worker process: CSDs over the summed run times",
}
