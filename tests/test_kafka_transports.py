"""Both Kafka transports against a real broker (``scripts/kafka start``).

Every behaviour the contract asks of a Kafka transport is written once and runs on both
client libraries: aiokafka (``transports/kafka.py``) and confluent-kafka
(``transports/confluent.py``); the test ids end in ``[aiokafka]`` or ``[confluent]``. Where
the two differ on purpose (the words of an error, librdkafka's threads) the ``Client``
below says how. After them come the tests of librdkafka's own machinery (confluent only),
one test with both libraries in one group, and the security tests.

The broker's address comes from ``KOURIER_BOOTSTRAP_SERVERS``. Without it these tests
skip, except in CI (``CI=true``), where a missing broker is a failure.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from kourier.errors import BrokerError, PublishError
from kourier.settings import Secret, Settings
from kourier.transports import confluent, kafka
from kourier.transports.base import (
    GroupConsumer,
    PartitionReader,
    RebalanceCallback,
    Record,
    TopicPartition,
    TopicSpec,
    Transport,
)
from kourier.transports.confluent import ConfluentTransport
from kourier.transports.kafka import KafkaTransport

KafkaTransports = KafkaTransport | ConfluentTransport


@dataclass(frozen=True)
class Client:
    """A Kafka client library kourier runs on, and what its transport does its own way."""

    name: str  #: as ``Settings.kafka_client`` names it; the test ids say it too
    transport: type[KafkaTransport] | type[ConfluentTransport]
    record_overhead_bytes: int
    #: How start's BrokerError names a port where nothing listens, and a refused password.
    connection_refused: str
    sasl_refused: str
    #: kourier threads a transport runs for its producer, a consumer and a reader.
    threads: int


AIOKAFKA = Client(
    name="aiokafka",
    transport=KafkaTransport,
    record_overhead_bytes=kafka.RECORD_OVERHEAD_BYTES,
    connection_refused=r"127\.0\.0\.1:1: ConnectionRefusedError",
    sasl_refused="SaslAuthenticationFailed",
    threads=0,
)
CONFLUENT = Client(
    name="confluent",
    transport=ConfluentTransport,
    record_overhead_bytes=confluent.RECORD_OVERHEAD_BYTES,
    connection_refused=r"127\.0\.0\.1:1.*Connection refused",
    sasl_refused=r"SASL authentication error",
    threads=3,
)

kafka_broker = pytest.mark.kafka
#: For a test of librdkafka's own machinery: runs on the confluent transport only.
confluent_only = pytest.mark.parametrize("client", [CONFLUENT], indirect=True, ids=[CONFLUENT.name])


@pytest.fixture(params=[AIOKAFKA, CONFLUENT], ids=[AIOKAFKA.name, CONFLUENT.name])
def client(request: pytest.FixtureRequest) -> Client:
    """The client library under test: each test of a shared behaviour runs on both."""
    chosen: Client = request.param
    return chosen


@pytest.fixture
def settings(bootstrap: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap, client_id="kourier-tests")


@pytest.fixture
async def transport(client: Client, settings: Settings) -> AsyncIterator[KafkaTransports]:
    transport = client.transport(settings)
    await transport.start()
    try:
        yield transport
    finally:
        await transport.stop()
    assert kourier_threads() == [], "a thread outlived the transport's stop"


#: kourier threads alive before the current test began: another module's test that
#: stopped a client during a broker outage may leave librdkafka's close still running
#: for a while (kourier bounds its own wait for it), and that is not this test's thread.
_threads_before: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _note_threads_before() -> None:
    _threads_before.clear()
    _threads_before.update(t for t in threading.enumerate() if t.name.startswith("kourier-"))


def kourier_threads() -> list[str]:
    """The kourier threads started since this test began and still alive."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("kourier-") and t not in _threads_before
    ]


def unique(kind: str) -> str:
    return f"kourier-test.{kind}.{uuid.uuid4().hex[:12]}"


async def new_topic(
    transport: Transport, partitions: int = 1, config: dict[str, str] | None = None
) -> str:
    name = unique("topic")
    await transport.ensure_topics([TopicSpec(name, partitions, config=config)])
    return name


async def fetch_n(consumer: GroupConsumer, count: int, within: float = 20.0) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + within
    while len(records) < count and time.monotonic() < deadline:
        records += await consumer.fetch(count - len(records), 0.5)
    return records


async def read_n(reader: PartitionReader, count: int, within: float = 10.0) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + within
    while len(records) < count and time.monotonic() < deadline:
        records += await reader.fetch(0.5)
    return records


async def publish_all(
    transport: Transport, topic: str, values: list[bytes], partition: int | None = None
) -> None:
    acks = [await transport.publish(topic, v, partition=partition) for v in values]
    await asyncio.gather(*acks)


async def until(condition: Callable[[], object], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


# -- the contract, on both client libraries ------------------------------------------------


@kafka_broker
async def test_group_resumes_after_committed_offset(transport: KafkaTransports) -> None:
    """A second member of a group starts right after the offset the first one committed."""
    topic = await new_topic(transport)
    group = unique("group")
    await publish_all(transport, topic, [b"%d" % i for i in range(5)])

    first = transport.group_consumer([topic], group)
    await first.start()
    records = await fetch_n(first, 5)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3", b"4"]
    assert [r.offset for r in records] == [0, 1, 2, 3, 4]
    await first.commit({(topic, 0): 3})
    await first.stop()

    second = transport.group_consumer([topic], group)
    await second.start()
    resumed = await fetch_n(second, 2)
    await second.stop()
    assert [(r.offset, r.value) for r in resumed] == [(3, b"3"), (4, b"4")]


@kafka_broker
async def test_records_keep_key_headers_and_partition_order(transport: KafkaTransports) -> None:
    """Records come back with their key and headers, in publish order within a partition."""
    topic = await new_topic(transport, partitions=2)
    acks = [
        await transport.publish(
            topic, b"%d" % i, key=b"k", headers=[("n", b"%d" % i), ("empty", b"")], partition=1
        )
        for i in range(200)
    ]
    await asyncio.gather(*acks)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    records = await fetch_n(consumer, 200)
    await consumer.stop()
    assert [r.value for r in records] == [b"%d" % i for i in range(200)]
    assert {(r.partition, r.key) for r in records} == {(1, b"k")}
    assert records[7].headers == (("n", b"7"), ("empty", b""))
    assert records[7].where == f"{topic}[1]@7"
    assert abs(records[7].timestamp_ms - time.time() * 1000) < 60_000


@kafka_broker
async def test_a_key_lands_where_the_java_client_puts_it(transport: KafkaTransports) -> None:
    """Keyed records go to the partition of Kafka's murmur2 partitioner, on either library."""
    topic = await new_topic(transport, partitions=6)
    await asyncio.gather(
        *[await transport.publish(topic, b"v", key=b"key-%d" % i) for i in range(6)]
    )
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    records = await fetch_n(consumer, 6)
    await consumer.stop()
    # Partitions computed with Kafka's DefaultPartitioner (murmur2, positive mask).
    expected = {b"key-0": 1, b"key-1": 0, b"key-2": 2, b"key-3": 5, b"key-4": 3, b"key-5": 2}
    assert {r.key: r.partition for r in records} == expected


@kafka_broker
async def test_two_members_split_partitions_with_callbacks(transport: KafkaTransports) -> None:
    """A joining member takes half the partitions; the first is told what it lost and got."""
    topic = await new_topic(transport, partitions=4)
    group = unique("group")
    events: dict[str, list[tuple[str, set[TopicPartition]]]] = {"a": [], "b": []}

    def recorder(member: str, kind: str) -> RebalanceCallback:
        async def record(partitions: set[TopicPartition]) -> None:
            events[member].append((kind, partitions))

        return record

    def member(name: str) -> GroupConsumer:
        return transport.group_consumer(
            [topic],
            group,
            on_assigned=recorder(name, "assigned"),
            on_revoked=recorder(name, "revoked"),
        )

    everything = {(topic, p) for p in range(4)}
    a = member("a")
    await a.start()
    assert a.assignment() == everything
    assert events["a"] == [("assigned", everything)]

    b = member("b")
    await b.start()
    await until(lambda: len(events["a"]) >= 3)
    assert len(a.assignment()) == 2 and len(b.assignment()) == 2
    assert a.assignment() | b.assignment() == everything
    assert events["a"] == [
        ("assigned", everything),
        ("revoked", everything),
        ("assigned", a.assignment()),
    ]
    assert events["b"] == [("assigned", b.assignment())]

    await b.stop()
    await until(lambda: a.assignment() == everything)
    await a.stop()


@kafka_broker
async def test_a_member_without_partitions_is_told_so(transport: KafkaTransports) -> None:
    """A member left without partitions gets on_assigned with an empty set: it has joined."""
    topic = await new_topic(transport)
    group = unique("group")
    told: list[set[TopicPartition]] = []

    async def assigned(partitions: set[TopicPartition]) -> None:
        told.append(partitions)

    first = transport.group_consumer([topic], group)
    await first.start()
    second = transport.group_consumer([topic], group, on_assigned=assigned)
    await second.start()
    await until(lambda: len(first.assignment()) + len(second.assignment()) == 1)
    await until(lambda: told and told[-1] == second.assignment())
    await second.stop()
    await first.stop()


@kafka_broker
async def test_commit_in_on_revoked_hands_over_the_position(transport: KafkaTransports) -> None:
    """Offsets committed in on_revoked are where the partition's next owner starts."""
    topic = await new_topic(transport)
    group = unique("group")
    await publish_all(transport, topic, [b"%d" % i for i in range(6)])
    done: dict[TopicPartition, int] = {}
    revoke_finished: list[float] = []

    async def commit_done(partitions: set[TopicPartition]) -> None:
        await asyncio.sleep(0.3)  # the rebalance waits for this, and for the commit
        await first.commit({tp: done[tp] for tp in partitions if tp in done})
        revoke_finished.append(time.monotonic())

    first = transport.group_consumer([topic], group, on_revoked=commit_done)
    await first.start()
    records = await fetch_n(first, 6)
    done[(topic, 0)] = records[3].offset + 1  # the first four are finished

    second = transport.group_consumer([topic], group)
    await second.start()
    await until(lambda: len(first.assignment()) + len(second.assignment()) == 1)
    owner, idle = (first, second) if first.assignment() else (second, first)
    assert owner.assignment() == {(topic, 0)} and idle.assignment() == set()
    resumed = await fetch_n(owner, 2)
    assert revoke_finished and revoke_finished[0] < time.monotonic()
    assert [(r.offset, r.value) for r in resumed] == [(4, b"4"), (5, b"5")]
    await second.stop()
    await first.stop()


@kafka_broker
async def test_records_of_a_revoked_partition_are_never_returned(
    transport: KafkaTransports,
) -> None:
    """Records fetched but not yet returned when their partition is revoked are dropped."""
    topic = await new_topic(transport, partitions=2)
    group = unique("group")
    await publish_all(transport, topic, [b"p0-%d" % i for i in range(300)], partition=0)
    await publish_all(transport, topic, [b"p1-%d" % i for i in range(300)], partition=1)
    first = transport.group_consumer([topic], group)
    await first.start()
    taken = await fetch_n(first, 1)  # the client has fetched far more than this
    assert len(taken) == 1

    second = transport.group_consumer([topic], group)
    await second.start()
    returned: list[tuple[Record, set[TopicPartition]]] = []
    deadline = time.monotonic() + 20
    while len(second.assignment()) != 1 or len(returned) < 300:
        assert time.monotonic() < deadline, "the rebalance did not finish"
        returned += [(r, first.assignment()) for r in await first.fetch(50, 0.1)]
    assert all((r.topic, r.partition) in owned for r, owned in returned)
    kept = next(iter(first.assignment()))
    # What the first member still owns restarts from its committed offset (none: 0).
    assert [r.offset for r, _ in returned[:300]] == list(range(300))
    assert {(r.topic, r.partition) for r, _ in returned} == {kept}
    await second.stop()
    await first.stop()


@kafka_broker
async def test_commit_of_partition_not_owned_fails(transport: KafkaTransports) -> None:
    """Committing an offset for a partition the member does not hold raises BrokerError."""
    topic = await new_topic(transport)
    other = await new_topic(transport)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    with pytest.raises(BrokerError, match="commit failed"):
        await consumer.commit({(other, 0): 1})
    await consumer.commit({(topic, 0): 0})
    await consumer.stop()
    with pytest.raises(BrokerError, match="not started"):
        await consumer.commit({(topic, 0): 0})


@kafka_broker
async def test_commits_one_after_another_all_land(transport: KafkaTransports) -> None:
    """Many concurrent commits all land, and the last one given is the one that stays."""
    topic = await new_topic(transport)
    group = unique("group")
    await publish_all(transport, topic, [b"x"] * 50)
    consumer = transport.group_consumer([topic], group)
    await consumer.start()
    await fetch_n(consumer, 50)
    await asyncio.gather(*(consumer.commit({(topic, 0): n}) for n in range(1, 51)))
    await consumer.stop()
    again = transport.group_consumer([topic], group)
    await again.start()
    assert await again.fetch(10, 1.0) == []
    assert await again.lag() == {(topic, 0): 0}
    await again.stop()


@kafka_broker
async def test_lag_counts_records_not_fetched_yet(transport: KafkaTransports) -> None:
    """lag is the end offset minus what fetch has returned, per assigned partition."""
    topic = await new_topic(transport, partitions=2)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    assert await consumer.lag() == {(topic, 0): 0, (topic, 1): 0}
    await publish_all(transport, topic, [b"x"] * 5, partition=0)
    assert await consumer.lag() == {(topic, 0): 5, (topic, 1): 0}
    await fetch_n(consumer, 2)
    assert await consumer.lag() == {(topic, 0): 3, (topic, 1): 0}
    await consumer.stop()


@kafka_broker
async def test_callback_failure_is_raised_from_fetch(transport: KafkaTransports) -> None:
    """An exception in on_assigned is raised by the next fetch instead of being lost."""
    topic = await new_topic(transport)

    async def broken(partitions: set[TopicPartition]) -> None:
        raise RuntimeError("on_assigned broke")

    consumer = transport.group_consumer([topic], unique("group"), on_assigned=broken)
    await consumer.start()
    with pytest.raises(RuntimeError, match="on_assigned broke"):
        await consumer.fetch(1, 0.1)
    await consumer.stop()


@kafka_broker
async def test_paused_partition_is_not_fetched_until_resumed(transport: KafkaTransports) -> None:
    """Records of a paused partition wait until it is resumed."""
    topic = await new_topic(transport, partitions=2)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    consumer.pause([(topic, 0), (unique("not-assigned"), 0)])
    await publish_all(transport, topic, [b"held"], partition=0)
    await publish_all(transport, topic, [b"free"], partition=1)
    assert [r.value for r in await fetch_n(consumer, 2, within=2.0)] == [b"free"]
    consumer.resume([(topic, 0)])
    assert [r.value for r in await fetch_n(consumer, 1)] == [b"held"]
    await consumer.stop()


@kafka_broker
async def test_a_rebalance_forgets_pauses(transport: KafkaTransports) -> None:
    """After a rebalance, partitions paused before it deliver again without resume."""
    topic = await new_topic(transport, partitions=2)
    group = unique("group")
    first = transport.group_consumer([topic], group)
    await first.start()
    first.pause(first.assignment())
    await publish_all(transport, topic, [b"a", b"b"], partition=0)
    await publish_all(transport, topic, [b"c", b"d"], partition=1)
    assert await first.fetch(10, 0.5) == []
    second = transport.group_consumer([topic], group)
    await second.start()
    await until(lambda: len(first.assignment()) == 1 and len(second.assignment()) == 1)
    kept = next(iter(first.assignment()))
    records = await fetch_n(first, 2, within=10)
    assert {(r.topic, r.partition) for r in records} == {kept} and len(records) == 2
    await second.stop()
    await first.stop()


@kafka_broker
async def test_partition_reader_sees_only_records_after_start(
    transport: KafkaTransports,
) -> None:
    """A reader starts at the partition's end and reads only its own partition."""
    topic = await new_topic(transport, partitions=2)
    await publish_all(transport, topic, [b"before"], partition=0)
    reader = transport.partition_reader(topic, 0)
    await reader.start()
    await publish_all(transport, topic, [b"other partition"], partition=1)
    await publish_all(transport, topic, [b"after-1", b"after-2"], partition=0)
    records = await read_n(reader, 2)
    await reader.stop()
    assert [(r.offset, r.value) for r in records] == [(1, b"after-1"), (2, b"after-2")]


@kafka_broker
async def test_partition_reader_misses_nothing_published_right_after_start(
    transport: KafkaTransports,
) -> None:
    """A record published the moment start returns is always read, whatever the timing."""
    topic = await new_topic(transport)
    for i in range(15):
        reader = transport.partition_reader(topic, 0)
        await reader.start()
        await (await transport.publish(topic, b"%d" % i))
        records = await read_n(reader, 1)
        await reader.stop()
        assert [r.value for r in records] == [b"%d" % i]


@kafka_broker
async def test_partition_reader_of_a_topic_created_a_moment_ago_starts(
    transport: KafkaTransports,
) -> None:
    """A reader starts on a brand-new topic, while its leader may not be settled yet."""
    for _ in range(15):
        topic = await new_topic(transport, partitions=12)
        reader = transport.partition_reader(topic, 11)
        await reader.start()
        await reader.stop()


@kafka_broker
async def test_partition_reader_from_beginning_reads_everything(
    transport: KafkaTransports,
) -> None:
    """A reader asked to start from the beginning reads the records published before it."""
    topic = await new_topic(transport)
    await publish_all(transport, topic, [b"one", b"two"])
    reader = transport.partition_reader(topic, 0, from_beginning=True)
    await reader.start()
    records = await read_n(reader, 2)
    await reader.stop()
    assert [r.value for r in records] == [b"one", b"two"]


@kafka_broker
async def test_partition_reader_from_beginning_hands_over_waiting_records_at_once(
    transport: KafkaTransports,
) -> None:
    """A reader from the beginning returns the records already there on its first fetch,
    without a wait of its own (a caller's first registry lookup reads this way): the best of
    three readers, so a moment of machine load does not decide it."""
    topic = await new_topic(transport)
    await publish_all(transport, topic, [b"one", b"two"])
    waits = []
    for _ in range(3):
        reader = transport.partition_reader(topic, 0, from_beginning=True)
        await reader.start()
        try:
            started = time.monotonic()
            records = await read_n(reader, 2)
            waits.append(time.monotonic() - started)
        finally:
            await reader.stop()
        assert [r.value for r in records] == [b"one", b"two"]
    assert min(waits) < 0.3, f"first fetches took {waits}: the reader waits before fetching"


@kafka_broker
async def test_partition_reader_of_missing_partition_fails(transport: KafkaTransports) -> None:
    """A reader of a partition that does not exist fails to start with BrokerError."""
    topic = await new_topic(transport)
    with pytest.raises(BrokerError, match="no partition 3"):
        await transport.partition_reader(topic, 3).start()
    with pytest.raises(BrokerError, match="does not exist"):
        await transport.partition_reader(unique("missing"), 0).start()


@kafka_broker
async def test_record_over_producer_limit_is_refused(
    transport: KafkaTransports, settings: Settings, client: Client
) -> None:
    """A record larger than the configured maximum raises PublishError at once."""
    topic = await new_topic(transport)
    too_big = b"x" * (settings.max_request_bytes + client.record_overhead_bytes + 1)
    with pytest.raises(PublishError, match="larger than the limit"):
        await transport.publish(topic, too_big)


@kafka_broker
async def test_record_over_topic_limit_fails_its_acknowledgement(
    transport: KafkaTransports,
) -> None:
    """A record the broker refuses for the topic's max.message.bytes fails its awaitable."""
    topic = await new_topic(transport, config={"max.message.bytes": "1024"})
    ack = await transport.publish(topic, b"x" * 4096)
    with pytest.raises(PublishError, match="larger than the limit"):
        await ack
    await (await transport.publish(topic, b"small"))


@kafka_broker
async def test_publish_to_missing_topic_fails_quickly(transport: KafkaTransports) -> None:
    """Publishing to a topic that does not exist fails within seconds, without creating it."""
    topic = unique("missing")
    started = time.monotonic()
    with pytest.raises(PublishError, match="does not exist"):
        await transport.publish(topic, b"lost")
    assert time.monotonic() - started < 5
    with pytest.raises(BrokerError, match="does not exist"):
        await transport.partition_count(topic)


@kafka_broker
async def test_publish_to_missing_partition_fails(transport: KafkaTransports) -> None:
    """Publishing to a partition number the topic does not have raises PublishError."""
    topic = await new_topic(transport, partitions=2)
    with pytest.raises(PublishError, match="no partition 2"):
        await transport.publish(topic, b"lost", partition=2)


@kafka_broker
async def test_group_consumer_of_missing_topic_fails(transport: KafkaTransports) -> None:
    """A group consumer of a topic that does not exist fails to start with BrokerError."""
    consumer = transport.group_consumer([unique("missing")], unique("group"))
    with pytest.raises(BrokerError, match="does not exist"):
        await consumer.start()


@kafka_broker
async def test_ensure_topics_from_two_transports_at_once(
    transport: KafkaTransports, settings: Settings, client: Client
) -> None:
    """Two processes creating the same topics at once both succeed; existing ones stay."""
    other = client.transport(settings)
    await other.start()
    try:
        specs = [TopicSpec(unique("race"), 3), TopicSpec(unique("race"), 2)]
        await asyncio.gather(transport.ensure_topics(specs), other.ensure_topics(specs))
        assert [await other.partition_count(s.name) for s in specs] == [3, 2]
        await transport.ensure_topics([TopicSpec(specs[0].name, 5)])
        assert await transport.partition_count(specs[0].name) == 3
    finally:
        await other.stop()


@kafka_broker
async def test_describe_topics_names_only_those_that_exist(transport: KafkaTransports) -> None:
    """describe_topics gives partitions and replication of existing topics and skips others."""
    topic = await new_topic(transport, partitions=3)
    missing = unique("missing")
    info = await transport.describe_topics([topic, missing])
    assert list(info) == [topic]
    assert (info[topic].partitions, info[topic].replication_factor) == (3, 1)


@kafka_broker
async def test_stop_ends_a_waiting_fetch(transport: KafkaTransports) -> None:
    """Stopping a consumer makes a fetch that is waiting for records return at once."""
    topic = await new_topic(transport)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    waiting = asyncio.create_task(consumer.fetch(10, 30.0))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await consumer.stop()
    assert await asyncio.wait_for(waiting, 5) == []
    assert time.monotonic() - started < 5
    with pytest.raises(BrokerError, match="not started"):
        await consumer.fetch(1, 0.1)


@kafka_broker
async def test_a_record_without_key_or_value_wakes_a_waiting_fetch(
    transport: KafkaTransports,
) -> None:
    """A record with no key and an empty value (a GET request, a stream's end item) ends
    a fetch that waits for records at once, for a group member and for a reader alike:
    not when the fetch's timeout runs out."""
    topic = await new_topic(transport)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    reader = transport.partition_reader(topic, 0)
    await reader.start()
    try:
        await publish_all(transport, topic, [b"warm-up"])
        assert len(await fetch_n(consumer, 1)) == 1  # assigned and positioned
        assert len(await read_n(reader, 1)) == 1
        waits = [
            asyncio.create_task(consumer.fetch(10, 10.0)),
            asyncio.create_task(reader.fetch(10.0)),
        ]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await publish_all(transport, topic, [b""])
        fetched, read = await asyncio.wait_for(asyncio.gather(*waits), 15)
        took = time.monotonic() - started
        assert [r.value or b"" for r in fetched] == [b""]
        assert [r.value or b"" for r in read] == [b""]
        assert took < 2.0, f"the fetch slept {took:.2f} s: the record did not wake it"
    finally:
        await reader.stop()
        await consumer.stop()


@kafka_broker
async def test_transport_stop_closes_consumers_left_open(
    client: Client, settings: Settings
) -> None:
    """Stopping the transport also stops the consumers and readers it made, and their threads."""
    transport = client.transport(settings)
    await transport.start()
    topic = await new_topic(transport)
    consumer = transport.group_consumer([topic], unique("group"))
    reader = transport.partition_reader(topic, 0)
    await consumer.start()
    await reader.start()
    assert len(kourier_threads()) == client.threads
    await transport.stop()
    assert consumer.assignment() == set()
    with pytest.raises(BrokerError, match="not started"):
        await reader.fetch(0.1)
    with pytest.raises(BrokerError, match="not started"):
        await transport.publish(topic, b"x")
    assert kourier_threads() == []


@kafka_broker
async def test_ping_answers_while_connected(client: Client, settings: Settings) -> None:
    """ping is True while the transport is connected and False before start and after stop."""
    transport = client.transport(settings)
    assert await transport.ping(1.0) is False
    await transport.start()
    assert await transport.ping(1.0) is True
    await transport.stop()
    assert await transport.ping(1.0) is False


async def test_start_against_closed_port_fails_quickly(client: Client) -> None:
    """Starting against a port where no broker listens raises BrokerError naming it."""
    transport = client.transport(Settings(bootstrap_servers="127.0.0.1:1"))
    started = time.monotonic()
    with pytest.raises(BrokerError, match=client.connection_refused):
        await transport.start()
    assert time.monotonic() - started < 5
    assert await transport.ping(0.5) is False
    with pytest.raises(BrokerError, match="not started"):
        await transport.publish("any", b"x")
    assert kourier_threads() == []


async def test_password_is_not_in_the_transport_repr(client: Client) -> None:
    """The SASL password never shows in the transport's or its settings' repr."""
    settings = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="user",
        sasl_password=Secret("hunter2-secret"),
    )
    transport = client.transport(settings)
    assert "hunter2" not in repr(transport)
    assert "hunter2" not in repr(transport.settings)


# -- librdkafka's own machinery: the confluent transport only ------------------------------


@kafka_broker
@confluent_only
async def test_a_long_pause_stops_fetching_and_resume_goes_on_where_it_stopped(
    transport: KafkaTransports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once held records pile up librdkafka pauses too, and resume misses and repeats nothing."""
    monkeypatch.setattr(confluent, "PAUSE_AFTER_BYTES", 1)
    topic = await new_topic(transport, partitions=2)
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    consumer.pause([(topic, 0)])
    await publish_all(transport, topic, [b"%d" % i for i in range(100)], partition=0)
    await publish_all(transport, topic, [b"other"], partition=1)
    assert [r.value for r in await fetch_n(consumer, 2, within=2.0)] == [b"other"]
    await publish_all(transport, topic, [b"%d" % i for i in range(100, 200)], partition=0)
    consumer.resume([(topic, 0)])
    records = await fetch_n(consumer, 200)
    assert [r.offset for r in records] == list(range(200))
    await consumer.stop()


@kafka_broker
@confluent_only
async def test_a_consumer_fetches_on_when_its_buffer_was_full(
    transport: KafkaTransports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread stops polling while fetch falls behind and goes on once it catches up."""
    monkeypatch.setattr(confluent, "PREFETCH_BYTES", 1)
    topic = await new_topic(transport)
    await publish_all(transport, topic, [b"%d" % i for i in range(300)])
    consumer = transport.group_consumer([topic], unique("group"))
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + 20
    while len(records) < 300 and time.monotonic() < deadline:
        records += await consumer.fetch(7, 0.5)
    assert [r.offset for r in records] == list(range(300))
    await consumer.stop()


# -- both client libraries at once ---------------------------------------------------------


@kafka_broker
async def test_an_aiokafka_member_and_a_confluent_member_share_a_group(
    settings: Settings,
) -> None:
    """Members on the two client libraries agree on an assignor and split the partitions."""
    transport, other = ConfluentTransport(settings), KafkaTransport(settings)
    try:
        await transport.start()
        await other.start()
        topic = await new_topic(transport, partitions=4)
        group = unique("group")
        aiokafka_member = other.group_consumer([topic], group)
        await aiokafka_member.start()
        confluent_member = transport.group_consumer([topic], group)
        await confluent_member.start()
        deadline = time.monotonic() + 20
        while len(aiokafka_member.assignment()) != 2 or len(confluent_member.assignment()) != 2:
            assert time.monotonic() < deadline, "the group did not split the partitions"
            await aiokafka_member.fetch(1, 0.1)
        assert aiokafka_member.assignment() | confluent_member.assignment() == {
            (topic, p) for p in range(4)
        }
        await confluent_member.stop()
        await aiokafka_member.stop()
    finally:
        await other.stop()
        await transport.stop()
    assert kourier_threads() == [], "a thread outlived the transport's stop"


# -- security: needs `scripts/kafka start --security`, which sets KOURIER_TEST_* -----------


def secure_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{name} is not set (scripts/kafka start --security)")
    return value


async def assert_round_trip(client: Client, settings: Settings) -> None:
    transport = client.transport(settings)
    await transport.start()
    try:
        topic = await new_topic(transport)
        reader = transport.partition_reader(topic, 0)
        await reader.start()
        await (await transport.publish(topic, b"secure"))
        records = await read_n(reader, 1)
        await reader.stop()
        assert [r.value for r in records] == [b"secure"]
        consumer = transport.group_consumer([topic], unique("group"))
        await consumer.start()
        assert [r.value for r in await fetch_n(consumer, 1)] == [b"secure"]
        await consumer.commit({(topic, 0): 1})
        await consumer.stop()
    finally:
        await transport.stop()


@kafka_broker
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_round_trip(client: Client, mechanism: str) -> None:
    """Each SASL mechanism authenticates with the configured user and password."""
    await assert_round_trip(
        client,
        Settings(
            bootstrap_servers=secure_env("KOURIER_TEST_SASL_BOOTSTRAP_SERVERS"),
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_username=secure_env("KOURIER_TEST_SASL_USERNAME"),
            sasl_password=Secret(secure_env("KOURIER_TEST_SASL_PASSWORD")),
        ),
    )


@kafka_broker
async def test_sasl_wrong_password_fails_without_showing_it(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused password makes start raise BrokerError, and the password is in no message."""
    password = "wrong-" + uuid.uuid4().hex
    transport = client.transport(
        Settings(
            bootstrap_servers=secure_env("KOURIER_TEST_SASL_BOOTSTRAP_SERVERS"),
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username=secure_env("KOURIER_TEST_SASL_USERNAME"),
            sasl_password=Secret(password),
        )
    )
    caplog.set_level("DEBUG")
    started = time.monotonic()
    with pytest.raises(BrokerError, match=client.sasl_refused) as failure:
        await transport.start()
    assert time.monotonic() - started < 5
    assert password not in str(failure.value)
    assert password not in caplog.text


@kafka_broker
async def test_tls_round_trip(client: Client) -> None:
    """TLS with the broker's CA file connects and carries records."""
    await assert_round_trip(
        client,
        Settings(
            bootstrap_servers=secure_env("KOURIER_TEST_SSL_BOOTSTRAP_SERVERS"),
            security_protocol="SSL",
            ssl_cafile=secure_env("KOURIER_TEST_SSL_CAFILE"),
        ),
    )


@kafka_broker
async def test_mutual_tls_round_trip(client: Client) -> None:
    """TLS with a client certificate and key passes a broker that requires one."""
    await assert_round_trip(
        client,
        Settings(
            bootstrap_servers=secure_env("KOURIER_TEST_MTLS_BOOTSTRAP_SERVERS"),
            security_protocol="SSL",
            ssl_cafile=secure_env("KOURIER_TEST_SSL_CAFILE"),
            ssl_certfile=secure_env("KOURIER_TEST_SSL_CERTFILE"),
            ssl_keyfile=secure_env("KOURIER_TEST_SSL_KEYFILE"),
        ),
    )


@kafka_broker
async def test_tls_without_the_client_certificate_is_refused(client: Client) -> None:
    """A broker that requires a client certificate refuses one without, and start says so."""
    transport = client.transport(
        Settings(
            bootstrap_servers=secure_env("KOURIER_TEST_MTLS_BOOTSTRAP_SERVERS"),
            security_protocol="SSL",
            ssl_cafile=secure_env("KOURIER_TEST_SSL_CAFILE"),
        )
    )
    with pytest.raises(BrokerError, match="cannot connect"):
        await transport.start()


async def test_a_topic_whose_metadata_lags_is_looked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka: a broker that does not know a topic yet (created a moment ago, in a
    cluster) is asked again for a while; a topic that stays unknown is an error."""
    transport = KafkaTransport(Settings())
    answers = [{}, {}, {"fresh": {0: 1}}]

    async def metadata(names: list[str]) -> dict[str, dict[int, int]]:
        return answers.pop(0) if answers else {}

    monkeypatch.setattr(transport, "_metadata", metadata)
    assert await transport.partition_count("fresh") == 1
    monkeypatch.setattr(kafka, "UNKNOWN_TOPIC_WAIT", 0.3)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="'gone' does not exist"):
        await transport.partition_count("gone")
    assert 0.3 <= time.monotonic() - started < 2.0
