"""One self-contained HTML page of pictures and tables, for a sweep's results table, a trace, or a
`reproduce seed --json` result.

The page needs nothing but itself: plots are matplotlib figures inlined as SVG (text drawn as paths,
heat maps as embedded PNG data), no script, no stylesheet or font from elsewhere. Every piece of text
goes through Jinja2's autoescaping, so a task name or callsite from a trace shows as text, never as
markup.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
from markupsafe import Markup
from matplotlib.ticker import MaxNLocator

from ipilab import __version__
from ipilab.analysis.audit import AUDIT_DOCS, audit_trace
from ipilab.analysis.plots import plain_ticks, seed_figure
from ipilab.analysis.render import PERCENTILES, duration, resolution
from ipilab.events import HANDLER_ENTRY
from ipilab.files import published
from ipilab.sim.run import METRIC_DOCS
from ipilab.sweep.run import COLUMN_DOCS
from ipilab.sweep.store import ResultStore, StoreError
from ipilab.trace.read import read_trace
from ipilab.workloads.swap import PAGE_SIZE

MAX_TABLE_ROWS = 500
HEATMAP_BINS = 60


class ReportError(ValueError):
    """The input cannot be reported on; the message names it."""


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    svg: Markup
    caption: str


@dataclass
class Section:
    title: str
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


PAGE = jinja2.Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption, .meta, .note { color: #444; font-size: 0.9em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td:first-child, th:first-child, td:last-child { text-align: left; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="meta">{{ subtitle }}</p>
{% for s in sections %}<section>
<h2>{{ s.title }}</h2>
{% for n in s.notes %}<p class="note">{{ n }}</p>
{% endfor %}{% for f in s.figures %}<figure>{{ f.svg }}<figcaption>{{ f.caption }}</figcaption></figure>
{% endfor %}{% for t in s.tables %}<table><caption>{{ t.caption }}</caption>
<thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}</section>
{% endfor %}<p class="meta">Written by ipilab {{ version }}.</p>
</body></html>
""")


def svg(fig: Any) -> Markup:
    """A matplotlib figure as an inline <svg> element (the XML prologue dropped)."""
    plain_ticks(fig)
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "path", "svg.hashsalt": "ipilab"}):
        fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return Markup(text[text.index("<svg"):])


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


# --- the kinds of input ------------------------------------------------------------------------------

def report(source: Path) -> tuple[str, str]:
    """The page for `source` (a sweep table, a seed JSON or a trace) and what kind it was."""
    source = Path(source)
    store = ResultStore(source)
    if source.suffix == ".parquet" or _is_parquet(source):
        try:
            table = store.read()
        except StoreError as e:
            raise ReportError(str(e)) from None
        if table is None:
            raise ReportError(f"{source}: no such results table")
        return sweep_page(table, source), "sweep"
    if not source.exists():
        raise ReportError(f"{source}: no such file")
    if source.suffix == ".json":
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError) as e:
            raise ReportError(f"{source}: not a JSON file: {e}") from None
        if not isinstance(data, dict) or data.get("experiment") != "seed":
            raise ReportError(f"{source}: not a `reproduce seed --json` result (no \"experiment\": \"seed\")")
        return seed_page(data, source), "seed"
    return trace_page(source), "trace"


def _is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def write_report(source: Path, out: Path) -> str:
    html, kind = report(source)
    with published(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return kind


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    return PAGE.render(title=title, subtitle=subtitle, sections=sections, version=__version__)


# --- a sweep ---------------------------------------------------------------------------------------------

def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _param_columns(t: pa.Table) -> list[str]:
    """The parameter columns: between run_id and seed, as the sweep writes them."""
    names = t.column_names
    return names[names.index("run_id") + 1:names.index("seed")]


def sweep_page(t: pa.Table, source: Path) -> str:
    rows = t.to_pylist()
    params = _param_columns(t)
    varied = [p for p in params if len({repr(r[p]) for r in rows}) > 1]
    ok = [r for r in rows if r["error"] is None]
    failed = [r for r in rows if r["error"] is not None]
    seeds = sorted({r["seed"] for r in rows})
    fixed = ", ".join(f"{p} = {rows[0][p]}" for p in params if p not in varied)
    sections = []
    head = Section("What was run")
    head.notes.append(f"{len(rows):,} runs ({len(ok):,} succeeded, {len(failed):,} failed); varied: "
                      f"{', '.join(varied) or 'nothing'}; seeds: {', '.join(map(str, seeds))}.")
    head.notes.append(f"Fixed: {fixed}." if fixed else "Nothing was fixed.")
    head.notes.append("Rates are per simulated second of the measured window (after the warm-up). Each point "
                      "is the mean of its runs: over the seeds, and over any parameter a plot's caption says it "
                      "averages; bars span the lowest to the highest of those runs.")
    sections.append(head)
    if ok:
        x_params = [p for p in varied if p != "kernel"] or (["kernel"] if "kernel" in varied else [])
        for x in x_params[:4]:
            sections.append(_sweep_vs(ok, x, varied))
        sections.append(_latency_ladders(ok, varied))
        sections.append(_sweep_heatmaps(ok, varied))
    shown = varied or ["kernel"]
    metrics = ["ipis_sent", "cal_interrupts", "csds_per_interrupt", "wait_latency_p99_ns", "wall_seconds"]
    runs = Table(f"every run (first {MAX_TABLE_ROWS})" if len(rows) > MAX_TABLE_ROWS else "every run",
                 [*shown, "seed", *metrics, "error"],
                 [[fmt(r[p]) for p in shown] + [r["seed"]] + [fmt(r.get(m)) for m in metrics] + [r["error"] or ""]
                  for r in rows[:MAX_TABLE_ROWS]])
    glossary = Table("what the columns count", ["column", "meaning"],
                     [[k, v] for k, v in {**METRIC_DOCS, **COLUMN_DOCS}.items()])
    sections.append(Section("Runs", tables=[runs, glossary]))
    return page(f"Sweep: {source.name}", f"{len(rows):,} simulations from {source}", sections)


def _series(rows: list[dict[str, Any]], x: str, varied: list[str]) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """Rows grouped into lines: by kernel and the other varied parameters (or by kernel alone when
    that would make more than 8 lines, averaging over the rest)."""
    others = [p for p in varied if p != x]
    keys = others
    note = ""
    if len({tuple(r[p] for p in others) for r in rows}) > 8:
        keys = [p for p in others if p == "kernel"]
        rest = [p for p in others if p != "kernel"]
        note = f" Each point averages the runs over {', '.join(rest)} (bars: their lowest and highest)." if rest else ""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[", ".join(f"{p}={r[p]}" for p in keys) or "all runs"].append(r)
    return dict(groups), note


def _throughput(rows: list[dict[str, Any]]) -> tuple[str, Any]:
    if all(r.get("pages_written") is not None for r in rows):
        return ("pages written, MB/s (4 KiB pages, all threads)",
                lambda r: r["pages_written"] * PAGE_SIZE / 1e6 / r["sim_seconds"])
    return "cross-CPU calls per simulated second", lambda r: r["calls"] / r["sim_seconds"]


def _sweep_vs(rows: list[dict[str, Any]], x: str, varied: list[str]) -> Section:
    groups, note = _series(rows, x, varied)
    xs_all = sorted({r[x] for r in rows}, key=lambda v: (str(type(v)), v))
    numeric = _numeric(xs_all)
    pos = {v: (v if numeric else i) for i, v in enumerate(xs_all)}
    tp_label, tp = _throughput(rows)
    panels = [
        ("IPIs sent (solid) and CAL interrupts (dashed), per simulated second",
         [(lambda r: r["ipis_sent"] / r["sim_seconds"], "-"), (lambda r: r["cal_interrupts"] / r["sim_seconds"], "--")],
         False),
        ("CSDs run per function-call interrupt", [(lambda r: r["csds_per_interrupt"], "-")], False),
        (tp_label, [(tp, "-")], False),
        ("sender wait latency, µs: p50 (solid) and p99 (dashed)",
         [(lambda r: _us(r.get("wait_latency_p50_ns")), "-"), (lambda r: _us(r.get("wait_latency_p99_ns")), "--")],
         True),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, lines, logy) in zip(axes.flat, panels, strict=True):
        for i, (name, group) in enumerate(groups.items()):
            for j, (value, style) in enumerate(lines):
                xs, mean, lo, hi = _aggregate(group, x, value)
                if not xs:
                    continue
                px = [pos[v] for v in xs]
                ax.errorbar(px, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)], fmt=style, marker="o",
                            ms=3, capsize=2, color=colors[i % len(colors)], label=name if j == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x)
        if not numeric:
            ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    return Section(f"Against {x}", figures=[Figure(svg(fig), (
        f"Each line is one combination of the other parameters (legend). IPIs: function-call IPIs sent, one "
        f"per target CPU; CAL: function-call interrupts taken (the "
        f"CAL row of /proc/interrupts); CSDs per interrupt: calls served by one interrupt; wait latency: a "
        f"sender's call from entry to return.{note}"))])


def _us(ns: Any) -> float | None:
    return None if ns is None else ns / 1000


def _aggregate(rows: list[dict[str, Any]], x: str, value: Any) -> tuple[list[Any], list[float], list[float],
                                                                       list[float]]:
    by_x: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        v = value(r)
        if v is not None:
            by_x[r[x]].append(v)
    xs = sorted(by_x, key=lambda v: (str(type(v)), v))
    # The mean of equal floats can land an ulp outside them, and matplotlib refuses a negative error bar.
    return (xs, [float(np.clip(np.mean(by_x[v]), min(by_x[v]), max(by_x[v]))) for v in xs],
            [min(by_x[v]) for v in xs], [max(by_x[v]) for v in xs])


LADDER = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("max", "max"))


def _latency_ladders(rows: list[dict[str, Any]], varied: list[str]) -> Section:
    """The sender wait latency distribution (its percentiles) per kernel, one line per value of the first
    swept parameter."""
    kernels = sorted({r["kernel"] for r in rows})[:4]
    x = next((p for p in varied if p != "kernel"), None)
    values = sorted({r[x] for r in rows}, key=lambda v: (str(type(v)), v)) if x else [None]
    fig, axes = plt.subplots(1, len(kernels), figsize=(4.5 * len(kernels) + 1, 4), layout="constrained",
                             squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, kernel in zip(axes[0], kernels, strict=True):
        for i, v in enumerate(values):
            runs = [r for r in rows if r["kernel"] == kernel and (x is None or r[x] == v)
                    and r.get("wait_latency_count")]
            if not runs:
                continue
            ys = [float(np.mean([r[f"wait_latency_{p}_ns"] for r in runs])) / 1000 for p, _ in LADDER]
            ax.plot(range(len(LADDER)), ys, marker="o", color=cmap(i / max(len(values) - 1, 1)),
                    label=f"{x}={v}" if x else "all runs")
        ax.set_xticks(range(len(LADDER)), [label for _, label in LADDER])
        ax.set_yscale("log")
        ax.set_title(f"kernel {kernel}", fontsize=10)
        ax.set_xlabel("percentile of the calls")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sender wait, µs (call entry to return)")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    return Section("Latency distributions", figures=[Figure(svg(fig), (
        "How long senders waited for their cross-CPU calls (smp_call_function_many_cond or _single, entry to "
        "return, simulated µs): the 50th, 90th and 99th percentile and the longest, per kernel"
        + (f", one line per {x} (mean over the runs with that value)." if x else ".")))])


def _sweep_heatmaps(rows: list[dict[str, Any]], varied: list[str]) -> Section:
    """Per-CPU interrupts over time for one run per kernel: the last grid point, first seed."""
    last: dict[str, dict[str, Any]] = {}
    timed = [r for r in rows if r.get("timeline_cpu_interrupts")]
    for r in timed:
        if r["kernel"] not in last or r["run_index"] > last[r["kernel"]]["run_index"]:
            last[r["kernel"]] = r
    # run_index counts the seeds too: the grid point is the last run's parameters, then its lowest seed.
    chosen = {k: min((r for r in timed if all(r[p] == end[p] for p in varied) and r["kernel"] == k),
                     key=lambda r: r["seed"]) for k, end in last.items()}
    picked = list(chosen.values())[:4]
    if not picked:
        return Section("Interrupts per CPU over time", notes=["No run has a timeline."])
    fig, axes = plt.subplots(1, len(picked), figsize=(6 * len(picked), 4.2), layout="constrained", squeeze=False)
    for ax, r in zip(axes[0], picked, strict=True):
        m = np.asarray(r["timeline_cpu_interrupts"], dtype=float).T
        iv_ms = np.asarray(r["timeline_interval_ns"], dtype=float) / 1e6
        start = r["warmup_seconds"] * 1e3
        im = ax.imshow(m / iv_ms[None, :], aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                       extent=(start, start + float(iv_ms.sum()), -0.5, m.shape[0] - 0.5))
        ax.set_title(", ".join(f"{p}={r[p]}" for p in (varied or ["kernel"])) + f", seed {r['seed']}", fontsize=9)
        ax.set_xlabel("simulated time, ms")
        ax.set_ylabel("CPU")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, label="function-call interrupts per ms")
    return Section("Interrupts per CPU over time", figures=[Figure(svg(fig), (
        "Function-call interrupts each CPU took, per ms of simulated time, in each of the window's intervals "
        "(one run per kernel: the last point of the grid, lowest seed)."))])


# --- a reproduce-seed result ---------------------------------------------------------------------------

def seed_page(r: dict[str, Any], source: Path) -> str:
    kernels = r["kernels"]
    head = Table("the headline, whole run (paper: Aaron Lu's 2017 patch)", ["", "model", "95% ± ", "paper"], [
        ["IPI reduction (CAL row over the run)", _pct(r["ipi_reduction"]), _pct(r.get("ipi_reduction_ci95")),
         _pct(r["paper"]["ipi_reduction"])],
        ["throughput gain (usemem KB/s)", _pct(r["throughput_gain"]), _pct(r.get("throughput_gain_ci95")),
         _pct(r["paper"]["throughput_gain"])],
    ])
    keys = ["csd_enqueues", "ipis_sent", "cal_interrupts", "apic_merged", "csds_per_interrupt", "cal_per_page",
            "throughput_kb_s", "reclaim_throughput_kb_s", "queue_window_us_mean", "flush_wait_us_mean"]
    runs = Table("per kernel (counts over the reclaim window; see `reproduce seed --help` for units)",
                 ["", *kernels], [[k, *(fmt(r["runs"][kn].get(k)) for kn in kernels)] for k in keys])
    units = Table("units", ["number", "meaning"], [[k, v] for k, v in r.get("units", {}).items()])
    w = r["window"]
    notes = [f"{r['machine']}, {r['workload'].get('threads')} threads; window {w['sim_seconds'] * 1e3:g} ms after "
             f"{w['warmup_seconds'] * 1e3:g} ms warm-up, {w['intervals']} intervals; seed {r['seed']}.",
             r["paper"]["source"] + ": " + r["paper"]["setup"]]
    fig = Figure(svg(seed_figure(r)), "Top: rates per simulated second with 95% intervals, and usemem throughput. "
                 "Bottom: function-call interrupts per CPU per ms over the reclaim window.")
    return page(f"Seed reproduction: {source.name}", f"ipilab {r['ipilab_version']}",
                [Section("Result", notes=notes, figures=[fig], tables=[head, runs, units])])


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


# --- a trace ---------------------------------------------------------------------------------------------

def trace_page(path: Path) -> str:
    a = audit_trace(path)
    secs = a["duration_ns"] / 1e9
    sections = []
    counts = Table(f"IPI audit over {secs:.3f} s of trace", ["count", "value", "per second", "what it counts"],
                   [[k, fmt(a[k]), fmt(a[k] / secs) if secs > 0 and isinstance(a[k], int) else "", v]
                    for k, v in AUDIT_DOCS.items()])
    notes = [f"{a['format']} text, {a['lines']:,} event lines, {a['events_read']:,} IPI-related events; "
             f"{a['bad_lines']:,} bad lines."]
    if not a["decisions_known"]:
        notes.append("The trace has no ipi_send events: it cannot show which queued calls needed an IPI.")
    notes += list(a["warnings"])
    sections.append(Section("IPI audit", notes=notes, tables=[counts]))
    figures = []
    heat = _trace_heatmap(path)
    if heat is not None:
        figures.append(heat)
    if a["latency_ns"]:
        figures.append(_latency_figure(a))
    sections.append(Section("Pictures", figures=figures))
    per_cpu = Table("per CPU (as target)", ["cpu", "CAL interrupts", "calls run in them", "run elsewhere",
                                            "IPIs matched", "RES", "TLB"],
                    [[cpu, *(fmt(c.get(k, 0)) for k in ("cal_interrupts", "csds_run_in_irq", "csds_run_elsewhere",
                                                        "ipis_received", "reschedule_interrupts",
                                                        "tlb_flushes_received"))]
                     for cpu, c in a["per_cpu"].items()])
    tables = [per_cpu]
    for by in ("callsite", "func", "sender"):
        tables.append(Table(f"by {by} (first 30)", [by, "queued", "IPIs", "no IPI: queue busy", "no IPI: polling"],
                            [[name, *(fmt(t[k]) for k in ("enqueues", "ipis", "no_ipi_queued", "no_ipi_polling"))]
                             for name, t in list(a["by"][by].items())[:30]]))
    tables.append(Table("top senders per target CPU", ["target", "task", "callsite", "calls queued"],
                        [[target, s["task"], s["callsite"], fmt(s["enqueues"])]
                         for target, senders in a["top_senders"].items() for s in senders]))
    res = a["timestamp_resolution_ns"]
    tables.append(Table(f"per function: wait (queued -> run) and run time; timestamps resolve {resolution(res)}",
                        ["function", "waits", "wait p50", "wait p90", "wait p99", "wait max", "runs", "run p50",
                         "run p99"],
                        [[f, fmt(a["latency_ns"].get(f, {}).get("count", 0)),
                          *(duration(a["latency_ns"].get(f, {}).get(p), res) for p in PERCENTILES),
                          fmt(a["function_ns"].get(f, {}).get("count", 0)),
                          *(duration(a["function_ns"].get(f, {}).get(p), res) for p in ("p50", "p99"))]
                         for f in sorted(set(a["latency_ns"]) | set(a["function_ns"]))]))
    rec = a["reconciliation"]
    notes = [f"Per function: {a['times']['latency_ns']}; {a['times']['function_ns']}."]
    if rec:
        notes.append(f"Against /proc/interrupts ({rec['sidecar']}): {rec['why_they_differ']}.")
        tables.append(Table("against /proc/interrupts (counts over the capture)",
                            ["row", "/proc/interrupts", "trace", "difference"],
                            [[row, fmt(v["proc_interrupts"]), fmt(v["trace"]),
                              f"{v['trace'] - v['proc_interrupts']:+,}"] for row, v in rec["rows"].items()]))
    sections.append(Section("Audit tables", notes=notes, tables=tables))
    return page(f"Trace: {path.name}", str(path), sections)


def _trace_heatmap(path: Path) -> Figure | None:
    """Function-call interrupt entries per CPU in time bins over the trace."""
    times: list[int] = []
    cpus: list[int] = []
    for ev in read_trace(path):
        if ev.name in HANDLER_ENTRY:
            times.append(ev.ts)
            cpus.append(ev.cpu)
    if not times:
        return None
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1)
    ncpu = max(cpus) + 1
    m, _, _ = np.histogram2d(cpus, times, bins=[ncpu, HEATMAP_BINS], range=[[-0.5, ncpu - 0.5], [t0, t0 + span]])
    bin_ms = span / HEATMAP_BINS / 1e6
    fig, ax = plt.subplots(figsize=(12, 1.5 + 0.25 * ncpu), layout="constrained")
    im = ax.imshow(m / bin_ms, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
                   extent=(0, span / 1e6, -0.5, ncpu - 0.5))
    ax.set_xlabel("ms since the first function-call interrupt")
    ax.set_ylabel("CPU")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=ax, label="interrupts per ms")
    return Figure(svg(fig), f"Function-call interrupts (call_function(_single)_entry) per CPU per ms, in "
                            f"{HEATMAP_BINS} bins of {bin_ms:.3g} ms.")


def _latency_figure(a: dict[str, Any]) -> Figure:
    funcs = sorted(a["latency_ns"], key=lambda f: -a["latency_ns"][f]["count"])[:12]
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.45 * len(funcs)), layout="constrained")
    y = np.arange(len(funcs))
    for k, (p, marker) in enumerate((("p50", "o"), ("p90", "s"), ("p99", "^"), ("max", "x"))):
        vals = [max(a["latency_ns"][f][p], 1) / 1000 for f in funcs]
        ax.scatter(vals, y + (k - 1.5) * 0.12, marker=marker, label=p)
    ax.set_yticks(y, [re.sub(r"\s+", " ", f) for f in funcs])
    ax.set_xscale("log")
    ax.set_xlabel("µs from csd_queue_cpu to csd_function_entry on the target")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Figure(svg(fig), "Latency distribution of queued calls per function (percentiles of the wait from "
                            "queueing to the function's start, log scale); the 12 most frequent functions.")
