"""The IPI audit, for people: what was counted, per CPU, by group, who sends to whom, how long calls wait."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ipilab.analysis.audit import AUDIT_DOCS


def print_audit(r: dict[str, Any], console: Console, by: str = "callsite", top: int = 5) -> None:
    """The audit as tables (the caller reports bad lines on stderr)."""
    secs = r["duration_ns"] / 1e9
    console.print(f"[bold]{r['trace']}[/bold]: {r['format']} text, {r['lines']:,} event lines over {secs:.3f} s, "
                  f"{r['events_read']:,} of them IPI-related"
                  + (f"; targets limited to CPUs {_cpulist(r['cpus'])}" if r["cpus"] is not None else ""),
                  highlight=False)
    t = counts_table(AUDIT_DOCS, r, secs, title="IPI audit", first="count", rate="per second")
    console.print(t)
    if not r["decisions_known"]:
        console.print("The trace has no ipi_send events: it cannot show which queued calls needed an IPI "
                      "(csds_undecided counts them).", highlight=False)

    per_cpu = Table(title="per CPU (as target)", title_justify="left")
    for col in ("cpu", "CAL interrupts", "calls run in them", "run elsewhere", "IPIs matched", "RES", "TLB"):
        per_cpu.add_column(col, justify="right")
    for cpu, c in r["per_cpu"].items():
        per_cpu.add_row(cpu, f"{c.get('cal_interrupts', 0):,}", f"{c.get('csds_run_in_irq', 0):,}",
                        f"{c.get('csds_run_elsewhere', 0):,}", f"{c.get('ipis_received', 0):,}",
                        f"{c.get('reschedule_interrupts', 0):,}", f"{c.get('tlb_flushes_received', 0):,}")
    console.print(per_cpu)

    groups = r["by"][by]
    g = Table(title=f"by {by}", title_justify="left")
    for col in (by, "queued", "IPIs", "no IPI: queue busy", "no IPI: polling"):
        g.add_column(col, justify="left" if col == by else "right")
    for name, tally in list(groups.items())[:20]:
        g.add_row(name, f"{tally['enqueues']:,}", f"{tally['ipis']:,}", f"{tally['no_ipi_queued']:,}",
                  f"{tally['no_ipi_polling']:,}")
    console.print(g)

    s = Table(title=f"top senders per target CPU (task, callsite: calls queued), top {top}", title_justify="left")
    s.add_column("target")
    s.add_column("senders")
    for target, senders in r["top_senders"].items():
        s.add_row(target, "; ".join(f"{x['task']} {x['callsite']}: {x['enqueues']:,}" for x in senders[:top]))
    console.print(s)

    res = r["timestamp_resolution_ns"]
    lat = Table(title=f"per function: wait (queued -> run) and run time; timestamps resolve {resolution(res)}",
                title_justify="left")
    for col in ("function", "waits", "wait p50", "wait p90", "wait p99", "wait max", "runs", "run p50", "run p99"):
        lat.add_column(col, justify="left" if col == "function" else "right")
    for func in sorted(set(r["latency_ns"]) | set(r["function_ns"])):
        a, b = r["latency_ns"].get(func), r["function_ns"].get(func)
        lat.add_row(func, f"{a['count']:,}" if a else "0", *(duration(a[p], res) if a else "-" for p in PERCENTILES),
                    f"{b['count']:,}" if b else "0", *(duration(b[p], res) if b else "-" for p in ("p50", "p99")))
    console.print(lat)
    console.print(f"  {r['times']['latency_ns']}; {r['times']['function_ns']}.", highlight=False)

    rec = r["reconciliation"]
    if rec:
        rt = Table(title=f"against /proc/interrupts ({rec['sidecar']})", title_justify="left")
        for col in ("row", "/proc/interrupts", "trace", "difference", "trace count"):
            rt.add_column(col, justify="right" if col not in ("row", "trace count") else "left")
        for row, v in rec["rows"].items():
            rt.add_row(row, f"{v['proc_interrupts']:,}", f"{v['trace']:,}", f"{v['trace'] - v['proc_interrupts']:+,}",
                       v["trace_counts"])
        console.print(rt)
        lost = rec["lost_events"]
        console.print(f"  lost events: {'not recorded' if lost is None else f'{lost:,}'}. Why they can differ: "
                      f"{rec['why_they_differ']}.", highlight=False)


PERCENTILES = ("p50", "p90", "p99", "max")


def resolution(ns: int | None) -> str:
    """A trace's timestamp resolution for people: "1 us", "1 ns"."""
    if ns is None:
        return "(no events)"
    return f"{ns // 1000} us" if ns >= 1000 and ns % 1000 == 0 else f"{ns} ns"


def duration(ns: int | None, resolution_ns: int | None) -> str:
    """A time from a trace, in microseconds to the trace's resolution: below it "< 1 us" (a step of the
    timestamps is all that can be told from 0)."""
    if ns is None:
        return "-"
    step = resolution_ns or 1
    if ns < step:
        return f"< {resolution(step)}"
    decimals = max(0, 3 - len(str(step)) + 1)  # 1000 ns -> 0 decimals, 1 ns -> 3
    return f"{round(ns / step) * step / 1000:,.{decimals}f} us"


def counts_table(docs: dict[str, str], values: dict[str, Any], seconds: float, *, title: str | None = None,
                 first: str = "metric", rate: str = "per second") -> Table:
    """One row per documented count: its value, its rate over `seconds`, and what it counts."""
    t = Table(title=title, title_justify="left")
    t.add_column(first)
    t.add_column("value", justify="right")
    t.add_column(rate, justify="right")
    t.add_column("what it counts")
    for key, doc in docs.items():
        value = values[key]
        if value is None:
            t.add_row(key, "-", "", doc)
        elif isinstance(value, float):
            t.add_row(key, f"{value:.2f}", "", doc)
        else:
            t.add_row(key, f"{value:,}", f"{value / seconds:,.0f}" if seconds > 0 else "", doc)
    return t


def _cpulist(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def print_replay(r: dict[str, Any], console: Console) -> None:
    """A replay: the trace's own numbers beside each kernel's prediction, then the per-call agreement."""
    closed = r.get("mode") == "closed"
    if closed:
        what = (f"closed-loop replay of {r['calls_in_trace']:,} calls on machine {r['machine']} "
                f"({r['sim_seconds']:.4f} simulated s, seed {r['seed']})")
    elif r["window_from_line"] is None:
        what = "open-loop replay: the trace queues no remote call"
    else:
        what = (f"open-loop replay from line {r['window_from_line']} ({r['real']['csd_enqueues']:,} queued calls "
                f"counted, {r['flushes']:,} queue flushes; idle state: {r['idle_known_from']})")
    console.print(f"[bold]{r['trace']}[/bold]: {what}", highlight=False)
    docs = r["metrics"]
    t = Table(title="per kernel" + (" (simulated)" if closed else " (decided again over the trace's calls)"),
              title_justify="left")
    t.add_column("metric")
    t.add_column("trace", justify="right")
    for k in r["kernels"]:
        t.add_column(k["kernel"], justify="right")
    t.add_column("what it counts")
    for key, doc in docs.items():
        real = r["real"].get(key) if key in r["real_metrics"] else None
        t.add_row(key, _fmt(real) if key in r["real_metrics"] else "", *(_fmt(k.get(key)) for k in r["kernels"]), doc)
    console.print(t)
    console.print("trace column: " + "; ".join(f"{k}: {v}" for k, v in r["real_metrics"].items()) + ".",
                  highlight=False)
    for k in r["kernels"]:
        a = k["agreement"]
        if a is None:
            continue
        what = "decisions" if a["polling_traced"] else "IPI or no IPI (the trace has no sched_wake_idle_without_ipi)"
        console.print(f"[bold]agreement[/bold] with the trace under {k['kernel']}: {a['matching']:,} of "
                      f"{a['compared']:,} calls' {what} match ({a['percent']:.2f}%)", highlight=False)
        if a["mismatches"]:
            console.print("  trace -> predicted: " + ", ".join(f"{p}: {n:,}" for p, n in a["mismatches"].items()),
                          highlight=False)
        for x in a["first_mismatches"]:
            console.print(f"  line {x['line']}: call to CPU {x['target']} ({x['func']}): the trace shows "
                          f"{x['real']}, the model says {x['predicted']}", highlight=False)
            for line in x["context"]:
                console.print(f"    {line}", highlight=False, markup=False, soft_wrap=True)
    if not closed and not r["decisions_known"]:
        console.print("The trace has no ipi_send events: every decision above is predicted, none compared.",
                      highlight=False)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return f"{v:,}"


def print_calibration(cal: Any, console: Console) -> None:
    """`ipilab calibrate`'s result: every cost of the machine written, measured or from the base preset."""
    m = cal.machine
    t = m.topology
    console.print(f"[bold]{m.name}[/bold]: {m.ncpus} CPUs ({t.sockets} socket(s) x {t.cores_per_socket} cores x "
                  f"{t.threads_per_core} threads), APIC {t.apic_mode}, halt-poll {t.halt_poll_ns} ns, tick "
                  f"{m.background.tick_hz or 'off'}{' Hz' if m.background.tick_hz else ''}", highlight=False)
    table = Table(title="costs (ns; measured ones are empirical distributions of the sample)", title_justify="left")
    for col in ("cost", "p50", "p90", "p99", "n", "estimator"):
        table.add_column(col, justify="left" if col in ("cost", "estimator") else "right",
                         ratio=1 if col == "estimator" else None, no_wrap=col != "estimator")
    for row in cal.rows():
        if row["measured"]:
            table.add_row(row["cost"], f"{row['p50']:,}", f"{row['p90']:,}", f"{row['p99']:,}", f"{row['n']:,}",
                          row["short"])
        else:
            table.add_row(row["cost"], "", "", "", "", row["describe"])
    console.print(table)
    console.print("(the machine file gives each cost's estimator and source in full; `--json` too)", highlight=False)
    gone = cal.missing_time
    if gone is not None and gone["count"]:
        console.print(f"missing time (a busy CPU's events paused for longer than {gone['threshold_ns']:,} ns, "
                      f"{gone['count']:,} times, {gone['per_cpu_second']} per CPU-second; p50 {gone['p50_ns']:,} "
                      f"ns, p90 {gone['p90_ns']:,} ns, p99 {gone['p99_ns']:,} ns; "
                      f"{100 * gone['share_of_busy_time']:.1f}% of busy time): "
                      + ("modelled as background.vcpu_preemption" if gone.get("used") else
                         "written as a comment (see --vcpu-preemption)"), highlight=False)


TOP_COLUMNS = (("queued", "calls queued"), ("ipis", "IPIs"), ("no_ipi_queued", "no IPI: queue waiting"),
               ("no_ipi_polling", "no IPI: polling"), ("cal_interrupts", "CAL irqs"),
               ("reschedule_interrupts", "RES irqs"), ("calls_run", "calls run"))


def top_table(iv: Any, senders: int) -> Table:
    """`ipilab top`'s view of one interval (an ipilab.trace.top.Interval)."""
    t = Table(title=f"ipilab top: {iv.seconds:.0f} s; counts over the last {iv.length:.1f} s per CPU as the "
              f"target; senders (task callsite: calls queued) since the start; lost events: {iv.lost:,}",
              title_justify="left")
    t.add_column("cpu", justify="right")
    for _, name in TOP_COLUMNS:
        t.add_column(name, justify="right")
    t.add_column(f"top {senders} senders")
    for cpu, counts in iv.cpus.items():
        who = "; ".join(f"{s['task']} {s['callsite']}: {s['enqueues']:,}" for s in iv.top_senders[cpu][:senders])
        t.add_row(str(cpu), *(f"{counts[k]:,}" for k, _ in TOP_COLUMNS), who)
    return t
