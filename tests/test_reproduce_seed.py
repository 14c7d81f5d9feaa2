"""`ipilab reproduce seed`: its JSON is complete and agrees with itself, its plot is a real PNG, and bad
settings fail before any run. A short window and 16 threads keep it fast; the numbers are not the
default run's."""

from __future__ import annotations

import json
import math

import pytest
from test_cli import assert_user_error, ipilab

from ipilab.orchestration.runconfig import build_run
from ipilab.reproduce import seed as seed_exp

SHORT = ["-s", "0.001", "--warmup", "0.0005", "--intervals", "4", "--set", "threads=16", "-j", "2"]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, bytes]:
    png = tmp_path_factory.mktemp("seed") / "seed.png"
    proc = ipilab("reproduce", "seed", "--json", "--plot", str(png), *SHORT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), png.read_bytes()


def test_json_has_each_kernels_counts_and_the_papers_values(seed_run: tuple[dict, bytes]) -> None:
    r, _ = seed_run
    assert set(r["runs"]) == {"v4.12", "v4.13"}
    for run in r["runs"].values():
        for key in ("csd_enqueues", "ipis_sent", "cal_interrupts", "throughput_kb_s"):
            assert run[key] > 0, key
        assert run["pages_reused_before_flush"] == 0
    assert r["paper"]["ipi_reduction"] == 0.88 and r["paper"]["throughput_gain"] == 0.15
    assert r["wall_seconds"] > 0 and r["csds_per_second"] > 0
    assert r["workload"]["threads"] == 16
    assert all("source" in c and c["ns"] >= 0 for c in r["costs"].values())


def test_headline_ratios_follow_from_the_runs(seed_run: tuple[dict, bytes]) -> None:
    """Recompute both ratios from the per-kernel rates with the formulas stated in the docs."""
    r, _ = seed_run
    w = r["workload"]
    before, after = r["runs"]["v4.12"], r["runs"]["v4.13"]

    def cal_per_page(run: dict) -> float:
        return run["rates"]["cal_interrupts"]["per_second"] / run["rates"]["pages_written"]["per_second"]

    def whole_run_kb_s(run: dict) -> float:
        total_kb, ram_kb = w["memory_gb"] * 2**20, w["ram_gb"] * 2**20
        seconds = ram_kb / run["fill_throughput_kb_s"] + (total_kb - ram_kb) / run["reclaim_throughput_kb_s"]
        return total_kb / seconds

    assert math.isclose(r["ipi_reduction"], 1 - cal_per_page(after) / cal_per_page(before), rel_tol=1e-9)
    for run in (before, after):
        assert math.isclose(run["throughput_kb_s"], whole_run_kb_s(run), rel_tol=1e-9)
        assert math.isclose(run["reclaim_throughput_kb_s"],
                            run["rates"]["pages_written"]["per_second"] * 4, rel_tol=1e-9)
        # Counts and rates describe the same window.
        assert math.isclose(run["rates"]["cal_interrupts"]["per_second"] * run["sim_seconds"],
                            run["cal_interrupts"], rel_tol=1e-9)
    assert math.isclose(r["throughput_gain"], after["throughput_kb_s"] / before["throughput_kb_s"] - 1,
                        rel_tol=1e-9)
    # Before the patch every CSD sends an IPI; after it, far fewer IPIs than CSDs.
    assert before["ipis_sent"] >= 0.99 * before["csd_enqueues"]
    assert after["ipis_sent"] < 0.5 * after["csd_enqueues"]
    # Every interrupt taken or merged in the window was sent in it, or was already on its way or pending when the
    # window began: at most one IPI from each usemem thread's one shootdown to each other thread's CPU, and one
    # pending vector per CPU.
    threads = w["threads"]
    before_window = threads * (threads - 1) + len(before["per_cpu_interrupts"])
    assert before["cal_interrupts"] + before["apic_merged"] <= before["ipis_sent"] + before_window


def test_plot_is_a_png(seed_run: tuple[dict, bytes]) -> None:
    _, png = seed_run
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 20_000  # four panels, not an empty canvas


def test_human_output_shows_both_kernels_and_the_paper() -> None:
    proc = ipilab("reproduce", "seed", *SHORT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in ("v4.12", "v4.13", "CAL interrupts", "paper -88%", "paper +15%", "Where the saving comes from"):
        assert text in out, text


@pytest.mark.parametrize(("setting", "words"), [
    ("threads=87", ["threads", "87"]),
    ("bogus=1", ["bogus", "unknown"]),
    ("sockets=0", ["sockets"]),
    ("flush=sometimes", ["flush"]),
    ("icr_write=fast", ["icr_write", "nanoseconds"]),
    ("memory_gb=10", ["memory_gb", "ram_gb"]),
])
def test_bad_settings_fail_in_one_line(setting: str, words: list[str]) -> None:
    assert_user_error(ipilab("reproduce", "seed", "--set", setting), *words)


def test_plot_into_a_missing_folder_fails_before_running(tmp_path) -> None:
    assert_user_error(ipilab("reproduce", "seed", "--plot", str(tmp_path / "no" / "x.png")), "--plot")


def test_same_seed_same_numbers_and_explain_lists_every_cost(seed_run: tuple[dict, bytes]) -> None:
    """A second run with --explain reproduces the first bit for bit, then adds the sensitivity rows."""
    r, _ = seed_run
    proc = ipilab("reproduce", "seed", "--json", "--explain", "--sensitivity-seconds", "0.0005", *SHORT)
    assert proc.returncode == 0, proc.stderr
    e = json.loads(proc.stdout)
    for k in ("v4.12", "v4.13"):
        assert e["runs"][k]["rates"] == r["runs"][k]["rates"]
    assert e["ipi_reduction"] == r["ipi_reduction"]
    rows = {row["cost"]: row for row in e["sensitivity"]}
    # Every cost the workload pays is swept; the ones it never pays on this machine are not.
    assert set(rows) == set(r["costs"]) - {"invlpg", "madvise_syscall", "poll_notice", "idle_exit"}
    for row in rows.values():
        assert row["ns"] == r["costs"][row["cost"]]["ns"] and row["source"]
        for factor in ("x0.5", "x1.5"):
            assert 0 < row[factor]["ipi_reduction"] < 1
    # Halving the interrupt entry cost changes the v4.12 run: the sweep really moves the cost.
    assert rows["irq_entry"]["x0.5"] != rows["irq_entry"]["x1.5"]
    # The absolute check's lock table has a row per published lock, every one of them in the default model.
    locks = {row["lock"]: row for row in e["absolute"]["locks"]}
    assert set(locks) == {"zone_lock", "si_lock", "lru_lock", "swap_cache_lock", "swap_avail_lock"}
    assert locks["zone_lock"]["model_pct"] > 0 and locks["zone_lock"]["published_pct"] == 11.12
    assert all(locks[k]["model_pct"] > 0 for k in ("zone_lock", "si_lock", "lru_lock"))
    assert sum(row["model_pct"] for row in locks.values()) < 100


def _swap_w_seq(**settings: str) -> dict:
    cfg = build_run(seed_exp.MACHINE, "v4.12", "swap-w-seq", {"threads": "32", **settings}, seconds=0.002,
                    warmup=0.002, intervals=2, seed=1)
    return cfg.simulate()


def test_the_absolute_checks_lock_profile_is_its_runs_spinning() -> None:
    """The model's column of the absolute check's lock table is each lock's spinning in the engine's time use,
    over the reclaiming CPUs' busy time. The locks' own counters (SpinLock.spin_ns, kept apart from the time
    use) must tell the same story; a lock the run does not take has no row; a longer si->lock hold shows."""
    run = _swap_w_seq(zone_lock="true")
    pct = seed_exp.lock_spin_pct(run)
    assert set(pct) == {"lru_lock", "swap_avail_lock", "si_lock", "swap_cache_lock", "zone_lock"}
    cpus = [c for c in run["per_cpu"] if c["comm"] in ("usemem", "kswapd0", "kswapd1")]
    assert len(cpus) == 34  # 32 processes and one kswapd per node
    busy = sum(run["sim_seconds"] * 1e9 - c["time_ns"]["idle"] for c in cpus)
    wc = run["workload_counts"]
    compared = set()
    for prefix, share in pct.items():
        by_counters = 100 * wc[f"{prefix}_spin_ns"] / busy
        if by_counters >= 0.5:  # below, pulling the line (which only the time use counts) weighs too much
            assert share == pytest.approx(by_counters, rel=0.1), prefix
            compared.add(prefix)
    assert {"lru_lock", "si_lock"} <= compared
    without = seed_exp.lock_spin_pct(_swap_w_seq(zone_lock="false"))
    assert "zone_lock" not in without
    longer = seed_exp.lock_spin_pct(_swap_w_seq(zone_lock="false", swap_slot_scan="200"))
    assert longer["si_lock"] > 4 * without["si_lock"] > 0


def test_a_window_too_short_to_write_a_page_says_so() -> None:
    # 160 threads on four sockets are all still in their first reclaim pass after 1 ms.
    proc = ipilab("reproduce", "seed", "--set", "sockets=4", "--set", "numa_nodes=4", "--set", "threads=160",
                  "-s", "0.0005", "--warmup", "0.0005", "-j", "2")
    assert_user_error(proc, "no page was written", "--seconds")
