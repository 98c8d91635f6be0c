"""The broker contract on Apache Kafka, through aiokafka.

This is the only module in kourier that imports aiokafka (``record_batches.py``, which
reads raw batches past aiokafka's reader, borrows its compression codecs). aiokafka
ships no type hints, so every aiokafka object is ``Any`` and stays inside this file:
what leaves it is the contract's types (``Record``, tuples for partitions) and kourier's errors.

It must never log a secret (the SASL password is revealed only to aiokafka), never wait
on the broker without a bound, and never make Kafka create a topic as a side effect: its
own metadata look-ups ask the broker not to auto-create, and it checks that a topic exists
before aiokafka asks for it.

Where Kafka differs from ``transports/memory.py``, the differences are Kafka's own:
rebalance callbacks run in the consumer's background task (still before ``fetch`` returns
any record of the new assignment), and a rebalance forgets which partitions were paused.

It is longer than kourier's other modules on purpose: it is the whole Kafka adapter, and
splitting it would spread aiokafka and its untyped objects over several files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Collection, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.conn import collect_hosts, create_conn  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    ConsumerStoppedError,
    IllegalOperation,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
from aiokafka.protocol.fetch import FetchRequest  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]
from aiokafka.structs import TopicPartition as KafkaTopicPartition  # type: ignore[import-untyped]

from kourier._aio import within
from kourier.errors import BrokerError, PublishError
from kourier.settings import Settings
from kourier.transports.base import (
    UNREACHABLE_HINT,
    GroupConsumer,
    PartitionReader,
    RebalanceCallback,
    Record,
    TopicInfo,
    TopicPartition,
    TopicSpec,
    Transport,
    log_created,
    require_topics,
)
from kourier.transports.record_batches import read_records

log = logging.getLogger(__name__)

#: Seconds one broker operation may take: connecting, a metadata look-up, a produce
#: request (and so the wait for an acknowledgement), a commit. aiokafka's default (40 s)
#: hides an outage for too long; Kafka itself answers on loopback in milliseconds.
REQUEST_TIMEOUT = 10.0
#: Seconds a publish keeps asking about a topic the broker does not know before it fails;
#: covers the moment between a topic's creation and its metadata reaching every broker.
UNKNOWN_TOPIC_WAIT = 2.0
#: Milliseconds a fetch request waits at the broker for data. The broker answers as soon
#: as a record arrives, so this barely moves the median round trip (about 1.5-2 ms on
#: loopback from 500 down to 20 ms); smaller values trimmed the slowest round trips
#: somewhat but cost idle CPU in every consumer (about 0.4% at 500 ms, 2% at 50 ms, 4% at
#: 20 ms, 8% at 5 ms, where latency got worse).
FETCH_MAX_WAIT_MS = 50
#: Room above the largest body for a record's key, headers and batch framing.
RECORD_OVERHEAD_BYTES = 64 * 1024
#: Group membership: a dead member is noticed after the session timeout; a live one learns
#: of a rebalance at its next heartbeat, so a short interval makes joins quick.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 1_000
#: Seconds (beyond ``drain_timeout``) a rebalance may take: members run ``on_revoked``,
#: which may wait for in-flight work, before they rejoin.
REBALANCE_MARGIN = 30.0
#: Seconds ``ensure_topics`` waits for new topics to have a leader for every partition.
TOPIC_READY_TIMEOUT = 30.0
#: Bytes of one partition a raw fetch asks for (see ``read_raw``); the broker returns a
#: whole first batch even when it is larger.
RAW_FETCH_BYTES = 1024 * 1024
#: Records a partition reader takes from one raw fetch.
RAW_READ_LIMIT = 500


def _connection_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's keyword arguments for reaching the brokers, shared by every client."""
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",")],
        "client_id": settings.client_id,
        "request_timeout_ms": int(REQUEST_TIMEOUT * 1000),
        "metadata_max_age_ms": 60_000,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # Settings validates this
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.reveal()
    return options


class KafkaTransport(Transport):
    """A connection to a Kafka cluster: one producer, plus the consumers it makes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._options = _connection_options(settings)
        self._max_request_size = (
            max(settings.max_request_bytes, settings.max_reply_bytes) + RECORD_OVERHEAD_BYTES
        )
        self._producer: Any = None
        self._clients: set[KafkaGroupConsumer | KafkaPartitionReader] = set()

    @property
    def _servers(self) -> str:
        return self.settings.bootstrap_servers

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        # No idempotence: aiokafka then retries a batch forever instead of failing it
        # after REQUEST_TIMEOUT, so an outage would hang publishes and stop(). Order per
        # partition holds without it, as aiokafka has one batch per partition in flight.
        producer = AIOKafkaProducer(
            **self._options,
            acks="all",
            enable_idempotence=False,
            linger_ms=self.settings.linger_ms,
            max_request_size=self._max_request_size,
        )
        try:
            await within(producer.start(), REQUEST_TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as err:
            await producer.stop()
            reason = _reason(err)
            if isinstance(err, KafkaConnectionError):
                reason = await _why_unreachable(self._options)
            raise BrokerError(
                f"cannot connect to Kafka at {self._servers}: {reason}; {UNREACHABLE_HINT}"
            ) from err
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        log.info("connected to Kafka at %s", self._servers)

    async def stop(self) -> None:
        for client in list(self._clients):
            await client.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def _running_producer(self) -> Any:
        if self._producer is None:
            raise BrokerError("the Kafka transport is not started")
        return self._producer

    # -- publishing ------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        producer = self._running_producer()
        known = producer.client.cluster.partitions_for_topic(topic)
        if known is None or (partition is not None and partition not in known):
            await self._check_destination(producer, topic, partition)
        if headers.__class__ is not list:
            headers = list(headers)
        try:
            delivery = await producer.send(
                topic, value, key=key, partition=partition, headers=headers
            )
        except KafkaError as err:
            raise PublishError(_publish_failure(err, topic, _size(value, key, headers))) from err
        return _acknowledgement(delivery, topic, value, key, headers)

    async def _check_destination(self, producer: Any, topic: str, partition: int | None) -> None:
        """Fail fast, without auto-creating it, when the topic or partition does not exist."""
        partitions = producer.client.cluster.partitions_for_topic(topic)
        if partitions is None:
            partitions = await self._wait_for_topic(topic)
        if partition is not None and partition not in partitions:
            raise PublishError(f"topic {topic!r} has no partition {partition}")

    async def _wait_for_topic(self, topic: str) -> set[int]:
        deadline = time.monotonic() + UNKNOWN_TOPIC_WAIT
        while True:
            try:
                found = await self._metadata([topic])
            except BrokerError as err:
                raise PublishError(f"cannot publish to {topic!r}: {err}") from err
            if topic in found:
                return set(found[topic])
            if time.monotonic() >= deadline:
                raise PublishError(f"topic {topic!r} does not exist")
            await asyncio.sleep(0.1)

    # -- topics ----------------------------------------------------------------------

    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        if not topics:
            return
        names = [spec.name for spec in topics]
        existing = await self._metadata(names)
        missing = [spec for spec in topics if spec.name not in existing]
        if missing:
            await self._create_topics(missing)
            await self._wait_for_leaders([spec.name for spec in missing])

    async def _create_topics(self, specs: Sequence[TopicSpec]) -> None:
        admin = AIOKafkaAdminClient(**self._options)
        try:
            await within(admin.start(), REQUEST_TIMEOUT)
            response = await within(
                admin.create_topics(
                    [
                        NewTopic(
                            name=spec.name,
                            num_partitions=spec.partitions,
                            replication_factor=spec.replication_factor,
                            topic_configs=dict(spec.config or {}),
                        )
                        for spec in specs
                    ],
                    timeout_ms=int(REQUEST_TIMEOUT * 1000),
                ),
                REQUEST_TIMEOUT + 1,
            )
        except (KafkaError, OSError, TimeoutError) as err:
            names = ", ".join(spec.name for spec in specs)
            raise BrokerError(f"cannot create topics {names}: {_reason(err)}") from err
        finally:
            await admin.close()
        created = []
        for name, code, *message in response.topic_errors:
            error = for_code(code)
            if code == 0:
                created.append(name)
            # Another process may have created it since we looked: that is success too.
            elif error is not TopicAlreadyExistsError:
                detail = message[0] if message and message[0] else error.__name__
                raise BrokerError(f"cannot create topic {name!r}: {detail}")
        log_created(log, created, [spec.name for spec in specs])

    async def _wait_for_leaders(self, names: Sequence[str]) -> None:
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT
        while True:
            found = await self._metadata(names)
            waiting = [
                name
                for name in names
                if name not in found or any(leader < 0 for leader in found[name].values())
            ]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"topics {', '.join(waiting)} have no leader after {TOPIC_READY_TIMEOUT} s"
                )
            await asyncio.sleep(0.05)

    async def partition_count(self, topic: str) -> int:
        found = await self._require_topics([topic])
        return len(found[topic])

    async def _require_topics(self, topics: Iterable[str]) -> dict[str, dict[int, int]]:
        """The topics' partitions; ``BrokerError`` for one that does not exist.

        Metadata requests go to any broker, and in a cluster a topic created a moment
        ago (by this process or another) may not have reached that broker's metadata
        yet: a missing topic is looked for again for ``UNKNOWN_TOPIC_WAIT`` seconds.
        """
        return await require_topics(self._metadata, topics, UNKNOWN_TOPIC_WAIT)

    async def _metadata(self, topics: Sequence[str]) -> dict[str, dict[int, int]]:
        """The partitions (and their leaders' ids, -1 for none) of those topics that exist."""
        return {
            name: {p[1]: p[2] for p in partitions}
            for name, partitions in (await self._topic_metadata(topics)).items()
        }

    async def _topic_metadata(self, topics: Sequence[str]) -> dict[str, list[Any]]:
        """The raw partition entries of those topics that exist.

        Asks one broker directly, with auto-creation off: aiokafka's own metadata
        requests would make a broker with ``auto.create.topics.enable`` create the topic.
        """
        client = self._running_producer().client
        try:
            response = await within(
                _send_to_any_broker(
                    client, MetadataRequest(list(topics), allow_auto_topic_creation=False)
                ),
                REQUEST_TIMEOUT,
            )
        except (KafkaError, OSError, TimeoutError) as err:
            raise BrokerError(f"no metadata from Kafka at {self._servers}: {_reason(err)}") from err
        found: dict[str, list[Any]] = {}
        for error_code, name, _internal, partitions, *_ in response.topics:
            if error_code == TopicAuthorizationFailedError.errno:
                raise BrokerError(f"not authorised to use topic {name!r}")
            if error_code == 0:
                found[name] = list(partitions)
        return found

    async def read_raw(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        """Up to ``limit`` records of ``tp`` from ``offset``, read past aiokafka's reader.

        aiokafka's record reader raises for a whole batch when one record has a header
        name that is not UTF-8 (``UnicodeDecodeError`` from ``getmany``). The consumers
        call this when their reader fails: it fetches the partition's raw bytes from its
        leader and reads them with ``record_batches``, which marks such records
        ``undecodable`` instead.
        """
        topic, partition = tp
        leaders = (await self._metadata([topic])).get(topic, {})
        leader = leaders.get(partition, -1)
        if leader < 0:
            raise BrokerError(f"{topic}[{partition}] has no leader to read from")
        request = FetchRequest(
            0,  # max wait: answer with what is there
            1,
            RAW_FETCH_BYTES,
            0,  # read uncommitted, as the consumers do
            [(topic, [(partition, offset, RAW_FETCH_BYTES)])],
        )
        client = self._running_producer().client
        try:
            response = await within(client.send(leader, request), REQUEST_TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as err:
            raise BrokerError(f"cannot read {topic}[{partition}]: {_reason(err)}") from err
        for _topic, partitions in response.topics:
            for number, error_code, _high, *rest in partitions:
                if number != partition:
                    continue
                if error_code != 0:
                    raise BrokerError(
                        f"cannot read {topic}[{partition}]: {for_code(error_code).__name__}"
                    )
                return read_records(topic, partition, bytes(rest[-1] or b""), offset, limit)
        return []

    # -- consumers -------------------------------------------------------------------

    def group_consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> GroupConsumer:
        return KafkaGroupConsumer(self, topics, group, on_assigned, on_revoked)

    def partition_reader(
        self, topic: str, partition: int, *, from_beginning: bool = False
    ) -> PartitionReader:
        return KafkaPartitionReader(self, topic, partition, from_beginning)

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicInfo]:
        # A partition entry is (error, id, leader, replicas, in-sync replicas, ...).
        return {
            name: TopicInfo(name, len(partitions), max((len(p[3]) for p in partitions), default=0))
            for name, partitions in (await self._topic_metadata(names)).items()
        }

    async def topic_names(self) -> set[str]:
        client = self._running_producer().client
        # None asks for every topic; auto-creation off, as in _topic_metadata.
        request = MetadataRequest(None, allow_auto_topic_creation=False)
        try:
            response = await within(_send_to_any_broker(client, request), REQUEST_TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as err:
            raise BrokerError(f"no metadata from Kafka at {self._servers}: {_reason(err)}") from err
        return {name for error_code, name, *_ in response.topics if error_code == 0}

    def _consumer_options(self) -> dict[str, Any]:
        return {
            **self._options,
            "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
            "max_partition_fetch_bytes": self._max_request_size,
            "enable_auto_commit": False,
        }

    # -- health ----------------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        if self._producer is None:
            return False
        try:
            # An empty topic list asks for brokers only: the cheapest round trip there is.
            await within(_send_to_any_broker(self._producer.client, MetadataRequest([])), timeout)
        except Exception:
            return False
        return True


async def _why_unreachable(options: dict[str, Any]) -> str:
    """Each bootstrap server's own reason for failing; aiokafka only logs them."""
    reasons = []
    for host, port, _family in collect_hosts(options["bootstrap_servers"], randomize=False):
        try:
            connection = await within(
                create_conn(
                    host,
                    port,
                    client_id=options["client_id"],
                    request_timeout_ms=options["request_timeout_ms"],
                    security_protocol=options["security_protocol"],
                    ssl_context=options.get("ssl_context"),
                    sasl_mechanism=options.get("sasl_mechanism", "PLAIN"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                ),
                REQUEST_TIMEOUT,
            )
        except (KafkaError, OSError, TimeoutError) as err:
            reasons.append(f"{host}:{port}: {_reason(err)}")
        else:
            await connection.close()
            reasons.append(f"{host}:{port}: connected, but no metadata came back")
    return "; ".join(reasons)


async def _send_to_any_broker(client: Any, request: Any) -> Any:
    node_id = client.get_random_node()
    if node_id is None:
        raise BrokerError("no broker is known")
    return await client.send(node_id, request)


class KafkaGroupConsumer(GroupConsumer):
    """One member of a consumer group, on an ``AIOKafkaConsumer`` with manual commits."""

    def __init__(
        self,
        transport: KafkaTransport,
        topics: Sequence[str],
        group: str,
        on_assigned: RebalanceCallback | None,
        on_revoked: RebalanceCallback | None,
    ) -> None:
        self._transport = transport
        self.topics = tuple(topics)
        self.group = group
        self._listener = _RebalanceListener(on_assigned, on_revoked)
        self._consumer: Any = None
        #: The offset after the last record handed out, per partition, since the
        #: rebalance counted in ``_next_since``: where to read from when aiokafka's
        #: reader fails (see ``_read_past_reader``).
        self._next: dict[TopicPartition, int] = {}
        self._next_since = 0

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await self._transport._require_topics(self.topics)
        rebalance_timeout = self._transport.settings.drain_timeout + REBALANCE_MARGIN
        consumer = AIOKafkaConsumer(
            **self._transport._consumer_options(),
            group_id=self.group,
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            rebalance_timeout_ms=int(rebalance_timeout * 1000),
            max_poll_interval_ms=int(max(60.0, rebalance_timeout) * 1000),
        )
        consumer.subscribe(list(self.topics), listener=self._listener)
        # aiokafka's start returns after the first join, once this member has its
        # (possibly empty) assignment; other members may hold it up by a rebalance.
        try:
            await within(self._join(consumer), rebalance_timeout + REQUEST_TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as err:
            await consumer.stop()
            raise BrokerError(
                f"cannot join group {self.group!r} on {', '.join(self.topics)}: {_reason(err)}"
            ) from err
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._transport._clients.add(self)

    async def _join(self, consumer: Any) -> None:
        await consumer.start()
        # aiokafka's start returns once the assignment is known, maybe before
        # on_assigned has run; the first records must not overtake it either.
        await self._listener.settled.wait()

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._transport._clients.discard(self)
        if consumer is not None:
            await _stop_consumer(consumer)
            self._listener.settled.set()  # a fetch waiting for a rebalance ends now

    def _running(self) -> Any:
        if self._consumer is None:
            raise BrokerError("consumer is not started")
        return self._consumer

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        """Records of this member's partitions; may overrun ``timeout`` during a rebalance.

        aiokafka's ``getmany`` waits for a rebalance in progress to end. It is not cut
        short: cancelling it would break aiokafka's poll-interval bookkeeping, and not
        calling it would stop this member from rejoining.
        """
        consumer = self._running()
        self._listener.raise_failure()
        try:
            batches = await consumer.getmany(
                timeout_ms=int(max(0.0, timeout) * 1000), max_records=max_records
            )
        except ConsumerStoppedError as err:
            raise BrokerError("consumer is not started") from err
        except KafkaError as err:
            raise BrokerError(f"fetch from group {self.group!r} failed: {_reason(err)}") from err
        except Exception as err:  # aiokafka's record reader failed on a record
            return await self._read_past_reader(consumer, err, max_records)
        # aiokafka hands out records of a new assignment as soon as it has it, while
        # on_assigned may still be running: hold them until it has finished.
        rebalances = self._listener.rebalances
        await self._listener.settled.wait()
        self._listener.raise_failure()
        if self._listener.rebalances != rebalances or self._consumer is None:
            # Another rebalance revoked them meanwhile; their partitions restart from
            # the committed offsets, so nothing is lost by dropping them.
            return []
        records = [_record(r) for batch in batches.values() for r in batch]
        self._handed_out(records)
        return records

    def _handed_out(self, records: list[Record]) -> None:
        if self._next_since != self._listener.rebalances:
            # A rebalance resets every position to the committed offset.
            self._next.clear()
            self._next_since = self._listener.rebalances
        for record in records:
            self._next[(record.topic, record.partition)] = record.offset + 1

    async def _read_past_reader(
        self, consumer: Any, error: Exception, max_records: int
    ) -> list[Record]:
        """Read the assigned partitions ourselves after aiokafka's reader failed.

        The failure loses the whole ``getmany``: records of other partitions drained
        before it have moved their positions on. So every partition not paused is read
        again, raw, from the offset after the last record handed out (or, if none was
        since the last rebalance, from the committed offset), and each position is set
        after what is returned. The record aiokafka could not read comes back marked
        ``undecodable``; the ones around it come back as they are.
        """
        log.warning(
            "aiokafka could not read a fetched batch of group %r (%s: %s); reading the "
            "partitions' records past it",
            self.group,
            type(error).__name__,
            error,
        )
        rebalances = self._listener.rebalances
        self._handed_out([])
        paused = consumer.paused()
        starts: dict[Any, int] = {}
        records: list[Record] = []
        try:
            for ktp in consumer.assignment():
                if ktp not in paused:
                    starts[ktp] = await self._position_before(consumer, ktp)
            for ktp, start in starts.items():
                room = max_records - len(records)
                if room > 0:
                    records += await self._transport.read_raw(
                        (ktp.topic, ktp.partition), start, room
                    )
        except (KafkaError, TimeoutError, BrokerError) as err:
            self._seek(consumer, rebalances, starts)
            raise BrokerError(f"fetch from group {self.group!r} failed: {_reason(err)}") from err
        after = dict(starts)
        for record in records:
            after[KafkaTopicPartition(record.topic, record.partition)] = record.offset + 1
        if not self._seek(consumer, rebalances, after):
            return []
        self._handed_out(records)
        return records

    def _seek(self, consumer: Any, rebalances: int, positions: Mapping[Any, int]) -> bool:
        """Set the positions, unless a rebalance has reset them meanwhile (then False)."""
        if self._listener.rebalances != rebalances or self._consumer is None:
            return False
        try:
            for ktp, offset in positions.items():
                consumer.seek(ktp, offset)
        except IllegalStateError:  # revoked after all: its position no longer matters
            return False
        return True

    async def _position_before(self, consumer: Any, ktp: Any) -> int:
        known = self._next.get((ktp.topic, ktp.partition))
        if known is not None:
            return known
        committed = await within(consumer.committed(ktp), REQUEST_TIMEOUT)
        if committed is not None:
            return int(committed)
        beginning = await within(consumer.beginning_offsets([ktp]), REQUEST_TIMEOUT)
        return int(beginning[ktp])

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        consumer = self._running()
        kafka_offsets = {KafkaTopicPartition(t, p): o for (t, p), o in offsets.items()}
        try:
            await within(consumer.commit(kafka_offsets), REQUEST_TIMEOUT)
        except (KafkaError, IllegalOperation, TimeoutError) as err:
            where = ", ".join(f"{t}[{p}]" for t, p in sorted(offsets))
            if isinstance(err, CommitFailedError):
                reason = "the group has rebalanced; another member may own them now"
            elif isinstance(err, IllegalStateError):
                reason = "not all of them are assigned to this member"
            else:
                reason = _reason(err)
            raise BrokerError(f"commit failed for {where}: {reason}") from err

    def assignment(self) -> set[TopicPartition]:
        if self._consumer is None:
            return set()
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def lag(self) -> dict[TopicPartition, int]:
        consumer = self._running()
        assigned = list(consumer.assignment())
        if not assigned:
            return {}
        try:
            ends = await within(consumer.end_offsets(assigned), REQUEST_TIMEOUT)
            lags: dict[TopicPartition, int] = {}
            for tp in assigned:
                position = await within(consumer.position(tp), REQUEST_TIMEOUT)
                lags[(tp.topic, tp.partition)] = max(0, ends[tp] - position)
        except (KafkaError, IllegalStateError, TimeoutError) as err:
            raise BrokerError(
                f"cannot read the lag of group {self.group!r}: {_reason(err)}"
            ) from err
        return lags

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        owned = self._owned(partitions)
        if owned:
            self._consumer.pause(*owned)

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        owned = self._owned(partitions)
        if owned:
            self._consumer.resume(*owned)

    def _owned(self, partitions: Collection[TopicPartition]) -> list[Any]:
        """The given partitions this member holds: aiokafka refuses the others."""
        assigned = self.assignment()
        return [KafkaTopicPartition(t, p) for t, p in partitions if (t, p) in assigned]


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance events to kourier's callbacks, as sets of tuples.

    aiokafka calls ``on_partitions_revoked`` and then ``on_partitions_assigned`` once per
    rebalance (with empty sets too), in its coordinator task, and only logs what they
    raise. ``settled`` is clear from the start of the one to the end of the other, and a
    callback's failure is kept here to be raised from the next ``fetch``.
    """

    def __init__(
        self, on_assigned: RebalanceCallback | None, on_revoked: RebalanceCallback | None
    ) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._failure: BaseException | None = None
        self.settled = asyncio.Event()
        self.rebalances = 0

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        self.settled.clear()
        self.rebalances += 1
        await self._call(self._on_revoked, revoked)

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        try:
            # Also with nothing assigned, as Kafka's own clients do: an idle member (more
            # members than partitions) has joined its group too, and readiness says so.
            await self._call(self._on_assigned, assigned, even_if_empty=True)
        finally:
            self.settled.set()

    async def _call(
        self,
        callback: RebalanceCallback | None,
        partitions: Iterable[Any],
        *,
        even_if_empty: bool = False,
    ) -> None:
        tps = {(tp.topic, tp.partition) for tp in partitions}
        if callback is None or (not tps and not even_if_empty):
            return
        try:
            await callback(tps)
        except Exception as err:
            log.error("%s failed for %s", getattr(callback, "__qualname__", callback), tps)
            if self._failure is None:
                self._failure = err

    def raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


class KafkaPartitionReader(PartitionReader):
    """Reads one partition without a group, from where its end was at ``start``."""

    def __init__(
        self, transport: KafkaTransport, topic: str, partition: int, from_beginning: bool
    ) -> None:
        self._transport = transport
        self.tp = (topic, partition)
        self.from_beginning = from_beginning
        self._consumer: Any = None
        #: The offset of the next record to hand out (see ``_read_past_reader``).
        self._next = 0

    async def start(self) -> None:
        if self._consumer is not None:
            return
        topic, partition = self.tp
        found = await self._transport._require_topics([topic])
        if partition not in found[topic]:
            raise BrokerError(f"no partition {partition} in topic {topic!r}")
        consumer = AIOKafkaConsumer(**self._transport._consumer_options(), group_id=None)
        tp = KafkaTopicPartition(topic, partition)
        try:
            self._next = await within(
                self._start_at(consumer, tp, self.from_beginning), REQUEST_TIMEOUT
            )
        except (KafkaError, OSError, TimeoutError) as err:
            await consumer.stop()
            raise BrokerError(f"cannot read {topic}[{partition}]: {_reason(err)}") from err
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._transport._clients.add(self)

    @staticmethod
    async def _start_at(consumer: Any, tp: Any, from_beginning: bool) -> int:
        await consumer.start()
        consumer.assign([tp])
        if from_beginning:
            await consumer.seek_to_beginning(tp)
        else:
            await consumer.seek_to_end(tp)
        # Resolving the position here fixes it before start returns, so nothing
        # published after start can be skipped.
        return int(await consumer.position(tp))

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._transport._clients.discard(self)
        if consumer is not None:
            await _stop_consumer(consumer)

    async def end_offset(self) -> int:
        if self._consumer is None:
            raise BrokerError("reader is not started")
        topic, partition = self.tp
        tp = KafkaTopicPartition(topic, partition)
        try:
            ends = await within(self._consumer.end_offsets([tp]), REQUEST_TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as err:
            raise BrokerError(f"no end offset of {topic}[{partition}]: {_reason(err)}") from err
        return int(ends[tp])

    async def fetch(self, timeout: float) -> list[Record]:
        if self._consumer is None:
            raise BrokerError("reader is not started")
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        except ConsumerStoppedError as err:
            raise BrokerError("reader is not started") from err
        except KafkaError as err:
            topic, partition = self.tp
            raise BrokerError(f"fetch from {topic}[{partition}] failed: {_reason(err)}") from err
        except Exception as err:  # aiokafka's record reader failed on a record
            records = await self._read_past_reader(err)
        else:
            records = [_record(r) for batch in batches.values() for r in batch]
        if records:
            self._next = records[-1].offset + 1
        return records

    async def _read_past_reader(self, error: Exception) -> list[Record]:
        """Read the partition raw from the next offset after aiokafka's reader failed
        (see ``KafkaTransport.read_raw``), and go on after what was read."""
        topic, partition = self.tp
        log.warning(
            "aiokafka could not read a fetched batch of %s[%d] (%s: %s); reading its "
            "records past it",
            topic,
            partition,
            type(error).__name__,
            error,
        )
        records = await self._transport.read_raw(self.tp, self._next, RAW_READ_LIMIT)
        if self._consumer is not None:
            after = records[-1].offset + 1 if records else self._next
            self._consumer.seek(KafkaTopicPartition(topic, partition), after)
        return records


async def _stop_consumer(consumer: Any) -> None:
    """Stop an aiokafka consumer, also in the middle of a broker outage.

    aiokafka 0.14's fetcher awaits the fetch tasks it has just cancelled when it closes,
    so a stop during an outage can raise their CancelledError into the task that is
    stopping; that task is not being cancelled itself, so the error is swallowed here.
    """
    task = asyncio.current_task()
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise
        log.debug("aiokafka raised CancelledError while stopping a consumer; stopped anyway")


# -- conversions -----------------------------------------------------------------------


def _record(message: Any) -> Record:
    headers = message.headers  # a tuple of (str, bytes | None) pairs
    for _, value in headers:
        if value is None:  # Kafka allows a header without a value; kourier reads b""
            headers = tuple((name, value or b"") for name, value in headers)
            break
    return Record(
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        headers if headers.__class__ is tuple else tuple(headers),
        message.timestamp,
    )


def _size(value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> int:
    """A record's size as error messages give it (counted only when one is written)."""
    return len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers)


def _acknowledgement(
    delivery: Any,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> asyncio.Future[None]:
    """A future that resolves when the broker has the record, or fails with PublishError."""
    acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(result: Any) -> None:
        # Retrieve aiokafka's outcome even when nobody waits any more (a caller that
        # timed out): an exception never retrieved is logged by asyncio as an error.
        error = None if result.cancelled() else result.exception()
        if acknowledged.done():  # the caller stopped waiting
            return
        if result.cancelled():
            acknowledged.set_exception(PublishError(f"publish to {topic!r} was cancelled"))
        elif error is not None:
            failure = PublishError(_publish_failure(error, topic, _size(value, key, headers)))
            failure.__cause__ = error
            acknowledged.set_exception(failure)
        else:
            acknowledged.set_result(None)

    delivery.add_done_callback(settle)
    return acknowledged


def _publish_failure(err: BaseException, topic: str, size: int) -> str:
    if isinstance(err, MessageSizeTooLargeError | RecordTooLargeError):
        return (
            f"record of {size} bytes for topic {topic!r} is larger than the limit "
            "(the producer's max_request_bytes plus overhead, or the topic's max.message.bytes)"
        )
    if isinstance(err, UnknownTopicOrPartitionError):
        return f"topic {topic!r} does not exist"
    if isinstance(err, TopicAuthorizationFailedError):
        return f"not authorised to publish to topic {topic!r}"
    if isinstance(err, KafkaTimeoutError | RequestTimedOutError):
        return (
            f"no acknowledgement for a record to {topic!r} within {REQUEST_TIMEOUT} s "
            "(the broker may still have stored it)"
        )
    return f"publish to {topic!r} failed: {_reason(err)}"


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "no answer in time"
    text = str(err)
    if isinstance(err, KafkaError) and text:
        return text  # aiokafka's errors already name themselves
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
