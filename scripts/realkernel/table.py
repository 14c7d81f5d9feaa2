"""The table of benchmarks/fidelity/traces/README.md: each trace audited by `ipilab analyze` (the same code as
`ipilab analyze TRACE --json`) next to what its .meta says about the run.

    PYTHONPATH=src python3 scripts/realkernel/table.py [FOLDER]     # default benchmarks/fidelity/traces
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ipilab.analysis.audit import audit_trace
from ipilab.trace.sidecar import read_sidecar, sidecar_for

HEADER = ("| file | vCPUs | workload | command | memory.max | calls queued | no IPI needed | calls per CAL interrupt "
          "| CAL/s | CAL: trace / /proc/interrupts | queue to run p50 / p99, us (flush_tlb_func) | seconds | .xz MB |")


def meta_field(text: str, key: str) -> str:
    m = re.search(rf"^# {re.escape(key)}: (.*)$", text, re.M)
    return m[1].strip() if m else "?"


def mib(limit: str) -> str:
    """memory.max as the guest printed it (bytes, or max) in MiB."""
    return f"{int(limit) >> 20} MiB" if limit.isdigit() else limit


def row(trace: Path) -> str:
    r = audit_trace(trace)
    if r["warnings"]:
        raise SystemExit(f"{trace}: analyze warns: {r['warnings'][0]}")
    meta_path = sidecar_for(trace)
    meta = meta_path.read_text()
    side = read_sidecar(meta_path)
    ncpu = len(side.deltas["CAL"]) if side else "?"
    command = meta_field(meta, "command")
    workload = command.split()[0]
    queued = r["csd_enqueues"]
    no_ipi = r["csd_no_ipi_queued"] + r["csd_no_ipi_polling"]
    seconds = r["duration_ns"] / 1e9
    cal = r["reconciliation"]["rows"]["CAL"] if r.get("reconciliation") else None
    flush = r["latency_ns"].get("flush_tlb_func")
    return (f"| {trace.name} | {ncpu} | {workload} | `{command}` | {mib(meta_field(meta, 'memory.max'))} "
            f"| {queued:,} | {no_ipi / queued:.1%} | {r['csds_per_interrupt']:.2f} "
            f"| {r['cal_interrupts'] / seconds:,.0f} "
            f"| {cal['trace']:,} / {cal['proc_interrupts']:,} | "
            + (f"{flush['p50'] / 1000:,.0f} / {flush['p99'] / 1000:,.0f}" if flush else "-")
            + f" | {seconds:.1f} | {trace.stat().st_size / 1e6:.2f} |")


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("benchmarks/fidelity/traces")
    traces = sorted(folder.glob("*.trace.xz"), key=lambda p: (int(re.sub(r"\D.*", "", p.name[4:]) or 0), p.name))
    print(HEADER)
    print("|" + "---|" * HEADER.count(" |"))
    for trace in traces:
        print(row(trace), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
