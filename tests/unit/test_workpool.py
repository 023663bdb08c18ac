"""The function threads: bounded, started on need, never losing an item."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from oarlock.runtime.workpool import WorkPool


class Sleeper:
    """A handler that sleeps per item, recording what finished and the most items held at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished: list[int] = []
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, item: int) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
            self.finished.append(item)


def test_every_item_is_handled_once_and_no_more_threads_than_the_size_run() -> None:
    sleeper = Sleeper(0.002)
    pool: WorkPool[int] = WorkPool(4, sleeper, name="test")
    run_all(pool, 200, sleeper.finished)
    assert sleeper.peak <= 4
    assert len([t for t in threading.enumerate() if t.name.startswith("test-")]) <= 4
    pool.shutdown()


def test_threads_start_only_when_no_thread_is_idle() -> None:
    done = threading.Event()
    pool: WorkPool[int] = WorkPool(8, lambda item: done.set(), name="lazy")
    for _ in range(20):
        done.clear()
        pool.submit(1)
        assert done.wait(5)
        time.sleep(0.005)  # the thread is idle again before the next item
    assert len([t for t in threading.enumerate() if t.name.startswith("lazy-")]) == 1
    pool.shutdown()


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


def timer_schedule(delay: float, fn: Callable[[], None]) -> None:
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()


def run_all(pool: WorkPool[int], count: int, finished: list[int]) -> None:
    for n in range(count):
        pool.submit(n)
    deadline = time.monotonic() + 60
    while len(finished) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(finished) == list(range(count))


def test_a_function_that_waits_gets_a_thread_for_every_waiting_item() -> None:
    waits_on_io = Sleeper(0.2)
    pool: WorkPool[int] = WorkPool(16, waits_on_io, name="waits", schedule=timer_schedule)
    run_all(pool, 64, waits_on_io.finished)
    assert pool.target == 16
    assert waits_on_io.peak == 16
    pool.shutdown()


def test_a_function_that_computes_keeps_to_few_threads() -> None:
    finished: list[int] = []

    def compute(item: int) -> None:
        until = time.thread_time() + 0.001
        while time.thread_time() < until:
            pass
        finished.append(item)

    pool: WorkPool[int] = WorkPool(32, compute, name="computes", schedule=timer_schedule)
    run_all(pool, 1500, finished)
    print(f"threads started for a computing function: {pool.threads} of 32, target {pool.target}")
    assert pool.threads <= 8
    pool.shutdown()
