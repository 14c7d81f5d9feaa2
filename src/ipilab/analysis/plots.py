"""Pictures of results, written atomically (a reader never sees half a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
import numpy as np

from ipilab.files import published


def save_atomically(fig: Any, path: Path) -> None:
    try:
        with published(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def plot_seed(r: dict[str, Any], path: Path) -> None:
    """The seed comparison as a PNG file (see `seed_figure`)."""
    save_atomically(seed_figure(r), path)


def seed_figure(r: dict[str, Any]) -> Any:
    """The seed comparison: IPIs and interrupts, throughput, and interrupts per CPU over time."""
    kernels = r["kernels"]
    runs = [r["runs"][k] for k in kernels]
    fig = plt.figure(figsize=(13, 8.5), layout="constrained")
    grid = fig.add_gridspec(2, 2)
    ax = fig.add_subplot(grid[0, 0])
    metrics = [("csd_enqueues", "CSDs queued"), ("csd_ipis", "IPIs sent"), ("cal_interrupts", "CAL interrupts"),
               ("apic_merged", "APIC-merged")]
    x = np.arange(len(metrics))
    width = 0.38
    for i, (k, run) in enumerate(zip(kernels, runs, strict=True)):
        vals = [run["rates"][m]["per_second"] / 1e6 for m, _ in metrics]
        errs = [(run["rates"][m]["ci95"] or 0) / 1e6 for m, _ in metrics]
        ax.bar(x + (i - 0.5) * width, vals, width, yerr=errs, capsize=3, label=k)
    ax.set_xticks(x, [label for _, label in metrics])
    ax.set_ylabel("millions per simulated second")
    change = "n/a" if r["ipi_reduction"] is None else f"{-r['ipi_reduction'] * 100:+.1f}%"
    ax.set_title(f"IPIs: {change} CAL over the run (paper {-r['paper']['ipi_reduction'] * 100:.0f}%)")
    ax.legend()

    ax = fig.add_subplot(grid[0, 1])
    labels = ["reclaim phase", "whole run"]
    x = np.arange(len(labels))
    for i, (k, run) in enumerate(zip(kernels, runs, strict=True)):
        vals = [run["reclaim_throughput_kb_s"] / 1e6, run["throughput_kb_s"] / 1e6]
        errs = [run["reclaim_throughput_kb_s_ci95"] / 1e6, run["throughput_kb_s_ci95"] / 1e6]
        ax.bar(x + (i - 0.5) * width, vals, width, yerr=errs, capsize=3, label=k)
    ax.set_xticks(x, labels)
    ax.set_ylabel("usemem throughput, GB/s (10^6 KB/s), all threads")
    ax.set_title(f"Throughput: {r['throughput_gain'] * 100:+.1f}% over the run "
                 f"(paper +{r['paper']['throughput_gain'] * 100:.0f}%)")
    ax.legend()

    maps = [np.asarray(run["timeline"]["cpu_interrupts"], dtype=float).T for run in runs]
    intervals_ms = [np.asarray(run["timeline"]["interval_ns"]) / 1e6 for run in runs]
    rates = [m / iv[None, :] for m, iv in zip(maps, intervals_ms, strict=True)]  # interrupts per ms
    vmax = max(float(m.max()) for m in rates) or 1.0
    for i, (k, m, run) in enumerate(zip(kernels, rates, runs, strict=True)):
        ax = fig.add_subplot(grid[1, i])
        start = run["warmup_seconds"] * 1e3
        end = start + run["sim_seconds"] * 1e3
        im = ax.imshow(m, aspect="auto", origin="lower", vmin=0, vmax=vmax, cmap="viridis",
                       extent=(start, end, -0.5, m.shape[0] - 0.5), interpolation="nearest")
        ax.set_xlabel("simulated time, ms")
        ax.set_ylabel("CPU")
        ax.set_title(f"{k}: function-call interrupts per CPU")
        fig.colorbar(im, ax=ax, label="interrupts per ms")
    fig.suptitle(f"Seed reproduction on {r['machine']}: swap-w-seq-mt, {r['workload']['threads']} threads "
                 f"(ipilab {r['ipilab_version']})")
    return fig
