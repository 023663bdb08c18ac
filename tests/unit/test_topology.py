"""`oarlock topology declare --dry-run`: what a step's environment asks the broker for, without a broker."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from oarlock.cli.main import main
from oarlock.cli.topology import plan
from oarlock.protocol.settings import Settings

STEP_ENV = {
    "ELASTICIO_FLOW_ID": "flow-1",
    "ELASTICIO_EXEC_ID": "exec-1",
    "ELASTICIO_STEP_ID": "step_2",
    "ELASTICIO_CONTAINER_ID": "c-1",
    "ELASTICIO_WORKSPACE_ID": "w-1",
    "ELASTICIO_USER_ID": "u-1",
    "ELASTICIO_COMP_ID": "comp-1",
    "ELASTICIO_FUNCTION": "echo",
    # a closed port: a dry run must not connect, and would fail here if it did
    "ELASTICIO_AMQP_URI": "amqp://guest:s3cret-broker-pw@127.0.0.1:1/%2F",
    "ELASTICIO_LISTEN_MESSAGES_ON": "flow-1:step_2:messages",
    "ELASTICIO_PUBLISH_MESSAGES_TO": "flow-1",
    "ELASTICIO_DATA_ROUTING_KEY": "flow-1.step_2.message",
    "ELASTICIO_ERROR_ROUTING_KEY": "flow-1.step_2.error",
    "ELASTICIO_REBOUND_ROUTING_KEY": "flow-1.step_2.rebound",
    "ELASTICIO_SNAPSHOT_ROUTING_KEY": "flow-1.step_2.snapshot",
    "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": "pw",
    "ELASTICIO_MESSAGE_CRYPTO_IV": "iv=any16_symbols",
}


def dry_run(*args: str, **env: str | None) -> Any:
    return CliRunner().invoke(main, ["topology", "declare", "--dry-run", *args], env={**STEP_ENV, **env})


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_dry_run_prints_one_line_per_object_the_step_needs_and_connects_to_nothing() -> None:
    done = dry_run()
    assert done.exit_code == 0, done.output
    q = "flow-1:step_2:messages"
    assert done.output.splitlines() == [
        "plan     exchange flow-1 (direct, durable)",
        f"plan     queue {q} (durable) for input",
        f"plan     queue {q}:flow-1.step_2.message (durable) for data",
        f"plan     queue {q}:flow-1.step_2.error (durable) for error",
        f"plan     queue {q}:flow-1.step_2.rebound (durable, x-dead-letter-exchange='', "
        f"x-dead-letter-routing-key={q}) for rebound",
        f"plan     queue {q}:flow-1.step_2.snapshot (durable) for snapshot",
        "plan     queue flow-1:updateKeys (durable) for updateKeys",
        "plan     queue flow-1:credentialInvalid (durable) for credentialInvalid",
        "plan     queue flow-1:credentialAlert (durable) for credentialAlert",
        f"plan     binding flow-1 -> {q}:flow-1.step_2.message key flow-1.step_2.message for data",
        f"plan     binding flow-1 -> {q}:flow-1.step_2.error key flow-1.step_2.error for error",
        f"plan     binding flow-1 -> {q}:flow-1.step_2.rebound key flow-1.step_2.rebound for rebound",
        f"plan     binding flow-1 -> {q}:flow-1.step_2.snapshot key flow-1.step_2.snapshot for snapshot",
        "plan     binding flow-1 -> flow-1:updateKeys key updateKeys for updateKeys",
        "plan     binding flow-1 -> flow-1:credentialInvalid key credentialInvalid for credentialInvalid",
        "plan     binding flow-1 -> flow-1:credentialAlert key credentialAlert for credentialAlert",
    ]
    assert "s3cret-broker-pw" not in done.output


def test_the_json_format_describes_every_object_and_the_rebound_queue_dead_letters_to_the_input_queue() -> None:
    done = dry_run("--format", "json")
    assert done.exit_code == 0, done.output
    lines = json_lines(done.output)
    assert {line["status"] for line in lines} == {"plan"}
    assert [line["kind"] for line in lines].count("exchange") == 1
    assert [line["kind"] for line in lines].count("queue") == 8
    assert [line["kind"] for line in lines].count("binding") == 7
    (rebound,) = [line for line in lines if line["kind"] == "queue" and line["for"] == ["rebound"]]
    assert rebound["arguments"] == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "flow-1:step_2:messages",
    }
    routed = {line["routing_key"]: line["queue"] for line in lines if line["kind"] == "binding"}
    assert routed["updateKeys"] == "flow-1:updateKeys"
    assert all(line["exchange"] == "flow-1" for line in lines if line["kind"] == "binding")


def test_oarlocks_routing_keys_come_from_their_variables() -> None:
    done = dry_run(
        "--format",
        "json",
        ELASTICIO_UPDATE_KEYS_ROUTING_KEY="platform.keys",
        ELASTICIO_CREDENTIAL_INVALID_ROUTING_KEY="platform.dead-credentials",
    )
    routed = {line["routing_key"]: line for line in json_lines(done.output) if line["kind"] == "binding"}
    assert routed["platform.keys"]["queue"] == "flow-1:platform.keys"
    assert routed["platform.keys"]["for"] == ["updateKeys"]
    assert routed["platform.dead-credentials"]["for"] == ["credentialInvalid"]
    assert "updateKeys" not in routed and "credentialInvalid" not in routed


def test_routes_sharing_a_routing_key_share_one_queue_and_one_binding() -> None:
    done = dry_run("--format", "json", ELASTICIO_SNAPSHOT_ROUTING_KEY="flow-1.step_2.error")
    lines = json_lines(done.output)
    shared = [line for line in lines if line.get("name") == "flow-1:step_2:messages:flow-1.step_2.error"]
    assert len(shared) == 1 and shared[0]["for"] == ["error", "snapshot"]
    bindings = [line for line in lines if line["kind"] == "binding" and line["routing_key"] == "flow-1.step_2.error"]
    assert len(bindings) == 1 and bindings[0]["for"] == ["error", "snapshot"]


def test_the_prefix_the_input_bindings_the_exchange_type_and_quorum_queues_are_options() -> None:
    done = dry_run(
        "--format",
        "json",
        "--prefix",
        "s2",
        "--bind-input",
        "flow-1.step_1.message",
        "--exchange-type",
        "topic",
        "--queue-type",
        "quorum",
    )
    lines = json_lines(done.output)
    assert lines[0] == {"status": "plan", "kind": "exchange", "name": "flow-1", "type": "topic", "durable": True,
                        "for": ["exchange"]}  # fmt: skip
    queues = {line["name"]: line for line in lines if line["kind"] == "queue"}
    assert "s2:flow-1.step_2.message" in queues and "flow-1:updateKeys" in queues
    assert all(q["arguments"]["x-queue-type"] == "quorum" for q in queues.values())
    assert {"status": "plan", "kind": "binding", "exchange": "flow-1", "queue": "flow-1:step_2:messages",
            "routing_key": "flow-1.step_1.message", "for": ["input"]} in lines  # fmt: skip


def test_a_missing_variable_is_one_line_naming_it_and_exit_2() -> None:
    done = dry_run(ELASTICIO_ERROR_ROUTING_KEY=None)
    assert done.exit_code == 2
    assert done.output.strip() == "oarlock: ELASTICIO_ERROR_ROUTING_KEY is required but not set"


def test_the_api_variables_are_not_needed_to_plan_a_topology() -> None:
    settings = Settings.from_env(STEP_ENV, api_optional=True)
    assert len(plan(settings)) == 16


def test_a_bad_amqp_uri_or_tls_setting_is_a_configuration_error_exit_2_not_a_broker_error_for_declare_and_peek() -> (
    None
):
    declare = CliRunner().invoke(main, ["topology", "declare"], env={**STEP_ENV, "ELASTICIO_AMQP_URI": "http://x/"})
    assert declare.exit_code == 2 and "ELASTICIO_AMQP_URI" in declare.output
    tls = {**STEP_ENV, "ELASTICIO_AMQP_TLS_CA_FILE": "/nonexistent/ca.pem"}
    assert CliRunner().invoke(main, ["topology", "declare"], env=tls).exit_code == 2
    peek = CliRunner().invoke(main, ["peek", "q", "--amqp-uri", "http://x/"], env=STEP_ENV)
    assert peek.exit_code == 2, peek.output
