"""Where a cold compile of the fast engine goes: each numba function's compile, in which process, when and
for how many CPU seconds, and the compiler passes' CPU seconds summed over all of them.

It runs `warm_up()` (what `ipilab compile` and a first run do) with NUMBA_CACHE_DIR pointed at a new
empty folder, listening to numba's compile events (numba.core.event): "numba:compile" for each function
(a function's time excludes the callees compiled inside it) and "numba:run_pass" for each compiler pass
(native_lowering includes LLVM's optimisation and machine code). Times: wall seconds from the start of
this script, CPU seconds (user + system) of the process that compiled. --serial compiles everything in
this process (as before the compile was shared with a child).

    PYTHONPATH=src python3 benchmarks/compile_profile.py [--serial] [--top 12]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

T0 = time.time()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serial", action="store_true", help="compile in this process only")
    ap.add_argument("--top", type=int, default=12, help="functions listed, the longest compiles first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ipilab-numba-") as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache
        if args.serial:
            os.cpu_count = lambda: 1  # _pin_helpers then compiles on one core
        log = Path(cache) / "events.jsonl"
        _listen(log)
        from ipilab.sim.fast import run as fast_run
        t0, c0 = time.time(), time.process_time()
        fast_run.warm_up()
        wall, cpu = time.time() - t0, time.process_time() - c0
        rows = [json.loads(line) for line in log.read_text().splitlines()]
    me = os.getpid()
    funcs = [r for r in rows if r["kind"] == "function"]
    child = sorted({r["pid"] for r in funcs} - {me})
    print(f"warm_up: {wall:.2f} s wall, {cpu:.2f} s CPU in this process"
          + (f", {len(child)} child process(es) compiling too" if child else ", no child"))
    for pid in [me, *child]:
        mine = [r for r in funcs if r["pid"] == pid]
        print(f"{'this process' if pid == me else 'child':>12}: {len(mine)} functions, "
              f"{sum(r['cpu'] for r in mine):.2f} s CPU compiling, {min(r['start'] for r in mine):.2f}-"
              f"{max(r['end'] for r in mine):.2f} s")
    print(f"\n{'function':18} {'process':>8} {'start s':>8} {'end s':>7} {'CPU s':>6}")
    for r in sorted(funcs, key=lambda r: -r["cpu"])[:args.top]:
        print(f"{r['name']:18} {'this' if r['pid'] == me else 'child':>8} {r['start']:8.2f} {r['end']:7.2f} "
              f"{r['cpu']:6.2f}")
    passes: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        if r["kind"] == "pass":
            passes[r["name"]] += r["cpu"]
    print(f"\n{'compiler pass (all functions, both processes)':46} {'CPU s':>6}")
    for name, s in sorted(passes.items(), key=lambda kv: -kv[1])[:10]:
        print(f"{name:46} {s:6.2f}")
    print(f"{'all passes':46} {sum(passes.values()):6.2f}")


def _listen(log: Path) -> None:
    """Append a JSON line to `log` per function compiled (outermost time, callees compiled inside excluded)
    and per compiler pass (the same), from this process and any it forks."""
    from numba.core import event

    class Recorder(event.Listener):
        def __init__(self, kind: str) -> None:
            self.kind = kind
            self.stack: list[list[float]] = []

        def on_start(self, ev: event.Event) -> None:
            self.stack.append([time.time(), time.process_time(), 0.0])

        def on_end(self, ev: event.Event) -> None:
            t0, c0, inner = self.stack.pop()
            cpu = time.process_time() - c0
            if self.stack:
                self.stack[-1][2] += cpu
            name = (ev.data["dispatcher"].py_func.__name__ if self.kind == "function"
                    else ev.data["name"].split(" [")[0])
            with log.open("a") as f:
                f.write(json.dumps({"kind": self.kind, "pid": os.getpid(), "name": name, "start": t0 - T0,
                                    "end": time.time() - T0, "cpu": cpu - inner}) + "\n")

    event.register("numba:compile", Recorder("function"))
    event.register("numba:run_pass", Recorder("pass"))


if __name__ == "__main__":
    main()
