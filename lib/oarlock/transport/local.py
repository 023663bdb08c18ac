"""The embedded transport: JSON lines in, JSON lines out, no broker.

Each input line is a message ``{"body": …, "headers": …}``; each emitted event is written
as one line ``{"event": NAME, "data": PAYLOAD, "input": INDEX}`` (INDEX counts input
lines from 0). A line that is not a JSON object produces an error event for that line
and the other lines still run. Snapshot changes persist across the messages of one run.
updateKeys events are written to the keys store (when one is configured) the moment they
are emitted, before the line that caused them is finished; on stdout their tokens are
masked unless ``reveal`` is set.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any

from oarlock.credentials.redact import redact
from oarlock.errors import DecodeError, OarlockError
from oarlock.events import Event, EventName, error_payload
from oarlock.executor import FunctionRunner
from oarlock.message import Message

if TYPE_CHECKING:
    from oarlock.keys.store import KeyStore


class LocalRun:
    """Runs messages through a FunctionRunner and writes their events as JSON lines."""

    def __init__(
        self,
        runner: FunctionRunner,
        cfg: dict[str, Any],
        *,
        out: IO[str],
        snapshot: dict[str, Any] | None = None,
        keys: KeyStore | None = None,
        concurrency: int = 1,
        reveal: bool = False,
    ) -> None:
        self.runner = runner
        self.cfg = cfg
        self.out = out
        self.snapshot: dict[str, Any] = dict(snapshot or {})
        self.keys = keys
        self.concurrency = max(1, concurrency)
        self.reveal = reveal
        self.errors = 0
        self.events = 0
        self._lock = threading.Lock()

    def run_lines(self, lines: Iterable[str]) -> None:
        """Process JSON lines (blank lines are skipped), ``concurrency`` at a time."""
        numbered = ((i, line) for i, line in enumerate(line for line in lines if line.strip()))
        if self.concurrency == 1:
            for index, line in numbered:
                self._run_line(index, line)
            return
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="oarlock-call") as pool:
            for future in [pool.submit(self._run_line, i, line) for i, line in numbered]:
                future.result()

    def run_message(self, index: int, message: Message) -> None:
        with self._lock:
            snapshot = dict(self.snapshot)
        self.runner.call(message, self.cfg, snapshot, sink=lambda event: self._on_event(index, event))

    def _run_line(self, index: int, line: str) -> None:
        try:
            message = _parse_line(index, line)
        except OarlockError as exc:
            self._on_event(index, Event(EventName.ERROR, redact(error_payload(exc))))
            return
        self.run_message(index, message)

    def _on_event(self, index: int, event: Event) -> None:
        if event.name is EventName.UPDATE_KEYS and self.keys is not None:
            from oarlock.keys.store import apply_update_keys

            apply_update_keys(self.keys, event.payload)
        with self._lock:
            self.events += 1
            if event.name is EventName.ERROR:
                self.errors += 1
            elif event.name is EventName.SNAPSHOT:
                self.snapshot = dict(event.payload)
            elif event.name is EventName.UPDATE_SNAPSHOT:
                self.snapshot.update(event.payload)
            data = event.payload_json()
            if event.name is EventName.UPDATE_KEYS and not self.reveal:
                data = redact(data)
            line = {"event": event.name.value, "data": data, "input": index}
            self.out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
            self.out.flush()


def _parse_line(index: int, line: str) -> Message:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise DecodeError(f"input line {index + 1} is not valid JSON: {exc}") from None
    return Message.from_dict(data, where=f"input line {index + 1}")
