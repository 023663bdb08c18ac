"""The publishes of one publishing channel waiting for the broker's answer, by delivery tag.

With publisher confirms the broker numbers the publishes of a channel 1, 2, 3, ... in the order
they reached it, and answers each number with a basic.ack or a basic.nack (``multiple``: every
number up to this one). :class:`PublishLedger` gives each publish that was written its number and
resolves its :class:`~oarlock.amqp.types.Confirm` with the answer. Only a publish that reached the
socket's buffer takes a number: one that could not be marshalled never left, and numbering it would
charge every later confirm to the publish before the one it confirms.

:func:`publish_failure` says what a publish that could not be written becomes: a broken connection
or channel is a :class:`~oarlock.errors.TransportError` (the input stays unsettled and is
redelivered), anything about the message itself a :class:`~oarlock.errors.PublishError` naming it
(an error event of the input and a reject: retrying cannot help).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pika.exceptions

from oarlock.amqp.fieldtable import unencodable
from oarlock.amqp.types import Confirm, short_string_problem
from oarlock.errors import PublishError, TransportError

log = logging.getLogger("oarlock.amqp")


@dataclass
class Pending:
    confirm: Confirm
    exchange: str
    routing_key: str
    body: bytes
    returned: bool = False


class PublishLedger:
    """I/O thread only."""

    def __init__(self) -> None:
        self.pending: dict[int, Pending] = {}
        self.next_tag = 0

    def new_channel(self) -> None:
        """Delivery tags start again at 1 on a new channel."""
        self.next_tag = 0

    def written(self, confirm: Confirm, exchange: str, routing_key: str, body: bytes) -> None:
        """A publish was written: it is the channel's next delivery tag."""
        self.next_tag += 1
        self.pending[self.next_tag] = Pending(confirm, exchange, routing_key, body)

    def fail_all(self, error: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for record in pending.values():
            record.confirm.resolve(error)

    def returned(self, exchange: str, routing_key: str, body: bytes, reply_text: str) -> None:
        """A basic.return: the first pending publish of that routing key and body fails as unroutable."""
        for record in self.pending.values():
            if not record.returned and record.routing_key == routing_key and record.body == body:
                record.returned = True
                record.confirm.resolve(
                    PublishError(
                        f"the broker returned a message published to exchange {exchange!r} with routing key "
                        f"{routing_key!r} as unroutable ({reply_text})"
                    )
                )
                return

    def confirmed(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        pending = self.pending
        if multiple:  # publish tags were added in ascending order: the confirmed ones are at the front
            tags = []
            for tag in pending:
                if tag > delivery_tag:
                    break
                tags.append(tag)
        else:
            tags = [delivery_tag]
        for tag in tags:
            record = pending.pop(tag, None)
            if record is None:
                continue
            if acked:
                record.confirm.resolve()
            else:
                record.confirm.resolve(
                    PublishError(f"the broker refused (nack) a message for routing key {record.routing_key!r}")
                )


def publish_failure(
    exc: Exception, exchange: str, routing_key: str, headers: dict[str, Any] | None = None
) -> TransportError:
    """What a publish that raised before anything was written becomes (and it is logged, once): a PublishError
    naming the routing key or the header that cannot be marshalled, a TransportError for a closed channel."""
    where = f"exchange {_shown(exchange)} with routing key {_shown(routing_key)}"
    if isinstance(exc, (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)):
        return TransportError(f"publish to {where} failed: {exc!r}")
    reason = short_string_problem("exchange", exchange) or short_string_problem("routing key", routing_key)
    if reason is None and headers:
        reason = f"its AMQP headers cannot be encoded: {unencodable(headers, exc)}"
        log.error("a message to %s cannot be published: %s", where, reason)
    elif reason is None:
        log.error("a message to %s cannot be published", where, exc_info=exc)
        reason = f"{type(exc).__name__}: {exc}"
    else:
        log.error("a message to %s cannot be published: %s", where, reason)
    return PublishError(f"a message to {where} cannot be published: {reason}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-12:]} ({len(str(value))} characters)"
