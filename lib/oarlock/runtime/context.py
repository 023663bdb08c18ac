"""What a function receives as ``ctx``: emit, a redacting logger, cfg, and an authenticated HTTP session.

``ctx.http`` is one of two sessions, both from :mod:`oarlock.credentials.auth` and both with its
rules: the bearer token goes only to the credential's origins (``cfg.baseUrl``,
``cfg.oauth.instance_url``, ``cfg.oauth2.api_origins``; a cfg naming none sends it nowhere), and a
request without ``timeout=`` gets the default (10 s connect, 60 s read; ``cfg.oauth2.http_timeout``,
``OARLOCK_HTTP_CONNECT_TIMEOUT`` / ``OARLOCK_HTTP_READ_TIMEOUT``). With a credential manager and a
cfg carrying ``oauth`` it is the refreshing session; otherwise it is the static one
(:func:`_static_session`), which sends ``cfg.oauth.access_token`` unchanged, if there is one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests

from oarlock.credentials.auth import authorized_session, static_session
from oarlock.credentials.emitted import accept_emitted, is_component_update
from oarlock.credentials.manager import account_of
from oarlock.protocol.events import EventName, EventSink, normalise
from oarlock.protocol.message import Message

if TYPE_CHECKING:
    from oarlock.credentials.manager import BoundCredential, CredentialManager

RefreshHook = Callable[[dict[str, Any], dict[str, Any]], Any]


class Context:
    """Injected into every call of ``process(msg, cfg, snapshot, ctx)``.

    - ``ctx.emit(event, payload)``: emit an event (docs/protocol.md §6) into the call's sink; unknown names
      raise EmitError. The credential manager emits its updateKeys into the same sink.
    - ``ctx.http``: a ``requests.Session`` whose auth keeps the OAuth2 credential of ``cfg`` alive
      (proactive refresh, refresh + one resend on 401) and sends the token only to the credential's
      origins; requests without ``timeout=`` get the default timeout. Built on first use (a malformed
      ``oauth2.api_origins`` or ``oauth2.http_timeout`` raises ConfigurationError there).
    - ``ctx.credentials``: the bound credential (``.access_token()`` gives a fresh token) or None.
    - ``ctx.logger``: a logger whose records are redacted before they are written.
    - ``ctx.message``, ``ctx.cfg``, ``ctx.snapshot``: what the call was given.
    """

    def __init__(
        self,
        *,
        sink: EventSink,
        message: Message,
        cfg: dict[str, Any],
        snapshot: dict[str, Any],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        credentials: CredentialManager | None = None,
        refresh_hook: RefreshHook | None = None,
    ) -> None:
        self._sink = sink
        self.message = message
        self.cfg = cfg
        self.snapshot = snapshot
        self.logger = logger
        self._credentials = credentials
        self._refresh_hook = refresh_hook
        self._http: requests.Session | None = None
        self._bound: BoundCredential | None = None

    def emit(self, event: str, payload: Any = None) -> None:
        normalised = normalise(event, payload)
        if (
            normalised.name is EventName.UPDATE_KEYS
            and self._credentials is not None
            and self.has_oauth
            and is_component_update(normalised.payload)
        ):
            # sailor's way of persisting a hand-made refresh: merged into the credential, versioned, stored
            normalised = accept_emitted(self._credentials, self.cfg, normalised.payload)
        self._sink.emit(normalised)

    @property
    def has_oauth(self) -> bool:
        return isinstance(self.cfg.get("oauth"), dict)

    @property
    def http(self) -> requests.Session:
        if self._http is None:
            if self._credentials is not None and self.has_oauth:
                self._http = authorized_session(
                    self._credentials, self.cfg, sink=self._sink, refresh_hook=self._refresh_hook
                )
            else:
                self._http = _static_session(self.cfg)
        return self._http

    @property
    def credentials(self) -> BoundCredential | None:
        if self._credentials is None or not self.has_oauth:
            return None
        if self._bound is None:
            self._bound = self._credentials.credential(self.cfg, sink=self._sink, refresh_hook=self._refresh_hook)
        return self._bound

    def close(self) -> None:
        if self._http is not None:
            self._http.close()


def _static_session(cfg: dict[str, Any]) -> requests.Session:
    """A session without refresh: ``cfg.oauth.access_token`` as a static bearer token, for the cfg's origins only."""
    return static_session(cfg, account=account_of(cfg))
