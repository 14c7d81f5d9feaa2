"""The replay's check on the real traces: each trace read once into two models, whole (the truth) and with
its ipi_send_* and sched_wake_idle_without_ipi lines removed (the prediction's input), then per trace the
real IPI count, v6.18's predicted count and per-call agreement, and the v4.13 and v4.12 predictions.

    PYTHONPATH=src python3 scripts/replay_real_traces.py [TRACE...]    # default: ../shared/traces/*.xz
"""

from __future__ import annotations

import sys
from pathlib import Path

from ipilab.analysis.replay import predict, read_with_and_without_decisions
from ipilab.kernel.features import resolve_kernel


def check(path: Path) -> dict[str, object]:
    full, bare = read_with_and_without_decisions(path)
    preds = {k: predict(bare, resolve_kernel(k)) for k in ("v6.18", "v4.13", "v4.12")}
    # Under kernels before shared_queue remote wakeups are no calls: no decision.
    by_line = {k: {q.lineno: p.decisions.get(q.seq) for q in bare.enqueues} for k, p in preds.items()}
    polling_traced = full.kind_counts["sched_wake_idle_without_ipi"] > 0
    window = [q for q in full.enqueues if q.seq >= full.window_start]
    decided = [q for q in window if q.real is not None and q.real.decision is not None]
    agree = sum(1 for q in decided if q.real.decision == by_line["v6.18"][q.lineno]  # type: ignore[union-attr]
                or (not polling_traced and "ipi" not in (q.real.decision, by_line["v6.18"][q.lineno])))  # type: ignore[union-attr]
    out: dict[str, object] = {"trace": path.name, "calls": len(window),
                              "real_ipis": sum(1 for q in decided if q.real.decision == "ipi")}  # type: ignore[union-attr]
    for k in preds:
        out[f"{k}_ipis"] = sum(1 for q in window if by_line[k][q.lineno] == "ipi")
    out["agreement_pct"] = 100.0 * agree / len(decided) if decided else None
    out["mismatches"] = len(decided) - agree
    return out


def main() -> None:
    here = Path(__file__).resolve()
    default = next((p / "shared" / "traces" for p in here.parents if (p / "shared" / "traces").is_dir()), None)
    paths = [Path(a) for a in sys.argv[1:]] or (sorted(default.glob("*.xz")) if default else [])
    print("| trace | calls | real IPIs | v6.18 predicted (lines removed) | difference | agreement | v4.13 | v4.12 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        r = check(path)
        diff = (r["v6.18_ipis"] - r["real_ipis"]) / r["real_ipis"] * 100 if r["real_ipis"] else 0.0  # type: ignore[operator]
        print(f"| {r['trace']} | {r['calls']:,} | {r['real_ipis']:,} | {r['v6.18_ipis']:,} | {diff:+.2f}% | "
              f"{r['agreement_pct']:.2f}% ({r['mismatches']} differ) | {r['v4.13_ipis']:,} | {r['v4.12_ipis']:,} |",
              flush=True)


if __name__ == "__main__":
    main()
