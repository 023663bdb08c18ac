"""A keys store whose failed calls are counted: ``oarlock_keys_store_errors_total{operation}``.

:class:`MeteredStore` stands in front of the store ``oarlock run --metrics`` opened and hands every
call through unchanged; a call that raises :class:`~oarlock.errors.KeyStoreError` is counted under
the method's name (a bounded set: :data:`~oarlock.metrics.run.STORE_OPERATIONS`) and the error goes
on as it was. A refresh's write retried four times that fails four times counts four. A lock counts
a failure to take or release it, never an error raised by the code it guards (that code's own calls
count themselves). Without metrics the store is used directly: nothing in between.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from oarlock.errors import KeyStoreError

Count = Callable[[str], None]


class MeteredStore:
    """``store``'s methods, each failure counted by ``count(operation)``."""

    def __init__(self, store: Any, count: Count) -> None:
        self._store = store
        self._count = count

    @property
    def inner(self) -> Any:
        return self._store

    def lock(self, *args: Any, **kwargs: Any) -> _CountedLock:
        try:
            held = self._store.lock(*args, **kwargs)
        except KeyStoreError:
            self._count("lock")
            raise
        return _CountedLock(held, self._count)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get", *args, **kwargs)

    def save(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("save", *args, **kwargs)

    def _call(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._store, operation)(*args, **kwargs)
        except KeyStoreError:
            self._count(operation)
            raise

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except KeyStoreError:
                self._count(name)
                raise

        return counted

    def __repr__(self) -> str:  # the store's own (a safe URL): messages name the store by it
        return repr(self._store)


class _CountedLock:
    """The store's lock; a KeyStoreError of taking or releasing it is counted."""

    def __init__(self, held: Any, count: Count) -> None:
        self._held, self._count = held, count

    def __enter__(self) -> None:
        try:
            self._held.__enter__()
        except KeyStoreError:
            self._count("lock")
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool | None:
        try:
            return bool(self._held.__exit__(kind, error, trace))
        except KeyStoreError as raised:
            if raised is not error:  # the guarded code's own error passing through is not the lock's
                self._count("lock")
            raise
