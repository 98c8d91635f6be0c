"""Share groups (Kafka's queues, KIP-932) on the in-memory broker, with Kafka's rules.

Every member of a share group reads every partition of its topics; the group hands each
record to one member at a time, locked for the group's lock duration, and counts its
deliveries. A record is settled by its member (accept, reject: done; release: handed out
again) or by its lock running out (handed out again). A record released or timed out at
the delivery limit is archived: nobody gets it again. A new group starts at the earliest
record, as kourier configures its groups on Kafka. As in Kafka's explicit acknowledgement
mode, a member cannot fetch while a record of its previous fetch is unacknowledged.

It must never do what Kafka would not: no renewal of a lock, no acknowledgement of a
record whose lock has run out (it may be with another member by then).
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kourier.errors import BrokerError
from kourier.transports.base import (
    Acknowledgement,
    Delivery,
    Record,
    ShareConsumer,
    TopicPartition,
)

if TYPE_CHECKING:  # memory.py imports this module to make share consumers
    from kourier.transports.memory import MemoryBroker

#: Kafka's defaults: ``group.share.record.lock.duration.ms`` and
#: ``group.share.delivery.count.limit``.
DEFAULT_LOCK_SECONDS = 30.0
DEFAULT_DELIVERY_LIMIT = 5


@dataclass
class _Acquired:
    count: int
    owner: int | None
    until: float


@dataclass
class ShareGroupState:
    """One share group on the in-memory broker; tests may change its two settings."""

    lock_seconds: float = DEFAULT_LOCK_SECONDS
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    #: Per partition: the first offset the group has never handed out.
    next_offset: dict[TopicPartition, int] = field(default_factory=dict)
    #: Records handed out and not settled for good: locked, or waiting to go again.
    in_flight: dict[TopicPartition, dict[int, _Acquired]] = field(default_factory=dict)
    #: Records archived at the delivery limit, per partition, for tests to see.
    archived: dict[TopicPartition, set[int]] = field(default_factory=dict)


_groups: weakref.WeakKeyDictionary[MemoryBroker, dict[str, ShareGroupState]]
_groups = weakref.WeakKeyDictionary()


def share_group(broker: MemoryBroker, name: str) -> ShareGroupState:
    """The state of share group ``name`` on ``broker`` (created empty on first use)."""
    return _groups.setdefault(broker, {}).setdefault(name, ShareGroupState())


class MemoryShareConsumer(ShareConsumer):
    _member_ids = itertools.count(1)

    def __init__(
        self, broker: MemoryBroker, topics: Sequence[str], group: str, max_records: int
    ) -> None:
        self.broker = broker
        self.topics = tuple(topics)
        self.group_name = group
        self.max_records = max_records
        self.member_id = next(self._member_ids)
        self._unacknowledged: set[tuple[TopicPartition, int]] = set()
        self._started = False

    @property
    def _group(self) -> ShareGroupState:
        return share_group(self.broker, self.group_name)

    async def start(self) -> None:
        for topic in self.topics:
            if topic not in self.broker.topics:
                raise BrokerError(f"topic {topic!r} does not exist")
        self.lock_seconds = self._group.lock_seconds
        self.delivery_limit = self._group.delivery_limit
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        group = self._group
        for tp, offset in list(self._unacknowledged):
            state = group.in_flight.get(tp, {}).get(offset)
            if state is not None and state.owner == self.member_id:
                self._release(group, tp, offset, state)
        self._unacknowledged.clear()
        self.broker._notify()

    async def fetch(self, timeout: float) -> list[Delivery]:
        if not self._started:
            raise BrokerError("share consumer is not started")
        if self._unacknowledged:
            raise BrokerError(
                f"{len(self._unacknowledged)} records of the previous fetch are not acknowledged"
            )
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self._acquire()
            if deliveries:
                return deliveries
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            # A lock running out is a change nobody announces: look again at least then.
            await self.broker.wait_for_change(min(left, self._next_expiry()))

    async def acknowledge(self, delivery: Delivery, how: Acknowledgement) -> None:
        record = delivery.record
        tp, offset = (record.topic, record.partition), record.offset
        self._unacknowledged.discard((tp, offset))
        group = self._group
        state = group.in_flight.get(tp, {}).get(offset)
        if state is None or state.owner != self.member_id or time.monotonic() >= state.until:
            raise BrokerError(
                f"the lock on {record.where} had run out: the record is no longer this member's"
            )
        if how is Acknowledgement.RELEASE:
            self._release(group, tp, offset, state)
        else:
            del group.in_flight[tp][offset]
        self.broker._notify()

    # -- the group's bookkeeping -----------------------------------------------------

    def _partitions(self) -> list[TopicPartition]:
        return [(topic, p) for topic in self.topics for p in range(len(self.broker.topics[topic]))]

    def _acquire(self) -> list[Delivery]:
        group = self._group
        now = time.monotonic()
        out: list[Delivery] = []
        for tp in self._partitions():
            in_flight = group.in_flight.setdefault(tp, {})
            for offset, state in sorted(in_flight.items()):
                if state.owner is not None and now >= state.until:
                    self._release(group, tp, offset, state)
            for offset in sorted(in_flight):
                state = in_flight[offset]
                if len(out) >= self.max_records:
                    return out
                if state.owner is None:
                    out.append(self._hand_out(group, tp, offset, state, now))
            start = group.next_offset.get(tp, 0)
            for record in self.broker.read(tp, start, self.max_records - len(out)):
                state = _Acquired(0, None, 0.0)
                in_flight[record.offset] = state
                group.next_offset[tp] = record.offset + 1
                out.append(self._hand_out(group, tp, record.offset, state, now, record))
        return out

    def _hand_out(
        self,
        group: ShareGroupState,
        tp: TopicPartition,
        offset: int,
        state: _Acquired,
        now: float,
        record: Record | None = None,
    ) -> Delivery:
        state.count += 1
        state.owner = self.member_id
        state.until = now + group.lock_seconds
        self._unacknowledged.add((tp, offset))
        if record is None:
            record = self.broker.read(tp, offset, 1)[0]
        return Delivery(record, state.count)

    @staticmethod
    def _release(group: ShareGroupState, tp: TopicPartition, offset: int, state: _Acquired) -> None:
        if state.count >= group.delivery_limit:
            del group.in_flight[tp][offset]
            group.archived.setdefault(tp, set()).add(offset)
        else:
            state.owner = None

    def _next_expiry(self) -> float:
        locks = [
            s.until for states in self._group.in_flight.values() for s in states.values() if s.owner
        ]
        return max(0.001, min(locks) - time.monotonic()) if locks else 3600.0
