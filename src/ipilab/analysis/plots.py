"""Pictures of results, written atomically (a reader never sees half a file), with tick labels in plain
numbers (2.5, 20k, 1.5M), never powers of ten or an offset above the axis."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import Formatter, FuncFormatter, ScalarFormatter

from ipilab.files import published

SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def plain(value: float) -> str:
    """A number as people write it on an axis: 0.05, 2.5, 300, 20k, 1.5M (no exponent)."""
    if value == 0:
        return "0"
    for size, suffix in SUFFIXES:
        if abs(value) >= size:
            return np.format_float_positional(value / size, precision=3, trim="-") + suffix
    return np.format_float_positional(value, precision=6, trim="-")


class PlainLogFormatter(Formatter):
    """Log-axis labels in plain numbers. As matplotlib's own, the powers of ten are labelled, and when
    fewer than two are in view the ticks between them too (all of them within a decade, else 2x and
    5x), so that every axis has numbers on it."""

    def __init__(self, minor: bool) -> None:
        self.minor = minor

    def __call__(self, x: float, pos: int | None = None) -> str:
        if x <= 0:
            return ""
        if not self.minor:
            return plain(x)
        lo, hi = sorted(self.axis.get_view_interval())  # type: ignore[union-attr]
        lo = max(lo, 1e-300)
        if math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1 >= 2:
            return ""
        leading = round(x / 10 ** math.floor(math.log10(x)))
        return plain(x) if math.log10(hi / lo) < 1 or leading in (2, 5) else ""


def plain_ticks(fig: Any) -> None:
    """Every numeric axis of `fig` labelled in plain numbers (see `plain`); labels set by hand stay."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_formatter(PlainLogFormatter(minor=False))
                axis.set_minor_formatter(PlainLogFormatter(minor=True))
            elif axis.get_scale() == "linear" and isinstance(axis.get_major_formatter(), ScalarFormatter):
                axis.set_major_formatter(FuncFormatter(lambda v, _pos: plain(v)))


def save_atomically(fig: Any, path: Path) -> None:
    plain_ticks(fig)
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
