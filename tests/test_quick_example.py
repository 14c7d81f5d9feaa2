"""The first sweep of docs/sweep.md, examples/synthetic-quick.toml: it shows v4.12 and v4.13 apart, in seconds, and
its report's axes carry plain numbers (20k, 2.5M), never powers of ten."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pyarrow.parquet as pq
import pytest
from test_cli import ipilab

import ipilab.report as report_module
from ipilab.analysis.plots import plain, plain_ticks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthetic-quick.toml"
PLAIN = re.compile(r"(\d+(?:\.\d+)?)([kMGT]?)")
SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quick") / "quick.parquet"
    proc = ipilab("sweep", str(EXAMPLE), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def test_the_quick_example_shows_the_two_kernels_apart(quick: Path) -> None:
    """The seed patch (v4.13) sends no IPI to a target whose call queue already waits for one; v4.12 sends
    one per queued call. With four senders calling seven targets each, calls meet in the targets' queues,
    so v4.13 must take fewer function-call interrupts, and serve more calls per interrupt, at every rate."""
    rows = pq.read_table(quick).to_pylist()
    assert rows and all(r["error"] is None for r in rows)
    by: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["kernel"], r["rate"]].append(r)
    rates = sorted({rate for _, rate in by})
    assert len(rates) >= 3
    for r in rows:
        decided = r["csd_enqueues"] - r["csds_undecided_at_end"]
        if r["kernel"] == "v4.12":  # an IPI for every queued call, wanted or not
            assert r["csd_no_ipi_queued"] == 0 and r["ipis_sent"] == decided
        else:  # an IPI only to an empty queue
            assert r["ipis_to_nonempty_queue"] == 0 and r["ipis_sent"] + r["csd_no_ipi_queued"] == decided
    for rate in rates[1:]:  # at the lowest rate calls rarely meet; above it the seeds' ranges do not overlap
        old, new = by["v4.12", rate], by["v4.13", rate]
        assert max(r["cal_interrupts"] for r in new) < min(r["cal_interrupts"] for r in old), rate
        assert min(r["csds_per_interrupt"] for r in new) > max(r["csds_per_interrupt"] for r in old), rate
    top = rates[-1]
    saved = 1 - sum(r["cal_interrupts"] for r in by["v4.13", top]) / sum(r["cal_interrupts"] for r in by["v4.12", top])
    assert saved > 0.1, f"v4.13 saves only {saved:.1%} of the interrupts at {top:,} calls/s: hardly a difference"
    assert sum(r["wall_seconds"] for r in rows) < 60, "the quick example is meant to take seconds"


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (0.05, "0.05"), (2.5, "2.5"), (300, "300"), (1000, "1k"),
                                             (20_000, "20k"), (2.5e6, "2.5M"), (1e9, "1G"), (125_000, "125k")])
def test_plain_numbers(value: float, text: str) -> None:
    assert plain(value) == text


def labels(axis: Any) -> list[tuple[float, str]]:
    """The drawn tick labels of an axis that are in view and not empty, with the value they stand at."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
        text = tick.label1.get_text()
        at = tick.get_loc()
        if text and lo <= at <= hi:
            out.append((at, text))
    return sorted(out)


def assert_plain(axis: Any) -> list[str]:
    """Every label a plain number equal (to its 3 significant digits) to where it stands."""
    got = labels(axis)
    for at, text in got:
        m = PLAIN.fullmatch(text)
        assert m, f"{text!r} is not a plain number"
        assert math.isclose(float(m[1]) * SCALE[m[2]], at, rel_tol=1e-3), (text, at)
    return [text for _, text in got]


def test_a_log_axis_over_decades_reads_1_10_100_1k() -> None:
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 100_000])
    ax.set_yscale("log")
    ax.set_ylim(1, 100_000)
    plain_ticks(fig)
    fig.canvas.draw()
    assert assert_plain(ax.yaxis) == ["1", "10", "100", "1k", "10k", "100k"]  # decades only: 2x, 3x... unlabelled
    plt.close(fig)


def test_a_log_axis_within_a_decade_labels_the_ticks_between() -> None:
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1500, 4500])
    ax.set_yscale("log")
    ax.set_ylim(1500, 4500)
    plain_ticks(fig)
    fig.canvas.draw()
    assert assert_plain(ax.yaxis) == ["2k", "3k", "4k"]
    plt.close(fig)


def test_the_quick_reports_log_axes_read_in_plain_numbers(quick: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    svg = report_module.svg
    monkeypatch.setattr(report_module, "svg", lambda fig: (figures.append(fig), svg(fig))[1])
    report_module.report(quick)
    log_axes = [axis for fig in figures for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                if axis.get_scale() == "log"]
    assert len(log_axes) >= 2  # sender wait latency against rate, and its distribution per kernel
    for axis in log_axes:
        assert len(assert_plain(axis)) >= 2, "a log axis with fewer than two numbers cannot be read"
    for fig in figures:  # no "1e6" above a linear axis either
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                assert axis.get_offset_text().get_text() == ""
