"""``/healthz`` and ``/readyz``: is the process alive and its I/O loop turning; is it connected and consuming.

Both answers are cheap: nothing is asked of the broker or of any store when a probe comes. The
I/O loop's pulse is a :class:`Heartbeat`: a callback the loop itself runs every second notes the
time, so a loop that is stuck (a blocked callback, a dead thread) stops beating and ``/healthz``
answers 503 once the last beat is older than ``stale_after`` (5 s). ``/readyz`` is 200 while the
transport says it is connected and consuming (and the loop beats), 503 otherwise: after the broker
closed the connection, until the reconnect has its consumer back; while the worker is stopping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

Schedule = Callable[[float, Callable[[], None]], None]
BEAT_SECONDS = 1.0
STALE_AFTER_SECONDS = 5.0


class LoopTransport(Protocol):
    """What health needs of a transport: a way to run a callback on its I/O loop (``AmqpTransport`` has it)."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...


T = TypeVar("T", bound=LoopTransport)


class Heartbeat:
    """A callback the I/O loop runs every ``interval`` seconds notes the time (``clock``: monotonic seconds)."""

    def __init__(
        self, schedule: Schedule, *, interval: float = BEAT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._schedule, self.interval, self._clock = schedule, interval, clock
        self.last = clock()  # starting counts as a beat: the loop has had no time to turn yet
        self.beats = 0

    def start(self) -> None:
        self._schedule(0.0, self._beat)

    def _beat(self) -> None:
        self.last = self._clock()
        self.beats += 1
        self._schedule(self.interval, self._beat)

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self.last


class Health:
    """Two checks, each returning None when fine or the reason it is not (one line, no secret)."""

    def __init__(self, live: Callable[[], str | None], ready: Callable[[], str | None]) -> None:
        self.live, self.ready = live, ready


class LoopHealth(Health, Generic[T]):
    """The health of a process around one transport, which may appear later (``keys serve`` connects in ``run``).

    ``consuming(transport)`` says whether it is connected and consuming. Until ``transport()``
    returns one, the process is alive (starting) and not ready; the heartbeat starts on the
    transport's loop the first time it is seen.
    """

    def __init__(
        self,
        transport: Callable[[], T | None],
        consuming: Callable[[T], bool],
        *,
        stale_after: float = STALE_AFTER_SECONDS,
        interval: float = BEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(self._live, self._ready)
        self._transport, self._consuming = transport, consuming
        self.stale_after, self._interval, self._clock = stale_after, interval, clock
        self._heartbeat: Heartbeat | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the heartbeat now if the transport is there (else at the first probe that finds it)."""
        self._beating()

    def _beating(self) -> Heartbeat | None:
        with self._lock:
            if self._heartbeat is None:
                transport = self._transport()
                if transport is None:
                    return None
                self._heartbeat = Heartbeat(transport.call_later, interval=self._interval, clock=self._clock)
                self._heartbeat.start()
            return self._heartbeat

    def _live(self) -> str | None:
        heartbeat = self._beating()
        if heartbeat is None:
            return None  # starting: alive, not connected yet
        age = heartbeat.age()
        if age > self.stale_after:
            return f"the I/O loop has not turned for {age:.1f} s"
        return None

    def _ready(self) -> str | None:
        transport = self._transport()
        if transport is None:
            return "starting: not connected to the broker yet"
        stuck = self._live()
        if stuck is not None:
            return stuck
        if not self._consuming(transport):
            return "not connected to the broker and consuming"
        return None
