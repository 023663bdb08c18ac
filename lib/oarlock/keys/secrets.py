"""The client-secrets file: the keys service's only source of OAuth2 client secrets.

The keys store never holds a client secret: each stored credential carries its refresh settings
(token_uri, client_id, client_auth, scope, provider) and the secret is looked up by that
client_id in a file given with ``--client-secrets FILE``: a JSON object mapping client_id to
its secret, either bound to the token endpoints it may be sent to or, the older form, unbound::

    {"my-app": {"secret": "s3cr3t", "token_uri": "https://login.example/oauth2/token"},
     "multi-app": {"secret": "…", "token_uri": ["https://a.example/token", "https://b.example/token"]},
     "legacy-app": "…"}

An empty secret is a public client, which sends none. A bound secret goes only to a token_uri of
one of its origins (scheme, host and port, default ports filled in, hosts compared
case-insensitively; the path is not compared): the stored settings of an account come from the
updateKeys and PUTs the keys service receives, and a secret that followed them could be sent to
whatever host the last one named. :func:`load_client_secrets` reads the file within bounds, says
clearly what is wrong with it (naming the client_id, never quoting a value), registers every
secret with :mod:`oarlock.redact` so it is masked wherever it could appear, and warns when the file
can be read by other users. It returns a :class:`ClientSecrets`: the client_id -> secret mapping,
and per client its allowed token-endpoint origins (:meth:`ClientSecrets.allowed_origins`, None for
an unbound one).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from oarlock.credentials.auth import origin_of
from oarlock.errors import ConfigurationError, DecodeError
from oarlock.jsonlimits import loads
from oarlock.redact import register_secret

log = logging.getLogger("oarlock.keys")

#: a client-secrets file larger than this is refused (a secret per client: a few KiB at most in practice)
MAX_BYTES = 1024 * 1024
#: the keys of a bound entry
ENTRY_KEYS = ("secret", "token_uri")
#: how a bound entry is written, for messages that say how to fix a file
BOUND_FORMAT = '{"<client_id>": {"secret": "…", "token_uri": "https://<token endpoint>"}}'


def token_origin(url: object) -> str | None:
    """``scheme://host:port`` of an absolute http(s) URL (port always written, host lower-case); None otherwise."""
    origin = origin_of(url)
    if origin is None:
        return None
    scheme, host, port = origin
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def permits(allowed: frozenset[str] | None, token_uri: object) -> bool:
    """Whether a secret bound to ``allowed`` origins (None: unbound) may be sent to ``token_uri``."""
    return allowed is None or token_origin(token_uri) in allowed


class ClientSecrets(Mapping[str, str]):
    """client_id -> secret (read-only), and the token-endpoint origins each client's secret is bound to.

    ``origins`` maps a client_id to the token URIs (or origins) its secret may be sent to; a client
    not in it is unbound. ValueError when a client_id there has no secret or a URI is not absolute http(s).
    """

    def __init__(self, secrets: Mapping[str, str], origins: Mapping[str, Iterable[str]] | None = None) -> None:
        self._secrets = dict(secrets)
        self._origins: dict[str, frozenset[str]] = {}
        for client_id, uris in (origins or {}).items():
            if client_id not in self._secrets:
                raise ValueError(f"client_id {client_id!r} is bound to token endpoints but has no secret")
            allowed = {token_origin(uri) for uri in ([uris] if isinstance(uris, str) else uris)}
            if None in allowed or not allowed:
                raise ValueError(f"client_id {client_id!r}: every token_uri must be an absolute http(s) URL")
            self._origins[client_id] = frozenset(origin for origin in allowed if origin is not None)

    def __getitem__(self, client_id: str) -> str:
        return self._secrets[client_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:  # never the secrets
        return f"ClientSecrets(clients={sorted(self._secrets)!r}, bound={sorted(self._origins)!r})"

    def allowed_origins(self, client_id: str) -> frozenset[str] | None:
        """The origins (``scheme://host:port``) the client's secret may be sent to; None when it is unbound."""
        return self._origins.get(client_id)

    @property
    def bindings(self) -> Mapping[str, frozenset[str]]:
        """client_id -> allowed origins, for the bound clients only."""
        return dict(self._origins)


def load_client_secrets(path: str | os.PathLike[str]) -> ClientSecrets:
    """The client secrets of ``path`` (read-only, with their bindings); ConfigurationError naming what is wrong."""
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
    wrong = sorted(str(key)[:80] for key, value in data.items() if not key or not isinstance(value, (str, dict)))
    if wrong:
        raise ConfigurationError(
            f"client secrets file {name}: every client_id must be a non-empty key whose secret is a string "
            f"or an object {BOUND_FORMAT}; not so for {', '.join(repr(key) for key in wrong[:10])}"
        )
    secrets: dict[str, str] = {}
    origins: dict[str, list[str]] = {}
    problems: list[str] = []
    for client_id, value in data.items():
        if isinstance(value, str):
            secrets[client_id] = value
            continue
        problem = _entry_problem(value)
        register_secret(value.get("secret"))  # masked even when its entry is refused
        if problem is not None:
            problems.append(f"client_id {str(client_id)[:80]!r}: {problem}")
            continue
        secrets[client_id] = value["secret"]
        uris = value["token_uri"]
        origins[client_id] = [uris] if isinstance(uris, str) else list(uris)
    for secret in secrets.values():
        register_secret(secret)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigurationError(f"client secrets file {name}: {shown}")
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "client secrets file %s is readable by other users (mode %o): chmod 600 it",
            name,
            stat.S_IMODE(info.st_mode),
        )
    return ClientSecrets(secrets, origins)


def _entry_problem(entry: dict[str, Any]) -> str | None:
    """What is wrong with a bound entry ``{"secret", "token_uri"}`` (never quoting a value); None when nothing."""
    unknown = sorted(str(key)[:40] for key in entry if key not in ENTRY_KEYS)
    if unknown:
        return (
            f"unknown key(s) {', '.join(repr(key) for key in unknown[:5])}: an entry has only 'secret' and 'token_uri'"
        )
    if not isinstance(entry.get("secret"), str):
        return "'secret' must be a string (\"\" for a public client)"
    uris = entry.get("token_uri")
    if isinstance(uris, str):
        uris = [uris]
    if not isinstance(uris, list) or not uris:
        return "'token_uri' must be an absolute http(s) URL or a non-empty list of them"
    for index, uri in enumerate(uris):
        if token_origin(uri) is None:
            where = "'token_uri'" if len(uris) == 1 else f"'token_uri' entry {index}"
            return f"{where} is not an absolute http(s) URL"
    return None
