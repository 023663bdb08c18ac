"""ELASTICIO_* parsing (docs/protocol.md §1) and the outgoing header set (§4)."""

from __future__ import annotations

from typing import Any

import pytest

from oarlock.errors import EnvironmentConfigError
from oarlock.protocol.headers import OutgoingHeaders, routing_key_override
from oarlock.protocol.settings import Settings, camel_case
from oarlock.testing import BrokerSandbox
from tests.support import TEST_COMPONENTS, run_cli


def env(**overrides: str) -> dict[str, str]:
    base = BrokerSandbox().env("echo")
    base.update(overrides)
    return {k: v for k, v in base.items() if v != "<unset>"}


def test_defaults_are_sailors() -> None:
    settings = Settings.from_env(env())
    assert (settings.rebound_initial_expiration, settings.rebound_limit, settings.prefetch) == (15000, 20, 1)
    assert settings.outgoing_message_size_limit == 10485760 and settings.protocol_version == 1
    assert not settings.persistent_messages and not settings.no_error_replies and not settings.startup_required
    assert settings.update_keys_routing_key.endswith("updateKeys")


@pytest.mark.parametrize(
    "name", ["FLOW_ID", "STEP_ID", "FUNCTION", "AMQP_URI", "LISTEN_MESSAGES_ON", "MESSAGE_CRYPTO_PASSWORD", "API_URI"]
)
def test_a_missing_required_variable_is_named(name: str) -> None:
    with pytest.raises(EnvironmentConfigError, match=f"ELASTICIO_{name} is required but not set"):
        Settings.from_env(env(**{f"ELASTICIO_{name}": "<unset>"}))


def test_the_api_may_be_missing_when_the_cfg_comes_from_elsewhere() -> None:
    settings = Settings.from_env(env(ELASTICIO_API_URI="<unset>", ELASTICIO_API_KEY="<unset>"), api_optional=True)
    assert settings.api_uri is None


def test_numbers_fall_back_to_the_default_and_booleans_follow_sailor() -> None:
    settings = Settings.from_env(
        env(
            ELASTICIO_REBOUND_LIMIT="many",
            ELASTICIO_RABBITMQ_PREFETCH_SAILOR="25",
            ELASTICIO_AMQP_PERSISTENT_MESSAGES="",
            ELASTICIO_NO_ERROR_REPLIES="yes",
            ELASTICIO_STARTUP_REQUIRED="false",
        )
    )
    assert settings.rebound_limit == 20 and settings.prefetch == 25
    assert not settings.persistent_messages and settings.no_error_replies and not settings.startup_required


def test_additional_vars_are_copied_camel_cased_into_headers() -> None:
    settings = Settings.from_env(
        env(
            ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS="ELASTICIO_TENANT_NAME, REGION",
            ELASTICIO_TENANT_NAME="acme",
            REGION="eu",
        )
    )
    assert settings.additional_headers == {"tenantName": "acme", "region": "eu"}
    assert camel_case("ELASTICIO_SOME_LONG_NAME") == "someLongName"


def test_secrets_are_not_in_the_settings_repr() -> None:
    settings = Settings.from_env(env(ELASTICIO_MESSAGE_CRYPTO_PASSWORD="pw-secret-1", ELASTICIO_API_KEY="api-key-2"))
    assert "pw-secret-1" not in repr(settings) and "api-key-2" not in repr(settings)


def test_outgoing_headers_carry_the_sailor_set_and_lower_cased_meta_headers() -> None:
    settings = Settings.from_env(env())
    headers = OutgoingHeaders(settings).for_input(
        {"messageId": "m-1", "X-EIO-META-Trace": "t", "reply_to": "r", "other": 1}, start_ms=123
    )
    assert headers["parentMessageId"] == "m-1" and headers["x-eio-meta-trace"] == "t" and headers["reply_to"] == "r"
    assert headers["start"] == 123 and "other" not in headers and headers["taskId"] == "flow-1"


def test_thread_id_prefers_thread_id_then_trace_id_then_a_new_one() -> None:
    template = OutgoingHeaders(Settings.from_env(env()))

    def thread_id(incoming: dict[str, Any]) -> str:
        return str(template.for_input(incoming, start_ms=1)["threadId"])

    assert thread_id({"threadId": "a", "x-eio-meta-trace-id": "b"}) == "a"
    assert thread_id({"X-EIO-META-TRACE-ID": "b"}) == "b"
    assert thread_id({"X-Eio-Meta-Trace-Id": "c", "x-eio-meta-trace-id": "b"}) == "b"  # the exact name first
    assert thread_id({"threadId": "", "x-eio-meta-trace-id": "", "X-EIO-META-TRACE-ID": 7}) == "7"
    assert len(thread_id({})) == 36 and thread_id({}) != thread_id({})


def test_outgoing_headers_of_one_input_do_not_leak_into_the_next() -> None:
    settings = Settings.from_env(env(ELASTICIO_ADDITIONAL_VARS_FOR_HEADERS="REGION", REGION="eu"))
    template = OutgoingHeaders(settings)
    first = template.for_input({"messageId": "m-1", "x-eio-meta-a": 1, "reply_to": "r"}, start_ms=1)
    assert first["region"] == "eu" and first["parentMessageId"] == "m-1" and first["x-eio-meta-a"] == 1
    first["messageId"] = "out-1"
    second = template.for_input({}, start_ms=2)
    assert "parentMessageId" not in second and "x-eio-meta-a" not in second and "reply_to" not in second
    assert "messageId" not in second and second["start"] == 2
    # sailor-nodejs 2.7.8's order (../shared/sailor-captures); messageId goes after threadId, per message
    assert list(first) == [
        "stepId",
        "x-eio-meta-a",
        "threadId",
        "parentMessageId",
        "reply_to",
        "region",
        "execId",
        "taskId",
        "workspaceId",
        "containerId",
        "userId",
        "compId",
        "function",
        "start",
        "messageId",
    ]


def test_the_routing_key_override_is_popped_in_any_case() -> None:
    headers = {"X-Eio-Routing-Key": "k", "keep": 1}
    assert routing_key_override(headers) == "k" and headers == {"keep": 1}


def test_oarlock_run_without_required_variables_exits_2_naming_the_first() -> None:
    done = run_cli(["run", "--component", str(TEST_COMPONENTS / "amqp")], env={k: "" for k in env()})
    assert done.returncode == 2 and "ELASTICIO_FLOW_ID is required but not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_crypto_pair_must_be_present_but_may_be_empty() -> None:
    settings = Settings.from_env(env(ELASTICIO_MESSAGE_CRYPTO_PASSWORD="", ELASTICIO_MESSAGE_CRYPTO_IV=""))
    assert settings.message_crypto_password is None and settings.message_crypto_iv is None
