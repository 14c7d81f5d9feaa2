"""Simulated runs written as ftrace text: they parse back, agree with the results, and appear atomically."""

from __future__ import annotations

import dataclasses
import lzma
import re
from pathlib import Path

import pytest
from conftest import SHARED_TRACES
from hypothesis import given
from hypothesis import strategies as st

from ipilab.events import Event
from ipilab.kernel.features import resolve_kernel
from ipilab.machine.model import load_machine
from ipilab.sim.engine import Engine
from ipilab.sim.machine import SimMachine
from ipilab.sim.run import simulate
from ipilab.trace.ftrace import format_cpumask, format_event, parse_cpumask
from ipilab.trace.read import ReadStats, read_trace
from ipilab.workloads import workload_from_settings
from ipilab.workloads.synthetic import Synthetic

# An independent reading of one ftrace event line: `... [CPU] FLAGS SECS.USECS: NAME: FIELDS`.
EVENT_LINE = re.compile(r"\[\d+\]\s+\S+\s+\d+\.\d{6}: (\w+): (.*)$")
CPUMASK = re.compile(r"cpumask=([0-9a-f,]+)")


def body_lines(path: Path) -> list[str]:
    """The event lines of a trace file: everything but the `#` header and blank lines."""
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tally(lines: list[str]) -> dict[str, int]:
    """Count events per name, plus `ipi_cpus`: CPUs reached by ipi_send_cpu and ipi_send_cpumask lines."""
    counts: dict[str, int] = {"ipi_cpus": 0}
    for line in lines:
        m = EVENT_LINE.search(line)
        assert m, f"not an event line: {line!r}"
        name = m[1]
        counts[name] = counts.get(name, 0) + 1
        if name == "ipi_send_cpu":
            counts["ipi_cpus"] += 1
        elif name == "ipi_send_cpumask":
            mask = CPUMASK.search(m[2])
            assert mask, line
            counts["ipi_cpus"] += int(mask[1].replace(",", ""), 16).bit_count()
    return counts


def run(tmp_path: Path, machine: str, kernel: str, workload: str, settings: dict[str, str], seconds: float,
        seed: int = 1) -> tuple[dict, Path]:
    out = tmp_path / f"{machine}-{kernel}-{workload}.trace"
    result = simulate(load_machine(machine), resolve_kernel(kernel), workload_from_settings(workload, settings),
                      seconds=seconds, seed=seed, trace_out=out)
    return result, out


# --- round trip -----------------------------------------------------------------------------------------

def test_written_trace_round_trips_and_matches_the_simulator(tmp_path: Path) -> None:
    """A written trace re-formats to identical lines and parses to the simulator's own events (ts in µs)."""
    machine, kernel = load_machine("vm-2cpu"), resolve_kernel("v6.18")
    settings = {"senders": "0", "others": "idle"}  # CPU 1 idles: cpu_idle and halted-CPU paths too
    seconds, seed = 0.002, 7
    result, path = run(tmp_path, "vm-2cpu", "v6.18", "synthetic", settings, seconds, seed)

    lines = body_lines(path)
    events = list(read_trace(path))
    assert len(events) == len(lines) > 0
    assert [format_event(ev) for ev in events] == lines
    assert f"entries-in-buffer/entries-written: {len(lines)}/{len(lines)}   #P:2" in path.read_text()

    captured: list[Event] = []
    sim = SimMachine(machine, kernel, Engine(), tracer=captured.append)
    workload_from_settings("synthetic", settings).start(sim, seed)
    sim.engine.run(result["sim_ns"])
    truncated = [dataclasses.replace(ev, ts=ev.ts // 1000 * 1000) for ev in captured]
    assert events == truncated
    assert {ev.name for ev in events} >= {"csd_queue_cpu", "ipi_send_cpu", "call_function_single_entry",
                                          "csd_function_entry", "cpu_idle"}


@pytest.mark.parametrize(("machine", "kernel", "workload", "settings", "seconds"), [
    ("vm-2cpu", "v4.12", "synthetic", {}, 0.003),
    ("vm-2cpu", "v4.13", "synthetic", {}, 0.003),
    ("vm-2cpu", "v6.18", "synthetic", {"others": "idle"}, 0.003),
    ("broadwell-ep-2s-88t", "v4.12", "tlbstorm", {"cpus": "0-15"}, 0.0003),
    ("broadwell-ep-2s-88t", "v4.13", "tlbstorm", {"cpus": "0-15"}, 0.0003),
    # A window that closes while CPUs are inside llist_add(): csd_queue_cpu lines stamped exactly at the
    # window end must still be counted in csd_enqueues (they once were not).
    pytest.param("broadwell-ep-2s-88t", "v4.13", "tlbstorm", {"cpus": "0-15"}, 0.000333,
                 id="window-ends-inside-llist_add"),
])
def test_trace_counts_agree_with_result(tmp_path: Path, machine: str, kernel: str, workload: str,
                                        settings: dict[str, str], seconds: float) -> None:
    """Counting the raw trace lines gives the result's csd_enqueues, ipis_sent and cal_interrupts."""
    result, path = run(tmp_path, machine, kernel, workload, settings, seconds)
    counts = tally(body_lines(path))
    assert result["csd_enqueues"] > 0
    assert counts.get("csd_queue_cpu", 0) == result["csd_enqueues"]
    assert counts["ipi_cpus"] == result["ipis_sent"]
    assert (counts.get("call_function_entry", 0) + counts.get("call_function_single_entry", 0)
            == result["cal_interrupts"])


# --- cpumasks -------------------------------------------------------------------------------------------

@given(st.sets(st.integers(min_value=0, max_value=255)))
def test_cpumask_format_parse_round_trip(cpus: set[int]) -> None:
    """parse_cpumask(format_cpumask(mask)) gives back the same CPUs, sorted, for masks of up to 256 CPUs."""
    assert parse_cpumask(format_cpumask(tuple(sorted(cpus)))) == tuple(sorted(cpus))


def test_cpumask_hand_cases() -> None:
    """The kernel's %*pb layout: 32-bit hex words, most significant first, at least two words."""
    assert format_cpumask((0, 1, 3)) == "00000000,0000000b"
    assert format_cpumask((32,)) == "00000001,00000000"
    assert parse_cpumask("00000000,0000000b") == (0, 1, 3)
    assert parse_cpumask("00000001,00000000") == (32,)


# --- real traces and bad input --------------------------------------------------------------------------

def test_read_real_kernel_trace(tmp_path: Path) -> None:
    """read_ftrace reads a real Linux 6.18 trace and finds every csd_queue_cpu line a grep would."""
    xz = SHARED_TRACES / "madvise-threads.trace.xz"
    if not xz.is_file():
        pytest.skip(f"real trace not found at {xz} (shared/ must sit next to the repository clone)")
    path = tmp_path / "madvise-threads.trace"
    with lzma.open(xz, "rt") as src:
        path.write_text(src.read())
    grep_count = sum(" csd_queue_cpu: " in line for line in path.read_text().splitlines())
    events = list(read_trace(path))
    assert grep_count > 0
    assert sum(ev.name == "csd_queue_cpu" for ev in events) == grep_count


@pytest.mark.parametrize("bad", [
    "this is not an ftrace line",
    "         python3-1000    [001] d..1.     0.000200: csd_queue_cpu: cpu=one callsite=x+0x0/0x0 func=f "
    "csd=ffff888100000040",
], ids=["garbage", "bad-field-value"])
def test_malformed_line_is_a_warning_naming_file_and_line(tmp_path: Path, bad: str) -> None:
    """A malformed line in the middle of a trace is reported with its file and line; the rest is read."""
    good = [format_event(Event(1000 * i, 0, "call_function_single_entry", fields={"vector": 251}))
            for i in range(1, 6)]
    path = tmp_path / "broken.trace"
    path.write_text("# tracer: nop\n#\n" + "\n".join([*good[:3], bad, *good[3:]]) + "\n")
    bad_lineno = 2 + 3 + 1  # two header lines, three good events, then the bad one
    stats = ReadStats()
    events = list(read_trace(path, stats))
    assert len(events) == 5
    assert [str(w) for w in stats.warnings] == [f"{path}:{bad_lineno}: {stats.warnings[0].message}"]
    assert stats.bad_lines == 1


# --- atomic writing -------------------------------------------------------------------------------------

class Boom(RuntimeError):
    pass


def _raise_in_start(self: Synthetic, sim: SimMachine, seed: int) -> None:
    raise Boom("workload failed to start")


def _raise_mid_run(original):
    def start(self: Synthetic, sim: SimMachine, seed: int) -> None:
        original(self, sim, seed)

        def explode() -> None:
            raise Boom("failed mid-run")

        sim.engine.at(500_000, explode)  # after 0.5 ms of simulated (and traced) work

    return start


@pytest.mark.parametrize("when", ["in-start", "mid-run"])
def test_failed_run_leaves_no_trace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """If the simulation raises after the writer was created, neither the trace nor a temp file is left."""
    start = _raise_in_start if when == "in-start" else _raise_mid_run(Synthetic.start)
    monkeypatch.setattr(Synthetic, "start", start)
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "run.trace"
    with pytest.raises(Boom):  # the reference engine: the one that runs the patched Synthetic.start
        simulate(load_machine("vm-2cpu"), resolve_kernel("v6.18"), workload_from_settings("synthetic", {}),
                 seconds=0.002, seed=1, trace_out=target, engine="reference")
    assert not target.exists()
    assert list(folder.iterdir()) == []
