"""`ipilab verify`'s results as data (every number named and explained) and as tables for people."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ipilab.kernel.features import Kernel
from ipilab.kernel.smp import Smp
from ipilab.trace.ftrace import FtraceWriter, format_event
from ipilab.verify.dpor import explore_dpor
from ipilab.verify.explore import Call, Config, Progress, Result, iter_steps
from ipilab.verify.full import explore
from ipilab.verify.shortest import PARALLEL_FROM
from ipilab.verify.variants import VARIANTS

SEARCHES = {
    "dpor": "one run per class of interleavings that differ only in the order of independent moves "
            "(dynamic partial-order reduction): every end state, check and IPI count of the full search",
    "full": "every reachable state",
}

RESULT_DOCS: dict[str, str] = {
    "states": "distinct states reached (shared memory + every CPU's code position and locals + functions run "
              "+ IPIs sent so far), the initial state included; with --search dpor, those its runs reached",
    "transitions": "moves taken, including those that led to a state already seen",
    "terminal_states": "states with no move left that pass every check (every program done, queues empty)",
    "ipis_min": "fewest function-call IPIs sent (one per target CPU) over all complete runs (none when the "
                "search stopped at a violation)",
    "ipis_max": "most function-call IPIs sent over all complete runs (none when the search stopped at a violation)",
    "violations": "states that break a check (lost wakeup, deadlock, a function run twice or never, a waiting "
                  "sender returning early, a CSD reused while locked); 0 when all hold; with --search dpor the "
                  "search stops at the first one, so at most 1",
    "complete": "true: every state was searched; false: the search stopped at a violation, so states, "
                "terminal_states and the IPI bounds cover only the states it reached",
    "seconds": "wall-clock time of the search (the breadth-first search for a shorter counterexample included)",
}

COUNTEREXAMPLE_DOCS: dict[str, str] = {
    "moves": "moves in the counterexample (a move: one CPU running to its next step that touches shared state, "
             "or an interrupt entry)",
    "fewest_moves": "no counterexample has fewer moves: a breadth-first search over every schedule (no reduction) "
                    "checked all with fewer; equal to `moves` when this one is a shortest",
    "shortest": "true when moves == fewest_moves: no schedule of the full search violates a check in fewer moves",
    "shortest_states": "states reached looking for a shorter counterexample (partial-order runs and the "
                       "breadth-first search)",
    "shortest_seconds": "wall-clock time spent looking for a shorter counterexample (at most --shortest-seconds)",
    "shortest_workers": "processes the breadth-first search ran in (--workers, once a depth held "
                        f"{PARALLEL_FROM:,} states; 1 when none did)",
}


def result_dict(r: Result) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(r, k) for k in RESULT_DOCS}
    out["seconds"] = round(r.seconds, 3)
    if not r.complete:
        out["ipis_min"] = out["ipis_max"] = None  # bounds over part of the runs would mislead
    out["violations_by_kind"] = dict(r.violations_by_kind)
    out["counterexample"] = None
    if r.counterexample is not None:
        steps, ftrace = [], []
        for i, (choice, what, events) in enumerate(iter_steps(r.config, r.counterexample), 1):
            lines = [format_event(e) for e in events]
            steps.append({"step": i, "cpu": choice[1], "move": choice[0], "what": what, "events": lines})
            ftrace.extend(lines)
        v = r.counterexample_violation
        out["counterexample"] = {"violation": v.kind, "message": v.message, "moves": len(steps),
                                 "fewest_moves": r.fewest_moves, "shortest": r.shortest,
                                 "shortest_states": r.shortest_states,
                                 "shortest_seconds": round(r.shortest_seconds, 3),
                                 "shortest_workers": r.shortest_workers,
                                 "docs": COUNTEREXAMPLE_DOCS, "steps": steps, "ftrace": ftrace}
    return out


def print_report(data: dict[str, Any], console: Console) -> None:
    cfg = data["config"]
    console.print(f"[bold]ipilab verify[/bold]: {cfg['cpus']} CPUs, {cfg['calls']} call(s) each, variant "
                  f"[bold]{cfg['variant']}[/bold]; every interleaving of the kernel model's atomic steps",
                  highlight=False)
    console.print(f"  search {cfg['search']}: {cfg['search_meaning']}", highlight=False)
    for cpu, prog in enumerate(cfg["programs"]):
        console.print(f"  cpu{cpu} calls: {', '.join(prog)}", highlight=False)
    kernels = data["kernels"]
    t = Table(title="exhaustive search", title_justify="left")
    t.add_column("metric")
    for name in kernels:
        t.add_column(name, justify="right")
    t.add_column("what it counts")
    for key, doc in RESULT_DOCS.items():
        cells = []
        for r in kernels.values():
            v = r[key]
            cells.append("-" if v is None else str(v).lower() if isinstance(v, bool)
                         else f"{v:.2f}" if isinstance(v, float) else f"{v:,}")
        t.add_row(key, *cells, doc)
    console.print(t)
    for name, r in kernels.items():
        if r["violations_by_kind"]:
            console.print(f"{name}: violations by kind: " + ", ".join(
                f"{k} {n:,}" for k, n in r["violations_by_kind"].items()), highlight=False)
        ce = r["counterexample"]
        if ce is None:
            continue
        console.print(f"\n[bold red]{name}: {ce['violation']}[/bold red]: {ce['message']}", highlight=False)
        if ce["shortest"]:
            how = f"a shortest counterexample ({ce['moves']} moves: every schedule of fewer was checked)"
        else:
            how = (f"a counterexample of {ce['moves']} moves, the shortest found; none has fewer than "
                   f"{ce['fewest_moves']} (every schedule of fewer was checked before --shortest-seconds ran out)")
        steps = Table(title=f"{how}, one column per CPU", title_justify="left")
        steps.add_column("#", justify="right")
        for cpu in range(cfg["cpus"]):
            steps.add_column(f"cpu{cpu}")
        for s in ce["steps"]:
            text = s["what"] + "".join(f"\n  → {line.split(': ', 1)[1]}" for line in s["events"])
            steps.add_row(str(s["step"]), *(text if c == s["cpu"] else "" for c in range(cfg["cpus"])))
        console.print(steps)
        console.print("as ftrace text (one microsecond per move; `--trace-out FILE` writes it for "
                      "`ipilab analyze`):", highlight=False)
        for line in ce["ftrace"]:
            console.print(line, highlight=False, markup=False, soft_wrap=True)


def run_verify(kernels: list[Kernel], programs: tuple[tuple[Call, ...], ...], variant: str,
               max_states: int, search: str = "dpor", progress: Callable[[str], Progress | None] | None = None,
               shortest_seconds: float | None = None, workers: int = 1) -> tuple[dict[str, Any], list[Result]]:
    """Search every kernel with the same programs and variant; the results as plain data, and as found.
    `progress(kernel name)` gives the progress callback for that kernel's search; `workers`: processes
    for the breadth-first search for a shortest counterexample."""
    smp_class = VARIANTS[variant].smp_class if variant != "none" else Smp
    search_fn = explore_dpor if search == "dpor" else explore
    results, found = {}, []
    for k in kernels:
        step = progress(k.name) if progress is not None else None
        r = search_fn(Config(k, programs, smp_class, variant), max_states=max_states, progress=step,
                      shortest_seconds=shortest_seconds, workers=workers)
        found.append(r)
        results[k.name] = result_dict(r)
    return {
        "config": {"cpus": len(programs), "calls": len(programs[0]),
                   "programs": [[str(c) for c in prog] for prog in programs], "variant": variant,
                   "search": search, "search_meaning": SEARCHES[search],
                   "calls_meaning": "many = smp_call_function_many() to every other CPU, single = "
                                    "smp_call_function_single() to the next CPU; wait = the caller waits"},
        "kernels": results,
        "violations": sum(r["violations"] for r in results.values()),
        "docs": RESULT_DOCS,
    }, found


def write_counterexample_trace(path: Path, r: Result) -> int:
    """The counterexample of `r` as ftrace text (published atomically); returns the events written."""
    with FtraceWriter(path, r.config.ncpus) as out:
        for _choice, _what, events in iter_steps(r.config, r.counterexample or []):
            for e in events:
                out(e)
    return out.count
