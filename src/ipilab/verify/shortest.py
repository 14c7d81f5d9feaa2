"""The breadth-first search for a shortest counterexample (`shorten`), in one process or several.

Only a breadth-first search proves a length: it checks every state depth by depth and stops at the first
depth where some state breaks a check. It saves moves with sleep sets (Godefroid 1996): after taking CPU
q's move from a state, its siblings' moves taken later sleep for q's move where they are independent of
it, and stay asleep down a path as long as each move on it is independent of theirs; a sleeping move is
not taken, since taking it there reaches, in as many moves, a state the earlier order reaches too. A
state first met at depth d by several moves sleeps only what sleeps in every one of them. Every state is
still reached at its least depth: the same depths, far fewer moves taken (and replays).

Several processes (`workers`). Once a depth holds enough states, the search forks: each worker takes a
share of them, with the machines standing in them, and from then on expands the states it made itself
(a machine cannot be sent to another process). After each depth the parent merges the new states the
workers found: a state two workers made is kept by one (the one with fewer states so far, which keeps
them balanced), sleeping what sleeps in both, and every worker learns every new state for its visited
set. Soundness does not depend on where a state is expanded, only on every state being expanded once,
at its least depth, with the sleep set of all its arrivals there: which the merge gives. What differs:
when two workers each find a counterexample at the same depth, the first to report it is shown (both
are shortest).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import psutil

from ipilab.verify.explore import (
    Choice,
    Config,
    ModelMachine,
    Progress,
    Result,
    Violation,
    _successors,
    footprint,
    independent,
    replay,
    without_cycle_collection,
)

# Frontier states keep the machine standing in them (so expanding one replays nothing for its last move)
# up to this many per depth and process; past it they are replayed from the initial state when expanded.
# A machine holds about 48 KB (3 CPUs x 2 calls), so this bounds what they take to under 2 GB per process;
# fewer are kept when the processes' machines would take more than half the memory free when they start
# (`_machines_to_keep`). Keeping 20,000 instead made the slowest search of docs/verify.md 27% slower.
_KEEP_MACHINES = 40_000
_MACHINE_BYTES = 48 * 1024

# A depth with at least this many states is shared out among the workers: below it the fork and the
# merges would cost more than they save (a 3-CPU search passes it by depth 10, a 2-CPU one barely).
PARALLEL_FROM = 2_000

_PHASE = "breadth-first, for a shorter one"

# Progress is reported (and a worker hears whether to stop) every this many new states.
TICK = 1000


@dataclass(slots=True)
class _Waiting:
    """A state of the frontier: the schedule reaching it, the machine standing in it (None: replay it),
    its stack keys (which a replay takes over, see `ModelMachine.adopt_keys`) and its sleep set."""

    path: tuple[Choice, ...]
    machine: ModelMachine | None
    stack_keys: list
    sleep: dict[int, tuple[frozenset, frozenset]]


@dataclass
class _Depth:
    """What expanding one depth's states gave."""

    made: dict[int, _Waiting] = field(default_factory=dict)  # key -> the new state, in the order met
    ended: list[int] = field(default_factory=list)  # the keys of new states with no move left
    states: int = 0  # new states made (at the last depth: moves checked)
    moves: int = 0  # moves taken (each a transition, whether or not its state was new)
    found: tuple[list[Choice], Violation] | None = None
    stopped: str | None = None  # "time", "states" or "halted" (another worker found one): it did not finish


def _expand(config: Config, frontier: list[_Waiting], visited: set[int], last: bool, deadline: float | None,
            budget: int, keep: int, tick: Callable[[int], bool]) -> _Depth:
    """Expand `frontier`'s states (each of the same depth) by one move, in order: a violating new state
    ends it. At the `last` depth (one move short of the counterexample in hand) the moves are only
    checked (`_check_moves`): those states would never be expanded, so they need no key (a third of a
    move's cost) and no place in the visited set. `tick(states)` is called every TICK new states and
    returns whether to stop (another worker found a counterexample, or the states ran out)."""
    out = _Depth()
    for w in frontier:
        if deadline is not None and time.perf_counter() > deadline:
            out.stopped = "time"
            break
        m = w.machine if w.machine is not None else replay(config, list(w.path), stack_keys=w.stack_keys)
        w.machine = None
        moves = [choice for choice in m.choices() if choice[1] not in w.sleep]
        if not moves:
            m.dispose()
            continue
        before = out.states
        out.moves += len(moves)
        if last:
            out.states += len(moves)
            out.found = _check_moves(config, list(w.path), m, w.stack_keys, moves)
        else:
            _expand_one(config, w, m, moves, visited, keep, out)
        if out.found is not None:
            break
        if out.states // TICK != before // TICK and tick(out.states):
            out.stopped = "halted"
            break
        if out.states > budget:
            out.stopped = "states"
            break
    _dispose_made(frontier)  # those not expanded (it stopped early)
    if out.found is not None or out.stopped is not None:
        _dispose_made(out.made.values())
    return out


def _expand_one(config: Config, w: _Waiting, m: ModelMachine, moves: list[Choice], visited: set[int],
                keep: int, out: _Depth) -> None:
    """The new states one move from `w` (whose machine `m` is), into `out`."""
    taken: dict[int, tuple] = {}
    for choice, child in _successors(config, list(w.path), m, moves):
        fp = footprint()
        child_sleep = {q: f for q, f in (w.sleep | taken).items() if independent(f, fp)}
        taken[choice[1]] = fp
        k = child.key()
        if k in visited:
            met = out.made.get(k)
            if met is not None:  # met before at this depth: it sleeps only what sleeps in both
                met.sleep = {q: f for q, f in met.sleep.items() if q in child_sleep}
            child.dispose()
            continue
        visited.add(k)
        out.states += 1
        child_moves = child.choices()
        violation = child.checks(child_moves)
        if violation is not None:
            out.found = ([*w.path, choice], violation)
            child.dispose()
            if child is not m:
                m.dispose()  # it was to take the last move
            return
        if child_moves:
            kept = len(out.made) < keep
            out.made[k] = _Waiting((*w.path, choice), child if kept else None, list(child.stack_keys), child_sleep)
            if kept:
                continue
        else:
            out.ended.append(k)
        child.dispose()


def _dispose_made(made: Iterable[_Waiting]) -> None:
    for w in made:
        if w.machine is not None:
            w.machine.dispose()
            w.machine = None


def _check_moves(config: Config, path: list[Choice], m: ModelMachine, stack_keys: list,
                 moves: list[Choice]) -> tuple[list[Choice], Violation] | None:
    """Whether one of `moves`, taken in the state `m` stands in (reached by `path`), breaks a check: the
    counterexample and its violation if so. For the last depth of the breadth-first search, whose states
    are only checked. Instead of a machine per move (all but one replayed), one machine takes the moves
    one after another as long as each is independent of those taken before it: such a move reads nothing
    they wrote, so it does and checks what it would in `m`'s state, and it reaches no end state (the
    first move's CPU can still move), so no end-of-run check is missed. A move that depends on one taken
    before it waits for the next machine, replayed to `m`'s state; so does one that breaks a check after
    others, so that every violation reported is one found in `m`'s state itself."""
    waiting, machine = moves, m
    while waiting:
        taken: list[tuple[frozenset, frozenset]] = []
        later = []
        for choice in waiting:
            if machine.violation is not None or (taken and choice not in machine.choices()):
                later.append(choice)
                continue
            machine.apply(choice)
            fp = footprint()
            if taken and (machine.violation is not None or not all(independent(fp, f) for f in taken)):
                later.append(choice)
            elif not taken:
                violation = machine.checks(machine.choices())
                if violation is not None:
                    machine.dispose()
                    return [*path, choice], violation
            taken.append(fp)
        machine.dispose()
        waiting = later
        if waiting:
            machine = replay(config, path, stack_keys=stack_keys)
    return None


def default_workers() -> int:
    """One process per CPU this process may run on."""
    return len(os.sched_getaffinity(0))


def _machines_to_keep(workers: int) -> int:
    """Frontier machines each of `workers` processes keeps per depth (see _KEEP_MACHINES)."""
    fits = int(psutil.virtual_memory().available / 2 / _MACHINE_BYTES / workers)
    return min(_KEEP_MACHINES, fits)


@without_cycle_collection()
def shorten(res: Result, max_states: int, seconds: float | None = None, progress: Progress | None = None,
            workers: int = 1) -> int:
    """Look for a counterexample shorter than `res`'s: breadth first over every state, depth by depth,
    stopping at the first depth where some state violates a check, or when `seconds` run out (or the
    states pass `max_states`), or at the depth of the counterexample in hand. Sets `res.fewest_moves` to
    one more than the deepest depth whose every state was checked, and replaces the counterexample when a
    shorter one turns up. `workers` > 1: in that many processes once a depth is large enough (module doc).
    Returns the moves it took (transitions, their states new or not), which the sleep sets decide."""
    t0 = time.perf_counter()
    deadline = None if seconds is None else t0 + seconds
    config = res.config
    assert res.counterexample is not None
    root = ModelMachine(config)
    visited = {root.key()}
    frontier: list[_Waiting] | None = [_Waiting((), root, list(root.stack_keys), {})]
    size, states, moves, depth = 1, 1, 0, 0
    pool: _Pool | None = None
    keep = _machines_to_keep(1)

    def tick(n: int) -> bool:
        if progress is not None:
            progress(_PHASE, states + n, depth)
        return False

    try:
        while size and depth + 1 < len(res.counterexample):
            depth += 1  # of the states made now; every shallower state is checked
            last = depth + 1 == len(res.counterexample)
            if pool is None and workers > 1 and size >= PARALLEL_FROM and frontier is not None:
                pool = _Pool(config, frontier, visited, workers)
                frontier = None
                res.shortest_workers = workers
            if pool is not None:
                out = pool.expand(last, deadline, max_states - states, tick)
                size = pool.size
            else:
                assert frontier is not None
                out = _expand(config, frontier, visited, last, deadline, max_states - states, keep, tick)
                frontier = list(out.made.values())
                size = len(frontier)
            states += out.states
            moves += out.moves
            if out.found is not None:
                res.counterexample, res.counterexample_violation = out.found
                return moves
            if out.stopped is not None or states > max_states:
                return moves
        depth = len(res.counterexample)  # every shorter schedule checked: the one in hand is a shortest
    finally:
        if frontier is not None:
            _dispose_made(frontier)
        if pool is not None:
            pool.close()
        res.fewest_moves = depth
        res.shortest_states += states
        res.shortest_seconds += time.perf_counter() - t0
    return moves


class _Pool:
    """The worker processes of a breadth-first search, each holding its share of the frontier."""

    def __init__(self, config: Config, frontier: list[_Waiting], visited: set[int], workers: int) -> None:
        ctx = multiprocessing.get_context("fork")  # the workers inherit the machines: they cannot be sent
        keep = _machines_to_keep(workers)
        self.conns: list[Connection] = []
        self.procs = []
        self.size = len(frontier)
        for i in range(workers):
            mine, theirs = ctx.Pipe()
            self.conns.append(mine)
            share = frontier[i::workers]
            # The child closes the parent's ends it inherits (its own and the earlier workers'), so that
            # its pipe ends, and it with it, when the parent does.
            p = ctx.Process(target=_worker, args=(theirs, list(self.conns), config, share, visited, keep),
                            daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
        _dispose_made(frontier)  # the workers have their own copies
        self.verdicts: list[tuple[set[int], dict[int, int], list[int]]] = [(set(), {}, []) for _ in range(workers)]

    def expand(self, last: bool, deadline: float | None, budget: int, tick: Callable[[int], bool]) -> _Depth:
        """One depth, every worker its share: their new states merged (module doc)."""
        n = len(self.conns)
        for i, (drop, sleep, learn) in enumerate(self.verdicts):
            self._send(i, ("expand", last, deadline, budget, drop, sleep, learn))
        made = [0] * n
        done: dict[int, tuple] = {}
        out = _Depth()

        def halt_others() -> None:  # their work at this depth is moot now
            for j in range(n):
                if j not in done:
                    self._send(j, ("halt",))

        while len(done) < n:
            for conn in wait([c for i, c in enumerate(self.conns) if i not in done]):
                i = self.conns.index(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise RuntimeError(f"breadth-first worker {i} ended without a word (killed?)") from None
                if msg[0] == "error":
                    raise RuntimeError(f"breadth-first worker {i} failed:\n{msg[1]}")
                if msg[0] == "tick":
                    made[i] = msg[1]
                    tick(sum(made))
                    if sum(made) > budget and out.stopped is None:
                        out.stopped = "states"
                        halt_others()
                    continue
                done[i] = msg
                if msg[1] is not None and out.found is None:
                    out.found = msg[1]
                    halt_others()
        for i in range(n):
            _, _, stopped, states, moves, _ = done[i]
            out.states += states
            out.moves += moves
            if stopped in ("time", "states") and out.stopped is None:
                out.stopped = stopped
        if out.found is None and out.stopped is None:
            out.states -= self._merge([done[i][5] for i in range(n)])
        return out

    def _merge(self, made: list[list[tuple[int, int | None]]]) -> int:
        """Decide which worker keeps each new state and what it sleeps (module doc): per worker, the
        states to drop, the sleep sets (CPU bit masks) to narrow, and the others' new keys. `made`: per
        worker, its new states' keys with their sleep sets (None: an end state, which nobody expands).
        Returns how many states were made twice (or more: counted once per worker that made them)."""
        n = len(made)
        arrivals: dict[int, list[tuple[int, int | None]]] = {}
        for i, states in enumerate(made):
            for key, asleep in states:
                arrivals.setdefault(key, []).append((i, asleep))
        counts = [0] * n
        shared = []
        twice = 0
        for key, where in arrivals.items():
            if where[0][1] is None:
                twice += len(where) - 1
            elif len(where) == 1:
                counts[where[0][0]] += 1
            else:
                shared.append((key, where))
        self.verdicts = [(set(), {}, []) for _ in range(n)]
        for key, where in shared:
            keeper = min((i for i, _ in where), key=lambda i: (counts[i], i))
            counts[keeper] += 1
            asleep = -1
            for i, mask in where:
                asleep &= mask  # type: ignore[operator]
                if i != keeper:
                    self.verdicts[i][0].add(key)
            self.verdicts[keeper][1][key] = asleep
        for i in range(n):
            self.verdicts[i][2].extend(k for j, states in enumerate(made) if j != i for k, _ in states)
        self.size = sum(counts)
        return twice + sum(len(where) - 1 for _, where in shared)

    def _send(self, i: int, msg: tuple) -> None:
        try:
            self.conns[i].send(msg)
        except OSError:
            raise RuntimeError(f"breadth-first worker {i} ended without a word (killed?)") from None

    def close(self) -> None:
        """Stop the workers: each stops at its next tick if it is in the middle of a depth; any still
        running after 5 s (all together) is killed."""
        for conn in self.conns:
            with contextlib.suppress(OSError):  # it ended already
                conn.send(("stop",))
        until = time.monotonic() + 5
        for p in self.procs:
            p.join(timeout=max(0.0, until - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.conns:
            conn.close()


def _worker(conn: Connection, parents: list[Connection], config: Config, frontier: list[_Waiting],
            visited: set[int], keep: int) -> None:
    """A worker's loop: expand its share of each depth when told, after applying the last merge. It
    ends when told to stop, or when the parent is gone (its pipe ends), quietly: the parent reports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    for end in parents:
        end.close()
    # The parent may have had a thread writing to these at the fork (a live progress display): their
    # locks could be held forever here, and the exit flushes them. The worker writes nothing anyway.
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    stopping = False
    try:
        made: dict[int, _Waiting] | None = None  # what the last depth made (None: `frontier` is the first)
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                return
            if msg[0] == "halt":
                continue  # came after it finished the depth, or after it stopped on its own
            _, last, deadline, budget, drop, sleep, learn = msg
            if made is not None:
                for key in drop:
                    w = made.pop(key)
                    if w.machine is not None:
                        w.machine.dispose()
                for key, asleep in sleep.items():
                    w = made[key]
                    w.sleep = {q: f for q, f in w.sleep.items() if asleep >> q & 1}
                frontier = list(made.values())
            visited.update(learn)

            def tick(n: int) -> bool:
                nonlocal stopping
                conn.send(("tick", n))
                if not conn.poll():
                    return False
                stopping = conn.recv()[0] == "stop"  # else "halt"
                return True

            out = _expand(config, frontier, visited, last, deadline, budget, keep, tick)
            if stopping:
                return
            made = out.made
            conn.send(("done", out.found, out.stopped, out.states, out.moves,
                       [(k, sum(1 << q for q in w.sleep)) for k, w in made.items()] + [(k, None) for k in out.ended]))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent is gone
    except Exception:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
