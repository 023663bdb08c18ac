"""``oarlock topology declare [--dry-run]``: the exchange, queues and bindings one step needs, from its environment.

Read from the same ELASTICIO_* variables ``oarlock run`` reads (protocol/settings.py):

- the exchange ``PUBLISH_MESSAGES_TO`` (direct, durable; ``--exchange-type topic`` for a topic one);
- the input queue ``LISTEN_MESSAGES_ON`` (bound to the keys given with ``--bind-input``, e.g. the data
  key of the step before);
- one queue per outgoing routing key, because every publish of a worker is mandatory and an
  unroutable one is an error (docs/protocol.md §3, §7): the step's own keys (data, error, rebound,
  snapshot) get ``{PREFIX}:{key}`` (prefix: the input queue, or ``--prefix``); the exchange-wide keys
  of oarlock (``UPDATE_KEYS_ROUTING_KEY``, ``CREDENTIAL_INVALID_ROUTING_KEY``), which one keys service
  consumes for every step, get ``{exchange}:{key}``;
- the rebound queue dead-letters expired copies back to the input queue (through the default exchange),
  as a platform does (docs/protocol.md §3, "Rebounds").

Declaring is idempotent: what exists is left as it is (and reported ``exists``); an object that exists
with other properties is a one-line error. Exit 0, 2 on a configuration error, 3 on a broker error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from oarlock.amqp.admin import Binding, Declarable, Exchange, Queue
from oarlock.errors import ConfigurationError, TransportError
from oarlock.protocol.settings import Settings

#: routes whose queue belongs to the step (named under its prefix), in the order they are declared
STEP_ROUTES = ("data", "error", "rebound", "snapshot")
#: oarlock's exchange-wide routes: one queue per exchange, shared by its steps (the keys service's)
EXCHANGE_ROUTES = ("updateKeys", "credentialInvalid", "credentialAlert")
#: the keys service's alert routing key (`oarlock keys serve --alert-routing-key`, same default)
ALERT_ROUTING_KEY = "credentialAlert"


@dataclass(frozen=True)
class Planned:
    item: Declarable
    roles: tuple[str, ...]  # what the object is for: exchange, input, data, error, rebound, …


def route_keys(settings: Settings) -> dict[str, str]:
    return {
        "data": settings.data_routing_key,
        "error": settings.error_routing_key,
        "rebound": settings.rebound_routing_key,
        "snapshot": settings.snapshot_routing_key,
        "updateKeys": settings.update_keys_routing_key,
        "credentialInvalid": settings.credential_invalid_routing_key,
        "credentialAlert": ALERT_ROUTING_KEY,  # what the platform's alerting reads
    }


def plan(
    settings: Settings,
    *,
    exchange_type: str = "direct",
    queue_type: str = "classic",
    prefix: str | None = None,
    bind_input: Sequence[str] = (),
) -> list[Planned]:
    """Every object to declare, in order (exchange, queues, then their bindings); duplicates merged."""
    exchange = settings.publish_messages_to
    input_queue = settings.listen_messages_on
    step_prefix = prefix or input_queue
    extra: dict[str, Any] = {"x-queue-type": "quorum"} if queue_type == "quorum" else {}
    queues: dict[str, tuple[dict[str, Any], list[str]]] = {input_queue: (dict(extra), ["input"])}
    bindings: dict[tuple[str, str], list[str]] = {(input_queue, key): ["input"] for key in bind_input}
    for role, key in route_keys(settings).items():
        name = f"{step_prefix}:{key}" if role in STEP_ROUTES else f"{exchange}:{key}"
        arguments, roles = queues.setdefault(name, (dict(extra), []))
        if role == "rebound":  # an expired rebound goes back to the input queue, through the default exchange
            arguments.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": input_queue})
        _add(roles, role)
        _add(bindings.setdefault((name, key), []), role)
    return [
        Planned(Exchange(exchange, exchange_type), ("exchange",)),
        *(Planned(Queue(name, arguments=arguments), tuple(roles)) for name, (arguments, roles) in queues.items()),
        *(Planned(Binding(exchange, queue, key), tuple(roles)) for (queue, key), roles in bindings.items()),
    ]


def _add(roles: list[str], role: str) -> None:
    if role not in roles:
        roles.append(role)


def as_json(planned: Planned, status: str, messages: int | None = None) -> dict[str, Any]:
    item = planned.item
    out: dict[str, Any] = {"status": status}
    if isinstance(item, Exchange):
        out.update(kind="exchange", name=item.name, type=item.type, durable=item.durable)
    elif isinstance(item, Queue):
        out.update(kind="queue", name=item.name, durable=item.durable, arguments=dict(item.arguments))
        if messages is not None:
            out["messages"] = messages
    else:
        out.update(kind="binding", exchange=item.exchange, queue=item.queue, routing_key=item.routing_key)
    out["for"] = list(planned.roles)
    return out


def as_text(planned: Planned, status: str, messages: int | None = None) -> str:
    item = planned.item
    roles = ", ".join(planned.roles)
    if isinstance(item, Exchange):
        text = f"exchange {item.name} ({item.type}{', durable' if item.durable else ''})"
    elif isinstance(item, Queue):
        details = ["durable"] if item.durable else []
        details += [f"{k}={v!r}" if v == "" else f"{k}={v}" for k, v in item.arguments.items()]
        count = f", {messages} messages" if messages is not None else ""
        text = f"queue {item.name} ({', '.join(details)}{count}) for {roles}"
    else:
        text = f"binding {item.exchange} -> {item.queue} key {item.routing_key} for {roles}"
    return f"{status:<8} {text}"


@click.group("topology")
def topology_group() -> None:
    """The broker objects a step needs (exchange, queues, bindings), from its ELASTICIO_* environment."""


@topology_group.command("declare")
@click.option("--dry-run", is_flag=True, help="Print what would be declared; do not connect to the broker.")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--exchange-type",
    type=click.Choice(["direct", "topic"]),
    default="direct",
    show_default=True,
    help="Exchange type.",
)
@click.option(
    "--queue-type",
    type=click.Choice(["classic", "quorum"]),
    default="classic",
    show_default=True,
    help="Type of every queue declared (quorum: replicated; docs/deploy.md).",
)
@click.option("--prefix", help="Prefix of the step's output queues (default: ELASTICIO_LISTEN_MESSAGES_ON).")
@click.option(
    "--bind-input",
    multiple=True,
    metavar="KEY",
    help="Also bind the input queue to KEY on the exchange (e.g. the data routing key of the step before); repeatable.",
)
def declare_command(
    dry_run: bool, output_format: str, exchange_type: str, queue_type: str, prefix: str | None, bind_input: tuple[str]
) -> None:
    """Declare the exchange, the input queue and one bound queue per outgoing routing key; idempotent.

    One line per object (JSON lines with --format json), its status: plan (--dry-run), created, exists or
    bound. Exit 2 on a configuration error, 3 when the broker cannot be reached or refuses an object.
    """
    env = dict(os.environ)
    try:
        settings = Settings.from_env(env, api_optional=True)
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    planned = plan(settings, exchange_type=exchange_type, queue_type=queue_type, prefix=prefix, bind_input=bind_input)

    def show(entry: Planned, status: str, messages: int | None = None) -> None:
        if output_format == "json":
            click.echo(json.dumps(as_json(entry, status, messages), ensure_ascii=False))
        else:
            click.echo(as_text(entry, status, messages))

    if dry_run:
        for entry in planned:
            show(entry, "plan")
        return
    from oarlock.amqp.admin import BrokerAdmin

    try:
        with BrokerAdmin(settings.amqp_uri, name=f"oarlock topology {settings.step_id}") as admin:
            declared = admin.declare([entry.item for entry in planned])
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    except TransportError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(3)
    for entry, result in zip(planned, declared, strict=True):
        show(entry, result.status, result.messages)
    created = sum(1 for result in declared if result.status == "created")
    click.echo(f"oarlock: {len(declared)} objects declared on {admin.broker}, {created} created", err=True)
