"""Opening a keys store by URL; the contract itself lives in :mod:`oarlock.keys.base`.

Implementations: :mod:`oarlock.keys.sqlite` (the embedded default, a local file like a
desktop tool's repo.sqlite) and :mod:`oarlock.keys.postgres` (shared by a fleet of workers).
The contract's names (:class:`StoredCredential`, :class:`KeyStore`, :func:`apply_update_keys`,
:func:`safe_url`) are re-exported here, so ``from oarlock.keys.store import ...`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from oarlock.errors import ConfigurationError
from oarlock.keys.base import KeyStore, StoredCredential, apply_update_keys, register_url_secrets, safe_url
from oarlock.keys.sealing import key_from_environment

__all__ = ["KeyStore", "StoredCredential", "apply_update_keys", "open_store", "safe_url"]


def open_store(url: str, *, environ: Mapping[str, str] | None = None) -> KeyStore:
    """A plain path or ``sqlite:///path`` opens SQLite; ``postgresql://…`` opens PostgreSQL.

    A PostgreSQL URL may name the table with ``?table=NAME`` (default ``oarlock_credentials``).
    The sealing key is read from ``OARLOCK_KEYS_KEY`` in ``environ`` (default: the process's
    environment); unset or empty stores tokens in clear, a malformed one is a ConfigurationError
    (see :mod:`oarlock.keys.sealing`). The URL's passwords are made known to the redactor first, so a
    driver's message or a traceback that prints one is masked too.
    """
    register_url_secrets(url)
    key = key_from_environment(environ)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql+psycopg", "postgresql+psycopg3"):
        url = "postgresql" + url[len(scheme) :]  # SQLAlchemy's spelling of the same URL
        scheme = "postgresql"
    elif scheme in ("postgresql", "postgres") and not url.startswith(("postgresql://", "postgres://")):
        url = scheme + url[len(scheme) :]  # PostgreSQL://, POSTGRES://
    if scheme and scheme not in ("postgresql", "postgres", "sqlite"):
        raise ConfigurationError(
            f"keys store {safe_url(url)}: unknown scheme {scheme[:20]!r}: use a SQLite path (or sqlite:///path) "
            "or postgresql://…"
        )
    if scheme in ("postgresql", "postgres"):
        from oarlock.keys.postgres import DEFAULT_TABLE, PostgresKeyStore

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        table = next((value for key, value in query if key == "table"), DEFAULT_TABLE)
        rest = urlencode([(key, value) for key, value in query if key != "table"])
        return PostgresKeyStore(urlunsplit(parts._replace(query=rest)), table=table, key=key)
    if scheme == "sqlite":
        url = "sqlite" + url[len(scheme) :]
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite://")
    from oarlock.keys.sqlite import SqliteKeyStore

    return SqliteKeyStore(path, key=key)
