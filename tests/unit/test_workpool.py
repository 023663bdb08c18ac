"""The function threads: bounded, started on need, never losing an item, as many awake as the rules say.

How many threads are awake is decided from measurements (wall time, the process's CPU time,
items finished). These tests feed the pool fake clocks, hold and release its items by hand and
run its checks themselves, so each rule is tested step by step, whatever the machine.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from oarlock.runtime.workpool import WorkPool

WAIT = 10.0  # seconds: only reached when a test fails


class Sleeper:
    """A handler that sleeps per item, recording what finished, the most items held at once and by whom."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished: list[int] = []
        self.running = self.peak = 0
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, item: int) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
            self.finished.append(item)


class Gate:
    """A handler that holds every item until the test lets some finish."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.allowed = 0
        self.holding = self.peak = 0
        self.finished: list[int] = []

    def __call__(self, item: int) -> None:
        with self.cond:
            self.holding += 1
            self.peak = max(self.peak, self.holding)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.allowed > 0)
            self.allowed -= 1
            self.holding -= 1
            self.finished.append(item)
            self.cond.notify_all()

    def wait_holding(self, count: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.holding == count, WAIT), f"{self.holding} held, not {count}"

    def let_finish(self, pool: WorkPool[int], count: int) -> None:
        """Let ``count`` held items finish (threads take the next ones as the pool allows) and wait till counted."""
        with self.cond:
            goal = len(self.finished) + count
            self.allowed += count
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: len(self.finished) == goal, WAIT), f"{len(self.finished)} of {goal}"
        wait_counted(pool, goal)

    def open(self) -> None:
        with self.cond:
            self.allowed = 1 << 30
            self.cond.notify_all()


def wait_counted(pool: WorkPool[int], finished: int) -> None:
    """The pool counts an item (and frees its thread) just after the handler returns: wait for that."""
    deadline = time.monotonic() + WAIT
    while pool._completed < finished:
        assert time.monotonic() < deadline, f"the pool counted {pool._completed} finished items, not {finished}"
        time.sleep(0.0005)


class Clocks:
    """The wall clock and the process CPU clock the pool measures with; they move only when the test says."""

    def __init__(self) -> None:
        self.wall, self.cpu = 1_000.0, 10.0

    def monotonic(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def spend(self, seconds: float, *, cpu: float) -> None:
        """``seconds`` pass, during which the process keeps ``cpu`` of a CPU busy."""
        self.wall += seconds
        self.cpu += seconds * cpu


class Checks:
    """The pool's ``schedule``: keeps the check it asks for, to be run by the test."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, delay: float, check: Callable[[], None]) -> None:
        self.pending.append(check)

    def run(self) -> None:
        assert len(self.pending) == 1, "while items queue, exactly one check is scheduled"
        self.pending.pop()()


@contextmanager
def steered_pool(size: int, items: int) -> Iterator[tuple[WorkPool[int], Gate, Checks, Clocks]]:
    """A pool of ``size`` with ``items`` submitted, whose items wait at a gate, checks run by hand, clocks faked."""
    gate, checks, clocks = Gate(), Checks(), Clocks()
    pool: WorkPool[int] = WorkPool(
        size, gate, name="steered", schedule=checks, clock=clocks.monotonic, cpu_clock=clocks.process_time
    )
    try:
        for n in range(items):
            pool.submit(n)
        yield pool, gate, checks, clocks
    finally:
        pool.shutdown()
        gate.open()


STEP = 0.125  # fake seconds between two checks (binary-exact, so the hold period ends on a check)


def changes(targets: list[int]) -> list[int]:
    """The targets one after the other, each repeat left out."""
    return [t for i, t in enumerate(targets) if i == 0 or t != targets[i - 1]]


def test_every_item_is_handled_once_and_no_more_threads_than_the_size_run() -> None:
    sleeper = Sleeper(0.002)
    pool: WorkPool[int] = WorkPool(4, sleeper, name="bounded")
    run_all(pool, 200, sleeper.finished)
    assert sleeper.peak <= 4
    assert sleeper.threads <= {f"bounded-{n}" for n in range(4)}, "no thread beyond the 4th ever ran an item"
    pool.shutdown()


def test_threads_start_only_when_no_thread_is_idle() -> None:
    ran_on: list[str] = []
    done = threading.Event()

    def handle(item: int) -> None:
        ran_on.append(threading.current_thread().name)
        done.set()

    pool: WorkPool[int] = WorkPool(8, handle, name="lazy")
    for n in range(20):
        done.clear()
        pool.submit(n)
        assert done.wait(WAIT)
        wait_counted(pool, n + 1)  # the thread is idle again before the next item
    assert ran_on == ["lazy-0"] * 20
    pool.shutdown()
    gate = Gate()
    busy: WorkPool[int] = WorkPool(8, gate, name="busy")
    busy.submit(0)
    gate.wait_holding(1)
    busy.submit(1)  # the only thread holds an item: a second one starts
    gate.wait_holding(2)
    gate.open()
    busy.shutdown()


def test_a_handler_that_raises_even_system_exit_does_not_shrink_the_pool() -> None:
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 0:
            raise SystemExit(3)
        handled.append(item)

    pool: WorkPool[int] = WorkPool(1, handle, name="sturdy")
    pool.submit(0)
    pool.submit(1)
    deadline = time.monotonic() + 5
    while not handled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert handled == [1]
    pool.shutdown()


def test_shutdown_returns_the_items_never_started_and_refuses_new_ones() -> None:
    release = threading.Event()
    started = threading.Event()

    def handle(item: int) -> None:
        started.set()
        release.wait(5)

    pool: WorkPool[int] = WorkPool(1, handle, name="stopping")
    for n in range(5):
        pool.submit(n)
    assert started.wait(5)
    assert pool.shutdown() == [1, 2, 3, 4]
    release.set()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(9)


def run_all(pool: WorkPool[int], count: int, finished: list[int]) -> None:
    for n in range(count):
        pool.submit(n)
    deadline = time.monotonic() + 60
    while len(finished) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(finished) == list(range(count))


def test_a_function_that_waits_gets_a_thread_for_every_waiting_item() -> None:
    with steered_pool(16, 64) as (pool, gate, checks, clocks):
        assert pool.target == 1
        gate.wait_holding(1)
        targets: list[int] = []
        for _ in range(5):
            clocks.spend(STEP, cpu=0.1)  # 10 % of a CPU: the threads are waiting, not computing
            checks.run()
            targets.append(pool.target)
            gate.wait_holding(pool.target)  # as many items held as the target says, the others queue
        assert targets == [2, 4, 8, 16, 16], "the target doubles at every check, up to the size"
        gate.let_finish(pool, 64)
        assert sorted(gate.finished) == list(range(64))
        assert gate.peak == 16, "every one of the 16 threads held a waiting item at once"


def test_a_function_that_computes_keeps_to_few_threads() -> None:
    # a saturated interpreter: a whole CPU busy, 8 items finished per step however many threads hold items
    with steered_pool(32, 600) as (pool, gate, checks, clocks):
        targets: list[int] = []
        probed_at: list[float] = []
        for _ in range(40):
            clocks.spend(STEP, cpu=1.0)
            gate.let_finish(pool, 8)
            before = pool.target
            checks.run()
            targets.append(pool.target)
            if pool.target > before:
                probed_at.append(clocks.wall)
        print(f"targets of a computing function over {40 * STEP} s: {targets}")
        assert max(targets) == 2 and gate.peak <= 2, "never more than two threads awake"
        assert all(targets[i + 1] == 1 for i, t in enumerate(targets[:-1]) if t == 2), "a useless doubling is undone"
        assert len(probed_at) >= 4, "the pool keeps probing for more threads"
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(probed_at)), "at most one probe per hold"


def test_a_function_that_gains_from_more_threads_keeps_each_doubling_that_pays() -> None:
    # half waiting, half computing: a whole CPU busy, yet every thread holding an item finishes 4 per step
    with steered_pool(8, 1200) as (pool, gate, checks, clocks):
        targets: list[int] = []
        for _ in range(30):
            clocks.spend(STEP, cpu=1.0)
            gate.let_finish(pool, 4 * pool.target)
            checks.run()
            targets.append(pool.target)
        print(f"targets of a function that gains from threads: {targets}")
        # up (2x faster: kept), down at once (2x slower: undone, then hold), up again after the hold ...
        assert changes(targets) == [2, 1, 2, 4, 2, 4, 8, 4, 8]
        assert targets.index(4) - targets.index(2, 3) >= 1.0 / STEP, "after an undone probe the target holds"
        assert pool.target == 8, "the target climbs to the size"
        gate.wait_holding(8)  # and as many items are held at once


def test_a_pool_that_grew_while_waiting_gives_threads_back_when_its_function_computes() -> None:
    with steered_pool(16, 1500) as (pool, gate, checks, clocks):
        for _ in range(4):
            clocks.spend(STEP, cpu=0.1)
            checks.run()
        assert pool.target == 16
        gate.wait_holding(16)
        targets: list[int] = []
        for _ in range(70):  # now a whole CPU busy and 16 items finished per step, however many threads hold items
            clocks.spend(STEP, cpu=1.0)
            gate.let_finish(pool, 16)
            checks.run()
            targets.append(pool.target)
        print(f"targets once the function computes: {targets}")
        # down (as fast: kept), up after the hold (no faster: undone), down again ... to a single thread
        assert changes(targets) == [16, 8, 16, 8, 4, 8, 4, 2, 4, 2, 1, 2]
        assert gate.peak == 16
