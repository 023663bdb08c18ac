"""One exception hierarchy for everything oarlock raises.

Third-party exceptions (pika, requests, jsonschema, cryptography, sqlite3) are
translated into these at the boundary where they occur; nothing above that
boundary catches a foreign exception type.

::

    OarlockError
    ├── ConfigurationError            bad settings: exit code 2 on the CLI
    │   ├── EnvironmentConfigError    a missing or malformed ELASTICIO_* variable
    │   └── ComponentError            component.json or a function module is broken
    ├── DecodeError                   an incoming message cannot be decrypted / parsed
    ├── EncodeError                   an outgoing message cannot be built (e.g. too large)
    ├── EmitError                     a function emitted an unknown event or bad payload
    ├── MessageValidationError        a message does not match the function's metadata.in
    ├── TimeLimitExceeded             a function ran past ELASTICIO_MESSAGE_TIME_LIMIT
    ├── CredentialError               anything about the OAuth2 credential
    │   ├── TokenEndpointError        the token endpoint failed or answered garbage
    │   ├── CredentialNeedsReauthorization   invalid_grant / invalid_client: a human must re-authorize
    │   └── TokenRejected             the API rejects a freshly refreshed token
    ├── KeyStoreError                 the local/persistent keys store failed
    └── TransportError                the broker connection or a publish failed
        └── PublishError              a publish was nacked or returned unroutable

Every message here is written so that it can be shown to a user: it names what
was wrong and never contains a secret (callers pass values through
:mod:`oarlock.redact` first).
"""

from __future__ import annotations


class OarlockError(Exception):
    """Root of every error oarlock raises on purpose."""

    #: the ``name`` field of the error event built from this exception
    @property
    def event_name(self) -> str:
        return type(self).__name__


class ConfigurationError(OarlockError):
    """The runtime cannot start or run a function because of its configuration."""


class EnvironmentConfigError(ConfigurationError):
    """A required ELASTICIO_* environment variable is missing or malformed."""


class ComponentError(ConfigurationError):
    """component.json is invalid, or a function module cannot be loaded."""


class DecodeError(OarlockError):
    """An incoming message could not be decoded (base64, decryption, JSON, shape)."""


class EncodeError(OarlockError):
    """An outgoing message could not be encoded (for example it exceeds the size limit)."""


class EmitError(OarlockError):
    """A function emitted something the runtime cannot accept."""


class MessageValidationError(OarlockError):
    """The incoming message does not match the function's ``metadata.in`` schema."""


class TimeLimitExceeded(OarlockError):
    """A function did not finish within the per-message time limit of ``oarlock run``."""


class CredentialError(OarlockError):
    """Something is wrong with the OAuth2 credential or its refresh."""

    def __init__(self, message: str, *, account: str | None = None) -> None:
        super().__init__(message)
        self.account = account


class TokenEndpointError(CredentialError):
    """The token endpoint failed (network, 5xx, 429 after retries) or answered garbage."""

    def __init__(
        self, message: str, *, account: str | None = None, status: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, account=account)
        self.status = status
        self.retryable = retryable
        #: seconds the endpoint asked to wait (Retry-After), when it said so
        self.retry_after: float | None = None


class CredentialNeedsReauthorization(CredentialError):
    """The provider refused the refresh token or client (invalid_grant / invalid_client).

    Retrying does not help: the account must be re-authorized by a human.
    """

    def __init__(self, message: str, *, account: str | None = None, oauth_error: str = "invalid_grant") -> None:
        super().__init__(message, account=account)
        self.oauth_error = oauth_error


class TokenRejected(CredentialError):
    """The API answered 401 to a request carrying a token that was just refreshed."""


class KeyStoreError(OarlockError):
    """The keys store could not read or write a credential."""


class TransportError(OarlockError):
    """The broker connection failed or a broker operation could not be completed."""


class PublishError(TransportError):
    """A publish was nacked by the broker or returned as unroutable."""
