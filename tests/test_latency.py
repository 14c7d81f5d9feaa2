"""Call latencies in fixed log-spaced bins (ipilab/latency.py): what users see against numpy's exact
percentiles of every sample, and memory that does not grow with the run."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import tiny_machine

from ipilab.kernel.features import resolve_kernel
from ipilab.latency import NBINS, PENDING, LatencyHistogram, bin_index, bin_low
from ipilab.sim.machine import SimMachine
from ipilab.workloads import workload_from_settings


def exact(samples: list[int] | np.ndarray) -> dict[str, int]:
    a = np.asarray(samples)
    p50, p90, p99 = np.percentile(a, [50, 90, 99], method="inverted_cdf")
    return {"count": len(a), "p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(a.max())}


def assert_within_one_bin(got: dict[str, int | None], want: dict[str, int]) -> None:
    """Count and max exact; each percentile at most one bin width (< 1/128 of it) below the exact one."""
    assert (got["count"], got["max"]) == (want["count"], want["max"])
    for q in ("p50", "p90", "p99"):
        width = max(1, want[q] >> 7)
        assert got[q] <= want[q] < got[q] + width, (q, got[q], want[q])


def test_litmus_bins_by_hand() -> None:
    """Below 256 ns every value is its own bin. 1000..1023 have 10 bits, so the low 2 are dropped: bins 4 ns
    wide, 1000-1003, 1004-1007, 1008-1011. Samples 1000, 1001, 1007, 1008: the inverted_cdf p50 is the
    2nd smallest (1001, reported as its bin's 1000), p90 and p99 the 4th (1008, exact at a bin's start)."""
    h = LatencyHistogram()
    for v in (1007, 1000, 1008, 1001):
        h.append(v)
    assert h.percentiles() == {"count": 4, "p50": 1000, "p90": 1008, "p99": 1008, "max": 1008}
    assert [bin_low(int(i)) for i in bin_index(np.array([0, 1, 255, 256, 257, 258, 1007], np.int64))] == \
        [0, 1, 255, 256, 256, 258, 1004]
    h.clear()
    assert h.percentiles() == {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}


def test_every_bin_starts_where_the_last_ended() -> None:
    """The bins tile [0, 2^53) without gaps or overlaps: a value's bin starts at or below it, the next bin
    starts above it, and a bin is never wider than 1/128 of its values (1 below 256 ns)."""
    lows = np.array([bin_low(i) for i in range(NBINS)])
    assert lows[0] == 0 and np.all(np.diff(lows) > 0)
    widths = np.diff(lows)
    assert np.all(widths <= np.maximum(lows[:-1] >> 7, 1))
    rng = np.random.default_rng(0)
    v = np.concatenate([np.arange(5000), rng.integers(0, 1 << 53, 10_000), [(1 << 53) - 1]]).astype(np.int64)
    i = bin_index(v)
    assert np.all(lows[i] <= v) and np.all(v < np.append(lows, 1 << 53)[i + 1])


@pytest.mark.parametrize("n", [1, 2, 3, 10, 99, 100, 101, 4321])
def test_small_sets_match_numpy_within_a_bin(n: int) -> None:
    rng = np.random.default_rng(n)
    samples = (rng.integers(0, 50, size=n) * rng.choice([1, 7, 1000, 123_457])).astype(np.int64)
    h = LatencyHistogram()
    h.extend(samples)
    assert_within_one_bin(h.percentiles(), exact(samples))


def test_a_long_stream_keeps_memory_flat_and_percentiles_within_a_bin() -> None:
    """Two million latencies appended one by one (a long run's worth) take no more memory than 100,000."""
    rng = np.random.default_rng(1)
    samples = np.rint(rng.lognormal(np.log(20_000), 1.0, size=2_000_000)).astype(np.int64)
    h = LatencyHistogram()
    tracemalloc.start()
    try:
        for v in samples[:100_000].tolist():
            h.append(v)
        early = tracemalloc.get_traced_memory()[0]
        for v in samples[100_000:].tolist():
            h.append(v)
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert late - early < 64 * 1024  # a list of 1.9 million ints alone would take over 15 MB
    assert_within_one_bin(h.percentiles(), exact(samples))


def test_a_reference_run_reports_each_waited_call_within_a_bin() -> None:
    """The reference engine's SmpStats keeps its latencies binned: a run with many times PENDING calls
    reports what numpy says of every latency the workload appended (recorded beside it here)."""
    m = tiny_machine(4, icr_write=100, ipi_latency_same_socket=1000, irq_entry=300, cacheline_same_socket=80)
    sim = SimMachine(m, resolve_kernel("v4.13"), seed=1)
    stats = sim.smp.stats
    seen: list[int] = []
    keep = stats.call_latencies_ns.append

    def append(ns: int) -> None:
        seen.append(ns)
        keep(ns)

    stats.call_latencies_ns.append = append
    workload_from_settings("synthetic", {"senders": "0-3", "rate": "2000000", "func_ns": "200"}).start(sim, 1)
    sim.engine.run(30_000_000)
    assert len(seen) > 5 * PENDING
    assert len(stats.call_latencies_ns._pending) < PENDING and stats.call_latencies_ns.counts.shape == (NBINS,)
    assert_within_one_bin(stats.call_latencies_ns.percentiles(), exact(seen))
