"""The operator's view: a service's topics, and its dead letters (list and replay).

Used by the ``kourier topics`` and ``kourier dead-letters`` commands; usable from code.
Replaying publishes a copy of a dead letter to the service's request topic again; it
never deletes the dead letter (Kafka topics are append-only). Instead, once the copy is
acknowledged, it appends a replay marker to the dead-letter topic (docs/protocol.md), so
that listing shows which letters were replayed and ``replay --all`` skips them.
A record of the dead-letter topic that the Kafka client library could not read is
listed with why (and logged); it is never replayed, as what could be read of it is not
the record that was written.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kourier import protocol
from kourier.errors import BrokerError
from kourier.registry import registry_topic_spec
from kourier.server.serve import H_DEAD_ATTEMPTS, H_DEAD_REASON, H_DEAD_SOURCE
from kourier.settings import Settings
from kourier.transports.base import Record, TopicInfo, TopicSpec, Transport

logger = logging.getLogger("kourier.admin")

_DEAD_HEADERS = (H_DEAD_REASON, H_DEAD_SOURCE, H_DEAD_ATTEMPTS)
#: On a replay marker: ``<partition>:<offset>`` of the dead letter that was replayed.
H_REPLAYED = "kourier-replayed"
TYPE_REPLAYED = b"replayed"

logger = logging.getLogger("kourier.admin")


def service_topics(settings: Settings, service: str) -> list[TopicSpec]:
    """The topics a service needs, as the settings ask for them (the shared reply and
    registry topics included)."""
    return [
        TopicSpec(
            settings.request_topic(service), settings.partitions, settings.replication_factor
        ),
        TopicSpec(
            settings.dead_letter_topic(service), settings.partitions, settings.replication_factor
        ),
        TopicSpec(settings.reply_topic, settings.reply_partitions, settings.replication_factor),
        registry_topic_spec(settings),
        # Every instance of the service reads all of it: one partition is one reader.
        TopicSpec(settings.cancel_topic(service), 1, settings.replication_factor),
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
    #: A replay marker for this letter is in the dead-letter topic.
    replayed: bool = False

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
    """Every dead letter of ``service`` now in its topic, oldest first per partition.

    Each partition is read up to its end offset as it was when the read began, so an
    empty or fully read partition costs no wait; ``idle`` only bounds the wait for a
    record that does not come (the end of a partition whose last offsets hold no record).
    """
    topic = settings.dead_letter_topic(service)
    letters: list[DeadLetter] = []
    replayed: set[str] = set()
    for partition in range(await transport.partition_count(topic)):
        reader = transport.partition_reader(topic, partition, from_beginning=True)
        await reader.start()
        try:
            end = await reader.end_offset()
            following = 0  # the offset after the last record read
            while following < end and (batch := await reader.fetch(idle)):
                for record in batch:
                    following = record.offset + 1
                    if record.undecodable is not None:
                        logger.warning(
                            "dead letter at %s cannot be read whole: %s",
                            record.where,
                            record.undecodable,
                        )
                        letters.append(DeadLetter.from_record(record))
                        continue
                    marked = _replayed_position(record)
                    if marked is not None:
                        replayed.add(marked)
                    else:
                        letters.append(DeadLetter.from_record(record))
        finally:
            await reader.stop()
    return [
        dataclasses.replace(letter, replayed=True) if letter.position in replayed else letter
        for letter in letters
    ]


def _replayed_position(record: Record) -> str | None:
    """The position a replay marker names; None if ``record`` is not a marker."""
    headers = dict(record.headers)
    if headers.get(protocol.H_TYPE) != TYPE_REPLAYED:
        return None
    return headers.get(H_REPLAYED, b"").decode("ascii", "replace")


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
    try:
        await _mark_replayed(transport, settings.dead_letter_topic(service), letters)
    except BrokerError as exc:
        # The copies are in: failing here would read as "not replayed" and invite a
        # second replay. Say which letters will not show as replayed instead.
        logger.warning(
            "replayed %d dead letters but could not mark them replayed (%s): %s",
            len(letters),
            exc,
            ", ".join(letter.position for letter in letters),
        )
    return len(acks)


async def _mark_replayed(transport: Transport, topic: str, letters: Sequence[DeadLetter]) -> None:
    """Append a replay marker per letter, each after its copy was acknowledged.

    A marker goes to the letter's own partition, so that it follows the letter there.
    """
    acks = []
    for letter in letters:
        headers = [
            (protocol.H_VERSION, protocol.VERSION),
            (protocol.H_TYPE, TYPE_REPLAYED),
            (H_REPLAYED, letter.position.encode("ascii")),
        ]
        request_id = letter.header(protocol.H_ID)
        if request_id is not None and protocol.is_valid_request_id(request_id):
            headers.append((protocol.H_ID, request_id.encode("ascii")))
        acks.append(
            await transport.publish(
                topic, b"", key=None, headers=headers, partition=letter.record.partition
            )
        )
    for ack in acks:
        await ack
