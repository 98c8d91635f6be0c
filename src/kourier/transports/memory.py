"""An in-process broker with Kafka's contract, for unit tests and single-process use.

It keeps Kafka's rules so that code tested here works on Kafka: topics must be created
first, a record has a size limit, partitions are split among a group's members, a
rebalance revokes every member's partitions before any member gets the new ones (the
eager protocol), a commit for a partition the member no longer owns fails, and a new
group starts at the earliest offset. A compacted topic (``cleanup.policy=compact``)
refuses records without a key and takes tombstones (``None`` values); it is never
compacted here, which Kafka allows too (its cleaner never touches the active segment,
nor runs on a schedule anyone can count on), so readers meet the worst case: every old
value is still there. It must never deliver something Kafka would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import zlib
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from kourier.errors import BrokerError, PublishError
from kourier.transports.base import (
    GroupConsumer,
    PartitionReader,
    RebalanceCallback,
    Record,
    ShareConsumer,
    TopicInfo,
    TopicPartition,
    TopicSpec,
    Transport,
)
from kourier.transports.memory_share import MemoryShareConsumer

#: Kafka's default ``max.message.bytes`` for a topic.
DEFAULT_MAX_RECORD_BYTES = 1_048_588


@dataclass
class _Group:
    members: list[MemoryGroupConsumer] = field(default_factory=list)
    generation: int = 0
    assignment: dict[int, set[TopicPartition]] = field(default_factory=dict)
    waiting_revoke: set[int] = field(default_factory=set)
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class MemoryBroker:
    """The shared state of an in-memory cluster: topics, partitions, groups, offsets."""

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.max_record_bytes = max_record_bytes
        self.topics: dict[str, list[list[Record]]] = {}
        #: The ``cleanup.policy=compact`` topics among ``topics``.
        self.compacted: set[str] = set()
        self._groups: dict[str, _Group] = {}
        self._changed = asyncio.Event()
        self._round_robin = itertools.count()
        self._member_ids = itertools.count(1)

    # -- records ---------------------------------------------------------------------

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str | bytes, bytes]],
        partition: int | None,
    ) -> Record:
        partitions = self.topics.get(topic)
        if partitions is None:
            raise PublishError(f"topic {topic!r} does not exist")
        if key is None and topic in self.compacted:
            raise PublishError(f"compacted topic {topic!r} cannot take a record without a key")
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        if size > self.max_record_bytes:
            raise PublishError(
                f"record of {size} bytes is larger than the broker's limit "
                f"({self.max_record_bytes} bytes)"
            )
        if partition is None:
            if key is not None:
                partition = zlib.crc32(key) % len(partitions)
            else:
                partition = next(self._round_robin) % len(partitions)
        elif not 0 <= partition < len(partitions):
            raise PublishError(f"topic {topic!r} has no partition {partition}")
        log = partitions[partition]
        names, undecodable = _header_names(headers)
        record = Record(
            topic,
            partition,
            len(log),
            key,
            value,
            tuple(zip(names, (v for _, v in headers), strict=True)),
            time.time_ns() // 1_000_000,
            undecodable,
        )
        log.append(record)
        self._notify()
        return record

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout: float) -> None:
        event = self._changed
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        # that lands in the same loop step as the event.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()

    def end_offset(self, tp: TopicPartition) -> int:
        return len(self.topics[tp[0]][tp[1]])

    def read(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        log = self.topics[tp[0]][tp[1]]
        return log[offset : offset + limit]

    # -- groups ----------------------------------------------------------------------

    def group(self, name: str) -> _Group:
        return self._groups.setdefault(name, _Group())

    def committed(self, group: str) -> dict[TopicPartition, int]:
        return dict(self.group(group).committed)

    def join(self, name: str, member: MemoryGroupConsumer) -> int:
        group = self.group(name)
        member_id = next(self._member_ids)
        group.members.append(member)
        member.member_id = member_id
        self._rebalance(group)
        return member_id

    def leave(self, name: str, member: MemoryGroupConsumer) -> None:
        group = self.group(name)
        if member in group.members:
            group.members.remove(member)
            group.assignment.pop(member.member_id, None)
            self._rebalance(group)

    def _rebalance(self, group: _Group) -> None:
        group.generation += 1
        partitions: list[TopicPartition] = []
        for topic in sorted({t for m in group.members for t in m.topics}):
            if topic in self.topics:
                partitions.extend((topic, p) for p in range(len(self.topics[topic])))
        members = sorted(group.members, key=lambda m: m.member_id)
        group.assignment = {m.member_id: set() for m in members}
        for index, tp in enumerate(partitions):
            if members:
                group.assignment[members[index % len(members)].member_id].add(tp)
        group.waiting_revoke = {m.member_id for m in members}
        self._notify()


class MemoryGroupConsumer(GroupConsumer):
    def __init__(
        self,
        broker: MemoryBroker,
        topics: Sequence[str],
        group: str,
        on_assigned: RebalanceCallback | None,
        on_revoked: RebalanceCallback | None,
    ) -> None:
        self.broker = broker
        self.topics = tuple(topics)
        self.group_name = group
        self.member_id = 0
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._generation = 0
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._started = False

    async def start(self) -> None:
        for topic in self.topics:
            if topic not in self.broker.topics:
                raise BrokerError(f"topic {topic!r} does not exist")
        self.broker.join(self.group_name, self)
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            self.broker.leave(self.group_name, self)
            self._assigned = set()

    async def _sync(self) -> bool:
        """Follow a rebalance; False while other members have not given up their partitions."""
        group = self.broker.group(self.group_name)
        if self.member_id in group.waiting_revoke:
            # As in Kafka's eager protocol, the member still owns its partitions (and may
            # commit them) while its revoke callback runs; nobody else can fetch them yet.
            if self._assigned and self._on_revoked is not None:
                await self._on_revoked(set(self._assigned))
            self._assigned = set()
            self._positions.clear()
            group.waiting_revoke.discard(self.member_id)
            self.broker._notify()
        if group.waiting_revoke:
            return False
        if self._generation != group.generation:
            self._generation = group.generation
            self._assigned = set(group.assignment.get(self.member_id, set()))
            for tp in self._assigned:
                self._positions[tp] = group.committed.get(tp, 0)
            self._paused = set()  # Kafka forgets pauses at a rebalance
            # Kafka calls the assignment callback even with nothing assigned.
            if self._on_assigned is not None:
                await self._on_assigned(set(self._assigned))
        return True

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        if not self._started:
            raise BrokerError("consumer is not started")
        deadline = time.monotonic() + timeout
        while True:
            if await self._sync():
                records = self._take(max_records)
                if records:
                    return records
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await self.broker.wait_for_change(left)

    def _take(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        for tp in sorted(self._assigned - self._paused):
            if len(out) >= max_records:
                break
            batch = self.broker.read(tp, self._positions[tp], max_records - len(out))
            self._positions[tp] += len(batch)
            out.extend(batch)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        group = self.broker.group(self.group_name)
        if self.member_id in group.waiting_revoke:
            owned = self._assigned  # still the old generation: its partitions are its own
        elif self._generation == group.generation:
            owned = group.assignment.get(self.member_id, set())
        else:
            owned = set()
        for tp, offset in offsets.items():
            if tp not in owned or self not in group.members:
                raise BrokerError(f"commit failed: {tp} is no longer assigned to this member")
            group.committed[tp] = offset

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    async def lag(self) -> dict[TopicPartition, int]:
        return {tp: self.broker.end_offset(tp) - self._positions[tp] for tp in self._assigned}

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self._paused |= set(partitions) & self._assigned

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self._paused -= set(partitions)
        self.broker._notify()


class MemoryPartitionReader(PartitionReader):
    def __init__(
        self, broker: MemoryBroker, topic: str, partition: int, from_beginning: bool
    ) -> None:
        self.broker = broker
        self.tp = (topic, partition)
        self.from_beginning = from_beginning
        self._position: int | None = None

    async def start(self) -> None:
        topic, partition = self.tp
        if topic not in self.broker.topics or partition >= len(self.broker.topics[topic]):
            raise BrokerError(f"no partition {partition} in topic {topic!r}")
        self._position = 0 if self.from_beginning else self.broker.end_offset(self.tp)

    async def stop(self) -> None:
        self._position = None

    async def end_offset(self) -> int:
        return self.broker.end_offset(self.tp)

    async def fetch(self, timeout: float) -> list[Record]:
        if self._position is None:
            raise BrokerError("reader is not started")
        deadline = time.monotonic() + timeout
        while True:
            records = self.broker.read(self.tp, self._position, 10_000)
            if records:
                self._position += len(records)
                return records
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await self.broker.wait_for_change(left)


class MemoryTransport(Transport):
    """A client connection to a ``MemoryBroker``; many may share one broker."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        self.broker.append(topic, value, key, headers, partition)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        await asyncio.sleep(0)
        return done

    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        for spec in topics:
            if spec.name not in self.broker.topics:
                self.broker.topics[spec.name] = [[] for _ in range(spec.partitions)]
                if (spec.config or {}).get("cleanup.policy") == "compact":
                    self.broker.compacted.add(spec.name)

    async def partition_count(self, topic: str) -> int:
        if topic not in self.broker.topics:
            raise BrokerError(f"topic {topic!r} does not exist")
        return len(self.broker.topics[topic])

    def group_consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> GroupConsumer:
        return MemoryGroupConsumer(self.broker, topics, group, on_assigned, on_revoked)

    def partition_reader(
        self, topic: str, partition: int, *, from_beginning: bool = False
    ) -> PartitionReader:
        return MemoryPartitionReader(self.broker, topic, partition, from_beginning)

    def share_consumer(
        self, topics: Sequence[str], group: str, *, max_records: int = 500
    ) -> ShareConsumer:
        return MemoryShareConsumer(self.broker, topics, group, max_records)

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicInfo]:
        return {
            name: TopicInfo(name, len(self.broker.topics[name]), 1)
            for name in names
            if name in self.broker.topics
        }

    async def topic_names(self) -> set[str]:
        return set(self.broker.topics)

    async def ping(self, timeout: float) -> bool:
        return True


def _header_names(headers: Sequence[tuple[str | bytes, bytes]]) -> tuple[list[str], str | None]:
    """Header names as a consumer reads them: Kafka stores any bytes as a name (a raw
    producer can write some that are not UTF-8), and a reader hands such a record up as
    undecodable, as the Kafka transports do."""
    names: list[str] = []
    problems: list[str] = []
    for index, (name, _) in enumerate(headers):
        if isinstance(name, str):
            names.append(name)
            continue
        try:
            names.append(name.decode("utf-8"))
        except UnicodeDecodeError:
            names.append(name.decode("utf-8", "backslashreplace"))
            problems.append(f"header {index} has a name that is not UTF-8 ({name!r:.80})")
    return names, "; ".join(problems) or None


# -- brokers by name -----------------------------------------------------------------
# ``bootstrap_servers="memory://NAME"`` reaches the broker opened under NAME in this
# process, so that an app's own ``Client()`` built from settings joins a test's broker.
# A broker is opened and closed explicitly (``kourier.testing.memory_broker``): one made
# on first use would outlive its test and carry its records and event loop into the next.

_NAMED: dict[str, MemoryBroker] = {}


def open_named(name: str, broker: MemoryBroker) -> None:
    """Make ``broker`` reachable as ``memory://name`` until ``close_named(name)``."""
    if name in _NAMED:
        raise BrokerError(f"an in-memory broker named {name!r} is already open")
    _NAMED[name] = broker


def close_named(name: str) -> None:
    _NAMED.pop(name, None)


def named(name: str) -> MemoryBroker:
    """The broker open under ``name``; a ``BrokerError`` that says how to open one if none."""
    try:
        return _NAMED[name]
    except KeyError:
        raise BrokerError(
            f"no in-memory broker named {name!r} is open in this process: open one with "
            f"`with kourier.testing.memory_broker({name!r})` (the kourier_settings "
            "fixture opens one for each test)"
        ) from None
