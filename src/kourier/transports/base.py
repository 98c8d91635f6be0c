"""The broker contract: the few operations kourier needs from Kafka.

Everything above this module (server, client) talks to a ``Transport``; only
``transports/kafka.py`` imports a Kafka client. ``transports/memory.py`` implements the
same contract in process, and must never do something Kafka cannot: topics must exist
before use, records have a size limit, a group's partitions are shared among its
members, and only committed offsets survive a member leaving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from kourier.errors import BrokerError

TopicPartition = tuple[str, int]
RebalanceCallback = Callable[[set[TopicPartition]], Awaitable[None]]


def log_created(log: logging.Logger, created: Sequence[str], asked: Sequence[str]) -> None:
    """Log the topics this process created, not those another got to first.

    With ``--workers 2`` both workers ask for the same missing topics; the broker
    creates each once and tells the other "already exists".
    """
    if created:
        log.info("created topics %s", ", ".join(created))
    others = [name for name in asked if name not in created]
    if others:
        log.debug("topics %s were created by another process meanwhile", ", ".join(others))


#: The end of every "cannot connect" error: how to point kourier at a broker.
UNREACHABLE_HINT = (
    "set KOURIER_BOOTSTRAP_SERVERS (or --bootstrap-servers) to your brokers' host:port, "
    "or start a local broker with 'kourier kafka start'"
)


@dataclass(frozen=True, slots=True)
class Record:
    """A record as a consumer sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    timestamp_ms: int
    #: Why the client library could not read this record (a header name that is not
    #: UTF-8, bytes that do not parse), or None. Such a record carries what could be
    #: read; every reader steps over it, logs and counts it, and a service dead-letters it.
    undecodable: str | None = None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the broker says about a topic."""

    name: str
    partitions: int
    replication_factor: int


class GroupConsumer(ABC):
    """A member of a consumer group: fetches records of its assigned partitions.

    The rebalance callbacks may run between or during calls (on Kafka, in the client's
    background task), but always: ``on_assigned`` finishes before ``fetch`` returns any
    record of the new assignment; ``on_revoked`` runs before the partitions are given
    to another member, and ``commit`` works inside it; an exception raised by a callback
    comes out of the next ``fetch``. ``fetch`` may overrun its timeout while a rebalance
    is in progress. A rebalance forgets which partitions were paused (as Kafka does):
    pause again in ``on_assigned`` if needed. Offsets given to ``commit`` are the next
    offset to read, as in Kafka.
    """

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Leave the group. Uncommitted work will be redelivered to another member."""

    @abstractmethod
    async def fetch(self, max_records: int, timeout: float) -> list[Record]: ...

    @abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...

    @abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    @abstractmethod
    async def lag(self) -> dict[TopicPartition, int]:
        """Records not fetched yet in each assigned partition (end offset - position)."""

    @abstractmethod
    def pause(self, partitions: Collection[TopicPartition]) -> None: ...

    @abstractmethod
    def resume(self, partitions: Collection[TopicPartition]) -> None: ...


class Acknowledgement(Enum):
    """What a share-group member tells the broker about a record it acquired."""

    #: Handled: the record is done for the whole group.
    ACCEPT = "accept"
    #: Not handled here: the broker hands it out again (its delivery count goes up).
    RELEASE = "release"
    #: Never to be handled: the broker archives it.
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A record a share-group member acquired, and how often the group has acquired it
    (1 the first time; a release or an expired lock makes the next delivery count more)."""

    record: Record
    count: int


class ShareConsumer(ABC):
    """A member of a share group (Kafka's queues): records acquired and acknowledged one by one.

    Any number of members share every partition; the broker hands each record to one
    member at a time and locks it for ``lock_seconds``. A record not acknowledged in time
    (its member died or hung) is handed out again; after ``delivery_limit`` deliveries it
    is archived without a word to anyone, so a member that gets a record whose count is
    the limit must settle it for good. Records come in no particular order. As in Kafka's
    explicit mode, ``fetch`` refuses (``BrokerError``) while a record of the previous fetch
    is not acknowledged. ``start`` makes a new group begin at the earliest record (Kafka's
    default is the latest) and reads the group's lock duration and delivery limit.
    """

    #: Seconds a fetched record stays locked to this member; known after ``start``.
    lock_seconds: float = 30.0
    #: Deliveries after which the broker archives a record; known after ``start``.
    delivery_limit: int = 5

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Release what is still acquired (send what was acknowledged first), leave the group."""

    @abstractmethod
    async def fetch(self, timeout: float) -> list[Delivery]: ...

    @abstractmethod
    async def acknowledge(self, delivery: Delivery, how: Acknowledgement) -> None:
        """Settle one record; returns once the broker has it, ``BrokerError`` if refused
        (its lock had expired: it was handed to another member)."""


class PartitionReader(ABC):
    """Reads one partition without a group: from its end at ``start`` on (reply inboxes),
    or from its first record (tools such as the dead-letter commands)."""

    @abstractmethod
    async def start(self) -> None:
        """Fix the position (end or beginning) before returning: nothing after it is missed."""

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def fetch(self, timeout: float) -> list[Record]: ...

    @abstractmethod
    async def end_offset(self) -> int:
        """The partition's end offset now: the offset its next record will get.

        A reader from the beginning has read everything that was in the partition when
        its position reaches this (the compacted registry is read up to it).
        """


class Transport(ABC):
    """A connection to a broker: publish records, create topics, make consumers."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        """Queue a record; the returned awaitable resolves when the broker acknowledged it.

        Awaiting ``publish`` itself may wait for buffer space (back-pressure). Records
        published to one partition are acknowledged and stored in call order.
        Raises ``PublishError`` (now or from the awaitable) if the record is refused or
        not acknowledged in time. A timeout does not prove the record was not stored:
        it may still arrive, so a retry needs an idempotency key. A ``None`` value is a
        tombstone: on a compacted topic it deletes its key (Kafka refuses a record
        without a key on such a topic).
        """

    @abstractmethod
    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        """Create the topics that do not exist yet; existing ones are left as they are."""

    @abstractmethod
    async def partition_count(self, topic: str) -> int:
        """How many partitions a topic has; ``BrokerError`` if it does not exist."""

    @abstractmethod
    def group_consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> GroupConsumer: ...

    @abstractmethod
    def partition_reader(
        self, topic: str, partition: int, *, from_beginning: bool = False
    ) -> PartitionReader: ...

    def share_consumer(
        self, topics: Sequence[str], group: str, *, max_records: int = 500
    ) -> ShareConsumer:
        """A member of share group ``group`` that takes about ``max_records`` per fetch
        (Kafka treats it as a hint); only transports whose client has share groups."""
        raise BrokerError(f"{type(self).__name__} has no share-group consumer")

    @abstractmethod
    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicInfo]:
        """Partitions and replication of those of ``names`` that exist."""

    @abstractmethod
    async def topic_names(self) -> set[str]:
        """The names of every topic the broker lets this client see (never creates one)."""

    @abstractmethod
    async def ping(self, timeout: float) -> bool:
        """True if the broker answered a metadata request within ``timeout`` seconds."""


T = TypeVar("T")


async def require_topics(
    metadata: Callable[[list[str]], Awaitable[dict[str, T]]], topics: Iterable[str], wait: float
) -> dict[str, T]:
    """``metadata(names)`` for ``topics``, all of which must exist; ``BrokerError`` if not.

    Metadata requests go to any broker, and in a cluster a topic created a moment ago
    (by this process or another) may not have reached that broker's metadata yet: a
    missing topic is looked for again, every 0.1 s, for ``wait`` seconds.
    """
    names = list(topics)
    deadline = time.monotonic() + wait
    while True:
        found = await metadata(names)
        missing = [name for name in names if name not in found]
        if not missing:
            return found
        if time.monotonic() >= deadline:
            raise BrokerError(f"topic {missing[0]!r} does not exist")
        await asyncio.sleep(0.1)
