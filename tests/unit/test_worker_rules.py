"""The worker's settlement rules on the in-memory transport: no broker, no sleeping, milliseconds per rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from oarlock.component.model import Component
from oarlock.credentials.manager import CredentialManager
from oarlock.devprovider import DevProvider
from oarlock.errors import ComponentError
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.settings import Settings
from oarlock.protocol.stepconfig import StepConfig
from oarlock.runtime.executor import FunctionRunner, UnloadableFunction
from oarlock.runtime.memory_transport import MemoryTransport
from oarlock.runtime.worker import Worker
from tests.support import TEST_COMPONENTS

PASSWORD, IV = "testCryptoPassword", "iv=any16_symbols"
CIPHER = MessageCipher(PASSWORD, IV)
KEYS = {"data": "rk.data", "error": "rk.error", "rebound": "rk.rebound", "snapshot": "rk.snapshot"}


def settings_for(function: str, **overrides: str) -> Settings:
    env = {
        "ELASTICIO_FLOW_ID": "flow-1",
        "ELASTICIO_EXEC_ID": "exec-1",
        "ELASTICIO_STEP_ID": "step_1",
        "ELASTICIO_CONTAINER_ID": "container-1",
        "ELASTICIO_WORKSPACE_ID": "workspace-1",
        "ELASTICIO_USER_ID": "user-1",
        "ELASTICIO_COMP_ID": "comp-1",
        "ELASTICIO_FUNCTION": function,
        "ELASTICIO_API_URI": "http://127.0.0.1:9",
        "ELASTICIO_API_USERNAME": "u",
        "ELASTICIO_API_KEY": "k",
        "ELASTICIO_AMQP_URI": "amqp://guest:guest@127.0.0.1:9/%2F",
        "ELASTICIO_LISTEN_MESSAGES_ON": "in",
        "ELASTICIO_PUBLISH_MESSAGES_TO": "exchange-1",
        "ELASTICIO_DATA_ROUTING_KEY": KEYS["data"],
        "ELASTICIO_ERROR_ROUTING_KEY": KEYS["error"],
        "ELASTICIO_REBOUND_ROUTING_KEY": KEYS["rebound"],
        "ELASTICIO_SNAPSHOT_ROUTING_KEY": KEYS["snapshot"],
        "ELASTICIO_MESSAGE_CRYPTO_IV": IV,
        "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": PASSWORD,
        **overrides,
    }
    return Settings.from_env(env)


class Rig:
    """A worker for one function of the test component, on a memory transport."""

    def __init__(
        self,
        function: str,
        cfg: dict[str, Any] | None = None,
        *,
        credentials: CredentialManager | None = None,
        step_from_api: bool = False,
        accounts_api: Any = None,
        **env: str,
    ) -> None:
        self.settings = settings_for(function, **env)
        self.transport = MemoryTransport()
        runner: FunctionRunner | UnloadableFunction
        try:
            component = Component.load(TEST_COMPONENTS / "amqp")
            runner = FunctionRunner(component, function, credentials=credentials or CredentialManager())
        except ComponentError as exc:
            runner = UnloadableFunction(exc)
        self.worker = Worker(
            self.settings,
            runner,
            StepConfig(cfg or {}, from_platform_api=step_from_api),
            self.transport,
            concurrency=4,
            retry_later_seconds=(0.01, 0.05),
            accounts_api=accounts_api,
        )

    def send(self, body: Any, *, message_id: str = "m-1", redelivered: bool = False, **headers: Any) -> None:
        payload = {"id": message_id, "body": body, "headers": {}}
        self.transport.deliver(CIPHER.encrypt(payload), {"messageId": message_id, **headers}, redelivered=redelivered)

    def settled(self, count: int = 1) -> None:
        self.transport.wait_for(lambda: len(self.transport.acked) + len(self.transport.rejected) >= count)

    def bodies(self, routing_key: str) -> list[Any]:
        return [CIPHER.decrypt(m.body) for m in self.transport.published_to(routing_key)]

    def errors(self) -> list[dict[str, Any]]:
        return [
            CIPHER.decrypt(json.loads(m.body)["error"].encode()) for m in self.transport.published_to(KEYS["error"])
        ]


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    function, cfg, env = request.param if isinstance(request.param, tuple) else (request.param, None, {})
    made = Rig(function, cfg, **env)
    made.worker.start()
    yield made
    made.worker.stop()


def rig_for(function: str, cfg: dict[str, Any] | None = None, **env: str) -> Any:
    return pytest.mark.parametrize("rig", [(function, cfg, env)], indirect=True)


@rig_for("echo")
def test_an_input_is_acked_once_its_output_is_confirmed_and_not_before(rig: Rig) -> None:
    rig.transport.hold_confirms()
    rig.send({"a": 1})
    rig.transport.wait_for(lambda: rig.transport.published_to(KEYS["data"]))
    assert rig.transport.acked == [] and rig.transport.rejected == []
    rig.transport.release_confirms()
    rig.settled()
    assert len(rig.transport.acked) == 1 and rig.transport.rejected == []
    assert rig.bodies(KEYS["data"])[0]["body"] == {"echo": {"a": 1}}


@rig_for("fail")
def test_an_error_is_published_and_the_input_rejected_without_requeue_after_the_error_is_confirmed(rig: Rig) -> None:
    rig.transport.hold_confirms()
    rig.send({"n": 7})
    rig.transport.wait_for(lambda: rig.transport.published_to(KEYS["error"]))
    assert rig.transport.rejected == []
    rig.transport.release_confirms()
    rig.settled()
    (rejected,) = rig.transport.rejected
    assert rejected[1] is False and rig.transport.acked == []
    (error,) = rig.errors()
    assert error["name"] == "ValueError" and "cannot handle 7" in error["message"]


@rig_for("rebound")
def test_a_rebound_republishes_the_original_body_with_growing_expiration_and_acks(rig: Rig) -> None:
    rig.send({"n": 1}, reboundIteration=2)
    rig.settled()
    (rebound,) = rig.transport.published_to(KEYS["rebound"])
    assert rebound.expiration == str(4 * rig.settings.rebound_initial_expiration)
    assert rebound.headers["reboundIteration"] == 3 and rebound.headers["reboundReason"] == "the API is busy"
    assert CIPHER.decrypt(rebound.body)["body"] == {"n": 1} and len(rig.transport.acked) == 1


@rig_for("rebound")
def test_a_rebound_past_the_limit_is_an_error_and_a_reject(rig: Rig) -> None:
    rig.send({"n": 1}, reboundIteration=rig.settings.rebound_limit)
    rig.settled()
    assert rig.transport.published_to(KEYS["rebound"]) == []
    assert [e["message"] for e in rig.errors()] == ["Rebound limit exceeded"] and len(rig.transport.rejected) == 1


@rig_for("echo")
def test_an_unroutable_output_becomes_an_error_of_the_input_and_a_reject(rig: Rig) -> None:
    rig.transport.make_unroutable(KEYS["data"])
    rig.send({"a": 1})
    rig.settled()
    (error,) = rig.errors()
    assert "unroutable" in error["message"] and KEYS["data"] in error["message"]
    assert len(rig.transport.rejected) == 1 and rig.transport.acked == []


@rig_for("echo")
def test_a_nacked_output_becomes_an_error_of_the_input_and_a_reject(rig: Rig) -> None:
    rig.transport.make_refused(KEYS["data"])
    rig.send({"a": 1})
    rig.settled()
    assert "nack" in rig.errors()[0]["message"] and len(rig.transport.rejected) == 1


@rig_for("echo")
def test_when_neither_the_output_nor_its_error_can_be_routed_the_input_is_rejected_once(rig: Rig) -> None:
    rig.transport.make_unroutable(KEYS["data"])
    rig.transport.make_unroutable(KEYS["error"])
    rig.send({"a": 1})
    rig.settled()
    assert len(rig.transport.published_to(KEYS["error"])) == 1  # retried once, not in a loop
    assert len(rig.transport.rejected) == 1 and rig.transport.acked == []


@rig_for("echo")
def test_a_confirm_lost_with_the_connection_leaves_the_input_for_redelivery_and_the_copy_is_processed(
    rig: Rig,
) -> None:
    rig.transport.hold_confirms()
    rig.send({"a": 1})
    rig.transport.wait_for(lambda: rig.transport.published_to(KEYS["data"]))
    rig.transport.lose_connection()
    rig.transport.release_confirms()
    rig.settled()
    # the first attempt was never settled (its confirm failed); the redelivered copy ran and was acked
    (acked,) = rig.transport.acked
    assert acked.redelivered and rig.transport.rejected == []
    assert len(rig.transport.published_to(KEYS["data"])) == 2


@rig_for("echo")
def test_a_redelivered_copy_of_a_finished_input_is_acked_without_running_again(rig: Rig) -> None:
    rig.send({"a": 1}, message_id="m-9")
    rig.settled()
    rig.send({"a": 1}, message_id="m-9", redelivered=True)
    rig.settled(2)
    assert len(rig.transport.acked) == 2 and len(rig.transport.published_to(KEYS["data"])) == 1


@rig_for("echo")
def test_distinct_inputs_sharing_an_id_are_each_processed_when_not_redelivered(rig: Rig) -> None:
    rig.send({"a": 1}, message_id="same")
    rig.send({"a": 2}, message_id="same")
    rig.settled(2)
    assert sorted(b["body"]["echo"]["a"] for b in rig.bodies(KEYS["data"])) == [1, 2]


@rig_for("echo")
def test_bad_inputs_each_give_an_error_and_a_reject_and_the_next_good_one_is_processed(rig: Rig) -> None:
    rig.transport.deliver(b"not encrypted at all", {"messageId": "bad-1"})
    rig.transport.deliver(CIPHER.encrypt(["a", "list"]), {"messageId": "bad-2"})
    rig.transport.deliver(CIPHER.encrypt({"body": 1}), {"messageId": "bad-3", "protocolVersion": "x"})
    rig.send({"ok": True}, message_id="good")
    rig.settled(4)
    assert len(rig.transport.rejected) == 3 and len(rig.errors()) == 3
    assert [m.headers["messageId"] for m in rig.transport.acked] == ["good"]


@rig_for("echo", {}, ELASTICIO_OUTGOING_MESSAGE_SIZE_LIMIT="64")
def test_an_output_over_the_size_limit_is_an_error_naming_the_limit(rig: Rig) -> None:
    rig.send({"big": "x" * 200})
    rig.settled()
    assert rig.transport.published_to(KEYS["data"]) == []
    assert "over the limit of 64 bytes" in rig.errors()[0]["message"] and len(rig.transport.rejected) == 1


@rig_for("reply")
def test_an_http_reply_goes_to_reply_to_and_without_reply_to_it_is_an_error(rig: Rig) -> None:
    rig.send({"q": 1}, message_id="with", reply_to="reply.key")
    rig.send({"q": 2}, message_id="without")
    rig.settled(2)
    (reply,) = rig.transport.published_to("reply.key")
    assert CIPHER.decrypt(reply.body)["statusCode"] == 202
    assert [m.headers["messageId"] for m in rig.transport.acked] == ["with"]
    assert "needs the incoming message to carry a reply_to header" in rig.errors()[0]["message"]


@rig_for("snapshot")
def test_a_snapshot_change_is_published_and_seen_by_the_next_input(rig: Rig) -> None:
    rig.send({}, message_id="one")
    rig.settled()
    rig.send({}, message_id="two")
    rig.settled(2)
    counts = [json.loads(m.body)["count"] for m in rig.transport.published_to(KEYS["snapshot"])]
    assert counts == [1, 2] and rig.worker.snapshot == {"count": 2}


@rig_for("nonexistent")
def test_a_function_that_cannot_be_loaded_rejects_every_input_with_an_error_naming_why(rig: Rig) -> None:
    rig.send({}, message_id="one")
    rig.send({}, message_id="two")
    rig.settled(2)
    assert len(rig.transport.rejected) == 2 and all("nonexistent" in e["message"] for e in rig.errors())


def test_an_update_keys_is_confirmed_before_the_input_is_acked() -> None:
    with DevProvider(ttl=3600) as provider:
        cfg = provider.cfg(account="acct-rule")
        cfg["oauth"]["expires_at"] = 1.0  # expired long ago: the first request refreshes first
        made = Rig("api", cfg, ELASTICIO_UPDATE_KEYS_ROUTING_KEY="rk.keys")
        made.worker.start()
        try:
            made.transport.hold_confirms()
            made.send({"n": 1})
            made.transport.wait_for(lambda: made.transport.published_to(KEYS["data"]))
            (update,) = made.bodies("rk.keys")
            assert update["account"] == "acct-rule" and update["oauth"]["access_token"]
            # the keys service is told how to keep the account alive, never with the client secret
            assert (
                update["oauth2"]["client_id"] == cfg["oauth2"]["client_id"] and "client_secret" not in update["oauth2"]
            )
            assert made.transport.acked == []
            made.transport.release_confirms()
            made.settled()
        finally:
            made.worker.stop()
        keys_at = [m.routing_key for m in made.transport.published].index("rk.keys")
        assert keys_at < [m.routing_key for m in made.transport.published].index(KEYS["data"])
        assert len(made.transport.acked) == 1 and provider.stats()["refresh_calls"] == 1


def test_a_dead_credential_is_reported_to_the_keys_service_once_not_per_message() -> None:
    with DevProvider(ttl=3600) as provider:
        cfg = provider.cfg(account="acct-dead")
        cfg["oauth"]["expires_at"] = 1.0
        provider.revoke()
        made = Rig("api", cfg, ELASTICIO_CREDENTIAL_INVALID_ROUTING_KEY="rk.invalid")
        made.worker.start()
        try:
            for n in range(3):
                made.send({"n": n}, message_id=f"m-{n}")
            made.settled(3)
        finally:
            made.worker.stop()
        (report,) = made.bodies("rk.invalid")
        assert report["type"] == "credentialInvalid" and report["account"] == "acct-dead"
        assert report["state"] == "needs_reauthorization" and "invalid_grant" in report["reason"]
        assert isinstance(report["version"], int)
        assert len(made.transport.rejected) == 3 and provider.stats()["invalid_grant"] == 1


def test_prefetch_bounds_how_many_inputs_are_unsettled_at_once() -> None:
    made = Rig("echo", None, ELASTICIO_RABBITMQ_PREFETCH_SAILOR="2")
    made.transport.hold_confirms()
    made.worker.start()
    try:
        for n in range(5):
            made.send({"n": n}, message_id=f"m-{n}")
        made.transport.wait_for(lambda: len(made.transport.published_to(KEYS["data"])) == 2)
        assert made.transport.ready == 3
        made.transport.release_confirms()
        made.settled(5)
    finally:
        made.worker.stop()
    assert len(made.transport.acked) == 5
