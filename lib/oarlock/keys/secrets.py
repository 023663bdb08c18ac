"""The client-secrets file: the keys service's only source of OAuth2 client secrets.

The keys store never holds a client secret: each stored credential carries its refresh settings
(token_uri, client_id, client_auth, scope, provider) and the secret is looked up by that
client_id in a file given with ``--client-secrets FILE``: a JSON object mapping client_id to
secret (``{"my-app": "s3cr3t", "other-app": "…"}``; an empty string is a public client, which
sends none). :func:`load_client_secrets` reads it within bounds, says clearly what is wrong with
it (never quoting a value), registers every secret with :mod:`oarlock.redact` so it is masked
wherever it could appear, and warns when the file can be read by other users.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from types import MappingProxyType

from oarlock.errors import ConfigurationError, DecodeError
from oarlock.jsonlimits import loads
from oarlock.redact import register_secret

log = logging.getLogger("oarlock.keys")

#: a client-secrets file larger than this is refused (a secret per client: a few KiB at most in practice)
MAX_BYTES = 1024 * 1024


def load_client_secrets(path: str | os.PathLike[str]) -> Mapping[str, str]:
    """The client_id -> secret mapping of ``path`` (read-only); ConfigurationError naming what is wrong."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigurationError(f"client secrets file {name}: not a regular file")
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"client secrets file {name}: cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigurationError(f"client secrets file {name}: larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = loads(text, what=f"client secrets file {name}")
    except UnicodeDecodeError:
        raise ConfigurationError(f"client secrets file {name}: not UTF-8 text") from None
    except DecodeError as exc:
        raise ConfigurationError(str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"client secrets file {name}: must be a JSON object mapping client_id to secret, not {type(data).__name__}"
        )
    wrong = sorted(str(key)[:80] for key, value in data.items() if not key or not isinstance(value, str))
    if wrong:
        raise ConfigurationError(
            f"client secrets file {name}: every client_id must be a non-empty key whose secret is a string; "
            f"not so for {', '.join(repr(key) for key in wrong[:10])}"
        )
    for secret in data.values():
        register_secret(secret)
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "client secrets file %s is readable by other users (mode %o): chmod 600 it",
            name,
            stat.S_IMODE(info.st_mode),
        )
    return MappingProxyType(dict(data))
