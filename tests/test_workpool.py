"""The function threads: bounded, started on need, never losing an item."""

from __future__ import annotations

import threading
import time

import pytest

from oarlock.workpool import WorkPool


def test_every_item_is_handled_once_and_no_more_threads_than_the_size_run() -> None:
    seen: list[int] = []
    running = 0
    peak = 0
    lock = threading.Lock()

    def handle(item: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1
            seen.append(item)

    pool: WorkPool[int] = WorkPool(4, handle, name="test")
    for n in range(200):
        pool.submit(n)
    deadline = time.monotonic() + 10
    while len(seen) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == list(range(200))
    assert peak <= 4
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
