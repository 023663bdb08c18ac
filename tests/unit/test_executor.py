"""The function contract: process(msg, cfg, snapshot, ctx), return values, errors, hooks, metadata.in."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from oarlock.component.model import Component
from oarlock.errors import ComponentError
from oarlock.logs import JsonFormatter
from oarlock.protocol.events import EventList, EventName
from oarlock.protocol.message import Message
from oarlock.runtime.executor import FunctionRunner
from tests.support import TEST_COMPONENTS

BASIC = TEST_COMPONENTS / "basic"


def runner(function: str) -> FunctionRunner:
    return FunctionRunner(Component.load(BASIC), function, env={})


def test_a_returned_value_is_emitted_as_data() -> None:
    result = runner("echo").call(Message(body={"a": 1}, headers={"x": "y"}), {}, {})
    assert [e.name for e in result.events] == [EventName.DATA]
    assert result.events[0].payload.body == {"echo": {"a": 1}, "headers": {"x": "y"}}
    assert not result.errored


def test_an_async_process_function_is_awaited() -> None:
    result = runner("echo_async").call(Message(body={"b": 2}), {}, {})
    assert result.events[0].payload.body == {"async": True, "echo": {"b": 2}}


def test_a_sailor_style_function_with_three_parameters_works() -> None:
    result = runner("sailor_style").call(Message(), {"k": 1}, {"s": 2})
    assert result.events[0].payload.body == {"cfg_keys": ["k"], "snapshot": {"s": 2}}


def test_an_exception_becomes_an_error_event_with_name_message_and_stack() -> None:
    result = runner("fail").call(Message(body={"what": "the order"}), {}, {})
    assert result.errored
    (error,) = result.of(EventName.ERROR)
    assert error.payload["name"] == "UpstreamBroken"
    assert error.payload["message"] == "upstream said no to the order"
    assert "fail.py" in error.payload["stack"]


def test_emitting_an_unknown_event_is_an_error_event_naming_it() -> None:
    result = runner("emit_unknown").call(Message(), {}, {})
    (error,) = result.of(EventName.ERROR)
    assert error.payload["name"] == "EmitError"
    assert "unknown event 'dataa'" in error.payload["message"]


def test_update_snapshot_merges_into_the_snapshot_of_the_call() -> None:
    result = runner("counter").call(Message(), {}, {"count": 4, "other": True})
    assert result.snapshot == {"count": 5, "other": True}


def test_every_event_of_the_protocol_reaches_the_sink_in_order() -> None:
    sink = EventList()
    result = runner("many").call(Message(), {}, {"old": 1}, sink=sink)
    assert [e.name.value for e in sink.events] == ["data", "snapshot", "rebound", "httpReply", "end"]
    assert result.snapshot == {"replaced": True} and result.rebound


def test_hooks_run_with_the_cfg_and_shutdown_gets_the_startup_data() -> None:
    hooks = runner("hooks")
    hooks.init({"marker": "m"})
    data = hooks.startup({"marker": "m"})
    hooks.shutdown({}, data)
    calls = hooks.call(Message(), {}, {}).events[0].payload.body["calls"]
    assert calls == [["init", "m"], ["startup", "m"], ["shutdown", {"webhook": "created"}]]


def test_a_message_that_breaks_metadata_in_is_an_error_event_naming_the_path() -> None:
    result = runner("typed").call(Message(body={"name": "n", "age": "old"}), {}, {})
    (error,) = result.of(EventName.ERROR)
    assert error.payload["name"] == "MessageValidationError"
    assert "body.age" in error.payload["message"] and "integer" in error.payload["message"]


def test_draft_03_required_true_inside_properties_is_enforced() -> None:
    result = runner("typed").call(Message(body={"age": 3}), {}, {})
    (error,) = result.of(EventName.ERROR)
    assert "'name' is a required property" in error.payload["message"]


def test_a_valid_message_passes_metadata_in() -> None:
    result = runner("typed").call(Message(body={"name": "n", "age": 3, "address": {"zip": "1"}}), {}, {})
    assert not result.errored


def test_an_unknown_function_name_is_a_component_error() -> None:
    with pytest.raises(ComponentError, match="nope"):
        runner("nope")


def test_secrets_in_an_exception_and_a_log_line_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    cfg: dict[str, Any] = {"oauth": {"access_token": "AT-planted-secret-1", "refresh_token": "RT-planted-secret-2"}}
    with caplog.at_level(logging.INFO):
        result = runner("leaky").call(Message(), cfg, {})
    (error,) = result.of(EventName.ERROR)
    assert error.payload["name"] == "RuntimeError"
    assert "***" in error.payload["message"]
    formatted = "".join(JsonFormatter().format(record) for record in caplog.records)
    assert "calling the API with ***" in formatted
    for secret in ("AT-planted-secret-1", "RT-planted-secret-2"):
        assert secret not in str(error.payload)
        assert secret not in formatted
