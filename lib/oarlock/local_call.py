"""``oarlock call``: one local process running a function over messages, with the embedded keys store."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from oarlock.component import Component
from oarlock.credentials.manager import CredentialManager
from oarlock.errors import ConfigurationError
from oarlock.executor import FunctionRunner
from oarlock.transport.local import LocalRun

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
        self.keys = None
        if keys_url:
            from oarlock.keys.store import open_store

            self.keys = open_store(keys_url)
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
        """Replace a stale credential of the cfg file by the newest stored one for the same ``_account``."""
        account = cfg.get("_account")
        oauth = cfg.get("oauth")
        if self.keys is None or not isinstance(account, str) or not isinstance(oauth, dict):
            return cfg
        stored = self.keys.get(account)
        if stored is None:
            return cfg
        obtained_at = oauth.get("obtained_at")
        cfg_version = (
            int(float(obtained_at) * 1000) if isinstance(obtained_at, (int, float, str)) and _num(obtained_at) else 0
        )
        if stored.version <= cfg_version:
            return cfg
        log.info(
            "account %s: starting from the stored credential (version %s), newer than the cfg file",
            account,
            stored.version,
            extra={"account": account, "version": stored.version},
        )
        return {**cfg, "oauth": dict(stored.oauth)}

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

    def run(self, lines: Iterable[str]) -> int:
        """Process the lines; returns the number of error events."""
        try:
            self.local.run_lines(lines)
        finally:
            if self.snapshot_path is not None:
                self.snapshot_path.write_text(json.dumps(self.local.snapshot, ensure_ascii=False, indent=2) + "\n")
            if self.keys is not None:
                self.keys.close()
        return self.local.errors


def _num(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
