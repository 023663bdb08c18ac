"""Message crypto password rotation: decrypt with the current password or the previous one, encrypt with the current."""

from __future__ import annotations

import json
from typing import Any

import pytest

from oarlock.errors import ConfigurationError, DecodeError
from oarlock.protocol.crypto import MessageCipher
from oarlock.protocol.settings import Settings
from tests.support import DATA

VECTORS: list[dict[str, Any]] = json.loads((DATA / "vectors" / "sailor-crypto.json").read_text())["cases"]
NEW_PASSWORD, NEW_IV = "the new password, rotated in", "fedcba9876543210"


def env(**extra: str) -> dict[str, str]:
    base = {
        f"ELASTICIO_{name}": "x"
        for name in ("FLOW_ID", "EXEC_ID", "STEP_ID", "CONTAINER_ID", "WORKSPACE_ID", "USER_ID", "COMP_ID", "FUNCTION")
    }
    base.update(
        {
            "ELASTICIO_AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/%2F",
            "ELASTICIO_LISTEN_MESSAGES_ON": "in",
            "ELASTICIO_PUBLISH_MESSAGES_TO": "ex",
            "ELASTICIO_DATA_ROUTING_KEY": "d",
            "ELASTICIO_ERROR_ROUTING_KEY": "e",
            "ELASTICIO_REBOUND_ROUTING_KEY": "r",
            "ELASTICIO_SNAPSHOT_ROUTING_KEY": "s",
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": NEW_PASSWORD,
            "ELASTICIO_MESSAGE_CRYPTO_IV": NEW_IV,
        }
    )
    base.update({f"ELASTICIO_{k}": v for k, v in extra.items()})
    return base


@pytest.mark.parametrize("case", VECTORS, ids=[f"case{i}" for i in range(len(VECTORS))])
def test_a_message_sailor_encrypted_with_the_previous_password_decrypts_after_the_rotation(
    case: dict[str, Any],
) -> None:
    cipher = MessageCipher(NEW_PASSWORD, NEW_IV, previous_password=case["password"], previous_iv=case["iv"])
    expected = json.loads(case["plaintext_json"])
    assert cipher.decrypt(case["v1_base64_body"].encode(), 1) == expected
    assert cipher.decrypt(bytes.fromhex(case["v2_raw_body_hex"]), 2) == expected
    assert cipher.decrypt_text(case["v1_base64_body"].encode(), 1) == case["plaintext_json"]


@pytest.mark.parametrize("case", VECTORS, ids=[f"case{i}" for i in range(len(VECTORS))])
def test_a_rotating_cipher_encrypts_with_the_current_password_only(case: dict[str, Any]) -> None:
    """What a rotating cipher writes is what the current password alone writes, and the previous one cannot read it."""
    rotating = MessageCipher(case["password"], case["iv"], previous_password="the old one", previous_iv=NEW_IV)
    value = json.loads(case["plaintext_json"])
    assert rotating.encrypt(value, 1).decode() == case["v1_base64_body"]
    assert rotating.encrypt(value, 2).hex() == case["v2_raw_body_hex"]
    with pytest.raises(DecodeError):
        MessageCipher("the old one", NEW_IV).decrypt(rotating.encrypt(value, 1))


def test_a_message_rotated_across_two_passwords_decrypts_and_both_generations_stay_readable() -> None:
    old = VECTORS[0]
    before = MessageCipher(old["password"], old["iv"])
    during = MessageCipher(NEW_PASSWORD, NEW_IV, previous_password=old["password"], previous_iv=old["iv"])
    queued_before = before.encrypt({"body": {"n": 1}})
    written_during = during.encrypt({"body": {"n": 2}})
    assert during.decrypt(queued_before) == {"body": {"n": 1}}
    assert during.decrypt(written_during) == {"body": {"n": 2}}
    after = MessageCipher(NEW_PASSWORD, NEW_IV)  # the previous password removed once the old messages are gone
    assert after.decrypt(written_during) == {"body": {"n": 2}}
    with pytest.raises(DecodeError):
        after.decrypt(queued_before)


def test_the_previous_iv_defaults_to_the_current_one_when_only_the_password_changed() -> None:
    old_body = MessageCipher("old password", NEW_IV).encrypt({"body": {}}, 2)
    assert MessageCipher(NEW_PASSWORD, NEW_IV, previous_password="old password").decrypt(old_body, 2) == {"body": {}}


def test_a_body_neither_password_decrypts_is_one_decode_error_naming_both_attempts_without_a_password() -> None:
    foreign = MessageCipher("a third password", NEW_IV).encrypt({"body": {"a": 1}})
    cipher = MessageCipher(NEW_PASSWORD, NEW_IV, previous_password="the old password")
    with pytest.raises(DecodeError) as caught:
        cipher.decrypt(foreign)
    text = str(caught.value)
    assert "wrong password" in text and "ELASTICIO_MESSAGE_CRYPTO_PASSWORD_PREVIOUS" in text
    assert NEW_PASSWORD not in text and "the old password" not in text
    with pytest.raises(DecodeError, match="not valid base64"):
        cipher.decrypt(b"!!! not base64 !!!")


def test_without_a_previous_password_the_error_is_the_one_of_before() -> None:
    foreign = MessageCipher("a third password", NEW_IV).encrypt({"body": {}})
    with pytest.raises(DecodeError) as caught:
        MessageCipher(NEW_PASSWORD, NEW_IV).decrypt(foreign)
    assert "PREVIOUS" not in str(caught.value)


def test_plaintext_queued_before_encryption_was_turned_on_is_not_mistaken_for_the_current_key() -> None:
    """Turning encryption off: the current cipher is plaintext, the previous one decrypts what is still queued."""
    encrypted = MessageCipher("was on", NEW_IV).encrypt({"body": {"x": 1}})
    cipher = MessageCipher(None, None, previous_password="was on", previous_iv=NEW_IV)
    assert not cipher.enabled and cipher.rotating
    assert cipher.decrypt(encrypted) == {"body": {"x": 1}}
    assert cipher.decrypt(b'{"body":{"y":2}}') == {"body": {"y": 2}}
    assert cipher.encrypt({"body": {}}) == b'{"body":{}}'


def test_a_previous_iv_that_is_not_16_bytes_is_a_configuration_error_naming_its_variable() -> None:
    with pytest.raises(ConfigurationError, match="ELASTICIO_MESSAGE_CRYPTO_IV_PREVIOUS must be 16 bytes"):
        MessageCipher(NEW_PASSWORD, NEW_IV, previous_password="old", previous_iv="short")


def test_the_settings_read_the_previous_password_and_iv_and_the_cipher_built_from_them_rotates() -> None:
    old = VECTORS[0]
    settings = Settings.from_env(
        env(MESSAGE_CRYPTO_PASSWORD_PREVIOUS=old["password"], MESSAGE_CRYPTO_IV_PREVIOUS=old["iv"]), api_optional=True
    )
    assert settings.message_crypto_password_previous == old["password"]
    assert settings.message_crypto_iv_previous == old["iv"]
    assert old["password"] not in repr(settings)
    cipher = MessageCipher.from_settings(settings)
    assert cipher.rotating and old["password"] not in repr(cipher)
    assert cipher.decrypt(old["v1_base64_body"].encode()) == json.loads(old["plaintext_json"])


def test_unset_or_empty_previous_variables_mean_no_rotation() -> None:
    settings = Settings.from_env(env(MESSAGE_CRYPTO_PASSWORD_PREVIOUS=""), api_optional=True)
    assert settings.message_crypto_password_previous is None
    assert not MessageCipher.from_settings(settings).rotating
    assert repr(MessageCipher.from_settings(settings)) == "MessageCipher(encrypted=True)"
