"""The calls the credential engine makes for metrics: to :data:`active`, a no-op :class:`Hooks` unless real ones are installed.

The token client and the credential manager are deep inside every function call and are built in
many places (``oarlock run``, ``call``, ``verify``, service mode), so they are not handed a metrics
object: they call ``hooks.active.token_refresh(...)``. With metrics off that is one attribute read and
a call of an empty method (no test of a flag at every call site, nothing computed for a metric nobody
reads). ``oarlock run --metrics`` installs :class:`~oarlock.metrics.run.WorkerMetrics` (a subclass)
with :func:`install`; tests use :func:`installed`. The worker and the transport get their metrics
object explicitly (their metered subclasses are used only when metrics are on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: how a refresh ended (``oarlock_token_refreshes_total``); ``retried`` counts token requests tried again
REFRESH_OUTCOMES = ("ok", "retried", "needs_reauthorization", "rejected", "failed")


class Hooks:
    """The hooks, doing nothing: what every process has unless metrics are on."""

    __slots__ = ()

    def token_refresh(self, outcome: str, attempts: int) -> None:
        """A refresh at the token endpoint ended with ``outcome`` after ``attempts`` token requests."""

    def token_request(self, seconds: float) -> None:
        """One token request took ``seconds`` (answered or not)."""

    def token_rejected(self) -> None:
        """The API rejects a freshly refreshed token (its 401s refresh no more for the cooldown)."""


NOOP = Hooks()
#: the hooks of this process: :data:`NOOP` unless :func:`install` put real ones here
active: Hooks = NOOP


def install(hooks: Hooks) -> Hooks:
    """Make ``hooks`` the process's hooks; returns the ones they replace."""
    global active
    previous, active = active, hooks
    return previous


@contextmanager
def installed(hooks: Hooks) -> Iterator[Hooks]:
    """``hooks`` are the process's hooks inside the block (tests)."""
    previous = install(hooks)
    try:
        yield hooks
    finally:
        install(previous)
