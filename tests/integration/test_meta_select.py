"""`oarlock meta` and `oarlock select` on a component with dynamic metadata and select models, as a user runs them.

The component (tests/components/meta) has an action with ``dynamicMetadata: true`` and select fields whose
models are methods of its module; one of them reads the dev provider's API through ``ctx.http``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from oarlock.devprovider import DevProvider
from oarlock.devprovider.state import ManualClock
from oarlock.keys.store import open_store
from tests.support import TEST_COMPONENTS, provider_cfg, run_cli

META = str(TEST_COMPONENTS / "meta")
SECRET_KEY = "api-key-that-must-not-show-7f3a"


def run(tmp_path: Path, args: list[str], cfg: dict[str, Any], *keys: str) -> subprocess.CompletedProcess[str]:
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    keys_args = list(keys) or ["--no-keys"]
    return run_cli([*args, "--component", META, "--cfg", str(cfg_path), *keys_args], cwd=tmp_path)


def test_meta_prints_what_get_meta_model_returns_for_the_cfg(tmp_path: Path) -> None:
    done = run(tmp_path, ["meta", "upsert"], {"kind": "company"})
    assert done.returncode == 0, done.stderr
    metadata = json.loads(done.stdout)
    assert sorted(metadata["in"]["properties"]) == ["domain", "name"]
    assert metadata["out"] == {"type": "object", "properties": {"id": {"type": "integer"}}}


def test_select_prints_the_options_of_an_async_model_method(tmp_path: Path) -> None:
    done = run(tmp_path, ["select", "upsert", "listKinds"], {})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"contact": "Contact", "company": "Company"}


def test_a_select_model_reads_the_api_through_ctx_http_which_refreshes_and_stores_the_token(tmp_path: Path) -> None:
    keys = str(tmp_path / "keys.sqlite")
    with DevProvider(ttl=60, rotation="rotate", clock=ManualClock()) as provider:
        cfg = provider_cfg(provider)
        cfg["oauth"]["expires_at"] = time.time() - 1  # the run must refresh before its request, as `call` does
        done = run(tmp_path, ["select", "upsert", "listItems"], cfg, "--keys", keys)
        stats = provider.stats()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {str(i): f"item {i}" for i in range(1, 6)}
    assert stats["refresh_calls"] == 1
    store = open_store(keys)
    try:
        stored = store.get("acct-1")
    finally:
        store.close()
    assert stored is not None and stored.oauth["refresh_token"] != cfg["oauth"]["refresh_token"]  # rotated, kept
    assert cfg["oauth"]["access_token"] not in done.stdout + done.stderr


def test_secrets_of_the_cfg_returned_by_a_method_are_masked(tmp_path: Path) -> None:
    cfg = {"apiKey": SECRET_KEY, "oauth": {"access_token": "at-secret-token-0123456789"}}
    done = run(tmp_path, ["select", "upsert", "listLeaky"], cfg)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"token": "***", "key": "key is ***"}
    assert SECRET_KEY not in done.stdout and "at-secret-token-0123456789" not in done.stdout


def test_a_raising_method_exits_1_with_its_message_on_one_masked_line(tmp_path: Path) -> None:
    done = run(tmp_path, ["select", "upsert", "listBroken"], {"apiKey": SECRET_KEY})
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "oarlock: listBroken of upsert raised RuntimeError: the API said no to key ***"
    ]


def test_a_method_breaking_its_contract_exits_1_saying_what_it_must_return(tmp_path: Path) -> None:
    done = run(tmp_path, ["select", "upsert", "listWrong"], {})
    assert done.returncode == 1
    assert "returned a list: a select model returns a JSON object {value: label}" in done.stderr


def test_no_such_method_or_function_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    no_method = run(tmp_path, ["select", "upsert", "listNothing"], {})
    assert no_method.returncode == 2
    assert no_method.stderr.strip() == "oarlock: function 'upsert' does not define listNothing(cfg)"
    no_meta = run(tmp_path, ["meta", "static"], {})
    assert no_meta.returncode == 2 and "does not define getMetaModel(cfg)" in no_meta.stderr
    no_function = run(tmp_path, ["meta", "nothing"], {})
    assert no_function.returncode == 2 and "unknown function 'nothing'" in no_function.stderr
    assert "Traceback" not in no_method.stderr + no_meta.stderr + no_function.stderr


def test_the_meta_component_validates_strictly(tmp_path: Path) -> None:
    done = run_cli(["validate", META])
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == "component.json is valid (2 functions)"


def test_service_mode_still_answers_get_meta_model_through_the_same_call(tmp_path: Path) -> None:
    env = {"ELASTICIO_CFG": json.dumps({"kind": "contact"}), "ELASTICIO_ACTION_OR_TRIGGER": "upsert"}
    done = run_cli(["service", "getMetaModel", "--component", META, "--no-keys"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "success" and sorted(result["data"]["in"]["properties"]) == ["email", "name"]
