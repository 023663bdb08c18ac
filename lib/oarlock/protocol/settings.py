"""The ELASTICIO_* environment of a worker, parsed exactly as docs/protocol.md §1 says.

Required variables missing -> EnvironmentConfigError naming the first one missing. Numbers
parse as integers (a bad value falls back to the default); booleans: unset is the default,
'' or 'false' is false, anything else true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oarlock.errors import EnvironmentConfigError

PREFIX = "ELASTICIO_"

ALWAYS_REQUIRED = (
    "FLOW_ID",
    "EXEC_ID",
    "STEP_ID",
    "CONTAINER_ID",
    "WORKSPACE_ID",
    "USER_ID",
    "COMP_ID",
    "FUNCTION",
)
API_REQUIRED = ("API_URI", "API_USERNAME", "API_KEY")
CRYPTO = ("MESSAGE_CRYPTO_IV", "MESSAGE_CRYPTO_PASSWORD")
MESSAGING_REQUIRED = (
    "AMQP_URI",
    "LISTEN_MESSAGES_ON",
    "PUBLISH_MESSAGES_TO",
    "DATA_ROUTING_KEY",
    "ERROR_ROUTING_KEY",
    "REBOUND_ROUTING_KEY",
    "SNAPSHOT_ROUTING_KEY",
    "MESSAGE_CRYPTO_IV",
    "MESSAGE_CRYPTO_PASSWORD",
)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return default


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(PREFIX + name)
    if raw is None:
        return default
    return raw.strip().lower() not in ("", "false")


UPDATE_KEYS_ROUTES = ("api", "amqp")


def _routes(value: str | None) -> frozenset[str] | None:
    if value is None or not value.strip():
        return None
    routes = frozenset(part.strip().lower() for part in value.replace("|", ",").split(",") if part.strip())
    unknown = sorted(routes - set(UPDATE_KEYS_ROUTES))
    if unknown or not routes:
        raise EnvironmentConfigError(
            f"{PREFIX}UPDATE_KEYS_ROUTES must name api, amqp or both (api,amqp), got {value[:60]!r}"
        )
    return routes


def camel_case(name: str) -> str:
    """ELASTICIO_SOME_VAR / SOME_VAR -> someVar (sailor's ADDITIONAL_VARS_FOR_HEADERS naming)."""
    parts = name.removeprefix(PREFIX).lower().split("_")
    return parts[0] + "".join(p.capitalize() for p in parts[1:])


@dataclass(frozen=True)
class Settings:
    flow_id: str
    exec_id: str
    step_id: str
    container_id: str
    workspace_id: str
    user_id: str
    comp_id: str
    function: str
    api_uri: str | None
    api_username: str | None
    api_key: str | None = field(repr=False)
    amqp_uri: str = field(repr=False)
    listen_messages_on: str
    publish_messages_to: str
    data_routing_key: str
    error_routing_key: str
    rebound_routing_key: str
    snapshot_routing_key: str
    message_crypto_iv: str | None = field(repr=False)
    message_crypto_password: str | None = field(repr=False)
    update_keys_routing_key: str = "updateKeys"
    update_keys_via_api: bool = False
    rebound_initial_expiration: int = 15000
    rebound_limit: int = 20
    component_path: str = ""
    prefetch: int = 1
    concurrency: int | None = None
    startup_required: bool = False
    hook_shutdown: bool = False
    persistent_messages: bool = False
    outgoing_message_size_limit: int = 10 * 1024 * 1024
    protocol_version: int = 1
    no_error_replies: bool = False
    publish_retry_attempts: int | None = None
    additional_headers: dict[str, str] = field(default_factory=dict)
    keys_store: str | None = field(default=None, repr=False)
    log_level: str = "info"
    grace_seconds: float = 30.0
    message_time_limit: float | None = None  # seconds one input may run before it is an error (oarlock)
    no_self_passthrough: bool = False  # sailor's NO_SELF_PASSTRHOUGH (its spelling): no passthrough[STEP_ID]
    #: where an updateKeys must go before the input is acked: "api" (sailor's PUT), "amqp"; None: the default
    update_keys_routes: frozenset[str] | None = None
    #: the password (and IV) being rotated out: decrypts what the current one cannot, never encrypts (oarlock)
    message_crypto_password_previous: str | None = field(default=None, repr=False)
    message_crypto_iv_previous: str | None = field(default=None, repr=False)
    #: routing key of a worker's report of a dead credential to the keys service (oarlock)
    credential_invalid_routing_key: str = "credentialInvalid"

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, api_optional: bool = False) -> Settings:
        def need(name: str) -> str:
            value = env.get(PREFIX + name)
            # the crypto pair must be present, but may be empty: no password means plaintext (docs/protocol.md §5)
            if value is None or (value == "" and name not in CRYPTO):
                raise EnvironmentConfigError(f"{PREFIX}{name} is required but not set")
            return value

        required = list(ALWAYS_REQUIRED) + ([] if api_optional else list(API_REQUIRED)) + list(MESSAGING_REQUIRED)
        values: dict[str, Any] = {}
        for name in required:
            values[name.lower()] = need(name)
        for name in API_REQUIRED:
            values.setdefault(name.lower(), env.get(PREFIX + name) or None)
        concurrency = _int(env, "CONCURRENCY", 0)
        attempts = _int(env, "AMQP_PUBLISH_RETRY_ATTEMPTS", 0)
        additional: dict[str, str] = {}
        for var in filter(None, (v.strip() for v in env.get(PREFIX + "ADDITIONAL_VARS_FOR_HEADERS", "").split(","))):
            if var in env:
                additional[camel_case(var)] = env[var]
            elif PREFIX + var in env:
                additional[camel_case(var)] = env[PREFIX + var]
        try:
            grace = float(env.get(PREFIX + "GRACE_SECONDS") or 30)
        except ValueError:
            grace = 30.0
        try:
            time_limit = float(env.get(PREFIX + "MESSAGE_TIME_LIMIT") or 0)
        except ValueError:
            time_limit = 0.0
        return cls(
            flow_id=values["flow_id"],
            exec_id=values["exec_id"],
            step_id=values["step_id"],
            container_id=values["container_id"],
            workspace_id=values["workspace_id"],
            user_id=values["user_id"],
            comp_id=values["comp_id"],
            function=values["function"],
            api_uri=values["api_uri"],
            api_username=values["api_username"],
            api_key=values["api_key"],
            amqp_uri=values["amqp_uri"],
            listen_messages_on=values["listen_messages_on"],
            publish_messages_to=values["publish_messages_to"],
            data_routing_key=values["data_routing_key"],
            error_routing_key=values["error_routing_key"],
            rebound_routing_key=values["rebound_routing_key"],
            snapshot_routing_key=values["snapshot_routing_key"],
            message_crypto_iv=values["message_crypto_iv"] or None,
            message_crypto_password=values["message_crypto_password"] or None,
            update_keys_routing_key=env.get(PREFIX + "UPDATE_KEYS_ROUTING_KEY") or "updateKeys",
            update_keys_via_api=_bool(env, "UPDATE_KEYS_VIA_API", False),
            rebound_initial_expiration=_int(env, "REBOUND_INITIAL_EXPIRATION", 15000),
            rebound_limit=_int(env, "REBOUND_LIMIT", 20),
            component_path=env.get(PREFIX + "COMPONENT_PATH", ""),
            prefetch=max(1, _int(env, "RABBITMQ_PREFETCH_SAILOR", 1)),
            concurrency=concurrency if concurrency > 0 else None,
            startup_required=_bool(env, "STARTUP_REQUIRED", False),
            hook_shutdown=_bool(env, "HOOK_SHUTDOWN", False),
            persistent_messages=_bool(env, "AMQP_PERSISTENT_MESSAGES", False),
            outgoing_message_size_limit=_int(env, "OUTGOING_MESSAGE_SIZE_LIMIT", 10 * 1024 * 1024),
            protocol_version=_int(env, "PROTOCOL_VERSION", 1),
            no_error_replies=_bool(env, "NO_ERROR_REPLIES", False),
            publish_retry_attempts=attempts if attempts > 0 else None,
            additional_headers=additional,
            keys_store=env.get(PREFIX + "KEYS_STORE") or None,
            log_level=env.get(PREFIX + "LOG_LEVEL") or "info",
            grace_seconds=grace,
            message_time_limit=time_limit if time_limit > 0 else None,
            no_self_passthrough=_bool(env, "NO_SELF_PASSTRHOUGH", False),
            update_keys_routes=_routes(env.get(PREFIX + "UPDATE_KEYS_ROUTES")),
            message_crypto_password_previous=env.get(PREFIX + "MESSAGE_CRYPTO_PASSWORD_PREVIOUS") or None,
            message_crypto_iv_previous=env.get(PREFIX + "MESSAGE_CRYPTO_IV_PREVIOUS") or None,
            credential_invalid_routing_key=env.get(PREFIX + "CREDENTIAL_INVALID_ROUTING_KEY") or "credentialInvalid",
        )

    def routes_for(self, *, cfg_from_api: bool) -> frozenset[str]:
        """The updateKeys routes: ELASTICIO_UPDATE_KEYS_ROUTES, else api+amqp with UPDATE_KEYS_VIA_API, else
        where the step cfg came from: the platform API means a sailor platform (the PUT), otherwise AMQP."""
        if self.update_keys_routes is not None:
            return self.update_keys_routes
        if self.update_keys_via_api:
            return frozenset({"api", "amqp"})
        return frozenset({"api"}) if cfg_from_api else frozenset({"amqp"})
