"""Local mode in one place: ``oarlock call``, JSON lines in, JSON lines out, no broker.

:class:`LocalCall` wires the component, the credential manager and the embedded keys store
for one run; :class:`LocalRun` is the JSON-lines transport. Each input line is a message ``{"body": …, "headers": …}``; each emitted event is written
as one line ``{"event": NAME, "data": PAYLOAD, "input": INDEX}`` (INDEX counts input
lines from 0). A line that is not a JSON object produces an error event for that line
and the other lines still run. Snapshot changes persist across the messages of one run. A
trigger given no line at all runs once with an empty message (a poll), saying so on stderr.
An updateKeys of the refresh engine was already written to the keys store by the engine
(inside the store's lock: the store owns that write); one the function emitted itself is
written here, the moment it is emitted. On stdout their tokens are masked unless
``reveal`` is set.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from oarlock.component.model import Component
from oarlock.credentials.manager import CredentialManager, start_from_stored
from oarlock.errors import ConfigurationError, KeyStoreError, OarlockError
from oarlock.jsonlimits import loads
from oarlock.keys.private import write_private
from oarlock.keys.store import KeyStore, apply_update_keys, open_store
from oarlock.protocol.events import Event, EventName, error_payload
from oarlock.protocol.message import Message
from oarlock.redact import redact
from oarlock.runtime.executor import FunctionRunner


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

    def run_lines(self, lines: Iterable[str]) -> int:
        """Process JSON lines (blank lines are skipped), ``concurrency`` at a time; returns how many there were."""
        numbered = enumerate(line for line in lines if line.strip())
        if self.concurrency == 1:
            count = 0
            for index, line in numbered:
                self._run_line(index, line)
                count += 1
            return count
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="oarlock-call") as pool:
            futures = [pool.submit(self._run_line, i, line) for i, line in numbered]
            for future in futures:
                future.result()
        return len(futures)

    def run_message(self, index: int, message: Message) -> None:
        with self._lock:
            snapshot = dict(self.snapshot)
        self.runner.call(message, self.cfg, snapshot, sink=_LineSink(self, index))

    def _run_line(self, index: int, line: str) -> None:
        try:
            message = _parse_line(index, line)
        except OarlockError as exc:
            self._on_event(index, Event(EventName.ERROR, redact(error_payload(exc))))
            return
        self.run_message(index, message)

    def _on_event(self, index: int, event: Event) -> None:
        if event.name is EventName.UPDATE_KEYS and self.keys is not None and not event.persisted:
            try:
                apply_update_keys(self.keys, event.payload)
            except KeyStoreError as exc:  # the event is still written below: the credential is not lost
                log.error("the keys store did not take an updateKeys of input line %s: %s", index + 1, exc)
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


class _LineSink:
    """The events of one input line."""

    def __init__(self, run: LocalRun, index: int) -> None:
        self._run, self._index = run, index

    def emit(self, event: Event) -> None:
        self._run._on_event(self._index, event)


def _parse_line(index: int, line: str) -> Message:
    data = loads(line, what=f"input line {index + 1}")
    return Message.from_dict(data, where=f"input line {index + 1}")


log = logging.getLogger("oarlock.call")


class LocalCall:
    """Wires component, credentials, keys store and the JSON-lines transport for one run."""

    def __init__(
        self,
        component_dir: str | Path,
        function: str,
        cfg: dict[str, Any],
        *,
        snapshot_path: str | None = None,
        keys_url: str | None = None,
        concurrency: int = 1,
        reveal: bool = False,
        out: IO[str] | None = None,
    ) -> None:
        self.snapshot_path = Path(snapshot_path) if snapshot_path else None
        self.keys = open_store(keys_url) if keys_url else None
        cfg = self._start_from_stored(cfg)
        self.credentials = CredentialManager(coordinator=self.keys)
        component = Component.load(component_dir)
        self.runner = FunctionRunner(component, function, credentials=self.credentials)
        self.runner.init(cfg)
        self.local = LocalRun(
            self.runner,
            cfg,
            out=out or sys.stdout,
            snapshot=self._read_snapshot(),
            keys=self.keys,
            concurrency=concurrency,
            reveal=reveal,
        )

    def _start_from_stored(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The cfg file's credential, or the newest stored one of the same ``_account`` when that one wins.

        The lineage rules of :func:`oarlock.credentials.manager.start_from_stored`: a cfg credential
        whose token was rotated away gives way to the stored one; one that is not in the stored one's
        lineage is a re-authorization: it wins and is stored as the newest version.
        """
        return start_from_stored(cfg, self.keys)

    def _read_snapshot(self) -> dict[str, Any]:
        if self.snapshot_path is None or not self.snapshot_path.exists():
            return {}
        try:
            data = json.loads(self.snapshot_path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"snapshot file {self.snapshot_path} cannot be read as JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"snapshot file {self.snapshot_path} must hold a JSON object")
        return data

    @property
    def is_trigger(self) -> bool:
        return self.runner.spec.kind == "trigger"

    def run(self, lines: Iterable[str]) -> int:
        """Process the lines; returns the number of error events.

        A trigger given no line at all (empty stdin) runs once with an empty message, as a platform's
        poll does, and says so on stderr.
        """
        try:
            if self.local.run_lines(lines) == 0 and self.is_trigger:
                name = self.runner.spec.name
                print(f"oarlock: no input lines: trigger {name} runs once with an empty message", file=sys.stderr)
                self.local.run_message(0, Message())
        finally:
            if self.snapshot_path is not None:
                write_private(self.snapshot_path, json.dumps(self.local.snapshot, ensure_ascii=False, indent=2) + "\n")
            self.credentials.close()  # a credential the store could not take gets a last try
            if self.keys is not None:
                self.keys.close()
        return self.local.errors
