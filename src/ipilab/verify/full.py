"""The full search: every reachable state of the model (explore.py), depth first, each expanded once.

dpor.py reaches the same end states with far fewer; this one is the reference the tests hold it to, and
`verify --search full`.
"""

from __future__ import annotations

import time

from ipilab.verify.explore import (
    Choice,
    Config,
    ModelMachine,
    Progress,
    Result,
    StateLimitError,
    _schedule_to,
    _successors,
    without_cycle_collection,
)
from ipilab.verify.shortest import shorten


@without_cycle_collection()
def explore(config: Config, max_states: int = 3_000_000, shortest: bool = True, keep_terminal_keys: bool = False,
            progress: Progress | None = None, shortest_seconds: float | None = None, workers: int = 1) -> Result:
    """Every interleaving, depth first, each state expanded once. A state with a violation is counted and
    not expanded; terminal states give the IPI bounds. With violations and `shortest`, a breadth-first
    search (`shortest.shorten`, in up to `workers` processes) then looks for a shortest counterexample,
    for at most `shortest_seconds`."""
    t0 = time.perf_counter()
    res = Result(config, terminal_keys=set() if keep_terminal_keys else None)
    root = ModelMachine(config)
    visited = {root.key()}
    parent: list[tuple[int, Choice | None]] = [(-1, None)]
    todo = [(0, root, root.choices())]  # states to expand, each with a machine standing in it
    while todo:
        sid, m, moves = todo.pop()
        path = _schedule_to(parent, sid) if len(moves) > 1 else []
        for choice, child in _successors(config, path, m, moves):
            res.transitions += 1
            k = child.key()
            if k in visited:
                child.dispose()
                continue
            visited.add(k)
            parent.append((sid, choice))
            cid = len(parent) - 1
            if progress is not None and cid % 1000 == 0:
                progress("full search", cid, len(_schedule_to(parent, cid)))
            if cid >= max_states:
                raise StateLimitError(f"more than {max_states:,} states; use fewer CPUs or calls, or raise "
                                      f"--max-states")
            child_moves = child.choices()
            violation = child.checks(child_moves)
            if violation is not None:
                res.add_violation(violation, lambda cid=cid: _schedule_to(parent, cid))
            elif not child_moves:
                res.add_terminal(child, k)
            else:
                todo.append((cid, child, child_moves))
                continue
            child.dispose()
    res.states = len(parent)
    res.seconds = time.perf_counter() - t0
    if res.violations and shortest:
        shorten(res, max_states, shortest_seconds, progress, workers)
    return res
