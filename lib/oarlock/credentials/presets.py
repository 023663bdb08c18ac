"""Provider presets: defaults and quirks of the big OAuth2 providers, plain data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from oarlock.errors import ConfigurationError

ClientAuth = Literal["basic", "post"]
RefreshMode = Literal["auto", "on_401", "always"]


@dataclass(frozen=True)
class Preset:
    name: str
    client_auth: ClientAuth = "post"
    #: scope sent with a refresh when neither cfg.oauth2.scope nor the credential's scope says otherwise
    default_scope: str | None = None
    #: send the credential's own ``scope`` with the refresh (Microsoft wants it)
    send_credential_scope: bool = False
    #: keep-alive for credentials whose expiry is unknown
    keepalive_seconds: float = 86400.0
    #: the keys service's keep-alive refreshes a stored credential not updated for this long
    #: (well inside the provider's inactivity window for refresh tokens)
    idle_seconds: float = 7 * 86400.0

    def idle_window(self, *, expires: bool) -> float:
        """How long a stored credential may sleep before the keep-alive refreshes it.

        ``expires``: the credential has a known expiry; one without (Salesforce) is refreshed every
        :attr:`keepalive_seconds` (24 h) at least.
        """
        return self.idle_seconds if expires else min(self.idle_seconds, self.keepalive_seconds)


PRESETS: dict[str, Preset] = {
    "generic": Preset("generic"),
    # Microsoft identity platform: client_secret_post; the refresh carries the scope, offline_access
    # keeps refresh tokens coming; ext_expires_in is kept as an unknown field
    # refresh tokens lapse after 90 days idle: the keep-alive refreshes after 14
    "microsoft": Preset(
        "microsoft", default_scope="offline_access", send_credential_scope=True, idle_seconds=14 * 86400.0
    ),
    # Salesforce: no expires_in; instance_url and issued_at must survive; refresh on 401 + keep-alive
    "salesforce": Preset("salesforce", keepalive_seconds=86400.0, idle_seconds=86400.0),
    # Google: refresh answers carry no refresh_token; the original one stays valid
    "google": Preset("google"),
}


@dataclass(frozen=True)
class RefreshSettings:
    """``cfg["oauth2"]`` parsed and checked."""

    token_uri: str | None
    client_id: str | None
    client_secret: str | None
    client_auth: ClientAuth
    refresh: RefreshMode
    leeway_seconds: float
    scope: str | None
    persist: bool
    preset: Preset
    grant_type: str = "refresh_token"

    def __repr__(self) -> str:  # never show the client secret
        return f"RefreshSettings(token_uri={self.token_uri!r}, client_id={self.client_id!r}, refresh={self.refresh!r})"

    def public(self) -> dict[str, str]:
        """What refreshing needs beside the client secret (which is never in it): stored with the credential."""
        named = {
            "token_uri": self.token_uri,
            "client_id": self.client_id,
            "client_auth": self.client_auth,
            "scope": self.scope,
            "provider": self.preset.name,
            "grant_type": self.grant_type,
        }
        return {key: value for key, value in named.items() if value}

    @classmethod
    def from_cfg(cls, oauth2: Mapping[str, Any] | None) -> RefreshSettings:
        raw = dict(oauth2 or {})
        preset_name = str(raw.get("provider") or "generic")
        preset = PRESETS.get(preset_name)
        if preset is None:
            raise ConfigurationError(f"oauth2.provider {preset_name!r} is unknown: use one of {', '.join(PRESETS)}")
        client_auth = str(raw.get("client_auth") or preset.client_auth)
        if client_auth not in ("basic", "post"):
            raise ConfigurationError(f"oauth2.client_auth must be basic or post, got {client_auth!r}")
        refresh = str(raw.get("refresh") or "auto")
        if refresh not in ("auto", "on_401", "always"):
            raise ConfigurationError(f"oauth2.refresh must be auto, on_401 or always, got {refresh!r}")
        try:
            leeway = float(raw.get("leeway_seconds", 300))
        except (TypeError, ValueError):
            raise ConfigurationError("oauth2.leeway_seconds must be a number") from None
        scope = raw.get("scope")
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        return cls(
            token_uri=_text(raw.get("token_uri")),
            client_id=_text(raw.get("client_id")),
            client_secret=_text(raw.get("client_secret")),
            client_auth=client_auth,  # type: ignore[arg-type]
            refresh=refresh,  # type: ignore[arg-type]
            leeway_seconds=max(0.0, leeway),
            scope=_text(scope),
            persist=raw.get("persist", True) is not False,
            preset=preset,
            grant_type=str(raw.get("grant_type") or "refresh_token"),
        )


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
