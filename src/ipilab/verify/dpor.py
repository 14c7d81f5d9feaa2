"""The partial-order search: every interleaving up to reordering of independent moves.

Two moves of different CPUs are *independent* when neither writes an object the other reads or writes
(the objects are those explore.py records: each queue, each CSD field, each idle flag, each CPU's IRR,
each (call, target) entry of the record of functions run). Independent moves commute: taken in either
order from one state they lead to one state. Two runs that differ only by swapping adjacent independent
moves are equivalent (one Mazurkiewicz trace): they end in the same state and pass or fail the same
checks, since every check reads only what the moves wrote. So it suffices to run one representative of
every class. That is dynamic partial-order reduction (Flanagan and Godefroid, POPL 2005), here with
source sets and sleep sets (Abdulla, Aronis, Jonsson and Sagonas, POPL 2014):

- Runs are made depth first, noting each move's footprint (its reads and writes) and, by vector clocks,
  which earlier moves it depends on (happens-before).
- A *race* is two dependent moves of different CPUs with no chain of dependencies between them through
  other moves. For each race (e, f) the run could have gone the other way: from the state before e, some
  CPU that can start the reversed order (an *initial* of the moves after e that do not depend on e,
  followed by f) is added to that state's backtrack set, unless one of the initials is already there. A
  race whose reversal is impossible (f was blocked until e: a spin that waits for an unlock, an interrupt
  entry that waits for its IPI) adds nothing.
- A CPU whose move was explored from a state sleeps there: its move need not be tried again after moves
  independent of it (the sleep set), since every such run was covered from where it was first taken.

Every run of the model is finite, so each class of complete runs ends in a state with no move left, and
every class is run: every reachable terminal state, every final IPI count and every check is covered.

The visited set. Runs that meet in one state would explore its successors again; instead, a state
finished once keeps a summary of every access its successors made (one bit per object, read or write,
and CPU). A run that reaches it again treats each of those accesses as a possible race with its own
moves: an access by CPU q comes after q's last move of the run, so only moves that do not happen before
that last move can race with it, and for each such race the state before it gets a CPU to try, as
above (an initial among the run's own moves after it when there is one, else q, else every CPU in the
summary). A state first expanded with CPUs asleep that are awake when it is reached again is expanded
again for those CPUs. Tests hold the result to the full search's (full.py): the same set of
terminal states, compared by their whole identity, on every kernel and on 2- and 3-CPU programs.

What is not preserved is the number of intermediate states: `states` counts those the runs reached.

A violation ends the search: counting every violating state would take the whole search (minutes at 3
CPUs), and the user wants the counterexample. Which run meets a violation first depends on the order
CPUs are tried in, not on its length, so shortest.py's breadth-first `shorten` then looks for a shortest
one: only it proves a length. If it runs out of time, `shorter_runs` searches again, abandoning runs as
long as the shortest violating one found; that finds real counterexamples but proves nothing about
length (an abandoned run hides its later races).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from ipilab.verify.explore import (
    Choice,
    Config,
    ModelMachine,
    Progress,
    Result,
    StateLimitError,
    Violation,
    footprint,
    independent,
    replay,
    without_cycle_collection,
)
from ipilab.verify.shortest import shorten


@dataclass(slots=True)
class _Move:
    cpu: int
    choice: Choice
    reads: frozenset
    writes: frozenset
    seq: int  # the how-many-th move of its CPU in this run (from 1)
    clock: list[int]  # vector clock: clock[c] = how many of CPU c's moves happen before it (itself included)
    bits: int = 0  # its accesses, as bits of an access set (see _Bits)
    conflicts: int = 0  # the accesses of other CPUs that would depend on it


@dataclass(slots=True)
class _Node:
    """A state on the current run: the CPUs that can move there, which to try, which were tried, which
    sleep (with their move's footprint), and every access made by the moves taken from it so far."""

    key: int
    enabled: dict[int, Choice]
    backtrack: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    sleep: dict[int, tuple[frozenset, frozenset]] = field(default_factory=dict)
    slept: frozenset = frozenset()  # the CPUs asleep on arrival (what the visited set records)
    summary: int = 0
    revisit: bool = False  # reached before with more CPUs asleep: only those are tried now
    stack_keys: list | None = None  # its ModelMachine.stack_keys, taken over by a machine replayed to it


class _Bits:
    """Access sets as integers: one bit per (object, read or write, CPU)."""

    def __init__(self, ncpus: int) -> None:
        self.n = ncpus
        self.index: dict[tuple, int] = {}
        self.cpu_masks: list[int] = []  # per CPU, all its bits (grown as objects appear)

    def _base(self, obj: tuple) -> int:
        i = self.index.get(obj)
        if i is None:
            i = self.index[obj] = len(self.index)
            base = 2 * self.n * i
            if not self.cpu_masks:
                self.cpu_masks = [0] * self.n
            for q in range(self.n):
                self.cpu_masks[q] |= (1 << (base + q)) | (1 << (base + self.n + q))
        return 2 * self.n * i

    def of(self, move: _Move) -> None:
        n, cpu, others = self.n, move.cpu, [q for q in range(self.n) if q != move.cpu]
        bits = conflicts = 0
        for obj in move.reads:
            b = self._base(obj)
            bits |= 1 << (b + cpu)
            conflicts |= sum(1 << (b + n + q) for q in others)
        for obj in move.writes:
            b = self._base(obj)
            bits |= 1 << (b + n + cpu)
            conflicts |= sum((1 << (b + q)) | (1 << (b + n + q)) for q in others)
        move.bits, move.conflicts = bits, conflicts

    def cpus_in(self, bits: int) -> list[int]:
        return [q for q, mask in enumerate(self.cpu_masks) if bits & mask]


@without_cycle_collection()
def explore_dpor(config: Config, max_states: int = 3_000_000, shortest: bool = True,
                 keep_terminal_keys: bool = False, progress: Progress | None = None,
                 shortest_seconds: float | None = None, workers: int = 1) -> Result:
    """Every class of equivalent interleavings, each state expanded once (and again only for CPUs that
    slept at its first expansion and are awake when it is reached again; see the module doc), stopping
    at the first violation: its run, cut to what its violation depends on (`causal_past`), is the
    counterexample. With `shortest`, a breadth-first search of every state (`shorten`) then looks for a
    shortest one, for three quarters of `shortest_seconds`: only it can prove a length, and it stops at
    the first depth where a check fails. If it runs out of time first, the partial-order search goes on
    for shorter violating runs (`shorter_runs`) with the rest. `workers`: processes for `shorten`."""
    t0 = time.perf_counter()
    res = Result(config, search="dpor", terminal_keys=set() if keep_terminal_keys else None)
    _search(config, res, max_states, progress)
    res.seconds = time.perf_counter() - t0
    if res.violations and shortest:
        t1 = time.perf_counter()
        shorten(res, max_states, None if shortest_seconds is None else shortest_seconds * 3 / 4, progress,
                workers)
        if not res.shortest:
            left = None if shortest_seconds is None else max(0.0, shortest_seconds - (time.perf_counter() - t1))
            shorter_runs(res, max_states, left, progress)
        res.seconds = time.perf_counter() - t0
    return res


@without_cycle_collection()
def shorter_runs(res: Result, max_states: int, seconds: float | None = None,
                 progress: Progress | None = None) -> None:
    """Look on for violating runs shorter than res's counterexample, for at most `seconds`: the search
    again, abandoning every run once it has as many moves as the shortest violating run found so far.
    What it finds is a counterexample and no more: abandoning runs loses the races their later moves
    would have shown, so a shorter one may exist that it never tries (`shorten` settles that)."""
    assert res.counterexample is not None
    found = Result(res.config, search="dpor", counterexample=res.counterexample,
                   counterexample_violation=res.counterexample_violation)
    t0 = time.perf_counter()
    with contextlib.suppress(StateLimitError):  # keep what it found
        _search(res.config, found, max_states, progress, limit=len(res.counterexample) - 1,
                deadline=None if seconds is None else t0 + seconds)
    res.counterexample, res.counterexample_violation = found.counterexample, found.counterexample_violation
    res.shortest_states += found.states
    res.shortest_seconds += time.perf_counter() - t0


def _search(config: Config, res: Result, max_states: int, progress: Progress | None, limit: int | None = None,
            deadline: float | None = None) -> None:
    """The search. `limit` None: all of it, stopping at the first violation. Otherwise runs of at most
    `limit` moves, each violation lowering it to one less (see shorter_runs), until `deadline`."""
    n = config.ncpus
    bits = _Bits(n)
    m: ModelMachine | None = ModelMachine(config)
    root = _Node(m.key(), _enabled(m), stack_keys=list(m.stack_keys))
    root.backtrack.add(min(root.enabled))
    # Finished states: key -> (every access made from them, the CPUs that slept when they were expanded).
    visited: dict[int, tuple[int, frozenset]] = {}
    nodes, moves = [root], []
    res.states += 1
    while nodes:
        node = nodes[-1]
        todo = node.backtrack - node.done - node.sleep.keys()
        if not todo:
            nodes.pop()
            if node.revisit:
                summary, slept = visited[node.key]
                visited[node.key] = (summary | node.summary, slept & node.slept)
            else:
                visited[node.key] = (node.summary, node.slept)
            if moves:
                nodes[-1].summary |= moves.pop().bits | node.summary
            if m is not None:
                m.dispose()
            m = None  # the machine stands past this state: the next move from an earlier state replays
            continue
        if deadline is not None and res.transitions % 100 == 0 and time.perf_counter() > deadline:
            return
        cpu = min(todo)
        node.done.add(cpu)
        if m is None:
            m = replay(config, [mv.choice for mv in moves], stack_keys=node.stack_keys)
        m.apply(node.enabled[cpu])
        res.transitions += 1
        move = _new_move(moves, cpu, node.enabled[cpu], *footprint(), n)
        bits.of(move)
        _add_backtracks(nodes, moves, move)
        moves.append(move)
        fp = (move.reads, move.writes)
        sleep = {q: f for q, f in node.sleep.items() if independent(f, fp)}
        node.sleep[cpu] = fp
        key = m.key()
        seen = visited.get(key)
        if seen is not None:
            # Its successors were explored from another run: their moves may race with this run's.
            summary, slept = seen
            _add_backtracks_for(nodes, moves, summary, bits)
            node.summary |= move.bits | summary
            if slept <= sleep.keys():
                moves.pop()
                m.dispose()
                m = None
                continue
            # It was expanded with CPUs asleep that are awake now: try those from it.
            child = _Node(key, _enabled(m), sleep=sleep, slept=frozenset(sleep), revisit=True,
                          stack_keys=list(m.stack_keys))
            child.backtrack = set(slept - sleep.keys()) & child.enabled.keys()
            nodes.append(child)
            continue
        if len(visited) + len(nodes) >= max_states:
            raise StateLimitError(f"more than {max_states:,} states; use fewer CPUs or calls, or raise --max-states")
        res.states += 1
        if progress is not None and res.states % 1000 == 0:
            what = "partial-order search" if limit is None else f"partial-order search, runs < {limit + 1} moves"
            progress(what, res.states, len(moves))
        enabled = _enabled(m)
        violation = m.checks(enabled)
        if violation is not None:
            res.executions += 1
            if limit is None:
                # Stop: the rest of the search would only count more violations (minutes at 3 CPUs).
                schedule, violation = causal_past(config, [mv.choice for mv in moves], violation)
                res.add_violation(violation, lambda schedule=schedule: schedule)
                res.complete = False
                return
            if len(moves) <= limit:
                schedule, violation = causal_past(config, [mv.choice for mv in moves], violation)
                res.counterexample, res.counterexample_violation = schedule, violation
                limit = len(schedule) - 1
        elif not enabled:
            res.executions += 1
            res.add_terminal(m, key)
        elif limit is None or len(moves) < limit:
            child = _Node(key, enabled, sleep=sleep, slept=frozenset(sleep), stack_keys=list(m.stack_keys))
            awake = [c for c in enabled if c not in sleep]
            if awake:
                child.backtrack.add(awake[0])
            nodes.append(child)
            continue
        # else: abandoned, as long as the shortest violation found (its successors' races stay unknown)
        visited[key] = (0, frozenset())
        node.summary |= move.bits
        moves.pop()
        m.dispose()
        m = None


def causal_past(config: Config, schedule: list[Choice], violation: Violation) -> tuple[list[Choice], Violation]:
    """A counterexample (`schedule`, breaking `violation`) cut to what its violation needs. When the last
    move broke a check as it ran (not a check of the end state), only the moves it depends on, directly
    or through others, matter: the rest are independent of it and can be left out, as independent moves
    commute. The moves kept, in their order, are replayed; if that run breaks a check (possibly earlier)
    it is returned with the check it breaks, else (the dependencies were not the whole story) the
    counterexample as it was."""
    m = ModelMachine(config)
    footprints = []
    for choice in schedule:
        m.apply(choice)
        footprints.append((choice[1], footprint()))
    if m.violation is None or len(schedule) < 2:
        return schedule, violation
    keep = [False] * len(schedule)
    keep[-1] = True
    for i in range(len(schedule) - 2, -1, -1):
        cpu, fp = footprints[i]
        keep[i] = any(keep[j] and (footprints[j][0] == cpu or not independent(fp, footprints[j][1]))
                      for j in range(i + 1, len(schedule)))
    cut = [choice for choice, kept in zip(schedule, keep, strict=True) if kept]
    m = ModelMachine(config)
    for i, choice in enumerate(cut):
        if choice not in m.choices():
            return schedule, violation
        m.apply(choice)
        if m.violation is not None:
            return cut[:i + 1], m.violation
    return schedule, violation


def _enabled(m: ModelMachine) -> dict[int, Choice]:
    return {choice[1]: choice for choice in m.choices()}


def _new_move(moves: list[_Move], cpu: int, choice: Choice, reads: frozenset, writes: frozenset,
              n: int) -> _Move:
    """The move with its vector clock: after its CPU's previous move and after every earlier move it
    depends on."""
    clock = [0] * n
    seq = 1
    for prev in reversed(moves):
        if prev.cpu == cpu:
            clock = list(prev.clock)
            seq = prev.seq + 1
            break
    clock[cpu] = seq
    return _Move(cpu, choice, reads, writes, seq, clock)


def _depends(a: _Move, b: _Move) -> bool:
    return not independent((a.reads, a.writes), (b.reads, b.writes))


def _happens_before(a: _Move, b: _Move) -> bool:
    return b.clock[a.cpu] >= a.seq


def _add_backtracks(path: list[_Node], moves: list[_Move], new: _Move) -> None:
    """Find the races of `new` with the run so far (latest first, so a move that happens before a later
    dependent one is no race), give each a way to be reversed, and complete `new`'s clock."""
    clock = new.clock
    for i in range(len(moves) - 1, -1, -1):
        e = moves[i]
        if e.cpu == new.cpu or not _depends(e, new):
            continue
        if clock[e.cpu] < e.seq:
            _reverse(path[i], moves, i, new)
        for c, v in enumerate(e.clock):
            if v > clock[c]:
                clock[c] = v


def _initials(moves: list[_Move], i: int, then: tuple[_Move, ...] = ()) -> list[int]:
    """The CPUs that can start the moves after moves[i] that do not depend on it, followed by `then`:
    those whose first such move depends on none before it."""
    e = moves[i]
    v = [x for x in moves[i + 1:] if not _happens_before(e, x)]
    v.extend(then)
    out: list[int] = []
    for j, x in enumerate(v):
        if x.cpu not in out and not any(_happens_before(y, x) for y in v[:j]):
            out.append(x.cpu)
    return out


def _reverse(before: _Node, moves: list[_Move], i: int, new: _Move) -> None:
    """Make sure the state before moves[i] tries a CPU that can start the run where `new` comes first."""
    startable = [c for c in _initials(moves, i, (new,)) if c in before.enabled]
    if not startable or any(c in before.backtrack for c in startable):
        return
    before.backtrack.add(new.cpu if new.cpu in startable else startable[0])


def _add_backtracks_for(path: list[_Node], moves: list[_Move], summary: int, bits: _Bits) -> None:
    """The run reached a finished state whose successors made the accesses in `summary`. An access by
    CPU q comes after q's last move in this run, so it races with a move e of the run that it depends on
    unless e happens before that last move (and so before all of q's later ones). For each such race, as
    in _reverse, the state before e must try a CPU that can start the reversed order: one of the first
    moves after e that do not depend on it, if there are any (they are initials whatever the successors
    do); otherwise q, or, when q cannot move there, every CPU that made an access in `summary`."""
    last = [[0] * len(bits.cpu_masks) for _ in bits.cpu_masks]  # per CPU, the clock of its last move
    for e in moves:
        last[e.cpu] = e.clock
    for i, e in enumerate(moves):
        hit = summary & e.conflicts
        if not hit:
            continue
        racing = [q for q in bits.cpus_in(hit) if last[q][e.cpu] < e.seq]
        if not racing:
            continue
        before = path[i]
        startable = set(_initials(moves, i)) & before.enabled.keys()
        if startable:
            if not startable & before.backtrack:
                before.backtrack.add(min(startable))
            continue
        for q in racing:
            if q in before.enabled:
                before.backtrack.add(q)
            else:
                before.backtrack.update(c for c in bits.cpus_in(summary) if c in before.enabled)
