"""`oarlock decrypt`: a message body from a file or stdin, read with the environment's crypto settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from oarlock.cli.main import main
from oarlock.protocol.crypto import MessageCipher

PASSWORD, IV = "testCryptoPassword", "iv=any16_symbols"
CRYPTO = {"ELASTICIO_MESSAGE_CRYPTO_PASSWORD": PASSWORD, "ELASTICIO_MESSAGE_CRYPTO_IV": IV}
CIPHER = MessageCipher(PASSWORD, IV)
MESSAGE = {"id": "m-1", "body": {"oauth": {"access_token": "at-0123456789", "refresh_token": "rt-9876543210"}, "n": 1}}


def decrypt(*args: str, stdin: bytes | None = None, **env: str) -> Any:
    return CliRunner().invoke(main, ["decrypt", *args], input=stdin, env={**CRYPTO, **env})


def test_a_protocol_1_body_from_a_file_decrypts_with_its_tokens_masked(tmp_path: Path) -> None:
    (tmp_path / "body").write_bytes(CIPHER.encrypt(MESSAGE) + b"\n")
    done = decrypt(str(tmp_path / "body"))
    assert done.exit_code == 0, done.output
    line = json.loads(done.output)
    assert line == {
        "headers": {},
        "body": {"id": "m-1", "body": {"oauth": {"access_token": "***", "refresh_token": "***"}, "n": 1}},
        "encrypted": True,
    }


def test_reveal_shows_the_tokens() -> None:
    done = decrypt("--reveal", stdin=CIPHER.encrypt(MESSAGE))
    assert json.loads(done.output)["body"] == MESSAGE


def test_a_protocol_2_body_from_stdin_decrypts_by_the_protocol_version_of_its_headers_file(tmp_path: Path) -> None:
    (tmp_path / "headers.json").write_text(json.dumps({"protocolVersion": 2, "messageId": "m-1"}))
    done = decrypt("-", "--headers", str(tmp_path / "headers.json"), stdin=CIPHER.encrypt({"body": {"v": 2}}, 2))
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {
        "headers": {"protocolVersion": 2, "messageId": "m-1"},
        "body": {"body": {"v": 2}},
        "encrypted": True,
    }


def test_an_error_message_in_clear_has_its_error_and_error_input_decrypted() -> None:
    error_body = {
        "error": CIPHER.encrypt({"name": "ValueError", "message": "cannot handle 3", "stack": ""}).decode(),
        "errorInput": CIPHER.encrypt({"body": {"n": 3}}).decode(),
    }
    done = decrypt(stdin=json.dumps(error_body).encode())
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["body"] == {
        "error": {"name": "ValueError", "message": "cannot handle 3", "stack": ""},
        "errorInput": {"body": {"n": 3}},
    }
    assert json.loads(done.output)["encrypted"] is False


def test_a_body_encrypted_with_the_previous_password_decrypts_while_rotating() -> None:
    old = MessageCipher("the old password", IV).encrypt({"body": {"old": True}})
    done = decrypt(stdin=old, ELASTICIO_MESSAGE_CRYPTO_PASSWORD_PREVIOUS="the old password")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["body"] == {"body": {"old": True}}


def test_a_body_that_does_not_decrypt_is_one_line_naming_why_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "other").write_bytes(MessageCipher("another password", IV).encrypt(MESSAGE))
    done = decrypt(str(tmp_path / "other"))
    assert done.exit_code == 1
    assert done.output.strip().splitlines() == [
        f"oarlock: the message in {tmp_path / 'other'} does not decrypt: "
        "decryption failed (bad padding): wrong password or IV, or corrupted message"
    ]
    assert PASSWORD not in done.output


def test_a_headers_file_that_is_not_json_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "h").write_text("{nope")
    done = decrypt("--headers", str(tmp_path / "h"), stdin=b"x")
    assert done.exit_code == 2
    assert "headers file" in done.output and "is not JSON" in done.output


def test_a_crypto_iv_of_the_wrong_length_is_a_configuration_error() -> None:
    done = decrypt(stdin=b"x", ELASTICIO_MESSAGE_CRYPTO_IV="short")
    assert done.exit_code == 2
    assert "ELASTICIO_MESSAGE_CRYPTO_IV must be 16 bytes" in done.output
