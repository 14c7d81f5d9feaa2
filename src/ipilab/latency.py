"""Call latencies as counts in fixed log-spaced bins: a run's memory stays the same however long it runs.

A simulation records one latency per waited-for call (tens of millions over a long window), and users see
only their count, 50th, 90th and 99th percentile and maximum. Values below 256 ns get a bin each (exact);
above, every power of two is cut into 128 equal bins, so a bin spans less than 1/128 (0.8%) of the
values in it. A percentile is reported as the lowest value of the bin holding numpy's `inverted_cdf`
percentile of the samples: never above the exact value and less than one bin width below it (exact below
256 ns). The count and the maximum are exact. Both engines keep their latencies in one of these, so
they report the same numbers.
"""

from __future__ import annotations

import numpy as np

SIGNIFICANT_BITS = 8  # bits of a value kept: exact below 2^8 ns, bins 2^-7 of their value wide above
HALF = 1 << (SIGNIFICANT_BITS - 1)
LIMIT_BITS = 53  # values below 2^53 ns (104 days): float64 holds them exactly, so frexp gives the bit length
NBINS = (LIMIT_BITS - SIGNIFICANT_BITS + 1) * HALF + HALF
PENDING = 4096  # latencies appended one by one are binned this many at a time


def bin_index(ns: np.ndarray) -> np.ndarray:
    """Each value's bin: the value itself below 2^8; above, its top 8 bits and how far they were shifted."""
    _, bits = np.frexp(ns.astype(np.float64))  # the bit length of each value
    shift = np.maximum(bits - SIGNIFICANT_BITS, 0)
    return shift.astype(np.int64) * HALF + (ns >> shift)


def bin_low(index: int) -> int:
    """The lowest value bin `index` holds (its width is 1 << shift)."""
    shift = max(index // HALF - 1, 0)
    return (index - shift * HALF) << shift


class LatencyHistogram:
    """Latencies in ns (SmpStats.call_latencies_ns): `append` one, `extend` many, `percentiles()`."""

    def __init__(self) -> None:
        # Made at the first value: most machines the model checker builds (thousands a second) record none.
        self.counts: np.ndarray | None = None
        self.max_ns = -1
        self._pending: list[int] = []

    def append(self, ns: int) -> None:
        self._pending.append(ns)
        if len(self._pending) >= PENDING:
            self._fold()

    def extend(self, ns: np.ndarray) -> None:
        """Add every value of an int64 array."""
        if len(ns) == 0:
            return
        low, high = int(ns.min()), int(ns.max())
        if low < 0 or high >= 1 << LIMIT_BITS:
            raise ValueError(f"a latency of {low if low < 0 else high} ns is outside [0, 2^{LIMIT_BITS})")
        binned = np.bincount(bin_index(ns), minlength=NBINS)
        self.counts = binned if self.counts is None else self.counts + binned
        self.max_ns = max(self.max_ns, high)

    def _fold(self) -> None:
        pending, self._pending = self._pending, []
        self.extend(np.array(pending, np.int64))

    def clear(self) -> None:
        self.counts = None
        self.max_ns = -1
        self._pending = []

    def __len__(self) -> int:
        return (0 if self.counts is None else int(self.counts.sum())) + len(self._pending)

    def percentiles(self) -> dict[str, int | None]:
        """count, p50, p90, p99 (each the lowest value of the bin holding numpy's inverted_cdf percentile)
        and max (exact), in ns; None when there is no sample."""
        self._fold()
        if self.counts is None:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
        cum = np.cumsum(self.counts)
        n = int(cum[-1])
        if n == 0:
            return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
        out: dict[str, int | None] = {"count": n}
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
            index = n * (np.float64(q) / 100) - 1  # numpy's virtual index for inverted_cdf: rank ceil(n * q) - 1
            below = np.floor(index)
            rank = min(max(int(below + 1 if index - below > 0 else below), 0), n - 1)
            out[name] = bin_low(int(np.searchsorted(cum, rank, side="right")))
        out["max"] = self.max_ns
        return out
