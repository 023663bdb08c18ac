"""The threads that run a component's function: a fixed number, fed from one queue.

Lighter than ``concurrent.futures.ThreadPoolExecutor`` for the worker's use (no Future per
message, nobody waits on a result): the I/O thread puts a delivery on the queue and one idle
thread takes it. Threads start on first need, up to ``size``.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
_STOP = object()
log = logging.getLogger("oarlock.workpool")


class WorkPool(Generic[Item]):
    def __init__(self, size: int, handler: Callable[[Item], None], *, name: str) -> None:
        self.size = max(1, size)
        self._handler = handler
        self._name = name
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, item: Item) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the work pool is shut down")
            start = self._idle == 0 and len(self._threads) < self.size
            if start:
                thread = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
            else:
                self._idle -= 1  # the put below wakes one of them
        self._queue.put(item)
        if start:
            thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._handler(item)  # type: ignore[arg-type]
            except BaseException:  # even SystemExit from a function must not shrink the pool silently
                log.exception("a work item failed outside the function's own error handling")
            finally:
                with self._lock:
                    self._idle += 1

    def shutdown(self) -> list[Item]:
        """Stop the threads once their current item is done; returns the items nobody started."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        unstarted: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                unstarted.append(item)  # type: ignore[arg-type]
        for _ in threads:
            self._queue.put(_STOP)
        return unstarted
