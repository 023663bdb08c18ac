"""The threads that run a component's function: up to ``size``, as many awake as help.

Waking a thread for every message costs a context switch and a fight for the GIL: for a
function that mostly computes, one thread taking the messages one after the other is faster
than a hundred taking turns. For a function that mostly waits (an HTTP call), every waiting
message should have its own thread. At most ``target`` threads hold an item (the others
sleep, waiting items queue), and while items queue a check every ``interval`` moves
``target`` (between 1 and ``size``):

* the process used less than ``grow_below`` of a CPU since the last check: the threads are
  mostly waiting, so ``target`` doubles at once;
* otherwise ``target`` is probed, once every ``hold`` seconds, up and down in turn: doubled
  and kept only if items then finish at least ``gain`` times faster (a saturated interpreter
  gains nothing from more threads; a function half waiting, half computing may), or halved
  and kept if items finish nearly as fast (fewer threads doing the same work is better).

Without a ``schedule`` function (no event loop to run the checks) every item gets a thread,
up to ``size``. The measurements read ``clock`` (wall seconds, default ``time.monotonic``)
and ``cpu_clock`` (the process's CPU seconds, default ``time.process_time``); a test passes
its own to drive the rules deterministically.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Schedule = Callable[[float, Callable[[], None]], None]
log = logging.getLogger("oarlock.workpool")
_STOP = object()


class WorkPool(Generic[Item]):
    def __init__(
        self,
        size: int,
        handler: Callable[[Item], None],
        *,
        name: str,
        schedule: Schedule | None = None,
        interval: float = 0.01,
        grow_below: float = 0.5,
        gain: float = 1.25,
        hold: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.size = max(1, size)
        self._handler = handler
        self._name = name
        self._schedule = schedule
        self._interval = interval
        self._grow_below, self._gain, self._hold = grow_below, gain, hold
        self._clock, self._cpu_clock = clock, cpu_clock
        self.target = self.size if schedule is None else 1
        self._measured_at = (clock(), cpu_clock())  # the last check
        self._window = _Window(clock(), 0)  # completions counted since, for probes
        self._probe: _Probe | None = None
        self._hold_until = 0.0
        self._probe_up_next = True
        self._completed = 0
        self._wakeups: queue.SimpleQueue[Any] = queue.SimpleQueue()  # an item put here wakes an idle thread
        self._backlog: collections.deque[Item] = collections.deque()  # taken by threads already awake
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads blocked on _wakeups, minus items already put there for them
        self._running = 0  # threads holding an item
        self._check_scheduled = False
        self._closed = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, item: Item) -> None:
        """Queue an item (from the thread that runs ``schedule``'s loop, when there is one)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the work pool is shut down")
            if self._running < self.target:
                self._hand_over(item)
                return
            self._backlog.append(item)
            if self._check_scheduled or self._schedule is None:
                return
            self._check_scheduled = True
            self._measured_at = (self._clock(), self._cpu_clock())
            self._window = _Window(self._measured_at[0], self._completed)
        self._schedule(self._interval, self._check)

    def _check(self) -> None:
        with self._lock:
            self._check_scheduled = False
            if not self._backlog or self._closed:
                return
            self._steer()
            while self._backlog and self._running < self.target:
                if not self._hand_over(self._backlog.popleft()):
                    break
            self._check_scheduled = True
        if self._schedule is not None:
            self._schedule(self._interval, self._check)

    def _steer(self) -> None:
        """Move ``target`` (lock held, every ``interval`` while items queue)."""
        wall, cpu = self._clock(), self._cpu_clock()
        busy = (cpu - self._measured_at[1]) / max(wall - self._measured_at[0], 1e-6)
        self._measured_at = (wall, cpu)
        if busy < self._grow_below:
            self._probe = None
            self._grow(wall)
            return
        window = self._window
        finished, elapsed = self._completed - window.completed, wall - window.started
        if elapsed < 0.1 or (finished < 4 * self.target and elapsed < 0.3):
            return  # too short a window to compare rates yet
        rate = finished / max(elapsed, 1e-6)
        self._window = _Window(wall, self._completed)
        probe = self._probe
        if probe is not None:
            self._probe = None
            kept = rate >= probe.rate_before * (self._gain if probe.up else 0.95)
            if not kept:
                self.target = probe.target_before
            if not (kept and probe.up):  # a doubling that paid off is followed by the next one at once
                self._hold_until = wall + self._hold
            return
        if wall < self._hold_until:
            return
        up = self.target == 1 or (self._probe_up_next and self.target < self.size)
        self._probe_up_next = not up
        self._probe = _Probe(self.target, rate, up)
        if up:
            self._grow(wall)
        else:
            self.target = max(1, self.target // 2)

    def _grow(self, now: float) -> None:
        self.target = min(self.size, max(self.target * 2, self._running + 1))
        self._window = _Window(now, self._completed)

    def _hand_over(self, item: Item) -> bool:
        """Give the item to an idle thread, or a new one; False (item back in front of the backlog) if all are busy."""
        if self._idle > 0:
            self._idle -= 1
        elif len(self._threads) < self.size:
            thread = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        else:
            self._backlog.appendleft(item)
            return False
        self._running += 1
        self._wakeups.put(item)
        return True

    def _loop(self) -> None:
        backlog, lock = self._backlog, self._lock
        while True:
            item = self._wakeups.get()  # counted as running by whoever put it
            if item is _STOP:
                return
            while True:
                try:
                    self._handler(item)
                except BaseException:  # even SystemExit from a function must not shrink the pool silently
                    log.exception("a work item failed outside the function's own error handling")
                with lock:
                    self._completed += 1
                    if backlog and not self._closed and self._running <= self.target:
                        item = backlog.popleft()
                        continue
                    self._running -= 1
                    self._idle += 1
                    break

    def shutdown(self) -> list[Item]:
        """Let the threads end once their current item is done; returns the items nobody started."""
        with self._lock:
            self._closed = True
            unstarted = list(self._backlog)
            self._backlog.clear()
            threads = len(self._threads)
        while True:
            try:
                item = self._wakeups.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                unstarted.append(item)
        for _ in range(threads):
            self._wakeups.put(_STOP)
        return unstarted


@dataclass(frozen=True)
class _Window:
    started: float
    completed: int


@dataclass(frozen=True)
class _Probe:
    target_before: int
    rate_before: float
    up: bool
