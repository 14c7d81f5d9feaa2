"""The real-kernel traces of benchmarks/fidelity/traces (scripts/realkernel/capture.py made them) are what the
fidelity table is measured on: each must read cleanly, and its sidecar must describe the same machine and agree
with the trace on what the kernel counted itself (/proc/interrupts)."""

from __future__ import annotations

import base64
import gzip
import importlib.util
import lzma
import re
from pathlib import Path
from types import ModuleType

import pytest

from ipilab.analysis.audit import audit_trace
from ipilab.trace.sidecar import read_machine_facts, read_sidecar, sidecar_for

TRACES = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity" / "traces").glob("*.trace.xz"))


def test_the_traces_are_there() -> None:
    assert TRACES, "benchmarks/fidelity/traces holds no *.trace.xz"


def header_cpus(trace: Path) -> int:
    """The CPU count ftrace writes in the trace's header (`#P:4`)."""
    with lzma.open(trace, "rt") as f:
        for line in f:
            if not line.startswith("#"):
                break
            m = re.search(r"#P:(\d+)", line)
            if m:
                return int(m[1])
    raise AssertionError(f"{trace.name}: no #P: header")


@pytest.mark.parametrize("trace", TRACES, ids=[t.name for t in TRACES])
def test_trace_reads_cleanly_and_agrees_with_its_sidecar(trace: Path) -> None:
    result = audit_trace(trace)
    assert result["warnings"] == [] and result["bad_lines"] == 0
    assert result["csd_enqueues"] > 1000  # a workload ran: calls were queued

    meta = sidecar_for(trace)
    side = read_sidecar(meta)
    assert side is not None, f"{meta.name} does not parse"
    assert side.lost == 0  # nothing overwritten in the ring buffer, so the trace holds every event

    # One CPU count from three sources: ftrace's header, /proc/interrupts' columns, the guest's topology lines.
    ncpu = header_cpus(trace)
    assert {row: len(d) for row, d in side.deltas.items()} == dict.fromkeys(("CAL", "RES", "TLB"), ncpu)
    facts = read_machine_facts(meta)
    assert facts is not None and [c.cpu for c in facts.cpus] == list(range(ncpu))
    assert all(0 <= int(cpu) < ncpu for cpu in result["per_cpu"])

    # The /proc/interrupts snapshots are taken just before tracing starts and just after it stops, so per CPU
    # the kernel's own count of function-call interrupts is at least the trace's and only a little above it.
    traced = {int(cpu): c["cal_interrupts"] for cpu, c in result["per_cpu"].items()}
    for cpu, counted in enumerate(side.deltas["CAL"]):
        assert traced.get(cpu, 0) <= counted <= traced.get(cpu, 0) + 20, f"CPU {cpu}"


def load_harness() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "realkernel" / "capture.py"
    spec = importlib.util.spec_from_file_location("realkernel_capture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_what_the_guest_sends_becomes_a_sidecar_the_reader_takes(tmp_path: Path) -> None:
    """The guest's serial output, made by hand: 2 CPUs, CAL going 10,20 -> 15,27 and 3+4 overruns."""
    harness = load_harness()
    trace = b"# tracer: nop\n#P:2\n"
    encoded = base64.b64encode(gzip.compress(trace)).decode()
    guest = "\n".join([
        "[    1.0] a console line that is no field", "@@ memory.max max", "@@ uname 6.12.95-test",
        "@@ cmdline console=ttyS0", "@@ cpu 1 package 0 core 1 siblings 1", "@@ cpu 0 package 0 core 0 siblings 0",
        "@@ numa node0 cpus 0-1", "@@ cpuidle none", "@@ clocksource tsc",
        "@@ before CAL: 10 20 Function call interrupts", "@@ before TLB: 0 0 TLB shootdowns",
        "@@ after CAL: 15 27 Function call interrupts", "@@ after TLB: 1 2 TLB shootdowns",
        "@@ uptime 10.00 12.50", "@@ status 0", "@@ output done", "@@ lost 3 4",
        "@@ trace-begin", encoded, "@@ trace-end", ""])
    fields, got = harness.parse_guest(guest, tmp_path / "console.log")
    assert got == trace
    meta = tmp_path / "x.meta"
    meta.write_text(harness.sidecar_text(fields, "tlbstorm 2 1 1", 2, "pkg 1", "QEMU 7.2", 1.0, []))
    side = read_sidecar(meta)
    assert side is not None and side.deltas == {"CAL": [5, 7], "TLB": [1, 2]} and side.lost == 7
    text = meta.read_text()
    assert "# seconds: 2.500\n" in text and "# cpu 0: package 0 core 0 siblings 0\n# cpu 1:" in text

    garbled = guest.replace("@@ trace-begin\n", "@@ trace-begin\n!!!!\n")  # a character no base64 has
    cut = guest.replace(encoded[-8:] + "\n", "\n")  # the end of the gzip stream lost
    assert cut != guest
    for damaged in (garbled, cut):
        with pytest.raises(harness.Failure, match="damaged"):
            harness.parse_guest(damaged, tmp_path / "console.log")
    with pytest.raises(harness.Failure, match="stopped before sending its trace"):
        harness.parse_guest(guest.split("@@ trace-begin")[0], tmp_path / "console.log")
