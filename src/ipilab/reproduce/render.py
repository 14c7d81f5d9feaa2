"""The seed experiment's result, for people: the side-by-side table, the headline, the why."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ipilab.reproduce.seed import KERNELS


def _pm(value: float, ci: float | None, fmt: str = ",.0f") -> str:
    return f"{value:{fmt}}" + (f" ± {ci:{fmt}}" if ci is not None else "")


def _pct(x: float | None, ci: float | None = None, sign: bool = True) -> str:
    if x is None:
        return "-"
    s = f"{x * 100:+.1f}%" if sign else f"{x * 100:.1f}%"
    return s + (f" ± {ci * 100:.1f}" if ci is not None else "")


def _neg(x: float | None) -> float | None:
    return None if x is None else -x


def _change(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return ""
    return f"{(b / a - 1) * 100:+.0f}%"


def print_seed(r: dict[str, Any], console: Console) -> None:
    w, win = r["workload"], r["window"]
    before, after = (r["runs"][k] for k in KERNELS)
    console.print(
        f"[bold]The seed[/bold]: swap-w-seq-mt, {w['threads']} usemem threads writing {w['memory_gb']:g} GB with "
        f"{w['ram_gb']:g} GB of RAM (flush {w['flush']}, batch {w['batch']}), on [bold]{r['machine']}[/bold] "
        f"({_topology(r)}), kernels {KERNELS[0]} and {KERNELS[1]}.", highlight=False)
    console.print(
        f"Simulated: the reclaim phase (RAM full) for {win['sim_seconds'] * 1e3:g} ms after a "
        f"{win['warmup_seconds'] * 1e3:g} ms warm-up, cut into {win['intervals']} intervals for the 95% "
        f"confidence intervals (±); the fill phase (RAM free) for {win['fill_sim_seconds'] * 1e3:g} ms. "
        f"Seed {r['seed']}; {r['wall_seconds']:.0f} s wall time in {r['workers']} "
        f"process{'es' if r['workers'] != 1 else ''} on the {r.get('engine', 'reference')} engine, "
        f"{r['csds_per_second_per_worker']:,.0f} simulated CSDs per second per process.", highlight=False)
    t = Table(title="reclaim phase, per simulated second unless stated", title_justify="left")
    t.add_column("metric")
    for k in KERNELS:
        t.add_column(k, justify="right")
    t.add_column("change", justify="right")
    legend: list[tuple[str, str]] = []

    def row(label: str, a: str, b: str, change: str, doc: str) -> None:
        t.add_row(label, a, b, change)
        legend.append((label, doc))

    def rate(key: str, label: str, doc: str) -> None:
        a, b = before["rates"][key], after["rates"][key]
        row(label, _pm(a["per_second"], a["ci95"]), _pm(b["per_second"], b["ci95"]),
            _change(a["per_second"], b["per_second"]), doc)

    def plain(label: str, a: float | None, b: float | None, fmt: str, doc: str, change: bool = True) -> None:
        row(label, "-" if a is None else f"{a:{fmt}}", "-" if b is None else f"{b:{fmt}}",
            _change(a, b) if change else "", doc)

    rate("csd_enqueues", "CSDs queued", "remote calls queued on a CPU's call_single_queue (all TLB flushes here)")
    rate("csd_ipis", "IPIs sent", "function-call IPIs, one per target CPU of each send")
    rate("cal_interrupts", "CAL interrupts", "function-call interrupts taken (the CAL row of /proc/interrupts)")
    rate("apic_merged", "APIC-merged IPIs", "IPIs that found the same vector pending in the target's APIC")
    plain("CSDs per interrupt", before["csds_per_interrupt"], after["csds_per_interrupt"], ".1f",
          "queued calls one interrupt served")
    plain("page list drains", before["pcp_drains_per_second"], after["pcp_drains_per_second"], ",.0f",
          "drain_all_pages calls that emptied every CPU's per-CPU page lists (a direct reclaimer's allocation still "
          "failing)")
    plain("RES IPIs", before["resched_ipis_per_second"], after["resched_ipis_per_second"], ",.0f",
          "reschedule IPIs that woke the drains' kworkers (the RES row of /proc/interrupts; not counted as CAL)")
    rate("tlb_flushes", "TLB shootdowns", "try_to_unmap_flush() calls: one per dirty page reclaimed, waited for")
    rate("pages_reclaimed", "pages reclaimed", "unmapped, flushed and written to swap")
    plain("CAL per page", before["cal_per_page"], after["cal_per_page"], ".2f",
          "interrupts per page written: CAL over a whole run scales with it")
    row("throughput, reclaim", _pm(before["reclaim_throughput_kb_s"], before["reclaim_throughput_kb_s_ci95"]),
        _pm(after["reclaim_throughput_kb_s"], after["reclaim_throughput_kb_s_ci95"]),
        _change(before["reclaim_throughput_kb_s"], after["reclaim_throughput_kb_s"]),
        "KB/s written by all threads once RAM is full")
    plain("throughput, fill", before["fill_throughput_kb_s"], after["fill_throughput_kb_s"], ",.0f",
          "KB/s written by all threads while RAM is free")
    row("throughput, whole run", _pm(before["throughput_kb_s"], before["throughput_kb_s_ci95"]),
        _pm(after["throughput_kb_s"], after["throughput_kb_s_ci95"]),
        _change(before["throughput_kb_s"], after["throughput_kb_s"]),
        "KB/s as usemem reports it (sum over threads), ram_gb at the fill rate and the rest at the reclaim rate")
    plain("in interrupt handlers", before["irq_fraction_usemem"] * 100, after["irq_fraction_usemem"] * 100,
          ".1f", "% of the usemem CPUs' time", change=False)
    plain("waiting in shootdowns", before["flush_wait_fraction"] * 100, after["flush_wait_fraction"] * 100, ".1f",
          "% of reclaiming tasks' time, from the flush call to the last target's ack", change=False)
    plain("shootdown wait, mean", before["flush_wait_us_mean"], after["flush_wait_us_mean"], ".1f",
          "µs per shootdown (p50/p99 in --json)")
    plain("spinning on lru_lock", before["lru_lock_spin_fraction"] * 100, after["lru_lock_spin_fraction"] * 100,
          ".1f", "% of the reclaiming CPUs' time (usemem and kswapd), interrupts off", change=False)
    console.print(t)
    for label, doc in legend:
        console.print(f"  [dim]{label}:[/dim] {doc}", highlight=False)
    console.print(
        f"[bold]IPIs[/bold] (CAL interrupts over the run): {_pct(_neg(r['ipi_reduction']), r['ipi_reduction_ci95'])} "
        f"predicted, paper {-r['paper']['ipi_reduction'] * 100:.0f}%", highlight=False)
    console.print(
        f"[bold]Throughput[/bold] (usemem KB/s, whole run): {_pct(r['throughput_gain'], r['throughput_gain_ci95'])} "
        f"predicted, paper +{r['paper']['throughput_gain'] * 100:.0f}% (reclaim phase alone: "
        f"{_pct(r['reclaim_throughput_gain'], r['reclaim_throughput_gain_ci95'])})", highlight=False)
    print_time_use(r, console)
    print_locks(r, console)
    print_why(r, console)
    n_assumed = sum(1 for c in r["costs"].values() if source_kind(c["source"]) == "assumption")
    console.print(f"Machine costs: {len(r['costs'])} in all, {n_assumed} of them assumptions (the rest measured or "
                  f"derived from cited measurements); `--explain` lists each with its source and how the "
                  f"headline moves when it moves.", highlight=False)


USE_DOCS = {
    "user": "usemem's own page writes",
    "page_fault": "fault entry, allocation (rmqueue_bulk's hold), zeroing, LRU add",
    "reclaim": "reclaim work outside spins: LRU moves, page_referenced, add_to_swap, unmap, swap-out, freeing "
               "(free_pcppages_bulk's holds, a drain's too)",
    "shootdown_send": "queueing the flush on each target, ICR writes, the local flush",
    "shootdown_wait": "csd_lock_wait: until the last target has run the flush",
    "irq_entry_exit": "interrupt entry and exit paths (200 ns a time here)",
    "irq_functions": "flush_tlb_func and csd_unlock run by handlers for other CPUs",
    "tick": "timer tick bodies", "idle": "halted, or kswapd asleep", "stolen": "descheduled by a host",
    "spin_lru_lock": "waiting for pgdat->lru_lock (interrupts off)",
    "spin_swap_avail_lock": "waiting for swap_avail_lock (interrupts on)",
    "spin_si_lock": "waiting for si->lock (interrupts on)",
    "spin_swap_cache_lock": "waiting for a swap cache tree_lock (interrupts off)",
    "spin_zone_lock": "waiting for zone->lock: rmqueue_bulk, free_pcppages_bulk (interrupts off)",
    "mem_bandwidth": "a page write waiting for the socket's memory bandwidth beyond its CPU time",
    "pcp_drain": "drain_all_pages: waking each CPU's worker (reschedule IPIs), the context switches to and from it, "
                 "and the caller's wait in flush_work",
    "other": "steps outside the kernel model",
}
LOCK_NAMES = {"lru_lock": "pgdat->lru_lock", "swap_avail_lock": "swap_avail_lock", "si_lock": "si->lock",
              "swap_cache_lock": "swap cache tree_lock", "zone_lock": "zone->lock"}


def print_time_use(r: dict[str, Any], console: Console) -> None:
    """Where each kernel's usemem and kswapd CPUs spend their time (shares of the group's CPU time)."""
    before, after = (r["runs"][k] for k in KERNELS)
    groups = [g for g in ("usemem", "kswapd") if g in before.get("time_use", {})]
    if not groups:
        return
    t = Table(title="where the time goes: % of each group's CPU time in the reclaim window", title_justify="left")
    t.add_column("spent on")
    for g in groups:
        for k in KERNELS:
            t.add_column(f"{g} {k}", justify="right")
    t.add_column("what it is")
    for use, doc in USE_DOCS.items():
        shares = [run["time_use"][g][use] for g in groups for run in (before, after)]
        if max(shares) < 0.0005:
            continue
        t.add_row(use, *(f"{x * 100:.1f}" for x in shares), doc)
    console.print(t)


def print_locks(r: dict[str, Any], console: Console) -> None:
    """Per lock and kernel: how often taken, how often it had to wait, how long held, and the holds an
    interrupt landed in (only possible where the lock is taken with interrupts on)."""
    before, after = (r["runs"][k] for k in KERNELS)
    if not before.get("locks"):
        return
    t = Table(title="locks in the reclaim window", title_justify="left")
    for name, justify in (("lock", "left"), ("kernel", "left"), ("taken /s", "right"), ("waited", "right"),
                          ("spin µs", "right"), ("CPUs spinning", "right"), ("hold µs", "right"),
                          ("hold with irq", "right"), ("µs with / without", "right")):
        t.add_column(name, justify=justify)

    def us(ns: float | None) -> str:
        return "-" if ns is None else f"{ns / 1e3:.2f}"

    for lock in before["locks"]:
        for k, run in zip(KERNELS, (before, after), strict=True):
            x = run["locks"].get(lock)
            if x is None:
                continue
            t.add_row(LOCK_NAMES.get(lock, lock), k, f"{x['acquisitions_per_second']:,.0f}",
                      f"{x['contended_share'] * 100:.0f}%", us(x["spin_ns_mean"]), f"{x['spin_cpus']:.2f}",
                      us(x["hold_ns_mean"]), f"{x['interrupted_share'] * 100:.1f}%",
                      f"{us(x['hold_ns_mean_interrupted'])} / {us(x['hold_ns_mean_uninterrupted'])}")
    console.print(t)
    console.print("  [dim]waited:[/dim] share of acquisitions that found the lock held; [dim]spin µs:[/dim] mean "
                  "wait of those (line transfer included); [dim]CPUs spinning:[/dim] spin time over the window, in "
                  "CPUs; [dim]hold with irq:[/dim] share of holds with an interrupt taken inside, which stretches "
                  "the hold for every waiter; [dim]µs with / without:[/dim] their mean hold, and the others'.",
                  highlight=False)


def _topology(r: dict[str, Any]) -> str:
    t = r["machine_topology"]
    return (f"{t['sockets']} x {t['cores_per_socket']} cores x {t['threads_per_core']} threads, "
            f"{t['apic_mode']}")


def print_why(r: dict[str, Any], console: Console) -> None:
    before, after = (r["runs"][k] for k in KERNELS)
    b_merge = before["rates"]["apic_merged"]["per_second"] / before["rates"]["csd_ipis"]["per_second"]
    console.print("[bold]Where the saving comes from[/bold]", highlight=False)
    # The locks this run took with interrupts off (the swap locks and zone->lock are switches).
    held_off = [name for name, prefix in (("lru_lock", "lru_lock"), ("swap cache tree_lock", "swap_cache_lock"),
                                          ("zone->lock", "zone_lock")) if prefix in before.get("locks", {})]
    lines = [
        f"Every dirty page reclaimed costs a shootdown to the CPUs the process runs on (its {before['threads']} "
        f"usemem CPUs, less the reclaimer's own); on average {before['concurrent_shootdowns']:.0f} ({KERNELS[0]}) and "
        f"{after['concurrent_shootdowns']:.0f} ({KERNELS[1]}) reclaimers are inside one at once, so each CPU "
        f"receives {before['csds_per_target_per_us']:.2f} / {after['csds_per_target_per_us']:.2f} CSDs per µs.",
        f"A target's call_single_queue stays non-empty {before['queue_window_us_mean']:.2f} µs ({KERNELS[0]}) / "
        f"{after['queue_window_us_mean']:.2f} µs ({KERNELS[1]}) on average from its first CSD to the handler's "
        f"detach: the IPI's ICR writes and flight, interrupts held off ({', '.join(held_off)}, other handlers), "
        f"the entry path.",
        f"{KERNELS[0]} sends an IPI for every CSD, but {b_merge * 100:.0f}% of them find the vector still pending "
        f"in the target's APIC and merge, so it takes {before['csds_per_interrupt']:.1f} CSDs per interrupt; "
        f"{KERNELS[1]} sends only to an empty queue and takes {after['csds_per_interrupt']:.1f}.",
        f"Each interrupt costs {before['interrupt_overhead_ns']} ns of entry and exit on top of its flushes; the "
        f"usemem CPUs spend {before['irq_fraction_usemem'] * 100:.0f}% / {after['irq_fraction_usemem'] * 100:.0f}% "
        f"of their time in handlers, which is what the throughput gets back.",
    ]
    tb, ta = before.get("time_use", {}).get("usemem"), after.get("time_use", {}).get("usemem")
    if tb and ta:
        saved = tb["irq_entry_exit"] - ta["irq_entry_exit"]
        gains = sorted(((ta[k] - tb[k], k) for k in ta if ta[k] > tb[k]), reverse=True)
        spent = ", ".join(f"{k} {d * 100:+.1f}" for d, k in gains[:3])
        lines.append(f"Of the usemem CPUs' time, {KERNELS[1]} saves {saved * 100:.1f} points of interrupt entry and "
                     f"exit; they go to {spent} (points of the CPUs' time): only the part that reaches user and "
                     f"reclaim work raises throughput.")
    for line in lines:
        console.print("  " + line, highlight=False)


def print_costs(r: dict[str, Any], console: Console) -> None:
    t = Table(title=f"machine costs of {r['machine']}", title_justify="left", expand=True)
    t.add_column("cost", no_wrap=True)
    t.add_column("ns", justify="right")
    t.add_column("source", ratio=1)
    for name, c in r["costs"].items():
        t.add_row(name, str(c["ns"]), c["source"])
    console.print(t)


def source_kind(source: str) -> str:
    """One word for a cost's source: measured, derived, assumption, or cited (a published figure)."""
    for kind in ("measured", "derived", "assumption"):
        if source.startswith(kind):
            return kind
    return "cited"


def _gain(ratios: dict[str, Any]) -> str:
    ci = ratios["throughput_gain_ci95"]
    return f"{ratios['throughput_gain'] * 100:+.1f}" + (f" ±{ci * 100:.0f}" if ci is not None else "")


def print_spread(rows: list[dict[str, Any]], window: dict[str, float], console: Console) -> None:
    t = Table(title=f"spread: the headline ratios as every cost gets a spread (lognormal around the preset's value, "
              f"p90 = ratio x median; {window['sim_seconds'] * 1e3:g} ms windows after "
              f"{window['warmup_seconds'] * 1e3:g} ms warm-up)", title_justify="left")
    t.add_column("p90 / median", justify="right")
    t.add_column("IPIs", justify="right")
    t.add_column("throughput", justify="right")
    t.add_column("CSDs per interrupt, v4.12 / v4.13", justify="right")
    for row in rows:
        per = row["csds_per_interrupt"]
        t.add_row("1 (constants)" if row["spread"] == 1 else f"{row['spread']:g}", _pct(_neg(row["ipi_reduction"])),
                  _gain(row), " / ".join("-" if v is None else f"{v:.1f}" for v in per.values()))
    console.print(t)
    console.print("  No preset source gives the seed machine's spread: each row is an assumption (`--set spread=R` "
                  "runs one); the 2-vCPU VM's traces show p90/median of about 1.2 to 1.5 for the IPI path.",
                  highlight=False)


def print_ablation(rows: list[dict[str, Any]], console: Console) -> None:
    t = Table(title="ablation: the modelling changes added one at a time, each row on top of the one above, up to "
              "the default model (*); each \"default +\" row adds one change to it (the main window)",
              title_justify="left")
    t.add_column("model")
    t.add_column("IPIs", justify="right")
    t.add_column("throughput", justify="right")
    t.add_column("why it is there")
    for row in rows:
        t.add_row(("* " if row["default"] else "  ") + row["change"],
                  _pct(_neg(row["ipi_reduction"]), row["ipi_reduction_ci95"]), _gain(row), row["why"])
    console.print(t)
    console.print("  A change is in the model because the kernel or the machine does it, never because it moves a "
                  "ratio toward the paper's -88% / +15%. The rows off by default are assumptions (each says why): "
                  "`--set` turns each on (the settings are in --json).", highlight=False)


def print_absolute(a: dict[str, Any], console: Console) -> None:
    console.print(
        f"[bold]Absolute check[/bold]: the same model run as {a['workload']} with {a['processes']} processes on "
        f"{a['machine']} ({a['kernel']}, {a['sim_seconds'] * 1e3:g} ms after {a['warmup_seconds'] * 1e3:g} ms, "
        f"{a['engine']} engine) swaps out {a['model_swap_out_kb_s']:,.0f} KB/s; measured: {a['swap_out_kb_s']:,} "
        f"KB/s, so the model is {a['model_over_published']:.1f}x as fast. Measured by {a['source']}. Not the same "
        f"setup: {a['caveats']}. Nothing is fitted to it: a factor far from 1 says the per-page costs of the reclaim "
        f"path (docs/reproduce.md) are off, not that a cost should be tuned until it agrees.", highlight=False)
    t = Table(title="the same run's locks: published % of cycles (perf, all CPUs) against the model's spinning, % "
                    "of its usemem and kswapd CPUs' busy time", title_justify="left")
    t.add_column("lock", no_wrap=True)
    t.add_column("published", justify="right")
    t.add_column("model", justify="right")
    t.add_column("published entry")
    for row in a["locks"]:
        t.add_row(row["lock"], "-" if row["published_pct"] is None else f"{row['published_pct']:.2f}%",
                  "not in this run" if row["model_pct"] is None else f"{row['model_pct']:.2f}%",
                  row["published_what"])
    console.print(t)
    console.print(f"  Not modelled: {a['unmodelled']}.", highlight=False)


def print_sensitivity(rows: list[dict[str, Any]], window: dict[str, float], console: Console) -> None:
    ref = rows[0]["reference"] if rows else None
    title = (f"sensitivity: the headline ratios with one cost at x0.5 and x1.5 ({window['sim_seconds'] * 1e3:g} ms "
             f"windows after {window['warmup_seconds'] * 1e3:g} ms warm-up")
    if ref:
        title += (f"; at the preset's costs on this window: IPIs {_pct(_neg(ref['ipi_reduction']))}, "
                  f"throughput {_pct(ref['throughput_gain'])}")
    t = Table(title=title + ")", title_justify="left")
    t.add_column("cost", no_wrap=True)
    t.add_column("ns", justify="right")
    t.add_column("IPIs x0.5", justify="right")
    t.add_column("IPIs x1.5", justify="right")
    t.add_column("thr. x0.5", justify="right")
    t.add_column("thr. x1.5", justify="right")
    t.add_column("source")
    for row in rows:
        lo, hi = row["x0.5"], row["x1.5"]
        t.add_row(row["cost"], str(row["ns"]), _pct(_neg(lo["ipi_reduction"])), _pct(_neg(hi["ipi_reduction"])),
                  _gain(lo), _gain(hi), source_kind(row["source"]))
    console.print(t)
    console.print("  The ± is the 95% interval of each throughput ratio on these short windows: where it is wider than "
                  "the change, the window cannot tell the change from the run-to-run swing (all reclaimers "
                  "entering direct reclaim together); lengthen it with --sensitivity-seconds.", highlight=False)
