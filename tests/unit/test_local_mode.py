"""Local mode (``oarlock call`` in-process): one owner writes each credential update to the keys store."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from oarlock.devprovider import DevProvider
from oarlock.keys.sqlite import SqliteKeyStore
from oarlock.runtime.local import LocalCall
from tests.support import REPO


class CountingStore(SqliteKeyStore):
    """The real SQLite store, counting its writes."""

    writes: list[tuple[str, int]]

    def save(
        self,
        account: str,
        oauth: dict[str, Any],
        version: int,
        response: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> bool:
        self.writes.append((account, version))
        return super().save(account, oauth, version, response, settings)


def local_call(tmp_path: Path, component: Path, function: str, cfg: dict[str, Any]) -> tuple[LocalCall, io.StringIO]:
    out = io.StringIO()
    call = LocalCall(component, function, cfg, keys_url=str(tmp_path / "keys.sqlite"), out=out)
    store = CountingStore(tmp_path / "keys.sqlite")
    store.writes = []
    call.keys = call.local.keys = store
    call.credentials.coordinator = store
    return call, out


def test_a_refresh_by_the_engine_is_written_to_the_store_once_not_again_by_the_local_transport(
    tmp_path: Path,
) -> None:
    with DevProvider() as provider:
        cfg = provider.cfg(account="acct-once")
        cfg["oauth"]["expires_at"] = 1.0  # expired: the request refreshes first
        call, out = local_call(tmp_path, REPO, "request", cfg)
        store = call.keys
        assert isinstance(store, CountingStore)
        errors = call.run([json.dumps({"body": {"path": "/api/me"}})])
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert errors == 0 and events.count("updateKeys") == 1
    assert [account for account, _ in store.writes] == ["acct-once"]


def test_an_update_keys_the_function_emits_itself_is_written_by_the_local_transport_once(tmp_path: Path) -> None:
    component = tmp_path / "component"
    (component / "lib").mkdir(parents=True)
    (component / "component.json").write_text(
        json.dumps({"title": "t", "actions": {"emit": {"title": "e", "main": "lib/emit.py", "metadata": {}}}})
    )
    (component / "lib" / "emit.py").write_text(
        "def process(msg, cfg, snapshot, ctx):\n"
        "    ctx.emit('updateKeys', {'account': 'acct-own', 'version': 7, 'oauth': {'access_token': 'own-1'}})\n"
    )
    call, _out = local_call(tmp_path, component, "emit", {})
    store = call.keys
    assert isinstance(store, CountingStore)
    assert call.run([json.dumps({"body": {}})]) == 0
    assert store.writes == [("acct-own", 7)]
