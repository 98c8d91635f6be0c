"""The operator's view: a service's topics, and its dead letters (list and replay).

Used by the ``kourier topics`` and ``kourier dead-letters`` commands; usable from code.
Replaying publishes a copy of a dead letter to the service's request topic again; it
never deletes the dead letter (Kafka topics are append-only), so replay each once.
A record of the dead-letter topic that the Kafka client library could not read is
listed with why (and logged); it is never replayed, as what could be read of it is not
the record that was written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kourier import protocol
from kourier.server.serve import H_DEAD_ATTEMPTS, H_DEAD_REASON, H_DEAD_SOURCE
from kourier.settings import Settings
from kourier.transports.base import Record, TopicInfo, TopicSpec, Transport

_DEAD_HEADERS = (H_DEAD_REASON, H_DEAD_SOURCE, H_DEAD_ATTEMPTS)

logger = logging.getLogger("kourier.admin")


def service_topics(settings: Settings, service: str) -> list[TopicSpec]:
    """The topics a service needs, as the settings ask for them."""
    return [
        TopicSpec(
            settings.request_topic(service), settings.partitions, settings.replication_factor
        ),
        TopicSpec(
            settings.dead_letter_topic(service), settings.partitions, settings.replication_factor
        ),
        TopicSpec(settings.reply_topic, settings.reply_partitions, settings.replication_factor),
    ]


async def ensure_topics(transport: Transport, settings: Settings, service: str) -> None:
    await transport.ensure_topics(service_topics(settings, service))


async def describe_topics(
    transport: Transport, settings: Settings, service: str
) -> list[tuple[str, TopicInfo | None]]:
    names = [spec.name for spec in service_topics(settings, service)]
    found = await transport.describe_topics(names)
    return [(name, found.get(name)) for name in names]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic, with what the service said about it."""

    record: Record
    reason: str
    source: str
    attempts: int | None

    @property
    def position(self) -> str:
        return f"{self.record.partition}:{self.record.offset}"

    def header(self, name: str) -> str | None:
        for key, value in self.record.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    @classmethod
    def from_record(cls, record: Record) -> DeadLetter:
        headers = {k: v for k, v in record.headers}
        attempts = headers.get(H_DEAD_ATTEMPTS, b"")
        reason = headers.get(H_DEAD_REASON, b"").decode("utf-8", "replace")
        if record.undecodable is not None:
            unreadable = f"the Kafka client cannot read this record: {record.undecodable}"
            reason = f"{reason} ({unreadable})" if reason else unreadable
        return cls(
            record=record,
            reason=reason,
            source=headers.get(H_DEAD_SOURCE, b"").decode("utf-8", "replace"),
            attempts=int(attempts) if attempts.isdigit() else None,
        )


async def read_dead_letters(
    transport: Transport, settings: Settings, service: str, *, idle: float = 1.0
) -> list[DeadLetter]:
    """Every dead letter of ``service`` now in its topic, oldest first per partition."""
    topic = settings.dead_letter_topic(service)
    letters: list[DeadLetter] = []
    for partition in range(await transport.partition_count(topic)):
        reader = transport.partition_reader(topic, partition, from_beginning=True)
        await reader.start()
        try:
            while batch := await reader.fetch(idle):
                for record in batch:
                    if record.undecodable is not None:
                        logger.warning(
                            "dead letter at %s cannot be read whole: %s",
                            record.where,
                            record.undecodable,
                        )
                    letters.append(DeadLetter.from_record(record))
        finally:
            await reader.stop()
    return letters


async def replay(
    transport: Transport, settings: Settings, service: str, letters: Sequence[DeadLetter]
) -> int:
    """Publish each dead letter to the service's request topic again; the count acked.

    The dead-letter headers and the original deadline are dropped (the caller who set it
    is long gone); the request id is kept, so the service's idempotency store still
    recognises a request it had already answered.
    """
    topic = settings.request_topic(service)
    acks = []
    for letter in letters:
        record = letter.record
        if record.undecodable is not None:
            logger.warning("not replaying the dead letter at %s: %s", record.where, letter.reason)
            continue
        headers = [
            (name, value)
            for name, value in record.headers
            if name not in _DEAD_HEADERS and name != protocol.H_DEADLINE
        ]
        acks.append(
            await transport.publish(topic, record.value or b"", key=record.key, headers=headers)
        )
    for ack in acks:
        await ack
    return len(acks)
