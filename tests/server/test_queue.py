"""Queue mode on the in-memory share group: Kafka's rules, and the consume loop's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kourier.errors import BrokerError
from kourier.server.queue import QueueConsumer, note_dead_lettered
from kourier.transports.base import Acknowledgement, Record, ShareConsumer, TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from kourier.transports.memory_share import share_group

TOPIC = "work"
GROUP = "queue"


async def _setup(partitions: int = 1) -> tuple[MemoryBroker, MemoryTransport]:
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.ensure_topics([TopicSpec(TOPIC, partitions)])
    return broker, transport


def _publish(broker: MemoryBroker, count: int) -> None:
    for i in range(count):
        broker.append(TOPIC, str(i).encode(), None, (), None)


async def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class DeadLetters:
    def __init__(self) -> None:
        self.records: list[tuple[Record, str]] = []

    async def __call__(self, record: Record, reason: str, attempts: int) -> None:
        self.records.append((record, reason))
        note_dead_lettered()


def _queue(
    transport: MemoryTransport,
    handler: Callable[[Record], Awaitable[None]],
    dead: DeadLetters,
    *,
    concurrency: int = 8,
    members: int = 2,
    drain_timeout: float = 2.0,
) -> QueueConsumer:
    async def run(record: Record) -> None:
        await handler(record)

    return QueueConsumer(
        transport,
        [TOPIC],
        GROUP,
        run,
        dead,
        concurrency=concurrency,
        drain_timeout=drain_timeout,
        members=members,
    )


# -- the in-memory share group ---------------------------------------------------------


async def test_members_share_one_partition_and_each_record_goes_to_one() -> None:
    """Three members of a share group on one partition split its records without overlap."""
    broker, transport = await _setup()
    members = [transport.share_consumer([TOPIC], GROUP, max_records=3) for _ in range(3)]
    for member in members:
        await member.start()
    _publish(broker, 12)
    seen: list[list[int]] = [[], [], []]
    for _ in range(2):
        for index, member in enumerate(members):
            for delivery in await member.fetch(0.1):
                seen[index].append(delivery.record.offset)
                await member.acknowledge(delivery, Acknowledgement.ACCEPT)
    assert all(seen)
    assert sorted(o for s in seen for o in s) == list(range(12))


async def test_fetch_refuses_while_the_previous_batch_is_not_acknowledged() -> None:
    """As in Kafka's explicit mode, a member cannot fetch before settling its last batch."""
    broker, transport = await _setup()
    member = transport.share_consumer([TOPIC], GROUP, max_records=2)
    await member.start()
    _publish(broker, 4)
    first = await member.fetch(0.1)
    assert len(first) == 2
    await member.acknowledge(first[0], Acknowledgement.ACCEPT)
    with pytest.raises(BrokerError, match="not acknowledged"):
        await member.fetch(0.1)
    await member.acknowledge(first[1], Acknowledgement.ACCEPT)
    assert [d.record.offset for d in await member.fetch(0.1)] == [2, 3]


async def test_release_redelivers_with_a_higher_count_until_the_limit_archives() -> None:
    """A released record comes back counted once more; released at the limit it is archived."""
    broker, transport = await _setup()
    share_group(broker, GROUP).delivery_limit = 3
    member = transport.share_consumer([TOPIC], GROUP)
    await member.start()
    _publish(broker, 1)
    counts = []
    for _ in range(3):
        (delivery,) = await member.fetch(0.1)
        counts.append(delivery.count)
        await member.acknowledge(delivery, Acknowledgement.RELEASE)
    assert counts == [1, 2, 3]
    assert await member.fetch(0.05) == []
    assert share_group(broker, GROUP).archived == {(TOPIC, 0): {0}}


async def test_an_expired_lock_hands_the_record_to_another_member() -> None:
    """A record not acknowledged within the lock goes to another member; the late ack fails."""
    broker, transport = await _setup()
    share_group(broker, GROUP).lock_seconds = 0.1
    slow = transport.share_consumer([TOPIC], GROUP)
    other = transport.share_consumer([TOPIC], GROUP)
    await slow.start()
    await other.start()
    _publish(broker, 1)
    (held,) = await slow.fetch(0.1)
    (again,) = await other.fetch(1.0)
    assert again.record.offset == held.record.offset and again.count == 2
    with pytest.raises(BrokerError, match="lock"):
        await slow.acknowledge(held, Acknowledgement.ACCEPT)


async def test_stop_releases_what_the_member_holds() -> None:
    """A member that leaves gives its unacknowledged records back to the group at once."""
    broker, transport = await _setup()
    first = transport.share_consumer([TOPIC], GROUP)
    second = transport.share_consumer([TOPIC], GROUP)
    await first.start()
    await second.start()
    _publish(broker, 2)
    assert len(await first.fetch(0.1)) == 2
    await first.stop()
    assert sorted(d.record.offset for d in await second.fetch(0.1)) == [0, 1]


# -- the queue consume loop ------------------------------------------------------------


async def test_every_record_is_handled_and_accepted() -> None:
    """Each record runs once and is accepted; nothing is dead-lettered."""
    broker, transport = await _setup()
    handled: list[int] = []

    async def handler(record: Record) -> None:
        handled.append(record.offset)

    dead = DeadLetters()
    queue = _queue(transport, handler, dead)
    await queue.start()
    _publish(broker, 40)
    await _eventually(lambda: queue.stats.accepted == 40)
    await queue.stop()
    assert sorted(handled) == list(range(40))
    assert queue.stats.acquired == 40 and not dead.records
    assert queue.stats.delivery_counts == {1: 40}


async def test_a_slow_record_does_not_hold_back_the_records_behind_it() -> None:
    """While one handler sleeps, the records after it are handled and accepted."""
    broker, transport = await _setup()
    release = asyncio.Event()

    async def handler(record: Record) -> None:
        if record.offset == 0:
            await release.wait()

    queue = _queue(transport, handler, DeadLetters(), concurrency=4, members=2)
    await queue.start()
    _publish(broker, 30)
    await _eventually(lambda: queue.stats.accepted == 29)
    release.set()
    await _eventually(lambda: queue.stats.accepted == 30)
    await queue.stop()


async def test_at_most_concurrency_handlers_run_at_once() -> None:
    """However many records are fetched, no more than ``concurrency`` handlers overlap."""
    broker, transport = await _setup()
    running = 0
    most = 0

    async def handler(record: Record) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    queue = _queue(transport, handler, DeadLetters(), concurrency=3, members=2)
    await queue.start()
    _publish(broker, 30)
    await _eventually(lambda: queue.stats.accepted == 30)
    await queue.stop()
    assert most <= 3


async def test_a_dead_lettered_record_is_rejected() -> None:
    """A record the service dead-letters (its last attempt failed) is rejected, not accepted."""
    broker, transport = await _setup()
    dead = DeadLetters()

    async def handler(record: Record) -> None:
        await dead(record, "handler failed", 3)

    queue = _queue(transport, handler, dead)
    await queue.start()
    _publish(broker, 2)
    await _eventually(lambda: queue.stats.rejected == 2)
    await queue.stop()
    assert queue.stats.accepted == 0 and len(dead.records) == 2


async def test_a_record_at_the_delivery_limit_is_dead_lettered_not_run() -> None:
    """A record whose earlier deliveries died unacknowledged is dead-lettered at the limit."""
    broker, transport = await _setup()
    group = share_group(broker, GROUP)
    group.delivery_limit = 3
    group.lock_seconds = 0.05
    _publish(broker, 1)
    # Two members that acquire the record and die without a word (their locks run out).
    for _ in range(2):
        crashed = transport.share_consumer([TOPIC], GROUP)
        await crashed.start()
        assert len(await crashed.fetch(1.0)) == 1
    await asyncio.sleep(0.06)
    group.lock_seconds = 30.0
    ran: list[int] = []

    async def handler(record: Record) -> None:
        ran.append(record.offset)

    dead = DeadLetters()
    queue = _queue(transport, handler, dead)
    await queue.start()
    await _eventually(lambda: queue.stats.rejected == 1)
    await queue.stop()
    assert ran == []
    ((record, reason),) = dead.records
    assert record.offset == 0 and "delivery limit" in reason
    assert queue.stats.delivery_counts == {3: 1}


async def test_redelivered_records_run_one_at_a_time_after_first_deliveries() -> None:
    """Records delivered again run alone, each settled before the next; fresh ones first."""
    broker, transport = await _setup()
    _publish(broker, 3)
    crashed = transport.share_consumer([TOPIC], GROUP)
    await crashed.start()
    assert len(await crashed.fetch(1.0)) == 3
    await crashed.stop()  # as a dead member's records: all three come back, counted twice
    _publish(broker, 2)
    running = 0
    overlapped: list[int] = []
    order: list[int] = []

    async def handler(record: Record) -> None:
        nonlocal running
        running += 1
        if record.offset < 3 and running > 1:
            overlapped.append(record.offset)
        order.append(record.offset)
        await asyncio.sleep(0.01)
        running -= 1

    queue = _queue(transport, handler, DeadLetters(), members=1)
    await queue.start()
    await _eventually(lambda: queue.stats.accepted == 5)
    await queue.stop()
    assert overlapped == []
    assert sorted(order[:2]) == [3, 4] and order[2:] == [0, 1, 2]


def test_suspects_alternate_their_direction_with_the_delivery_count() -> None:
    """Even counts run upwards by offset, odd counts downwards."""
    from kourier.server.queue import suspects_in_turn
    from kourier.transports.base import Delivery

    def batch(count: int) -> list[Delivery]:
        return [Delivery(Record(TOPIC, 0, o, None, b"", (), 0), count) for o in (7, 5, 6)]

    assert [d.record.offset for d in suspects_in_turn(batch(2))] == [5, 6, 7]
    assert [d.record.offset for d in suspects_in_turn(batch(3))] == [7, 6, 5]


async def test_a_handler_past_its_lock_bound_is_cancelled_and_dead_lettered() -> None:
    """A handler still running near the end of its lock is stopped; it never runs twice."""
    broker, transport = await _setup()
    share_group(broker, GROUP).lock_seconds = 0.5
    starts: list[int] = []

    async def handler(record: Record) -> None:
        starts.append(record.offset)
        await asyncio.sleep(10)

    dead = DeadLetters()
    queue = _queue(transport, handler, dead, members=2)
    await queue.start()
    _publish(broker, 1)
    await _eventually(lambda: queue.stats.rejected == 1)
    await asyncio.sleep(0.6)  # past the lock: nobody got it again
    await queue.stop()
    assert starts == [0] and queue.stats.overran == 1
    assert "bound" in dead.records[0][1]


class LooseBatches(MemoryTransport):
    """Fetches batches larger than asked, as Kafka may (``max.poll.records`` is a hint)."""

    def share_consumer(
        self, topics: Sequence[str], group: str, *, max_records: int = 500
    ) -> ShareConsumer:
        return super().share_consumer(topics, group, max_records=10)


async def test_stop_releases_records_not_started_and_drains_running_ones() -> None:
    """On stop the running handler finishes and is accepted; waiting records are released."""
    broker = MemoryBroker()
    transport = LooseBatches(broker)
    await transport.ensure_topics([TopicSpec(TOPIC, 1)])
    started = asyncio.Event()
    finish = asyncio.Event()

    async def handler(record: Record) -> None:
        started.set()
        await finish.wait()

    queue = _queue(transport, handler, DeadLetters(), concurrency=1, members=1)
    await queue.start()
    _publish(broker, 5)
    await started.wait()
    await _eventually(lambda: queue.in_flight == 5)
    stopping = asyncio.create_task(queue.stop())
    await _eventually(lambda: queue.stats.released == 4)
    finish.set()
    await stopping
    assert queue.stats.accepted == 1
    other = transport.share_consumer([TOPIC], GROUP)
    await other.start()
    again = await other.fetch(0.1)
    assert sorted(d.record.offset for d in again) == [1, 2, 3, 4]
    assert all(d.count == 2 for d in again)


async def test_a_record_that_cannot_start_before_its_bound_is_released_untouched() -> None:
    """A record still waiting for a slot when its lock bound comes is released, not run."""
    broker = MemoryBroker()
    transport = LooseBatches(broker)
    await transport.ensure_topics([TopicSpec(TOPIC, 1)])
    group = share_group(broker, GROUP)
    group.lock_seconds = 0.5
    group.delivery_limit = 2  # the released record's next delivery is its last: not run
    started: list[int] = []

    async def handler(record: Record) -> None:
        started.append(record.offset)
        await asyncio.sleep(10)

    queue = _queue(transport, handler, DeadLetters(), concurrency=1, members=1)
    await queue.start()
    _publish(broker, 2)
    await _eventually(lambda: queue.stats.released == 1 and queue.stats.rejected == 2)
    await queue.stop()
    assert started == [0] and queue.stats.overran == 1


async def test_stop_past_the_drain_timeout_releases_the_running_record() -> None:
    """A handler that outlasts the drain timeout is cancelled and its record released."""
    broker, transport = await _setup()

    async def handler(record: Record) -> None:
        await asyncio.sleep(10)

    queue = _queue(transport, handler, DeadLetters(), members=1, drain_timeout=0.1)
    await queue.start()
    _publish(broker, 1)
    await _eventually(lambda: queue.in_flight == 1)
    await queue.stop()
    assert queue.stats.released == 1 and queue.stats.accepted == 0


async def test_a_transport_without_share_groups_is_refused_with_the_fix() -> None:
    """Queue mode on a transport with no share consumer fails at start naming the setting."""
    from kourier.errors import SettingsError
    from kourier.transports.base import Transport

    class NoShare(MemoryTransport):
        share_consumer = Transport.share_consumer

    transport = NoShare()
    await transport.ensure_topics([TopicSpec(TOPIC, 1)])

    async def handler(record: Record) -> None:
        return None

    with pytest.raises(SettingsError, match="KOURIER_KAFKA_CLIENT=confluent"):
        await _queue(transport, handler, DeadLetters()).start()


# -- the share group's bookkeeping under any sequence of settlements --------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([Acknowledgement.ACCEPT, Acknowledgement.RELEASE, Acknowledgement.REJECT]),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=2, max_value=5),
)
async def test_any_settlements_keep_each_record_settled_once(
    outcomes: list[Acknowledgement], limit: int
) -> None:
    """Whatever a member answers, every record ends accepted, rejected or archived at the
    limit exactly once, and no delivery count passes the limit."""
    broker, transport = await _setup()
    group = share_group(broker, GROUP)
    group.delivery_limit = limit
    member = transport.share_consumer([TOPIC], GROUP, max_records=3)
    await member.start()
    _publish(broker, 5)
    done: dict[int, str] = {}
    answers = iter(outcomes)
    while len(done) + len(group.archived.get((TOPIC, 0), set())) < 5:
        deliveries = await member.fetch(0.0)
        assert deliveries, "records still unsettled but none handed out"
        for delivery in deliveries:
            assert delivery.count <= limit
            how = next(answers, Acknowledgement.ACCEPT)
            await member.acknowledge(delivery, how)
            if how is not Acknowledgement.RELEASE:
                assert delivery.record.offset not in done
                done[delivery.record.offset] = how.value
    archived = group.archived.get((TOPIC, 0), set())
    assert not archived & done.keys()
    assert archived | done.keys() == set(range(5))
