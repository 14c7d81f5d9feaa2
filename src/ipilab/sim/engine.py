"""The discrete-event loop: a clock in integer nanoseconds and one way to schedule, `at(time, fn)`.

Everything else (CPUs running kernel code, IPIs in flight, workloads) is built on top of it. Ties are
broken by scheduling order, so a run is a pure function of its inputs and seed.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class Timer:
    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: int, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    def __init__(self) -> None:
        self.now = 0
        self._queue: list[tuple[int, int, Timer]] = []
        self._seq = 0
        self.events_processed = 0

    def at(self, when: int, fn: Callable[[], None]) -> Timer:
        """Run `fn()` at simulated time `when` (ns, not before now)."""
        if when < self.now:
            raise ValueError(f"cannot schedule in the past ({when} < {self.now})")
        timer = Timer(when, fn)
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, timer))
        return timer

    def run(self, until: int, check: Callable[[], None] | None = None) -> None:
        """Process every event due at or before `until`, then leave the clock at `until`.

        `check`, if given, is called after every event: tests use it to assert invariants in every
        state the run passes through.
        """
        queue = self._queue
        while queue and queue[0][0] <= until:
            when, _, timer = heapq.heappop(queue)
            if timer.cancelled:
                continue
            self.now = when
            self.events_processed += 1
            timer.fn()
            if check is not None:
                check()
        self.now = max(self.now, until)
