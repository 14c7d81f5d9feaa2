"""`ipilab verify`: the model checker on litmus-sized cases worked out by hand, every broken variant caught,
the correct kernels clean, and SPIN (on the Promela export) agreeing.

How the checker counts (explore.py's module doc has the full rules): a *move* is one atomic step of one
CPU's running context -- the kernel model's code from one yield to the next, with steps that touch no
shared state run on into the next one -- or an interrupt entry. An ICR write sets the target's IRR bit
at once; a CPU with interrupts on and a bit pending takes the interrupt before anything else.

The moves of an async smp_call_function_single() from cpu0 to cpu1 on v4.13 (2 CPUs):
  cpu0 T1 csd_lock + fill csd_data, T2 llist_add (found empty; interrupts off for the send),
       T3 ICR write (cpu1's IRR set), T4 interrupts on, the program ends, the idle loop starts and halts.
  cpu1 (empty program) U: task ends, idle loop starts and halts. With the IPI pending: irq entry, then
       H1 irq_entry + llist_del_all (detach), H2 csd_unlock, H3 the function, H4 irq_exit (handler
       returns; interrupts come back on, so the move ends there); if it interrupted the halted idle loop,
       R: hlt returns, the loop halts again.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import multiprocessing
import re
import shutil
import time
from pathlib import Path

import pytest
from test_cli import assert_user_error, ipilab

from ipilab.kernel.features import resolve_kernel
from ipilab.kernel.smp import Smp
from ipilab.verify import shortest
from ipilab.verify.dpor import causal_past, explore_dpor, shorter_runs
from ipilab.verify.explore import (
    Call,
    Config,
    ModelMachine,
    Result,
    Violation,
    default_programs,
    iter_steps,
    replay,
)
from ipilab.verify.full import explore
from ipilab.verify.promela import promela_model, run_spin
from ipilab.verify.shortest import _check_moves, shorten
from ipilab.verify.variants import VARIANTS


def programs(*cpus: str) -> tuple[tuple[Call, ...], ...]:
    """One comma-separated list of calls per CPU ('' = no calls)."""
    return tuple(tuple(Call.parse(c) for c in text.split(",") if c) for text in cpus)


def config(kernel: str, progs: tuple[tuple[Call, ...], ...], variant: str = "none") -> Config:
    return Config(resolve_kernel(kernel), progs, VARIANTS[variant].smp_class if variant != "none" else Smp, variant)


@functools.cache
def explored(kernel: str, progs: tuple[tuple[Call, ...], ...], variant: str = "none") -> Result:
    """One search per case for the whole file (the 3-CPU one takes several seconds)."""
    return explore(config(kernel, progs, variant))


# --- small cases counted by hand ------------------------------------------------------------------------

def test_one_async_call_has_32_states():
    """cpu0: single:async to cpu1; cpu1: nothing. With the moves of the module doc:
    before the IPI (cpu0 at 0, 1 or 2 moves done) cpu1 is either before U or halted: 3 x 2 = 6 states.
    After it (cpu0 at 3 or 4 moves) cpu1 is in one of 13 places: IPI pending before U or while halted (2);
    in the handler before H1, H2, H3 or H4, over either (4 x 2 = 8); done: before U, or halted with hlt to
    return (R), or halted again (3). 2 x 13 = 26. Total 32, one terminal state, exactly 1 IPI."""
    r = explore(config("v4.13", programs("single:async", "")))
    assert (r.states, r.terminal_states, r.violations) == (32, 1, 0)
    assert (r.ipis_min, r.ipis_max) == (1, 1)


def test_the_seed_saves_ipis_only_where_queues_are_shared():
    """cpu0 and cpu1 each call smp_call_function_many(async) on the other two CPUs; cpu2 only receives.
    v4.12 IPIs every target of a mask: 2 + 2 = 4 in every run. v4.13 IPIs a target only if its queue was
    empty: cpu1's and cpu0's queues each get one CSD (always an IPI); cpu2's gets two, and the second
    finds the first still queued (no IPI) unless cpu2's interrupt detached it in between (an IPI):
    3 or 4."""
    progs = programs("many:async", "many:async", "")
    old, new = explored("v4.12", progs), explored("v4.13", progs)
    assert (old.ipis_min, old.ipis_max, old.violations) == (4, 4, 0)
    assert (new.ipis_min, new.ipis_max, new.violations) == (3, 4, 0)


def test_with_two_cpus_v412_and_v413_are_the_same_machine():
    """With 2 CPUs a multi-target call has one target and takes the single-target path (many_single_shortcut)
    in both kernels, so the seed changes nothing: same states, same IPI bounds."""
    progs = default_programs(2, 2)
    old, new = explored("v4.12", progs), explored("v4.13", progs)
    assert (old.states, old.ipis_min, old.ipis_max) == (new.states, new.ipis_min, new.ipis_max)
    assert old.violations == new.violations == 0


@pytest.mark.parametrize("kernel", ["v4.12", "v4.13", "v6.18"])
def test_correct_kernels_are_clean(kernel: str):
    """Every call kind (many/single, wait/async) on 2 CPUs x 2 calls: no violation; every complete run
    sends at least one IPI per call (each call's first target queue starts empty) and at most one per
    target (4 targets in all)."""
    r = explored(kernel, default_programs(2, 2))
    assert r.violations == 0 and r.counterexample is None
    assert r.terminal_states >= 1
    assert 2 <= r.ipis_min <= r.ipis_max <= 4


# --- broken variants: caught, with a shortest counterexample counted by hand -------------------------------

CASES = {
    # cpu0 T1 lock+fill, T2 llist_add, T3 ICR write; cpu1 irq entry, H1 detach, H2 early unlock;
    # cpu0 T4 csd_lock_wait sees it unlocked and returns: the function has not run. 7 moves.
    "unlock-before-func-sync": (programs("many:wait", ""), "early-return", 7),
    # cpu0 T1 lock+fill, T2 ICR write, T3 csd_queue_cpu (reads the CSD); cpu1 irq entry, H1 detach (empty);
    # cpu0 T4 llist_add onto the now empty queue, and its call returns owing cpu1 the IPI it sent too
    # early, with nothing pending there and the handler past its detach: 6 moves. (Checked only at the
    # end, the run had to go on until both CPUs halt: 9.)
    "ipi-before-add": (programs("single:async", ""), "lost-wakeup", 6),
    # cpu0's async call (T1-T5, with its IPI), then its waiting call: T6 lock+fill, T7 sees cpu1's queue
    # non-empty; cpu1 irq entry + H1 detaches it; cpu0 T8 adds to the now empty queue, sends nothing and
    # spins; cpu1 H2-H4, U. 13 moves.
    "check-then-add": (programs("single:async,single:wait", ""), "lost-wakeup", 13),
    # cpu0 T1-T3 (first async call, IPI sent); T4 the second call takes csd_data while the first still
    # holds it. 4 moves.
    "no-csd-lock": (programs("single:async,single:async", ""), "reuse-while-locked", 4),
}


@pytest.mark.parametrize("variant", sorted(CASES))
def test_broken_variant_is_caught_with_a_shortest_counterexample(variant: str):
    progs, kind, moves = CASES[variant]
    cfg = config("v4.13", progs, variant)
    r = explore(cfg)
    assert r.violations >= 1
    assert r.counterexample_violation.kind == kind
    assert len(r.counterexample) == moves
    # The counterexample is real: re-running the schedule, checks on, ends in the violation.
    m = ModelMachine(cfg)
    for move in r.counterexample:
        m.apply(move)
    found = m.violation or (m.terminal_violation() if not m.choices() else None)
    assert found is not None and found.kind == kind
    # ... and the correct kernel on the same programs is clean.
    assert explore(config("v4.13", progs)).violations == 0


def test_lost_wakeup_trace_shows_a_csd_queued_and_never_run():
    """The counterexample's ftrace events, read independently: some CSD has a csd_queue_cpu event after
    which no csd_function_entry of it follows."""
    cfg = config("v4.13", CASES["ipi-before-add"][0], "ipi-before-add")
    r = explore(cfg)
    events = [e for _c, _w, evs in iter_steps(cfg, r.counterexample) for e in evs]
    pending = {}
    for e in events:
        if e.name == "csd_queue_cpu":
            pending[e.fields["csd"]] = e
        elif e.name == "csd_function_entry":
            pending.pop(e.fields["csd"], None)
    assert len(pending) == 1
    names = [e.name for e in events]
    # the IPI went out first, and the one interrupt it caused ran no function
    assert names[0] == "ipi_send_cpu"
    entry = names.index("call_function_single_entry")
    assert names[entry + 1] == "call_function_single_exit"
    assert names.count("call_function_single_entry") == 1


def test_every_variant_is_caught_by_the_default_mix_on_3_cpus_or_fewer():
    """The command's default programs (2 CPUs x 2 calls) catch the three required variants."""
    for variant in ("check-then-add", "ipi-before-add", "unlock-before-func-sync"):
        r = explore(config("v4.13", default_programs(2, 2), variant), shortest=False)
        assert r.violations >= 1, variant
        assert r.counterexample_violation.kind == VARIANTS[variant].expected


# --- the partial-order search against the full one ----------------------------------------------------------

@pytest.mark.parametrize(("kernel", "progs"), [
    ("v4.12", default_programs(2, 2)),
    ("v6.18", default_programs(2, 3)),
    ("v4.12", programs("many:async", "many:async", "")),
    ("v4.13", programs("many:async", "many:async", "")),
    ("v4.13", programs("many:wait", "single:async", "single:wait")),
])
def test_dpor_reaches_exactly_the_end_states_of_the_full_search(kernel: str, progs):
    """A second implementation as the truth: the full search stores every reachable state; the
    partial-order one skips reorderings of independent moves. Both must end in the very same set of
    terminal states (compared by their full identity: memory, code positions, functions run, IPIs)."""
    full = explore(config(kernel, progs), keep_terminal_keys=True)
    dpor = explore_dpor(config(kernel, progs), keep_terminal_keys=True)
    assert dpor.terminal_keys == full.terminal_keys and dpor.terminal_keys
    assert (dpor.ipis_min, dpor.ipis_max, dpor.violations) == (full.ipis_min, full.ipis_max, 0)
    assert dpor.states <= full.states
    if len(progs) == 3:
        assert dpor.states * 3 < full.states  # with 3 CPUs, most moves are independent of a third one


def test_dpor_runs_two_unrelated_pairs_of_cpus_one_after_the_other():
    """cpu0 -> cpu1 and cpu2 -> cpu3, one async single call each: the two pairs share nothing. The full
    search reaches every combination of the two pairs' 32 states (test_one_async_call_has_32_states):
    32 x 32 = 1024. Every move of one pair is independent of every move of the other, so the
    partial-order search runs them in one order only: the first pair's states with the second at its
    start, then the second pair's from the first pair's one end state. If one pair alone takes S states,
    the two take S + S - 1 (the state where the first pair ended and the second starts is shared)."""
    one = explore_dpor(config("v4.13", programs("single:async", "")))
    both_progs = programs("single:async", "", "single:async", "")
    both = explore_dpor(config("v4.13", both_progs))
    assert explore(config("v4.13", both_progs)).states == 32 * 32
    assert one.states < 32
    assert both.states == 2 * one.states - 1
    assert (both.terminal_states, both.ipis_min, both.ipis_max) == (1, 2, 2)


@pytest.mark.parametrize(("kernel", "bounds"), [("v4.12", (6, 9)), ("v4.13", (5, 9))])
def test_three_cpus_two_calls_each_are_clean_with_the_ipi_bounds_worked_out_by_hand(kernel: str, bounds):
    """The issue's size: 3 CPUs x 2 calls, the default mix. cpu0 and cpu2 run many:wait then single:async,
    cpu1 many:async then single:wait; `many` goes to both other CPUs, `single` to the next CPU.
    v4.12: a multi-target call IPIs every target (3 calls x 2 = 6); each single call IPIs only a queue it
    finds empty, and each can find it non-empty (cpu0's to cpu1 behind cpu2's many, cpu1's to cpu2
    behind its own many:async, cpu2's to cpu0 behind cpu1's many:async): 6 to 9.
    v4.13: a target is IPId only when its queue was empty, so at most one IPI per CSD (9 CSDs). At
    least: cpu1's queue gets cpu0's many:wait CSD and later cpu0's single, which is queued only after
    the first ran, i.e. after cpu1 emptied its queue: two IPIs; the same for cpu0's queue (cpu2's
    many:wait, then cpu2's single); cpu2's queue one. 5 to 9."""
    r = explore_dpor(config(kernel, default_programs(3, 2)))
    assert r.violations == 0 and r.terminal_states >= 1
    assert (r.ipis_min, r.ipis_max) == bounds


@pytest.mark.parametrize("variant", sorted(CASES))
def test_dpor_catches_every_variant(variant: str):
    progs, kind, moves = CASES[variant]
    r = explore_dpor(config("v4.13", progs, variant))
    assert r.violations >= 1 and r.counterexample_violation.kind == kind
    assert len(r.counterexample) == moves  # the shortest, as the full search finds it
    assert explore_dpor(config("v4.13", progs)).violations == 0


def plain_bfs(cfg: Config) -> tuple[int | None, int]:
    """A second implementation of the breadth-first search: over every schedule, each state once,
    re-reached by replaying its whole schedule, no sleep sets, no workers. Returns the moves to the first
    state that violates a check (None: none does) and the states reached (every state when none does)."""
    seen = {ModelMachine(cfg).key()}
    level: list[list] = [[]]
    while level:
        deeper = []
        for path in level:
            for choice in replay(cfg, path).choices():
                m = replay(cfg, path)
                m.apply(choice)
                if m.key() in seen:
                    continue
                seen.add(m.key())
                moves = m.choices()
                if m.violation is not None or (not moves and m.terminal_violation() is not None):
                    return len(path) + 1, len(seen)
                if moves:
                    deeper.append([*path, choice])
        level = deeper
    return None, len(seen)


def plain_bfs_shortest(cfg: Config) -> int:
    """The shortest counterexample's moves, by `plain_bfs`."""
    shortest, _ = plain_bfs(cfg)
    assert shortest is not None, "no violation"
    return shortest


LAST_DEPTH_CASES = [(v, "v4.13", progs, kind, moves) for v, (progs, kind, moves) in sorted(CASES.items())] + [
    ("unlock-before-func-sync", "v4.13", default_programs(3, 1), "early-return", 12),
]


@pytest.mark.parametrize(("variant", "kernel", "progs", "kind", "moves"), LAST_DEPTH_CASES)
def test_the_last_depth_checked_without_keys_finds_the_shortest_and_nothing_shorter(variant, kernel, progs,
                                                                                       kind, moves):
    """The breadth-first search only checks its last depth (one move short of the counterexample in
    hand): no keys, and one machine takes a state's independent moves one after another. Handed a run one
    move longer than the shortest (counted by hand in CASES; the 3-CPU one is in docs/verify.md and
    test_a_broken_variant_on_3_cpus_gets_a_shortest_counterexample), that depth is the shortest's: it
    must find a run of that length breaking the case's check, which a fresh machine confirms. Handed one
    exactly as long, the last depth is one move short of any violation: it must find nothing and call
    the run in hand a shortest."""
    cfg = config(kernel, progs, variant)
    for in_hand in (moves + 1, moves):
        res = Result(cfg, counterexample=[("run", 0)] * in_hand,
                     counterexample_violation=Violation("placeholder", "a run of that many moves"))
        shorten(res, 1_000_000)
        assert len(res.counterexample) == res.fewest_moves == moves
        if in_hand > moves:
            assert res.counterexample_violation.kind == kind
            m = ModelMachine(cfg)
            for choice in res.counterexample:
                m.apply(choice)
            assert (m.violation or m.terminal_violation()).kind == kind
        else:
            assert res.counterexample_violation.kind == "placeholder"


@pytest.fixture
def pools(monkeypatch) -> list:
    """The breadth-first search shares out even a depth of 2 states among its workers (2,000 in use, which
    a 2-CPU search never reaches), and they report every new state (not every 1,000), so that a halt or a
    stop reaches them in the middle of a depth; the list fills with every pool started."""
    started: list = []
    real = shortest._Pool.__init__

    def init(self, config, frontier, visited, workers):
        started.append(self)
        real(self, config, frontier, visited, workers)

    monkeypatch.setattr(shortest, "PARALLEL_FROM", 2)
    monkeypatch.setattr(shortest, "TICK", 1)
    monkeypatch.setattr(shortest._Pool, "__init__", init)
    return started


def ended_cleanly(pools: list) -> bool:
    """Every worker of every pool has ended by itself (exit 0), none killed."""
    return all(p.exitcode == 0 for pool in pools for p in pool.procs)


@pytest.mark.parametrize(("variant", "kernel", "progs", "kind", "moves"), LAST_DEPTH_CASES)
def test_the_search_in_several_processes_finds_what_one_finds(pools, variant, kernel, progs, kind, moves):
    """The breadth-first search in 2 and 3 worker processes against itself in one (module doc of
    shortest.py). Handed a run exactly as long as the shortest (CASES, by hand), each must check every
    shorter schedule and find nothing, having made exactly as many distinct states and taken as many
    moves: every state made once, at its least depth, sleeping the same moves, whichever worker made it.
    Handed one 3 moves longer, each must find a run of the shortest length at a depth it expands (not
    only checks), which a fresh machine confirms breaks the case's check."""
    cfg = config(kernel, progs, variant)
    for in_hand in (moves, moves + 3):
        outcomes = []
        for workers in (1, 2, 3):
            res = Result(cfg, counterexample=[("run", 0)] * in_hand,
                         counterexample_violation=Violation("placeholder", "a run of that many moves"))
            taken = shorten(res, 1_000_000, workers=workers)
            found = res.counterexample_violation.kind
            outcomes.append((res.fewest_moves, len(res.counterexample), found,
                             (res.shortest_states, taken) if in_hand == moves else None))
            if in_hand > moves:
                m = replay(cfg, res.counterexample[:-1])
                m.apply(res.counterexample[-1])
                assert (m.violation or m.terminal_violation()).kind == kind
        assert outcomes[0][:3] == (moves, moves, kind if in_hand > moves else "placeholder")
        assert outcomes[1:] == [outcomes[0]] * 2
    assert sorted({len(pool.procs) for pool in pools}) == [2, 3] and ended_cleanly(pools)


@pytest.mark.parametrize(("kernel", "calls"), [("v4.12", 2), ("v4.13", 2), ("v6.18", 2)])
def test_the_search_in_several_processes_makes_every_state_of_a_correct_kernel_once(pools, kernel, calls):
    """2 CPUs x 2 calls of a correct kernel, searched to the end (no run is 200 moves long), in 1, 2 and
    3 processes: every reachable state made once, as many as a plain breadth-first search (a second
    implementation, `plain_bfs`) reaches. Some states there are reached again at a greater depth (a
    polling idle loop that times out), possibly by another worker than the one that made them: that one
    must know them (the merge's new keys) and not make them again. The moves taken must agree too: the
    sleep sets, merged across workers, are those of one process."""
    cfg = config(kernel, default_programs(2, calls))
    violation, truth = plain_bfs(cfg)
    assert violation is None
    outcomes = []
    for workers in (1, 2, 3):
        res = Result(cfg, counterexample=[("run", 0)] * 200,
                     counterexample_violation=Violation("placeholder", "longer than any run"))
        taken = shorten(res, 1_000_000, workers=workers)
        outcomes.append((res.shortest_states, taken))
    assert outcomes[0][0] == truth
    assert outcomes[1:] == [outcomes[0]] * 2
    assert sorted({len(pool.procs) for pool in pools}) == [2, 3] and ended_cleanly(pools)


def test_the_merge_of_one_depth_worked_by_hand():
    """Two workers' new states at one depth, as the merge gets them (key, sleeping CPUs as a bit mask;
    None: an end state). Worker 0 made A (cpu0 asleep) and the end state E; worker 1 made A (cpu0 and
    cpu1 asleep), E and B (cpu1 asleep). A and E were made twice: 2 to take off the states counted.
    A goes to worker 0, which has fewer states of its own (0 against B's 1); worker 1 drops it; A sleeps
    what sleeps in both arrivals (cpu0); E, an end state, is nobody's to expand. Each learns the keys it
    did not make: worker 0 A, E and B (all of worker 1's), worker 1 A and E. The next depth: A and B."""
    pool = shortest._Pool.__new__(shortest._Pool)
    A, B, E = 101, 202, 303
    twice = pool._merge([[(A, 0b01), (E, None)], [(A, 0b11), (E, None), (B, 0b10)]])
    assert twice == 2
    assert pool.verdicts[0] == (set(), {A: 0b01}, [A, E, B])
    assert pool.verdicts[1] == ({A}, {}, [A, E])
    assert pool.size == 2


def test_a_failing_worker_is_reported_and_none_is_left_running(pools, monkeypatch):
    """A worker that raises ends the search with its traceback in the error; the others, told to stop
    in the middle of their depth, end by themselves (none is left to be killed), and no process stays."""
    def broken(*args):
        """Worker 0 (forked before any worker was listed) fails at once; the other checks slowly, so it
        is in the middle of its depth when it is told to stop."""
        if pools and not pools[0].procs:
            raise ValueError("a model bug, in the worker")
        time.sleep(0.05)
        return real(*args)

    real = shortest._check_moves
    monkeypatch.setattr(shortest, "_check_moves", broken)  # runs only at the last depth: in the workers
    variant, kernel, progs, _, moves = LAST_DEPTH_CASES[-1]  # 3 CPUs: a last depth of hundreds of states
    res = Result(config(kernel, progs, variant), counterexample=[("run", 0)] * moves,
                 counterexample_violation=Violation("placeholder", "a run of that many moves"))
    with pytest.raises(RuntimeError, match=r"(?s)breadth-first worker \d failed.*a model bug, in the worker"):
        shorten(res, 1_000_000, workers=2)
    assert len(pools) == 1 and ended_cleanly(pools)
    assert multiprocessing.active_children() == []
    assert res.fewest_moves == moves - 1  # every shorter depth but the last was checked


def test_the_state_budget_stops_the_workers_with_a_true_bound(pools):
    """Out of states part way (the parent halts the workers when their states together pass the budget),
    the search in workers keeps the run in hand and gives a bound that is at most the true shortest (12,
    LAST_DEPTH_CASES). How far past the budget it gets depends on how soon the workers hear the halt, so
    only that it got there is asserted."""
    variant, kernel, progs, _, moves = LAST_DEPTH_CASES[-1]  # 3 CPUs: depths of hundreds of states
    res = Result(config(kernel, progs, variant), counterexample=[("run", 0)] * 20,
                 counterexample_violation=Violation("placeholder", "a run of that many moves"))
    shorten(res, 500, workers=2)
    assert len(pools) == 1 and ended_cleanly(pools)
    assert res.counterexample_violation.kind == "placeholder" and 1 <= res.fewest_moves < moves
    assert res.shortest_states > 500


def test_running_out_of_time_in_the_workers_gives_a_true_bound(pools, monkeypatch):
    """A clock that moves one second per reading (so when the time runs out does not depend on the
    machine; the workers inherit it, each with its own count): the search stops part way through, in
    the workers, and must neither claim the run in hand is a shortest (it is 3 moves longer than the
    true one, CASES) nor give a bound above the truth."""
    ticks = itertools.count()
    monkeypatch.setattr(shortest.time, "perf_counter", lambda: float(next(ticks)))
    progs, _, moves = CASES["check-then-add"]
    res = Result(config("v4.13", progs, "check-then-add"), counterexample=[("run", 0)] * (moves + 3),
                 counterexample_violation=Violation("placeholder", "a run of that many moves"))
    shorten(res, 1_000_000, seconds=40, workers=2)
    assert len(pools) == 1 and ended_cleanly(pools)
    assert res.counterexample_violation.kind == "placeholder" and not res.shortest
    assert 2 < res.fewest_moves <= moves


@pytest.mark.parametrize("variant", sorted(CASES))
def test_checking_a_states_moves_on_one_machine_agrees_with_a_machine_per_move(variant: str):
    """A second implementation of _check_moves: in every state of the case (each reached once, by a plain
    breadth-first search), every move taken on a fresh machine replayed to the state; some move breaks a
    check there exactly when _check_moves, taking the independent ones on one machine, says so."""
    progs, _, _ = CASES[variant]
    cfg = config("v4.13", progs, variant)
    seen, level, states, violating = set(), [[]], 0, 0
    while level:
        deeper = []
        for path in level:
            m = replay(cfg, path)
            m.key()
            truth = False
            for choice in m.choices():
                child = replay(cfg, path)
                child.apply(choice)
                if child.violation is not None or (not child.choices() and child.terminal_violation() is not None):
                    truth = True
                elif child.key() not in seen:
                    seen.add(child.key())
                    deeper.append([*path, choice])
            assert (_check_moves(cfg, path, m, list(m.stack_keys), m.choices()) is not None) == truth, path
            states += 1
            violating += truth
        level = deeper
    assert states > 40 and violating >= 1


def test_searches_leave_no_machine_to_the_cycle_collector():
    """The searches run with Python's cycle collector off and dispose of every machine they drop (each is
    a few hundred objects in reference cycles: generators whose frames refer back to it). Were one kind
    of drop missed, the thousands of machines a search makes would stay as garbage until a collection:
    with disposal turned into a no-op, this test's searches leave 253,459 unreachable objects. The
    collector stays off across the test so that no automatic collection hides them."""
    gc.collect()
    gc.disable()
    try:
        explore_dpor(config("v4.13", default_programs(2, 2)))
        explore(config("v4.13", default_programs(2, 2)))
        progs, _, moves = CASES["check-then-add"]
        assert len(explore_dpor(config("v4.13", progs, "check-then-add")).counterexample) == moves
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable < 2000


def test_a_broken_variant_on_3_cpus_gets_a_shortest_counterexample():
    """The command's 3 CPUs x 1 call (cpu0 many:wait, cpu1 many:async, cpu2 many:wait), v4.13 with
    unlock-before-func-sync. The partial-order search stops at its first violation, whose run is long (it
    runs CPUs in order, so cpu0's wait is broken only after much else ran); the breadth-first search then
    finds one as short as a plain breadth-first search over every schedule does, and says it is a shortest.
    Its shape, by hand: cpu0 waits for both targets, so both must unlock early, each in 3 moves of its own
    (interrupt entry, the detach, the early unlock: each touches shared state); everything else in it is
    cpu0's (queue both CSDs, send both IPIs, see both unlocked and return), and cpu1's and cpu2's own
    calls play no part."""
    cfg = config("v4.13", default_programs(3, 1), "unlock-before-func-sync")
    first = explore_dpor(cfg, shortest=False)
    r = explore_dpor(cfg)
    assert r.shortest and len(r.counterexample) == r.fewest_moves == plain_bfs_shortest(cfg) < len(first.counterexample)
    assert not r.complete and r.violations == 1
    per_cpu = [sum(1 for _move, cpu in r.counterexample if cpu == c) for c in range(3)]
    assert per_cpu[1:] == [3, 3]
    m = replay(cfg, r.counterexample[:-1])
    m.apply(r.counterexample[-1])
    assert m.violation is not None and m.violation.kind == "early-return"


def test_a_lost_wakeup_on_3_cpus_is_shown_where_the_owed_ipi_goes_missing():
    """The issue's command: 3 CPUs x 1 call, v4.13, check-then-add. The sender that makes a queue non-empty
    owes its CPU an interrupt; here one returns owing it while nothing else is due to flush that queue, so
    the counterexample ends there instead of where every program ends. The breadth-first search, which
    skips moves asleep, must give exactly the length a plain breadth-first search over every schedule
    (a second implementation: no sleep sets, every state replayed) finds, and say it is a shortest."""
    cfg = config("v4.13", default_programs(3, 1), "check-then-add")
    r = explore_dpor(cfg)
    assert r.shortest and len(r.counterexample) == r.fewest_moves == plain_bfs_shortest(cfg)
    m = replay(cfg, r.counterexample)
    assert m.violation is not None and m.violation.kind == "lost-wakeup" and "owes" in m.violation.message
    # The early check agrees with the end-of-run one: let the run go on (the latest CPU first, then the
    # earliest) with that check off, and it ends with the CSD still queued.
    ends = []
    for pick in (-1, 0):
        m = replay(cfg, r.counterexample)
        m.violation = None
        while moves := m.choices():
            m.apply(moves[pick])
        ends.append(m.terminal_violation())
    assert all(v is not None and v.kind == "lost-wakeup" and "stranded" in v.message for v in ends)


def test_an_ipi_still_pending_keeps_a_csd_that_is_owed_one_from_counting_as_stranded():
    """Litmus, ipi-before-add, cpu0 one single:async call to cpu1, cpu1 idle. cpu0: T1 lock+fill, T2 ICR
    write (cpu1's IRR now holds the vector), T3 csd_queue_cpu, T4 llist_add onto the empty queue, and its
    call returns owing cpu1 an IPI (it sent it too early). But cpu1 has not taken the interrupt yet, so
    the pending vector will flush the CSD. Expected: no check fails after T4, and the run ends clean with
    the function run on cpu1, whatever the order of what is left."""
    cfg = config("v4.13", programs("single:async", ""), "ipi-before-add")
    m = ModelMachine(cfg)
    for _ in range(4):
        m.apply(("run", 0))
    assert m.violation is None
    assert len(m.smp.call_single_queue[1]) == 1 and m.cpus[1].irr
    while moves := m.choices():
        m.apply(moves[-1])
    assert m.violation is None and m.terminal_violation() is None and (0, 0, 1) in m.ran


def test_a_counterexample_is_cut_to_the_moves_its_violation_depends_on():
    """no-csd-lock, cpu0 two single:async calls to cpu1 (CASES: a shortest run has 4 moves). A run of 5:
    cpu0's first call (T1-T3, the IPI sent), cpu1 takes the interrupt, cpu0's T4 takes csd_data while it
    is still locked. The interrupt entry touches only cpu1's IRR, which no later cpu0 move reads, so the
    violation does not depend on it: the cut run is cpu0's 4 moves, and it breaks the same check."""
    cfg = config("v4.13", programs("single:async,single:async", ""), "no-csd-lock")
    run = [("run", 0)] * 3 + [("irq", 1), ("run", 0)]
    assert replay(cfg, run[:-1]).violation is None
    whole = replay(cfg, run).violation
    cut, violation = causal_past(cfg, run, whole)
    assert cut == [("run", 0)] * 4 and violation.kind == "reuse-while-locked"
    m = ModelMachine(cfg)
    for move in cut:
        m.apply(move)
    assert m.violation is not None and m.violation.kind == "reuse-while-locked"


def test_shorter_runs_are_real_counterexamples_and_a_time_boxed_search_a_true_lower_bound():
    """2 CPUs x 2 calls, check-then-add (shortest: 31 moves, docs/verify.md). The partial-order search's looking on
    for shorter runs gives a counterexample no longer than its first one and no shorter than the truth,
    that replays into a lost wakeup. When the breadth-first search then stops early (here: at 300 states),
    that counterexample stays and `fewest_moves` is a bound no counterexample beats: at most the truth."""
    cfg = config("v4.13", default_programs(2, 2), "check-then-add")
    r = explore_dpor(cfg, shortest=False)
    first = len(r.counterexample)
    shorter_runs(r, max_states=100_000)
    truth = plain_bfs_shortest(cfg)
    assert truth == 31
    assert truth <= len(r.counterexample) <= first
    m = replay(cfg, r.counterexample)
    assert not m.choices() and m.terminal_violation().kind == "lost-wakeup"
    found = len(r.counterexample)
    shorten(r, max_states=300)
    assert len(r.counterexample) == found and (r.fewest_moves < found or found == truth)
    assert 1 <= r.fewest_moves <= truth


# --- SPIN on the Promela export ---------------------------------------------------------------------------

needs_spin = pytest.mark.skipif(shutil.which("spin") is None or shutil.which("gcc") is None,
                                reason="SPIN and gcc are installed by .ci/run")


@needs_spin
@pytest.mark.parametrize("variant", ["none", *sorted(CASES)])
def test_spin_agrees_on_violations(variant: str):
    """SPIN finds an assertion violation (or an invalid end state) exactly when the checker does."""
    progs = CASES[variant][0] if variant != "none" else default_programs(2, 2)
    cfg = config("v4.13", progs, variant)
    ours = explore(cfg, shortest=False)
    spin = run_spin(promela_model(cfg))
    assert (spin.errors > 0) == (ours.violations > 0), (spin, ours.violations_by_kind)


@needs_spin
@pytest.mark.parametrize(("kernel", "progs"), [
    ("v4.12", programs("many:async", "many:async", "")),
    ("v4.13", programs("many:async", "many:async", "")),
])
def test_spin_confirms_the_ipi_bounds(kernel: str, progs):
    """SPIN asserts min <= IPIs <= max at the end of every run: it holds with the checker's bounds, and
    tightening either by one is violated (so both bounds are reached).

    State counts are printed, not compared: they cannot be equal in this encoding. SPIN stores a state at
    every Promela statement boundary outside `atomic` blocks (e.g. between the `if` that picks a target
    and its ICR write, and at each pass of the handler's loop), while the checker stores one state per
    move, where a move runs the Python model to its next yield and on through steps that touch nothing
    shared; and SPIN's state vector holds the Promela locals, the checker's the Python generators' locals
    (different sets of variables describing the same position)."""
    r = explored(kernel, progs)
    model = promela_model(config(kernel, progs))
    exact = run_spin(model, lo=r.ipis_min, hi=r.ipis_max)
    assert exact.errors == 0, exact
    assert run_spin(model, lo=r.ipis_min, hi=r.ipis_max - 1).errors == 1
    assert run_spin(model, lo=r.ipis_min + 1, hi=r.ipis_max).errors == 1
    print(f"{kernel} {[[str(c) for c in p] for p in progs]}: checker {r.states} states, SPIN {exact.states}")


# --- the command ----------------------------------------------------------------------------------------

def test_verify_json_names_every_number_and_compares_kernels():
    proc = ipilab("verify", "--cpus", "2", "--calls", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data["kernels"]) == ["v4.12", "v4.13"]
    assert data["violations"] == 0
    for r in data["kernels"].values():
        assert set(data["docs"]) <= set(r)
        assert r["violations"] == 0 and r["counterexample"] is None
        assert r["ipis_min"] <= r["ipis_max"]


def test_verify_json_says_the_search_stopped_and_how_short_the_counterexample_is():
    """cpu0 many:wait, cpu1 many:async on 2 CPUs, unlock-before-func-sync: the 7-move counterexample of
    CASES (cpu1's own call plays no part) is shortest; the search stopped there, so no IPI bounds."""
    proc = ipilab("verify", "-k", "v4.13", "--variant", "unlock-before-func-sync", "--calls", "1", "--json")
    assert proc.returncode == 1, proc.stderr
    r = json.loads(proc.stdout)["kernels"]["v4.13"]
    ce = r["counterexample"]
    assert (r["complete"], r["violations"], r["ipis_min"], r["ipis_max"]) == (False, 1, None, None)
    assert ce["shortest"] is True and ce["moves"] == ce["fewest_moves"] == len(ce["steps"]) == 7
    assert ce["violation"] == "early-return"


def test_verify_variant_exits_1_and_writes_a_trace_analyze_reads(tmp_path: Path):
    trace = tmp_path / "ce.trace"
    pml = tmp_path / "model.pml"
    proc = ipilab("verify", "-k", "v4.13", "--variant", "ipi-before-add", "--trace-out", str(trace),
                  "--promela", str(pml))
    assert proc.returncode == 1, proc.stderr
    assert "lost-wakeup" in proc.stdout
    assert "proctype cpu0" in pml.read_text()
    text = trace.read_text()
    queued = len(re.findall(r": csd_queue_cpu: ", text))
    ran = len(re.findall(r": csd_function_entry: ", text))
    assert queued > ran  # a stranded CSD never runs
    audit = ipilab("analyze", str(trace), "--json")
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["csd_enqueues"] == queued


def test_verify_workers_prove_the_same_shortest_counterexample_as_one_process():
    """The command end to end, in one process and in two workers (real processes: at 3 x 2 a depth holds
    well over 2,000 states): the same violation, the same length, both proven shortest."""
    outcomes = []
    for workers in ("1", "2"):
        proc = ipilab("verify", "-k", "v4.12", "--variant", "ipi-before-add", "--cpus", "3", "--calls", "2",
                      "--json", "--workers", workers)
        assert proc.returncode == 1, proc.stderr
        ce = json.loads(proc.stdout)["kernels"]["v4.12"]["counterexample"]
        outcomes.append((ce["violation"], ce["moves"], ce["fewest_moves"], ce["shortest"]))
        assert ce["shortest_workers"] == int(workers)
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == "lost-wakeup" and outcomes[0][1] == outcomes[0][2] and outcomes[0][3]


@pytest.mark.parametrize(("args", "words"), [
    (["--cpus", "99"], ["--cpus"]),
    (["--mix", "many:maybe"], ["--mix", "many:maybe"]),
    (["-k", "v9.99"], ["v9.99"]),
    (["--variant", "nope"], ["--variant"]),
    (["--promela", "/nonexistent/dir/m.pml"], ["/nonexistent/dir"]),
])
def test_bad_verify_input_is_one_clear_error_line(args: list[str], words: list[str]):
    assert_user_error(ipilab("verify", *args), *words)


def test_promela_refuses_kernels_it_does_not_encode(tmp_path: Path):
    assert_user_error(ipilab("verify", "-k", "v6.18", "--cpus", "2", "--calls", "1", "--promela",
                             str(tmp_path / "m.pml")), "v6.18", "promela")


@pytest.mark.parametrize("variant", ["none", "check-then-add", "ipi-before-add", "unlock-before-func-sync"])
def test_merging_local_steps_loses_no_behaviour(variant: str):
    """The same search with every yield a move of its own (no merging of steps that touch nothing shared)
    reaches more states but the same end states, the same IPI bounds and the same kinds of violation."""
    progs = default_programs(2, 2)
    merged = explored("v4.13", progs, variant) if variant == "none" else explore(config("v4.13", progs, variant))
    cfg = config("v4.13", progs, variant)
    split = explore(Config(cfg.kernel, progs, cfg.smp_class, variant, merge_local_steps=False), shortest=False)
    assert split.states > merged.states
    assert (split.terminal_states, split.ipis_min, split.ipis_max) == \
           (merged.terminal_states, merged.ipis_min, merged.ipis_max)
    assert set(split.violations_by_kind) == set(merged.violations_by_kind)
