"""Deliveries of one consuming channel between arrival and settlement, acked in as few frames as possible.

A ``basic.ack`` with ``multiple=True`` settles every unsettled delivery up to its tag, so it
may only be sent for a tag when every delivery at or below it is either ready to be acked or
already settled (rejected, or acked on its own). The window tracks exactly that: tags arrive
in increasing order; :meth:`take` returns the highest tag of the run of settled-or-ready
deliveries at the front (one frame for all of them) plus the ready tags behind an unfinished
delivery, which are acked one by one rather than held back. Nothing is ever acked that was
not marked ready.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class AckPlan:
    """What to send: ``basic_ack(through, multiple=True)`` if ``through``, then one ack per ``singles`` tag."""

    through: int | None = None
    singles: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.through is not None or bool(self.singles)


class AckWindow:
    def __init__(self) -> None:
        self._unsettled: collections.deque[int] = collections.deque()
        self._open: set[int] = set()  # the same tags, for lookups
        self._ready: set[int] = set()
        self._settled: set[int] = set()

    def __len__(self) -> int:
        return len(self._unsettled)

    def delivered(self, tag: int) -> None:
        if self._unsettled and tag <= self._unsettled[-1]:
            raise ValueError(f"delivery tag {tag} is not above {self._unsettled[-1]}")
        self._unsettled.append(tag)
        self._open.add(tag)

    def ready(self, tag: int) -> None:
        """The delivery may be acked (it is, at the next :meth:`take`); unknown or settled tags are ignored."""
        if tag in self._open and tag not in self._settled:
            self._ready.add(tag)

    def settled(self, tag: int) -> None:
        """The delivery was settled another way (rejected): later multiple acks may pass over it."""
        if tag in self._open:
            self._ready.discard(tag)
            self._settled.add(tag)

    def take(self) -> AckPlan:
        plan = AckPlan()
        unsettled, ready, settled = self._unsettled, self._ready, self._settled
        while unsettled:
            head = unsettled[0]
            if head in ready:
                ready.discard(head)
                plan.through = head
            elif head in settled:
                settled.discard(head)
            else:
                break
            self._open.discard(unsettled.popleft())
        if ready:
            plan.singles = sorted(ready)
            settled.update(ready)  # acked now, one by one: later runs pass over them
            ready.clear()
        return plan
