"""The `ipilab` command line."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ipilab import __version__
from ipilab.analysis.audit import GROUP_KEYS, audit_trace
from ipilab.analysis.fastaudit import audit_block
from ipilab.analysis.plots import plot_seed
from ipilab.analysis.render import TOP_COLUMNS, counts_table, print_audit, print_calibration, print_replay, top_table
from ipilab.analysis.replay import POLL_CLEAR_NS, replay_trace
from ipilab.compiled import in_cache
from ipilab.cpulist import CpuListError, parse_cpulist
from ipilab.kernel.features import FEATURES, VERSIONS, KernelSpecError, resolve_kernel
from ipilab.kernel.x86 import APIC_MODES
from ipilab.machine.calibrate import FLUSH_KINDS, CalibrateError, output_name, sample_trace
from ipilab.machine.calibrate import calibrate as run_calibrate
from ipilab.machine.model import (
    ALL_COST_FIELDS,
    MAX_COST_NS,
    MAX_MACHINE_CPUS,
    MachineError,
    load_machine,
    preset_names,
)
from ipilab.orchestration.closedloop import closed_loop
from ipilab.orchestration.runconfig import BACKGROUND_KEYS, MACHINE_KEYS, TOPOLOGY_KEYS, build_run, parse_pairs
from ipilab.report import ReportError, write_report
from ipilab.reproduce import seed as seed_exp
from ipilab.reproduce.render import (
    print_ablation,
    print_absolute,
    print_costs,
    print_seed,
    print_sensitivity,
    print_spread,
)
from ipilab.sim.fast.run import COMPILE_SECONDS_2CORE, engine_cached, unsupported, warm_up
from ipilab.sim.run import MAX_SECONDS, METRIC_DOCS, simulate
from ipilab.sweep import run as sweep_run
from ipilab.sweep.spec import SpecError, expand, load_spec
from ipilab.sweep.store import ResultStore, StoreError
from ipilab.trace.capture import CALIBRATE_EVENTS, EVENT_SETS, CaptureError, Stopped, capture
from ipilab.trace.fastparse import parse_block
from ipilab.trace.perfetto import window, write_timeline
from ipilab.trace.read import ReadStats, TraceFormatError, read_trace
from ipilab.trace.top import TOP_DOCS, top
from ipilab.validation import ConfigError, first_error
from ipilab.verify.explore import CALL_KINDS, MAX_CALLS, MAX_CPUS, Call, Config, StateLimitError, default_programs
from ipilab.verify.explore import Progress as SearchProgress
from ipilab.verify.promela import PromelaError, promela_model, write_promela
from ipilab.verify.report import print_report, run_verify, write_counterexample_trace
from ipilab.verify.shortest import PARALLEL_FROM as _SHORTEST_PARALLEL_FROM
from ipilab.verify.shortest import default_workers
from ipilab.verify.variants import VARIANTS
from ipilab.workloads import WORKLOADS, workload_from_settings

console = Console()
TRACE_COMPILE_SECONDS_2CORE = 15  # a cold compile of trace/fastparse.py and analysis/fastaudit.py on our 2-core VM


def fail(message: str) -> None:
    """A user error: one line on stderr, exit code 2, no traceback."""
    click.echo(f"ipilab: error: {message}", err=True)
    sys.exit(2)


def note_stale(instances: list[Path]) -> None:
    for inst in instances:
        click.echo(f"ipilab: note: the tracefs instance {inst} belongs to no process here (a capture killed with "
                   f"SIGKILL, or one in another PID namespace); if it is a leftover, free it: rmdir {inst}", err=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def warm_fast_engine() -> float:
    """Compile the fast engine now if numba's cache lacks it, saying what, why and for how long on stderr
    (stdout stays clean for --json), with a spinner and the time so far when stderr is a terminal. A cached
    engine is left for the run to load (about a second) without a word. Returns the seconds it compiled."""
    if engine_cached():
        return 0.0
    click.echo(f"ipilab: compiling the fast simulation engine (numba) because its cache is empty or older than "
               f"this install; this happens once, later runs load it in about a second. It takes about "
               f"{COMPILE_SECONDS_2CORE} s on 2 idle cores (`ipilab compile` does it ahead).", err=True)
    with Progress(SpinnerColumn(), TextColumn("compiling the fast engine"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        bar.add_task("compile", total=None)
        seconds = warm_up()
    click.echo(f"ipilab: compiled in {seconds:.1f} s (host wall time), cached for later runs", err=True)
    return seconds


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog="Docs: docs/README.md")
@click.version_option(__version__, prog_name="ipilab")
def main() -> None:
    """Model, measure and verify the Linux kernel's cross-CPU function calls and the IPIs they send.

    Start with `ipilab reproduce seed` (the 2017 patch that stopped needless IPIs), or simulate your own
    question with `ipilab simulate`. `ipilab kernels` and `ipilab machines` list what the model knows.

    simulate, export --from-sim, reproduce seed and sweep ([base.set], [vary]) take the same `--set KEY=VALUE`
    settings: a field of the workload, a machine field (topology, background interrupts, spread) or a machine
    cost in whole ns; `ipilab simulate --help` lists them. simulate and export also take `--cost NAME=NS`.
    """


@main.command(epilog="Docs: docs/kernels.md")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def kernels(as_json: bool) -> None:
    """Kernel versions the model knows, as sets of behaviours with the commits that introduced them.

    Compose a what-if kernel with +/-: `--kernel v4.12+coalesce_many`, or a TOML file with
    `base`, `add`, `remove`.
    """
    if as_json:
        emit_json({
            "features": {f.name: {"summary": f.summary, "commit": f.commit, "release": f.release}
                         for f in FEATURES.values()},
            "versions": {v.name: {"description": v.description, "features": sorted(v.features)}
                         for v in VERSIONS.values()},
        })
        return
    table = Table(title="kernel versions (x = has the behaviour)")
    table.add_column("behaviour")
    table.add_column("since")
    for v in VERSIONS.values():
        table.add_column(v.name, justify="center")
    for f in FEATURES.values():
        table.add_row(f.name, f.release, *("x" if f.name in v.features else "" for v in VERSIONS.values()))
    console.print(table)
    for f in FEATURES.values():
        console.print(f"[bold]{f.name}[/bold] ({f.release}, {f.commit}): {f.summary}", highlight=False)


@main.command(epilog="Docs: docs/machines.md")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def machines(as_json: bool) -> None:
    """Machine presets: topology and the cost of every operation, each with its source."""
    loaded = [load_machine(name) for name in preset_names()]
    if as_json:
        emit_json({m.name: {**m.model_dump(exclude_none=True), "ncpus": m.ncpus, "cost_meanings": ALL_COST_FIELDS}
                   for m in loaded})
        return
    for m in loaded:
        t = m.topology
        console.print(f"[bold]{m.name}[/bold]: {m.description}", highlight=False)
        console.print(f"  {t.sockets} socket(s) x {t.cores_per_socket} cores x {t.threads_per_core} threads "
                      f"= {m.ncpus} CPUs, {t.numa_nodes} NUMA node(s), LLC {t.llc_mb_per_socket:g} MB/socket, "
                      f"APIC {t.apic_mode}, halt-poll {t.halt_poll_ns} ns; {t.cpu_model}", highlight=False)
        table = Table(show_header=True, expand=True)
        table.add_column("cost", no_wrap=True)
        table.add_column("ns (each use draws anew from a distribution)", justify="right")
        table.add_column("source", ratio=1)
        for key, cost in m.costs.items():
            table.add_row(key, cost.describe(), cost.source)
        console.print(table)
        bg = m.background
        console.print(f"  background: timer tick {bg.tick_hz} Hz per busy CPU ({bg.source}); `--set tick_hz=250` "
                      "turns it on", highlight=False)


def cpus_option(text: str | None) -> set[int] | None:
    """--cpus: a kernel CPU list (0-3,8), or None when not given."""
    if text is None:
        return None
    try:
        return set(parse_cpulist(text, 1 << 16, "--cpus"))
    except CpuListError:
        fail(f"--cpus: {text!r} is not a CPU list like 0-3,8")


SET_HELP = (
    "A setting (repeatable), by its key: a field of the workload (each workload's are listed below); a machine "
    f"topology field ({', '.join(TOPOLOGY_KEYS)}; cores_per_socket=8; {MAX_MACHINE_CPUS:,} CPUs at most); a "
    f"background field ({', '.join(BACKGROUND_KEYS)}: tick_hz=250 turns on the timer tick's interrupts); "
    "spread=R (every constant cost becomes lognormal with p90 = R x median); or a machine cost in whole ns "
    "(icr_write=150; `ipilab machines` lists them). A key that is both a workload field and a machine field or "
    "cost is refused.")
COST_HELP = (f"A machine cost in whole nanoseconds (repeatable), 0 to {MAX_COST_NS:,}: as `--set NAME=NS`, but "
             "costs only; where both give the same cost, --cost wins.")


@main.command(epilog="Docs: docs/simulate.md")
@click.option("--machine", "-m", default="vm-2cpu", show_default=True,
              help="A preset (`ipilab machines`) or a machine TOML file.")
@click.option("--kernel", "-k", default="v6.18", show_default=True,
              help="A version (`ipilab kernels`), a what-if like v4.12+coalesce_many, or a TOML file.")
@click.option("--workload", "-w", default="synthetic", show_default=True,
              type=click.Choice(sorted(WORKLOADS)), help="What drives the calls.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--cost", "costs", multiple=True, metavar="NAME=NS", help=COST_HELP)
@click.option("--seconds", "-s", type=float, default=0.01, show_default=True,
              help=f"Simulated window in seconds (up to {MAX_SECONDS:g}).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="Random seed: the same seed gives the same result, bit for bit.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--trace-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the simulated run as ftrace text (the kernel's own format).")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default=None,
              help="fast: compiled (numba); reference: the readable Python one. Both give the same events and "
                   "results. Default: fast where it covers the workload (swap-w-seq-mt, synthetic), else reference.")
def simulate_cmd(machine: str, kernel: str, workload: str, settings: tuple[str, ...], costs: tuple[str, ...],
                 seconds: float, seed: int, as_json: bool, trace_out: Path | None, engine: str | None) -> None:
    """Run one simulation of a machine, a kernel and a workload.

    \b
    Workload parameters (--set):
    """
    try:
        run = build_run(machine, kernel, workload, parse_pairs(settings), costs=parse_pairs(costs, "--cost"),
                        seconds=seconds, seed=seed, engine=engine or "auto")
        if trace_out is not None and not trace_out.resolve().parent.is_dir():
            fail(f"--trace-out: folder {trace_out.parent} does not exist")
        if engine is None and run.engine == "reference" and not as_json:
            console.print(f"note: {unsupported(run.machine, run.kernel, run.workload)}: using the reference engine",
                          highlight=False)
        compiled = warm_fast_engine() if run.engine == "fast" else 0.0
        result = run.simulate(trace_out)
        # The compile ran before simulate(), to say so first; it is still this run's.
        result["compile_seconds"] = round(result["compile_seconds"] + compiled, 3)
    except ConfigError as e:
        fail(str(e))
    if as_json:
        emit_json(result)
    else:
        print_result(result)


simulate_cmd.name = "simulate"
simulate_cmd.help = (simulate_cmd.help or "") + "\n".join(
    f"\b\n  {w.name}: {w.summary}\n" + "\n".join(
        f"    {name} ({'required' if f.is_required() else f'default {f.default!r}'}): {f.description}"
        for name, f in w.model_fields.items())
    for w in WORKLOADS.values())


def print_result(r: dict[str, Any]) -> None:
    console.print(f"[bold]{r['workload']['name']}[/bold] on [bold]{r['machine']}[/bold] under kernel "
                  f"[bold]{r['kernel']}[/bold]: {r['sim_seconds'] * 1e3:g} ms simulated in "
                  f"{r['wall_seconds']:.2f} s by the {r['engine']} engine (seed {r['seed']})", highlight=False)
    table = counts_table(METRIC_DOCS, r, r["sim_seconds"], rate="per sim. second")
    console.print(table)
    lat = r["wait_latency_ns"]
    if lat["count"]:
        console.print(f"sender wait latency (call entry to return, ns): p50 {lat['p50']:,}  p90 {lat['p90']:,}  "
                      f"p99 {lat['p99']:,}  max {lat['max']:,}  over {lat['count']:,} calls (percentiles to "
                      "within 1/128, rounded down)", highlight=False)
    busiest = sorted(r["per_cpu"], key=lambda c: -c["irq_ns"])[:8]
    console.print("time in function-call interrupt handlers, busiest CPUs: " + ", ".join(
        f"cpu{c['cpu']} {c['irq_fraction'] * 100:.2f}%" for c in busiest), highlight=False)
    console.print("costs: `ipilab machines` lists every machine cost with its source.", highlight=False)
    if r["trace_out"]:
        console.print(f"trace written to {r['trace_out']}", highlight=False)


@main.command(context_settings={"ignore_unknown_options": True}, epilog="Docs: docs/capture.md")
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Trace file to write (.xz, .gz or .zst compress it); NAME.meta beside it gets the sidecar.")
@click.option("--duration", type=click.FloatRange(0, 86400), default=None,
              help="Record this many seconds instead of running a command.")
@click.option("--events", type=click.Choice(sorted(EVENT_SETS)), default="calibrate", show_default=True,
              help="ipi: calls, IPIs and handlers; replay: also sched_switch, cpu_idle and halt-poll; calibrate: "
                   "also the timer tick, user page faults and madvise, where the kernel has them (page faults "
                   "can fill the buffer on a long run: watch for the lost-events warning, or use replay).")
@click.option("--buffer-kb", type=click.IntRange(64, 4 << 20), default=16384, show_default=True,
              help="Ring buffer per CPU of the capture's own tracefs instance.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def capture_cmd(out: Path, duration: float | None, events: str, buffer_kb: int, command: tuple[str, ...]) -> None:
    """Record the cross-call and IPI tracepoints while COMMAND runs (root): `ipilab capture -o run.trace --
    make -j2`.

    Records into a tracefs instance of its own (instances/ipilab-PID), so the global trace buffer, its
    events, tracer, buffer size and tracing_on, which another tracer may be using, are never touched.
    Mounts tracefs if needed, enables the events there, runs the command (or waits --duration seconds),
    and writes the trace plus a sidecar with the CAL, RES and TLB rows of /proc/interrupts before and after
    and the ring buffer's overruns, and the machine a calibration needs (sockets, cores, SMT siblings and
    NUMA node of each CPU, kernel, cmdline, cpuidle driver, clocksource, trace clock, events missing).
    The instance is removed however capture ends: the command fails, Ctrl-C, SIGTERM, SIGHUP, an error.
    Then: `ipilab analyze run.trace`.
    """
    if bool(command) == (duration is not None):
        fail("give either a command after -- or --duration, not both or neither")
    if not out.resolve().parent.is_dir():
        fail(f"--output: folder {out.parent} does not exist")
    try:
        result = capture(out, list(command) or None, duration, events, buffer_kb)
    except CaptureError as e:
        fail(str(e))
    except KeyboardInterrupt:
        click.echo(f"ipilab: interrupted; what was recorded is in {out}; the tracefs instance is removed", err=True)
        sys.exit(130)
    except Stopped as e:
        click.echo(f"ipilab: stopped by {e}; what was recorded is in {out}; the tracefs instance is removed",
                   err=True)
        sys.exit(128 + e.signum)
    note_stale(result.stale)
    for event in result.events_missing:
        if event in CALIBRATE_EVENTS:
            click.echo(f"ipilab: note: this kernel has no {event} event; recorded without it (noted in "
                       f"{result.sidecar.name})", err=True)
        else:
            click.echo(f"ipilab: warning: this kernel has no {event} event; recorded without it", err=True)
    if result.lost:
        click.echo(f"ipilab: warning: {result.lost:,} events were lost (ring buffer overrun): raise --buffer-kb",
                   err=True)
    click.echo(f"wrote {result.trace} and {result.sidecar} ({result.seconds:.2f} s recorded)", err=True)
    if result.returncode:
        if result.returncode < 0:  # killed by a signal: the shell's convention
            click.echo(f"ipilab: the command was killed by signal {-result.returncode}", err=True)
            sys.exit(128 - result.returncode)
        click.echo(f"ipilab: the command exited with status {result.returncode}", err=True)
        sys.exit(result.returncode)


capture_cmd.name = "capture"


@main.command("top", epilog="Docs: docs/top.md")
@click.option("--cpus", "cpus_text", metavar="LIST",
              help="Only calls to these target CPUs (a cpulist such as 2-3,6): watch isolated CPUs.")
@click.option("--duration", type=click.FloatRange(0.1, 86400), default=None,
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--interval", type=click.FloatRange(0.1, 60), default=1.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object a line per interval, then one with the whole window's audit (as analyze's).")
@click.option("--output", "-o", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Keep what it saw as a trace `analyze` reads (.xz, .gz or .zst compress it), with its sidecar.")
@click.option("--senders", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Top senders (task and callsite) shown per target CPU.")
def top_cmd(cpus_text: str | None, duration: float | None, interval: float, as_json: bool, out: Path | None,
            senders: int) -> None:
    """A live per-CPU view of the cross-CPU calls and IPIs each CPU receives (root), refreshed every second.

    Per target CPU, over the last interval: calls queued on it, the function-call IPIs they needed, the
    calls that needed none (its queue already waited for an IPI, or it was polling idle), the function-call
    and reschedule interrupts it took, the calls it ran; and its top senders (task and callsite) since the
    start. It records into a tracefs instance of its own (another tracer is not disturbed) and counts with
    analyze's audit; Ctrl-C stops it (exit 0), and Ctrl-C, SIGTERM or any error removes the instance.
    `-o run.trace` keeps every event it read: `ipilab analyze run.trace` then counts the same.
    """
    cpus = cpus_option(cpus_text)
    if out is not None and not out.resolve().parent.is_dir():
        fail(f"--output: folder {out.parent} does not exist")
    console = Console(highlight=False)
    live = None

    def show(iv: Any) -> None:
        if as_json:
            click.echo(json.dumps(iv.as_json()))
            sys.stdout.flush()
        elif live is not None:
            live.update(top_table(iv, senders), refresh=True)
        else:
            console.print(top_table(iv, senders))

    try:
        if not as_json and console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                result = top(interval, duration, cpus, out, show, senders)
        else:
            result = top(interval, duration, cpus, out, show, senders)
    except CaptureError as e:
        fail(str(e))
    except Stopped as e:
        click.echo(f"ipilab: stopped by {e}; the tracefs instance is removed", err=True)
        sys.exit(128 + e.signum)
    except BrokenPipeError:  # whoever read our output is gone (`ipilab top --json | head -3`): so are we
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    note_stale(result.stale)
    for event in result.events_missing:
        click.echo(f"ipilab: warning: this kernel has no {event} event; watched without it", err=True)
    for w in result.stats.warnings:
        click.echo(f"ipilab: warning: {w}", err=True)
    if result.lost:
        click.echo(f"ipilab: warning: {result.lost:,} events were lost (ring buffer overrun); the counts miss them",
                   err=True)
    r = result.total
    if as_json:
        click.echo(json.dumps({"total": r, "seconds": round(result.seconds, 3), "lost_events": result.lost,
                               "trace": str(result.trace) if result.trace else None, "docs": TOP_DOCS}))
    else:
        console.print(f"watched {result.seconds:.1f} s: {r['csd_enqueues']:,} calls queued, {r['csd_ipis']:,} "
                      f"function-call IPIs, {r['csd_no_ipi_queued']:,} + {r['csd_no_ipi_polling']:,} calls needed "
                      f"none (queue waiting + polling), {r['cal_interrupts']:,} CAL and "
                      f"{r['reschedule_interrupts']:,} RES interrupts"
                      + (f" on CPUs {cpus_text}" if cpus_text else ""))
        console.print("columns: " + "; ".join(f"{name}: {TOP_DOCS[k]}" for k, name in TOP_COLUMNS))
    if result.trace is not None:
        click.echo(f"wrote {result.trace} and {result.sidecar}: ipilab analyze {result.trace}", err=True)


@main.command(epilog="Docs: docs/analyze.md")
@click.argument("traces", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--by", type=click.Choice(GROUP_KEYS), default="callsite", show_default=True,
              help="Group the queued calls by this in the table (--json has every grouping).")
@click.option("--cpus", "cpus_text", metavar="LIST",
              help="Only calls to these target CPUs (a cpulist such as 2-3,6): the isolated-CPU question.")
@click.option("--parquet", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the events read as a Parquet table (one trace only).")
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Senders listed per target CPU.")
def analyze(traces: tuple[Path, ...], as_json: bool, by: str, cpus_text: str | None, parquet: Path | None,
            top: int) -> None:
    """Audit the IPIs in real (or simulated) traces: who queues calls on which CPU, which IPIs were needed,
    how long the calls waited.

    A call's wait runs from its csd_queue_cpu to the csd_function_entry on its target that ran it, found by
    the kernel's queue rules (the replay's queue model): a flush runs everything queued before it; one
    sched_ttwu_pending call runs a whole batch of remote wakeups. Times print in microseconds to the
    trace's timestamp resolution (stated); shorter than that prints as "< 1 us".

    Reads ftrace `trace` text, `perf script` text and `trace-cmd report` text, recognised by their lines,
    plain or compressed (.xz, .gz, .zst), and trace.dat (trace-cmd record) and perf.data (perf record),
    recognised by their magic bytes and printed by the installed trace-cmd or perf (Debian packages
    trace-cmd, linux-perf). It streams: memory stays flat however long the trace. Bad lines are reported
    with file and line and skipped. A sidecar NAME.meta beside the trace (as `ipilab capture` writes)
    adds a reconciliation with /proc/interrupts.
    """
    cpus = cpus_option(cpus_text)
    if parquet is not None and len(traces) > 1:
        fail("--parquet takes one trace at a time")
    if parquet is not None and not parquet.resolve().parent.is_dir():
        fail(f"--parquet: folder {parquet.parent} does not exist")
    if not (in_cache(parse_block) and in_cache(audit_block)):
        click.echo(f"ipilab: compiling the trace parser and audit (numba) because their cache is empty or older "
                   f"than this install; this happens once and takes about {TRACE_COMPILE_SECONDS_2CORE} s on 2 "
                   f"idle cores (`ipilab compile` does it ahead).", err=True)
    results = []
    for path in traces:
        if not path.exists():
            fail(f"{path}: no such file")
        try:
            with _progress(as_json) as step:
                results.append(audit_trace(path, cpus=cpus, parquet=parquet,
                                           progress=step(f"reading {path.name}")))
        except TraceFormatError as e:
            fail(str(e))
        r = results[-1]
        for w in r["warnings"]:
            click.echo(f"ipilab: warning: {w}", err=True)
        if r["bad_lines"] > len(r["warnings"]):
            click.echo(f"ipilab: warning: {path}: {r['bad_lines'] - len(r['warnings']):,} more bad lines", err=True)
    if as_json:
        emit_json(results[0] if len(results) == 1 else {"traces": results})
        return
    for r in results:
        print_audit(r, console, by=by, top=top)


@main.command(epilog="Docs: docs/calibrate.md")
@click.argument("traces", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The machine file to write (TOML; every command takes it as -m FILE).")
@click.option("--base", default="vm-2cpu", show_default=True,
              help="The preset (or machine file) that gives what the traces cannot show.")
@click.option("--apic-mode", type=click.Choice(APIC_MODES), default=None,
              help="Override the APIC mode (default: kvm_pv when the .meta says KVM, x2apic_phys when it names "
              "another machine, the base's when it says nothing).")
@click.option("--pages-per-range", type=click.IntRange(1, 33), default=16, show_default=True,
              help="Pages in each range flush (the trace does not show it); invlpg = a range flush / this.")
@click.option("--tlb-flush", type=click.Choice(FLUSH_KINDS), default=None,
              help="Take every trace's flush_tlb_func runs as this kind (default: by the workload the .meta "
              "names: usemem full, tlbstorm or madvise range).")
@click.option("--vcpu-preemption", type=click.Choice(["auto", "on", "off"]), default="off", show_default=True,
              help="Model the time busy CPUs were away (a preempted vCPU) as background.vcpu_preemption (auto: "
              "when the traces show user page faults). Off by default: the delivery latencies measured from the "
              "same traces already hold the targets' absences, and modelling both counts them twice "
              "(benchmarks/fidelity.py shows the predictions getting worse).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def calibrate(traces: tuple[Path, ...], out: Path, base: str, apic_mode: str | None, pages_per_range: int,
              tlb_flush: str | None, vcpu_preemption: str, as_json: bool) -> None:
    """Measure a machine from traces of it: write a machine file of cost distributions.

    Reads each TRACE (any format `analyze` reads) and its capture's NAME.meta beside it, and writes a
    machine file whose costs are the empirical distributions measured there (101 quantiles each), per
    CPU-pair class where the topology tells them apart: IPI delivery to a busy CPU (ipi_latency_*) and the
    extra to a halted one (idle_exit), the sender's cost of a send (icr_write), the handler's entry and exit,
    flush_tlb_func by kind (tlb_flush_full, invlpg), the idle loop's flush (poll_notice), the timer tick
    (tick, background.tick_hz) and page faults, when the trace has their events. Each cost's source names
    the traces, the events it was measured between, n and p50/p90/p99. What the traces cannot show comes
    from --base, and its source says so; a cost a trace lacks events for gets one line on stderr. Time a
    busy CPU was away (gaps between its events, a preempted vCPU) is reported, and written as a comment or,
    with --vcpu-preemption, as background.vcpu_preemption with the costs vcpu_preempt and vcpu_run.
    docs/calibrate.md says how each cost is measured.
    """
    try:
        base_machine = load_machine(base)
    except MachineError as e:
        fail(f"--base: {e}")
    if not out.resolve().parent.is_dir():
        fail(f"--output: folder {out.parent} does not exist")
    samples = []
    for path in traces:
        if not path.exists():
            fail(f"{path}: no such file")
        stats = ReadStats()
        try:
            with _progress(as_json) as step:
                progress = step(f"reading {path.name}")
                samples.append(sample_trace(path, stats, progress))
        except (TraceFormatError, CalibrateError) as e:
            fail(str(e))
        for w in stats.warnings:
            click.echo(f"ipilab: warning: {w}", err=True)
        if stats.bad_lines > len(stats.warnings):
            click.echo(f"ipilab: warning: {path}: {stats.bad_lines - len(stats.warnings):,} more bad lines", err=True)
    try:
        cal = run_calibrate(list(traces), base_machine, name=output_name(out), apic_mode=apic_mode,
                            pages_per_range=pages_per_range, tlb_flush=tlb_flush, samples=samples,
                            vcpu_preemption=vcpu_preemption)
    except ValidationError as e:
        err = first_error(e)
        fail(f"the calibrated machine is not valid: field {err.field or '(machine)'}: {err.message}")
    cal.write(out)
    for note in cal.notes:
        click.echo(f"ipilab: calibrate: {note}", err=True)
    if as_json:
        emit_json({**cal.as_json(), "output": str(out)})
        return
    print_calibration(cal, console)
    console.print(f"machine file written to {out} (use it as -m {out})", highlight=False)


@main.command(epilog="Docs: docs/replay.md")
@click.argument("trace", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kernel", "-k", "kernel_specs", multiple=True, default=("v6.18", "v4.13", "v4.12"),
              show_default=True, help="A kernel to decide under (repeatable): a version, a what-if like "
              "v4.12+coalesce_many, or a TOML file.")
@click.option("--mode", type=click.Choice(["open", "closed"]), default="open", show_default=True,
              help="open: the trace's enqueues and flushes as they were, decisions made again; closed: the "
              "trace's calls issued again on a simulated --machine.")
@click.option("--machine", "-m", default="vm-2cpu", show_default=True,
              help="For --mode closed: a preset (`ipilab machines`) or a machine TOML file.")
@click.option("--trace-kernel", default="v6.18", show_default=True,
              help="The kernel that made the trace: the agreement is shown for a --kernel that behaves like it.")
@click.option("--halt-poll-ns", type=click.IntRange(0, 10_000_000), default=None,
              help="Idle CPUs poll this long after entering a halting state (default: the trace's "
              "guest_halt_poll_ns events, else 0).")
@click.option("--poll-clear-ns", type=click.IntRange(0, 10_000_000), default=POLL_CLEAR_NS, show_default=True,
              help="An idle CPU stops polling this long before the trace shows it halting (cpu_idle).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
def replay(trace: Path, kernel_specs: tuple[str, ...], mode: str, machine: str, trace_kernel: str,
           halt_poll_ns: int | None, poll_clear_ns: int, as_json: bool) -> None:
    """What would another kernel have done with this trace? Decides every queued call again.

    Open loop (default) keeps the trace's own timing: who queued which call when, and when each target
    flushed its queue; the kernel model decides, per call, IPI or no IPI (queue already waiting, or target
    polling idle) and which IPIs become interrupts. A trace with ipi_send_* events is also compared, call
    by call, with what its own kernel did. Works without those events (decisions are predicted from the
    rest); reads the same formats as `analyze`. `ipilab capture` (its default event set, or `--events
    replay`) includes sched_switch, cpu_idle and guest_halt_poll_ns, which tell when targets were polling.
    """
    if not trace.exists():
        fail(f"{trace}: no such file")
    try:
        kernels = [resolve_kernel(k) for k in kernel_specs]
        resolve_kernel(trace_kernel)
        if mode == "closed":
            result = closed_loop(trace, kernels, load_machine(machine))
        else:
            result = replay_trace(trace, kernels, trace_kernel=trace_kernel, halt_poll_ns=halt_poll_ns,
                                  poll_clear_ns=poll_clear_ns)
    except (ConfigError, TraceFormatError) as e:
        fail(str(e))
    for w in result["warnings"]:
        click.echo(f"ipilab: warning: {w}", err=True)
    if as_json:
        emit_json(result)
    else:
        print_replay(result, console)


@main.group(epilog="Docs: docs/reproduce.md")
def reproduce() -> None:
    """Reproduce a published result with the model."""


@reproduce.command("seed", epilog="Docs: docs/reproduce.md")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Change the experiment (repeatable): a field of the swap-w-seq-mt workload "
                   f"({', '.join(seed_exp.SEED_WORKLOAD_KEYS)}; `ipilab simulate --help` says what each means), "
                   f"a machine field ({', '.join(MACHINE_KEYS)}) or a machine cost in whole ns (icr_write=150; "
                   "`ipilab machines` lists them).")
@click.option("--seconds", "-s", type=click.FloatRange(0.0005, MAX_SECONDS), default=seed_exp.SECONDS,
              show_default=True, help="Simulated reclaim-phase window per kernel, after the warm-up.")
@click.option("--warmup", type=click.FloatRange(0, MAX_SECONDS), default=seed_exp.WARMUP, show_default=True,
              help="Simulated seconds run first and not counted.")
@click.option("--intervals", type=click.IntRange(2, 1000), default=seed_exp.INTERVALS, show_default=True,
              help="Parts of the window whose spread gives the 95% confidence intervals.")
@click.option("--seed", "rng_seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="Random seed (thread start offsets): the same seed gives the same result, bit for bit.")
@click.option("--workers", "-j", type=click.IntRange(1, 512), default=None,
              help="Simulations run in parallel (default: one per CPU).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the comparison and the per-CPU interrupt timelines as a PNG.")
@click.option("--explain", is_flag=True,
              help="Also list every machine cost with its source and run the sensitivity table: each cost at "
                   "x0.5 and x1.5 for both kernels, and the fill phase again for the costs it pays, and the spread "
                   "table: every cost lognormal with p90 = 1, 1.25, 1.5, 2 and 3 x median (about 120 more short "
                   "simulations), the ablation table (each modelling change added in turn, on the main window) and "
                   "the absolute check (the model as swap-w-seq with 32 processes against a published swap-out "
                   "rate and that run's lock profile): about 5 minutes on 2 cores at the default windows.")
@click.option("--sensitivity-seconds", type=click.FloatRange(0.0005, MAX_SECONDS),
              default=seed_exp.SENSITIVITY_SECONDS, show_default=True,
              help="Window of each sensitivity simulation (after a warm-up of "
                   f"{seed_exp.SENSITIVITY_WARMUP * 1e3:g} ms).")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast", show_default=True,
              help="fast: compiled (numba); reference: the readable Python one (same numbers, 20-40x slower).")
def seed_cmd(settings: tuple[str, ...], seconds: float, warmup: float, intervals: int, rng_seed: int,
             workers: int | None, as_json: bool, plot: Path | None, explain: bool,
             sensitivity_seconds: float, engine: str) -> None:
    """The seed patch (2017): -88% IPIs, +15% throughput on a 2-socket Broadwell-EP, predicted by the model.

    Simulates vm-scalability's swap-w-seq-mt (80 usemem threads writing 100 GB with 32 GB of RAM) on
    broadwell-ep-2s-88t under v4.12 (before the patch) and v4.13 (after), and compares them with the
    paper. No cost is fitted to the paper's numbers; `--explain` shows each cost's source and how the
    prediction moves with it. The default window takes about 5 s on 2 cores (about 20 s the first time, when the
    fast engine is compiled and cached, which it says on stderr; `ipilab compile` does that ahead).
    """
    if plot is not None and not plot.resolve().parent.is_dir():
        fail(f"--plot: folder {plot.parent} does not exist")
    quiet = as_json
    if engine == "fast":
        warm_fast_engine()
    try:
        pairs = parse_pairs(settings)
        with _progress(quiet) as step:
            result = seed_exp.run_seed(pairs, seconds=seconds, warmup=warmup,
                                       intervals=intervals, seed=rng_seed, workers=workers, engine=engine,
                                       progress=step("simulating v4.12 and v4.13"))
            rows = None
            if explain:
                rows = seed_exp.sensitivity(pairs, result, seconds=sensitivity_seconds,
                                            seed=rng_seed, workers=workers, engine=engine,
                                            progress=step("sensitivity runs"))
                result["sensitivity"] = rows
                result["sensitivity_window"] = {"sim_seconds": sensitivity_seconds,
                                                "warmup_seconds": seed_exp.SENSITIVITY_WARMUP,
                                                "intervals": seed_exp.SENSITIVITY_INTERVALS}
                result["spread"] = seed_exp.spread_sensitivity(pairs, seconds=sensitivity_seconds,
                                                               seed=rng_seed, workers=workers, engine=engine,
                                                               progress=step("spread runs"))
                result["ablation"] = seed_exp.ablation(pairs, seconds=seconds, warmup=warmup,
                                                       intervals=intervals, seed=rng_seed, workers=workers,
                                                       engine=engine, progress=step("ablation runs"))
                result["absolute"] = seed_exp.absolute_check(pairs, seed=rng_seed)
    except ConfigError as e:
        fail(str(e))
    if plot is not None:
        plot_seed(result, plot)
    if as_json:
        emit_json(result)
        return
    print_seed(result, console)
    if explain:
        print_costs(result, console)
        print_sensitivity(rows or [], result["sensitivity_window"], console)
        print_spread(result["spread"], result["sensitivity_window"], console)
        print_ablation(result["ablation"], console)
        print_absolute(result["absolute"], console)
    if plot is not None:
        console.print(f"plot written to {plot}", highlight=False)


@main.command("sweep", epilog="Docs: docs/sweep.md")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Results table to write (default: SPEC.parquet beside the spec).")
@click.option("--workers", "-j", type=click.IntRange(1, 512), default=None,
              help="Local worker processes (default: one per CPU).")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="Run on an existing Dask distributed cluster instead, e.g. tcp://host:8786.")
@click.option("--resume", is_flag=True,
              help="Continue the table at --out: skip the runs it holds (failed runs run again).")
def sweep_cmd(spec_path: Path, out: Path | None, workers: int | None, scheduler: str | None, resume: bool) -> None:
    """Run a grid of simulations: a base configuration, parameters crossed, repeated over seeds.

    SPEC.toml has [base] (machine, kernel, workload, seconds, warmup, intervals, and [base.set] with
    anything `simulate --set` takes: workload fields, topology fields such as cores_per_socket or
    apic_mode, machine costs), [vary] (each parameter a list or {from, to, step}; crossed) and [seeds]
    (first, count). The whole grid is checked before any run. Each finished run is one row of a Parquet
    table (parameters, metrics, seed, wall time, ipilab version, error); while it runs, rows are kept as
    parts in OUT.parts/, so a killed sweep loses only the runs in flight and `--resume` continues it.
    Example specs: examples/*.toml. Then: `ipilab report OUT -o report.html`.

    \b
        [base]
        machine = "broadwell-ep-2s-88t"
        workload = "swap-w-seq-mt"
        seconds = 0.004
        warmup = 0.002
        [vary]
        kernel = ["v4.12", "v4.13"]
        threads = {from = 10, to = 80, step = 10}
        [seeds]
        count = 2
    """
    if workers is not None and scheduler is not None:
        fail("give --workers or --scheduler, not both")
    out = out or spec_path.with_suffix(".parquet")
    if not out.resolve().parent.is_dir():
        fail(f"--out: folder {out.parent} does not exist")
    try:
        runs = expand(load_spec(spec_path), spec_path)
    except SpecError as e:
        fail(str(e))
    store = ResultStore(out)
    if store.exists() and not resume:
        fail(f"{out} (or {store.parts.name}) exists: --resume to continue it, or remove it")
    if scheduler is None and any(sweep_run.uses_fast_engine(r) for r in runs):
        warm_fast_engine()  # here, once: the workers fork from this process and inherit it
    interactive = sys.stderr.isatty()
    with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("failed {task.fields[failed]}, left {task.fields[left]}"), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True),
                  disable=not interactive) as bar:
        task = bar.add_task("sweep", total=None, failed=0, left=0)

        def progress(done: int, failed: int, left: int) -> None:
            bar.update(task, completed=done, total=done + left, failed=failed, left=left)

        try:
            outcome = sweep_run.run_sweep(runs, store, workers=workers, scheduler=scheduler, resume=resume,
                                          progress=progress)
        except KeyboardInterrupt:
            if store.exists():
                click.echo(f"ipilab: interrupted; the finished runs are in {out}; `--resume` continues", err=True)
            else:
                click.echo("ipilab: interrupted before any run finished; nothing written", err=True)
            sys.exit(130)
        except StoreError as e:
            fail(f"--resume: {e}")
        except sweep_run.ClusterError as e:
            fail(str(e))
    click.echo(f"{outcome.done} runs in {outcome.wall_seconds:.1f} s ({outcome.failed} failed, {outcome.skipped} "
               f"already in the table, {outcome.total} in the grid); results in {out}", err=True)


sweep_cmd.name = "sweep"


@main.command("export", epilog="Docs: docs/export.md")
@click.argument("trace", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--perfetto", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The timeline to write (Chrome Trace Event JSON).")
@click.option("--from-sim", is_flag=True, help="Simulate instead of reading TRACE (options as `simulate`).")
@click.option("--machine", "-m", default="vm-2cpu", show_default=True, help="With --from-sim: as `simulate`.")
@click.option("--kernel", "-k", default="v6.18", show_default=True, help="With --from-sim: as `simulate`.")
@click.option("--workload", "-w", default="synthetic", show_default=True, type=click.Choice(sorted(WORKLOADS)),
              help="With --from-sim: as `simulate`.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="With --from-sim: as `simulate`.")
@click.option("--cost", "costs", multiple=True, metavar="NAME=NS", help="With --from-sim: as `simulate`.")
@click.option("--seconds", "-s", type=float, default=0.002, show_default=True,
              help="With --from-sim: simulated window (a timeline is for looking closely: keep it short).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=1, show_default=True,
              help="With --from-sim: random seed.")
@click.option("--from-ms", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Start the timeline this many ms after the trace's first event.")
@click.option("--to-ms", type=click.FloatRange(0), default=None,
              help="End it this many ms after the first event (default: the trace's end). A long trace makes a "
                   "large file: a second of a busy 2-CPU trace is about 50 MB.")
def export_cmd(trace: Path | None, out: Path, from_sim: bool, machine: str, kernel: str, workload: str,
               settings: tuple[str, ...], costs: tuple[str, ...], seconds: float, seed: int, from_ms: float,
               to_ms: float | None) -> None:
    """Write a trace (or a simulated run) as a timeline for ui.perfetto.dev or chrome://tracing.

    One track per CPU: function-call and reschedule interrupt handlers as slices, each function run
    (csd_function_entry..exit) inside them, a short marker where a call was queued (csd_queue_cpu) with a
    flow arrow from it to that call's function entry on the target, and IPI sends as instants. Times
    are µs from the trace's clock. Open the file in the Perfetto UI (Open trace file) or chrome://tracing.
    """
    if bool(trace) == from_sim:
        fail("give a TRACE or --from-sim, not both or neither")
    if not out.resolve().parent.is_dir():
        fail(f"--perfetto: folder {out.parent} does not exist")
    if to_ms is not None and to_ms <= from_ms:
        fail(f"--to-ms ({to_ms:g}) must be after --from-ms ({from_ms:g})")
    with tempfile.TemporaryDirectory(prefix="ipilab-export-") as tmp:
        if from_sim:
            try:
                run = build_run(machine, kernel, workload, parse_pairs(settings), costs=parse_pairs(costs, "--cost"),
                                seconds=seconds, seed=seed)
                trace = Path(tmp) / "sim.trace"
                if run.engine == "fast":
                    warm_fast_engine()
                run.simulate(trace)
            except ConfigError as e:
                fail(str(e))
        assert trace is not None
        if not trace.exists():
            fail(f"{trace}: no such file")
        stats = ReadStats()
        try:
            data = write_timeline(window(read_trace(trace, stats), from_ms, to_ms), out)
        except TraceFormatError as e:
            fail(str(e))
    for w_ in stats.warnings:
        click.echo(f"ipilab: warning: {w_}", err=True)
    slices = sum(1 for e in data["traceEvents"] if e["ph"] == "X")
    click.echo(f"wrote {out}: {slices:,} slices, {data['otherData']['flows']:,} queue-to-run arrows", err=True)


export_cmd.name = "export"


@main.command("report", epilog="Docs: docs/report.md")
@click.argument("source", metavar="RESULTS.parquet|TRACE|SEED.json", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--output", "-o", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML page to write.")
def report_cmd(source: Path, out: Path) -> None:
    """One self-contained HTML page of plots and tables (opens offline; no script, nothing fetched).

    \b
    RESULTS.parquet (from `ipilab sweep`): IPIs and CAL interrupts, CSDs per interrupt, throughput and
      sender wait latency against each swept parameter, one line per kernel (mean over seeds, bars from
      the lowest to the highest seed); the wait latency distribution (p50, p90, p99, max) per kernel;
      interrupts per CPU over time; every run with its error.
    TRACE (anything `ipilab analyze` reads): the audit tables, interrupts per CPU over time, and the
      queue-to-run latency percentiles per function.
    SEED.json (from `ipilab reproduce seed --json`): the comparison with the paper, its plots and units.
    """
    if not out.resolve().parent.is_dir():
        fail(f"--output: folder {out.parent} does not exist")
    try:
        kind = write_report(source, out)
    except (ReportError, TraceFormatError) as e:
        fail(str(e))
    click.echo(f"wrote {out} (report of a {kind})", err=True)


@main.command("verify", epilog="Docs: docs/verify.md")
@click.option("--kernel", "-k", "kernel_specs", multiple=True,
              help="A kernel (`ipilab kernels`), repeatable; default: v4.12 and v4.13 side by side.")
@click.option("--variant", default="none", show_default=True,
              help=f"Inject a known-broken change ({', '.join(VARIANTS)}); the search must find its violation.")
@click.option("--cpus", type=int, default=2, show_default=True, help=f"CPUs in the model (2 to {MAX_CPUS}).")
@click.option("--calls", type=int, default=2, show_default=True,
              help=f"Calls in each CPU's program (1 to {MAX_CALLS}).")
@click.option("--mix", default=",".join(CALL_KINDS), show_default=True,
              help="Call kinds the programs cycle through: CPU i's k-th call is MIX[(2i+k) mod len(MIX)].")
@click.option("--search", type=click.Choice(["dpor", "full"]), default="dpor", show_default=True,
              help="dpor: one run per class of interleavings equal up to the order of independent moves "
                   "(same end states, checks and IPI bounds, far fewer states); full: every reachable state.")
@click.option("--max-states", type=int, default=2_000_000, show_default=True,
              help="Give up (exit 2) past this many states.")
@click.option("--shortest-seconds", type=float, default=150.0, show_default=True,
              help="Time allowed to look for a shortest counterexample (three quarters: a breadth-first search, "
                   "which stops as soon as it has one; the rest, if it did not: more partial-order runs); when it "
                   "runs out, the shortest found is shown with the fewest moves any counterexample can have.")
@click.option("--workers", "-j", type=click.IntRange(1, 512), default=None,
              help="Processes for the breadth-first search for a shortest counterexample, once a depth holds "
                   f"{_SHORTEST_PARALLEL_FROM:,} states (default: one per CPU).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout (progress still on stderr).")
@click.option("--promela", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the same model (first kernel) as Promela for SPIN.")
@click.option("--trace-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the first counterexample as ftrace text (`ipilab analyze` reads it).")
def verify_cmd(kernel_specs: tuple[str, ...], variant: str, cpus: int, calls: int, mix: str, search: str,
               max_states: int, shortest_seconds: float, workers: int | None, as_json: bool,
               promela: Path | None, trace_out: Path | None) -> None:
    """Check the cross-call protocol on every interleaving of a few CPUs (a model checker).

    Each CPU runs a short program of smp_call_function_many()/_single() calls, with and without wait, and
    takes interrupts; the search drives the simulator's own kernel model (kernel/smp.py) through every
    order of its atomic steps. It checks: no lost wakeup (no CSD left queued with no flush to come; caught
    as soon as a call returns owing the IPI its llist_add made due, with nothing else due to flush that
    queue), every call's function runs exactly once on every target, a waiting sender returns only after
    its functions ran and never deadlocks, no CSD reused while locked. Exit status 1 when a check fails.
    The default search (dpor) runs one interleaving per class of interleavings that differ only in the
    order of independent moves: the same end states, checks and IPI bounds as `--search full`. 2 CPUs x 2
    calls takes well under a second, 3 x 1 about 30 s, 3 x 2 about 6 minutes (both kernels).

    When a check fails, the dpor search stops there (in under a second up to 3 x 2) and cuts that run to
    the moves its violation depends on; then a breadth-first search over every state, for three quarters
    of --shortest-seconds, stops at the first depth where a check fails: it shows a shortest
    counterexample when it gets there (2 CPUs: always; at 3 x 1 and 3 x 2 every broken variant in under
    7 s per kernel, but v4.12's check-then-add at 3 x 2 in about 45 s on 2 cores). It runs in --workers
    processes once a depth holds 2,000 states. If it runs out of time, the
    partial-order search looks on for shorter violating runs with the rest, and the shortest run found
    is shown with the fewest moves any counterexample can have. Progress (phase, states, depth, time)
    goes to stderr.
    """
    if variant != "none" and variant not in VARIANTS:
        fail(f"--variant: unknown {variant!r}; known: none, {', '.join(VARIANTS)}")
    for name, value, low, high in (("--cpus", cpus, 2, MAX_CPUS), ("--calls", calls, 1, MAX_CALLS),
                                   ("--max-states", max_states, 1000, 10**9),
                                   ("--shortest-seconds", shortest_seconds, 0, 86400)):
        if not low <= value <= high:
            fail(f"{name} must be {low} to {high:,}, got {value}")
    for path in (promela, trace_out):
        if path is not None and not path.resolve().parent.is_dir():
            fail(f"{path}: folder {path.parent} does not exist")
    try:
        mix_calls = [Call.parse(k.strip()) for k in mix.split(",") if k.strip()]
    except ValueError as e:
        fail(f"--mix: {e}")
    try:
        kernels = [resolve_kernel(k) for k in kernel_specs or ("v4.12", "v4.13")]
    except KernelSpecError as e:
        fail(str(e))
    if not mix_calls:
        fail(f"--mix: give at least one of {', '.join(CALL_KINDS)}")
    programs = default_programs(cpus, calls, mix_calls)
    model = None
    if promela is not None:
        try:
            model = promela_model(Config(kernels[0], programs, variant=variant))
        except PromelaError as e:
            fail(str(e))
    try:
        with _search_progress() as step:
            data, found = run_verify(kernels, programs, variant, max_states, search, progress=step,
                                     shortest_seconds=shortest_seconds, workers=workers or default_workers())
    except StateLimitError as e:
        fail(str(e))
    if model is not None:
        write_promela(promela, model)
    first = next((r for r in found if r.counterexample is not None), None)
    if trace_out is not None:
        if first is None:
            click.echo(f"ipilab: no counterexample, so nothing written to {trace_out}", err=True)
        else:
            write_counterexample_trace(trace_out, first)
    if as_json:
        emit_json(data)
    else:
        print_report(data, console)
        if promela is not None:
            console.print(f"Promela model written to {promela} (spin -a {promela.name} && gcc -o pan pan.c && ./pan)",
                          highlight=False)
    if data["violations"]:
        sys.exit(1)


verify_cmd.name = "verify"


@main.command("compile", epilog="Docs: docs/compile.md")
def compile_cmd() -> None:
    """Compile the fast engine and the trace parser and audit now, so the first real run starts warm.

    numba compiles them on first use and caches the machine code beside the installed modules (or in
    NUMBA_CACHE_DIR), where every later run loads it in about a second. The cache is void when ipilab or
    numba changes, so run this after installing. Takes about
    8 s for the engine (12.5 s of CPU on both cores) + 15 s for the parser and audit on our 2 cores the first
    time; seconds once cached.
    """
    t0 = time.perf_counter()
    warm_fast_engine()
    engine_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # A millisecond of simulated calls written as ftrace text: the parser and audit compile on the
        # same kinds of lines a real trace has.
        trace = Path(tmp) / "warm-up.trace"
        simulate(load_machine("vm-2cpu"), resolve_kernel("v6.18"), workload_from_settings("synthetic", {}),
                 seconds=0.001, seed=1, trace_out=trace)
        audit_trace(trace)
    click.echo(f"ipilab: fast engine ready ({engine_seconds:.1f} s), trace parser and audit ready "
               f"({time.perf_counter() - t1:.1f} s); cached for later runs", err=True)


compile_cmd.name = "compile"


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str], Callable[[int, int], None] | None]]:
    """A progress bar on stderr (none with --json or when stderr is not a terminal)."""
    if quiet or not sys.stderr.isatty():
        yield lambda _label: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        def step(label: str) -> Callable[[int, int], None]:
            task = bar.add_task(label, total=None)
            return lambda done, total: bar.update(task, completed=done, total=total)
        yield step


@contextmanager
def _search_progress() -> Iterator[Callable[[str], SearchProgress]]:
    """The model checker's progress on stderr (stdout stays clean for --json): the phase, states reached,
    the depth (moves from the start) of the state in hand, and the time. Live on a terminal; otherwise a
    line every 10 s."""
    if not sys.stderr.isatty():
        t0 = time.monotonic()
        last = [t0]

        def lines(kernel: str) -> SearchProgress:
            def report(phase: str, states: int, depth: int) -> None:
                now = time.monotonic()
                if now - last[0] >= 10:
                    last[0] = now
                    click.echo(f"ipilab verify: {kernel}: {phase}: {states:,} states, depth {depth} moves, "
                               f"{now - t0:.0f} s", err=True)
            return report
        yield lines
        return
    with Progress(TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} states"),
                  TextColumn("depth {task.fields[depth]} moves"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        def live(kernel: str) -> SearchProgress:
            task = bar.add_task(kernel, total=None, depth=0)

            def report(phase: str, states: int, depth: int) -> None:
                bar.update(task, description=f"{kernel}: {phase}", completed=states, depth=depth)
            return report
        yield live


if __name__ == "__main__":
    main()
