"""`ipilab report`: a self-contained page whose plots render in a real browser (headless Chromium), with
the text of a trace escaped, for a sweep table and for a trace."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED_TRACES
from test_cli import assert_user_error, ipilab

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                                             "chromium; .ci/run installs it)")

# Appended to a copy of the page: measures every plot once the browser has laid it out, and writes the
# verdict into the DOM, where --dump-dom shows it.
PROBE = """<script>
const figs = [...document.querySelectorAll("figure > svg")].map(s => {
  const b = s.getBBox(), r = s.getBoundingClientRect();
  return {bbox: [b.width, b.height], box: [r.width, r.height], shapes: s.querySelectorAll("path, image").length};
});
const out = document.createElement("pre");
out.id = "verdict";
out.textContent = JSON.stringify({figs, scripts: document.scripts.length, images: document.images.length});
document.body.appendChild(out);
</script>"""


def browse(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Open a copy of `page` with PROBE in headless Chromium: the verdict and the console lines logged."""
    copy = tmp_path / f"probe-{page.name}"
    copy.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--window-size=1300,900", "--dump-dom", copy.as_uri()],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="verdict">(.*?)</pre>', proc.stdout, re.S)
    assert m, (proc.returncode, proc.stdout[-500:], proc.stderr[-2000:])
    verdict = json.loads(m.group(1).replace("&quot;", '"'))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return verdict, console


def assert_self_contained(html: str) -> None:
    """Nothing fetched from elsewhere and no script of its own."""
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html, re.I)
    assert "<link" not in html.lower()


@needs_chromium
def test_console_scan_sees_errors(tmp_path: Path) -> None:
    """The scan below would notice a page with a script error (a control for the checks that follow)."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><figure><svg width='10' height='10'><path d='M0 0L9 9'/></svg></figure>"
                   "<script>notDefinedAnywhere()</script></body></html>")
    verdict, console = browse(bad, tmp_path)
    assert any("notDefinedAnywhere" in line for line in console), console
    assert verdict["figs"][0]["bbox"][0] > 0


SWEEP = """
[base]
seconds = 0.002
intervals = 4
[vary]
kernel = ["v4.12", "v4.13"]
rate = [20000, 60000, 100000]
[seeds]
count = 2
"""


@needs_chromium
def test_sweep_report_renders_in_chromium(tmp_path: Path) -> None:
    """A 12-run sweep's page: a figure of four panels against rate, the latency distributions, and the heat
    maps; every SVG has a non-empty box and drawn shapes; no console message; all 12 runs listed."""
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP)
    proc = ipilab("sweep", str(spec), "-j", "2")
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "s.html"
    proc = ipilab("report", str(tmp_path / "s.parquet"), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    assert_self_contained(html)
    assert "Against rate" in html and html.count("<figure>") == 3
    assert html.count("<td>v4.12</td>") == 6 and html.count("<td>v4.13</td>") == 6
    verdict, console = browse(page, tmp_path)
    assert console == []
    assert len(verdict["figs"]) == 3
    for fig in verdict["figs"]:
        assert min(fig["bbox"]) > 100 and min(fig["box"]) > 100 and fig["shapes"] > 10, fig
    assert verdict["scripts"] == 1 and verdict["images"] == 0  # the probe is the only script


# A trace whose task name, callsite and function are markup: the page must show them as text (the function
# name is also a tick label of the latency plot, so it goes through the SVG too).
HOSTILE = """\
# tracer: nop
<script>alert(1)</script>-66 [000] d..2.   200.000010: csd_queue_cpu: cpu=1 callsite=x<img/src=x/onerror=alert(2)>+0x0/0x1 func=evil--><img/src=x/onerror=alert(3)> csd=00000000000000aa
<script>alert(1)</script>-66 [000] d..2.   200.000010: ipi_send_cpu: cpu=1 callsite=x<img/src=x/onerror=alert(2)>+0x0/0x1 callback=generic_smp_call_function_single_interrupt+0x0/0x10
          <idle>-0       [001] d.h1.   200.000020: call_function_single_entry: vector=251
          <idle>-0       [001] d.h1.   200.000021: csd_function_entry: func=evil--><img/src=x/onerror=alert(3)>, csd=00000000000000aa
          <idle>-0       [001] d.h1.   200.000023: csd_function_exit: func=evil--><img/src=x/onerror=alert(3)>, csd=00000000000000aa
          <idle>-0       [001] d.h1.   200.000024: call_function_single_exit: vector=251
"""


@needs_chromium
def test_trace_report_escapes_trace_text_and_renders(tmp_path: Path) -> None:
    """The hostile names appear escaped, never as elements; the audit says 1 call queued, 1 IPI, 1 CAL
    interrupt, and the call waited 11 µs from queue to run (200.000010 -> 200.000021); the heat map and
    latency plots render."""
    trace = tmp_path / "hostile.trace"
    trace.write_text(HOSTILE)
    page = tmp_path / "t.html"
    proc = ipilab("report", str(trace), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    assert_self_contained(html)
    assert "<script>alert(1)</script>" not in html and "<img/src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "x&lt;img/src=x/onerror=alert(2)&gt;" in html
    cells = re.findall(r"<tr><td>(csd_enqueues|csd_ipis|cal_interrupts)</td><td>([\d,]+)</td>", html)
    assert dict(cells) == {"csd_enqueues": "1", "csd_ipis": "1", "cal_interrupts": "1"}
    evil = "evil--&gt;&lt;img/src=x/onerror=alert(3)&gt;"
    assert re.search(f"<td>{re.escape(evil)}</td><td>1</td><td>11 us</td>", html)  # waits 1, wait p50 11 µs
    verdict, console = browse(page, tmp_path)
    assert console == []
    assert len(verdict["figs"]) == 2 and all(min(f["bbox"]) > 50 for f in verdict["figs"])
    assert verdict["scripts"] == 1 and verdict["images"] == 0


def test_report_of_a_real_trace_has_the_audit_tables(tmp_path: Path) -> None:
    """A real 2-CPU trace: its page holds the audit's counts and the per-callsite table, and says how many
    event lines it read (the same number `ipilab analyze --json` reports)."""
    trace = SHARED_TRACES / "madvise-threads.trace.xz"
    if not trace.exists():
        pytest.skip(f"{trace} not here")
    page = tmp_path / "real.html"
    proc = ipilab("report", str(trace), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    a = json.loads(ipilab("analyze", "--json", str(trace)).stdout)
    assert f"{a['lines']:,} event lines" in html
    assert f"<tr><td>csd_enqueues</td><td>{a['csd_enqueues']:,}</td>" in html
    assert "by callsite" in html and "ttwu_queue_wakelist" in html


@pytest.mark.parametrize(("name", "content", "words"), [
    ("missing.parquet", None, ["missing.parquet"]),
    ("seed.json", "{\"experiment\": \"other\"}", ["seed.json", "reproduce seed"]),
    ("garbage.trace", "\x00\x01 not a trace\n", ["garbage.trace"]),
    ("broken.parquet", "PAR1 cut short", ["broken.parquet", "Parquet"]),
], ids=["missing-table", "not-a-seed-json", "not-a-trace", "broken-table"])
def test_report_bad_input_is_one_error_line(tmp_path: Path, name: str, content: str | None, words: list[str]) -> None:
    """Each unusable input is one error line naming the file; no page is written."""
    if content is not None:
        (tmp_path / name).write_text(content)
    proc = ipilab("report", str(tmp_path / name), "-o", str(tmp_path / "r.html"))
    assert_user_error(proc, *words)
    assert not (tmp_path / "r.html").exists()


def test_seed_json_report_shows_the_comparison(tmp_path: Path) -> None:
    """A small `reproduce seed --json` (4 threads, 2 ms): the page gives its IPI reduction and throughput
    gain next to the paper's 88% and 15%, each kernel's CAL count, and the seed's figure."""
    seed = tmp_path / "seed.json"
    proc = ipilab("reproduce", "seed", "--json", "--seconds", "0.002", "--warmup", "0.001", "--intervals", "2",
                  "--set", "threads=4", "--set", "cores_per_socket=4", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    seed.write_text(proc.stdout)
    r = json.loads(proc.stdout)
    page = tmp_path / "seed.html"
    proc = ipilab("report", str(seed), "-o", str(page))
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    assert_self_contained(html)
    assert f"<td>{r['ipi_reduction'] * 100:.1f}%</td>" in html and "<td>88.0%</td>" in html
    assert f"<td>{r['throughput_gain'] * 100:.1f}%</td>" in html and "<td>15.0%</td>" in html
    cal = [r["runs"][k]["cal_interrupts"] for k in ("v4.12", "v4.13")]
    assert f"<tr><td>cal_interrupts</td><td>{cal[0]:,}</td><td>{cal[1]:,}</td></tr>" in html
    assert html.count("<figure><svg") == 1
