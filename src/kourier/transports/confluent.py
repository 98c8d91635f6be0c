"""The broker contract on Apache Kafka, through confluent-kafka (librdkafka).

The only module in kourier that imports confluent_kafka. What leaves it is the contract's
types (``Record``, tuples for partitions) and kourier's errors; librdkafka's objects and
the ``Any`` of its admin futures stay inside.

It must never log a secret (the SASL password is revealed only to librdkafka, whose own
log lines are routed to ``logging`` and never print it), never wait on the broker
without a bound, and never make Kafka create a topic as a side effect
(``allow.auto.create.topics`` is off, and a publish checks that its topic exists first).

librdkafka is driven by threads, and kourier by one event loop. Each piece is bridged so
that the loop never blocks on the broker:

* the producer is used from the loop (``produce`` only queues a record); one thread
  does nothing but ``poll``, which runs the delivery callbacks, and hands each poll's
  acknowledgements to the loop in one ``call_soon_threadsafe``;
* each consumer is owned by one thread. confluent-kafka 2.16 lets only one thread at a
  time into a ``Consumer`` (any other waits for the ``poll`` in progress), so every call
  on it -- commit, position, assign -- is a command queued to its thread, run between
  two polls of at most ``POLL_SLICE``. The thread hands fetched records to the loop,
  where ``fetch`` takes them; a pause holds a partition's records back there, and
  reaches librdkafka only if they pile up (``PAUSE_AFTER_BYTES``);
* rebalance callbacks run inside ``poll`` in that thread; the thread runs kourier's
  async callback on the loop and waits for it, serving the commands it sends meanwhile
  (a commit in ``on_revoked``), so the partitions move only after it has finished;
* admin requests (topics, offsets, ping) return futures that librdkafka's background
  thread completes; they are awaited with a bound.

Where Kafka differs from ``transports/memory.py``, the differences are Kafka's own, as
in ``transports/kafka.py``: rebalance callbacks run while ``fetch`` is not being called,
and a rebalance forgets which partitions were paused.

What it costs, against ``transports/kafka.py`` on a 2-core machine (Kafka 4.1 on
loopback): a request/reply round trip is faster (p50 ~1.0 against ~1.6-2.3 ms) and
one-way throughput higher (~80-100k against ~25-60k records/s), but each record costs
about twice the CPU with ``linger_ms=0`` (librdkafka's threads, and the hand-overs to
the loop), so 64 calls in flight on a busy machine run at about half aiokafka's rate;
``linger_ms=1`` brings the CPU and that rate back to par, at +1.2 ms per round trip.

It is longer than kourier's other modules on purpose: it is the whole adapter for one
client library, and splitting it would spread librdkafka's threads over several files.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import operator
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
)
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin import OffsetSpec as _OffsetSpec  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic

from kourier.errors import BrokerError, KourierError, PublishError
from kourier.settings import Settings
from kourier.transports.base import (
    UNREACHABLE_HINT,
    GroupConsumer,
    PartitionReader,
    RebalanceCallback,
    Record,
    ShareConsumer,
    TopicInfo,
    TopicPartition,
    TopicSpec,
    Transport,
    log_created,
    require_topics,
)

log = logging.getLogger(__name__)
#: librdkafka's own log lines (connection failures, retries), served by the polling threads.
librdkafka_log = logging.getLogger(f"{__name__}.librdkafka")

T = TypeVar("T")

#: Seconds one broker operation may take: connecting, a metadata look-up, a produce
#: request (and so the wait for an acknowledgement), a commit.
REQUEST_TIMEOUT = 10.0
#: Seconds a publish, a consumer's start or ``partition_count`` keeps asking about a topic
#: the broker does not know before it fails; covers the moment between a topic's creation
#: and its metadata reaching every broker (seen on a 3-node cluster: a reply topic created
#: by one broker, unknown to the next one asked).
UNKNOWN_TOPIC_WAIT = 2.0
#: Milliseconds a fetch request waits at the broker for data. The broker answers as soon
#: as a record arrives, so this barely moves the round trip (p50 1.0-1.1 ms from 5 to
#: 500 ms); it sets how often an idle consumer asks again. Idle CPU of a process with a
#: group consumer, a reader and the producer: 1.2% at 20 ms, 0.8% at 50, 0.6% at 100,
#: about 1% more at 5 (KafkaTransport at its 50 ms: 2%).
FETCH_WAIT_MAX_MS = 20
#: Seconds a consumer thread waits in one ``poll`` before it runs the commands queued
#: for it (commit, pause, lag, stop). Records wake it at once; only commands wait this
#: long. Each slice is a wake-up: 0.02 s cost 0.3% more idle CPU than 0.05 s.
POLL_SLICE = 0.05
#: Produce requests in flight per broker connection. With 1, records wait behind the
#: request in flight and go out together, so a partition's order survives retries
#: without idempotence, and fuller requests win under load: 100,000 publishes were
#: acknowledged at ~98k/s with 1, ~82k/s with 5 and with librdkafka's default (1e6).
MAX_IN_FLIGHT = 1
#: Bytes of fetched records a consumer holds for ``fetch`` before it stops polling,
#: so a backlog stays in Kafka (librdkafka's own queue is bounded alike).
PREFETCH_BYTES = 16 * 1024 * 1024
#: Bytes of records held for paused partitions before librdkafka is asked to pause
#: them too. A pause starts on the event loop, where records of a paused partition are
#: held back: the service pauses whenever it is full, and pausing in librdkafka each time
#: cost a refetch per resume (64 calls in flight through a kourier service: ~80-230 req/s
#: against ~3,600 with the pause kept on the loop).
PAUSE_AFTER_BYTES = 4 * 1024 * 1024
#: Records one ``consume`` call may return after the first.
CONSUME_BATCH = 1000
#: Room above the largest body for a record's key, headers and batch framing.
RECORD_OVERHEAD_BYTES = 64 * 1024
#: What one buffered record costs beyond its key, value and headers (the Record object,
#: its tuple of headers): counted so that records without bytes still fill the buffer.
BUFFERED_RECORD_BYTES = 200
#: Group membership: a dead member is noticed after the session timeout; a live one learns
#: of a rebalance at its next heartbeat, so a short interval makes joins quick.
SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_INTERVAL_MS = 1_000
#: Seconds (beyond ``drain_timeout``) a rebalance may take: members run ``on_revoked``,
#: which may wait for in-flight work, before they rejoin.
REBALANCE_MARGIN = 30.0
#: Seconds ``ensure_topics`` waits for new topics to have a leader for every partition.
TOPIC_READY_TIMEOUT = 30.0

# librdkafka's error codes for a connection that cannot work: fail start with them at once.
_CONNECT_FAILURES = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._SSL,
    }
)
_UNKNOWN_TOPIC = frozenset(
    {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION}
)
_TOO_LARGE = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}
)
_TIMED_OUT = frozenset(
    {KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT}
)
# What a partition's offsets are asked of a broker that is not (yet) known as its leader.
_NO_LEADER = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
    }
)
_REBALANCED = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.FENCED_INSTANCE_ID,
    }
)


def _client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka's properties for reaching the brokers, shared by every client."""
    timeout_ms = int(REQUEST_TIMEOUT * 1000)
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(s.strip() for s in settings.bootstrap_servers.split(",")),
        "client.id": settings.client_id,
        "socket.timeout.ms": timeout_ms,
        "socket.connection.setup.timeout.ms": timeout_ms,
        "socket.nagle.disable": True,
        "metadata.max.age.ms": 60_000,
        "allow.auto.create.topics": False,
        "log.connection.close": False,
        "logger": librdkafka_log,
        "security.protocol": settings.security_protocol.lower(),
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        # Without a CA file, the system's CAs (the wheel's own OpenSSL knows no default).
        config["ssl.ca.location"] = "probe"
        for option, path in (
            ("ssl.ca.location", settings.ssl_cafile),
            ("ssl.certificate.location", settings.ssl_certfile),
            ("ssl.key.location", settings.ssl_keyfile),
        ):
            if path is not None:
                config[option] = path
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # Settings validates this
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username
        config["sasl.password"] = settings.sasl_password.reveal()
    return config


class ConfluentTransport(Transport):
    """A connection to a Kafka cluster: one producer, one admin client, and the consumers
    it makes, each with its own thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._config = _client_config(settings)
        self._max_request_size = (
            max(settings.max_request_bytes, settings.max_reply_bytes) + RECORD_OVERHEAD_BYTES
        )
        self._deliveries: _DeliveryThread | None = None
        self._admin: AdminClient | None = None
        self._clients: set[ConfluentGroupConsumer | ConfluentPartitionReader] = set()
        #: Partitions per topic as last seen, so a publish checks its topic without a request.
        self._partitions: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ConfluentTransport({self.settings.bootstrap_servers!r})"

    @property
    def _servers(self) -> str:
        return self.settings.bootstrap_servers

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._deliveries is not None:
            return
        # No idempotence, as in transports/kafka.py: order per partition comes from one
        # request in flight, and a failing broker fails a publish after REQUEST_TIMEOUT.
        producer_config = {
            **self._config,
            "acks": "all",
            "enable.idempotence": False,
            "linger.ms": self.settings.linger_ms,
            "max.in.flight.requests.per.connection": MAX_IN_FLIGHT,
            "message.max.bytes": self._max_request_size,
            "message.timeout.ms": int(REQUEST_TIMEOUT * 1000),
            "request.timeout.ms": int(REQUEST_TIMEOUT * 1000),
            "topic.metadata.propagation.max.ms": int(UNKNOWN_TOPIC_WAIT * 1000),
            # The same partition for the same key as the Java client and aiokafka.
            "partitioner": "murmur2_random",
        }
        try:
            deliveries = _DeliveryThread(producer_config, asyncio.get_running_loop())
        except KafkaException as err:
            raise BrokerError(f"cannot configure Kafka at {self._servers}: {_reason(err)}") from err
        try:
            failure = await deliveries.start()
        except BaseException:
            await deliveries.stop()
            raise
        if failure is not None:
            await deliveries.stop()
            raise BrokerError(
                f"cannot connect to Kafka at {self._servers}: {failure}; {UNREACHABLE_HINT}"
            )
        admin_config: dict[str, Any] = {**self._config, "error_cb": _log_client_error}
        try:
            self._admin = AdminClient(admin_config)
        except KafkaException as err:
            await deliveries.stop()
            raise BrokerError(f"cannot configure Kafka at {self._servers}: {_reason(err)}") from err
        self._deliveries = deliveries
        log.info("connected to Kafka at %s", self._servers)

    async def stop(self) -> None:
        for client in list(self._clients):
            await client.stop()
        deliveries, self._deliveries = self._deliveries, None
        self._admin = None
        self._partitions.clear()
        if deliveries is not None:
            await deliveries.stop()

    def _running_admin(self) -> AdminClient:
        if self._admin is None:
            raise BrokerError("the Kafka transport is not started")
        return self._admin

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
        deliveries = self._deliveries
        if deliveries is None:
            raise BrokerError("the Kafka transport is not started")
        known = self._partitions.get(topic)
        if known is None or (partition is not None and not 0 <= partition < known):
            await self._check_destination(topic, partition)
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        on_delivery = functools.partial(deliveries.delivered, acknowledged, topic, size)
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            try:
                deliveries.producer.produce(
                    topic,
                    value,
                    key,
                    partition=-1 if partition is None else partition,
                    on_delivery=on_delivery,
                    headers=list(headers) if headers else None,
                )
                return acknowledged
            except BufferError:  # librdkafka's queue is full: wait for acknowledgements
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"no room to queue a record for {topic!r} within {REQUEST_TIMEOUT} s"
                    ) from None
                await asyncio.sleep(0.001)
            except KafkaException as err:
                raise PublishError(_publish_failure(_kafka_error(err), topic, size)) from err

    async def _check_destination(self, topic: str, partition: int | None) -> None:
        """Fail fast, without auto-creating it, when the topic or partition does not exist."""
        try:
            found = await self._require_topics([topic])
        except BrokerError as err:
            raise PublishError(f"cannot publish to {topic!r}: {err}") from err
        if partition is not None and not 0 <= partition < len(found[topic]):
            raise PublishError(f"topic {topic!r} has no partition {partition}")

    # -- topics ----------------------------------------------------------------------

    async def ensure_topics(self, topics: Sequence[TopicSpec]) -> None:
        if not topics:
            return
        existing = await self._metadata([spec.name for spec in topics])
        missing = [spec for spec in topics if spec.name not in existing]
        if missing:
            await self._create_topics(missing)
            await self._wait_for_leaders([spec.name for spec in missing])

    async def _create_topics(self, specs: Sequence[TopicSpec]) -> None:
        new = [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                config=dict(spec.config or {}),
            )
            for spec in specs
        ]
        futures = self._running_admin().create_topics(
            new, request_timeout=REQUEST_TIMEOUT, operation_timeout=REQUEST_TIMEOUT
        )
        results = await self._admin_results(futures)
        created = []
        for name, result in results.items():
            if isinstance(result, BaseException):
                error = _kafka_error(result)
                # Another process may have created it since we looked: that is success too.
                if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise BrokerError(f"cannot create topic {name!r}: {_reason(result)}") from result
            created.append(name)
        log_created(log, created, [spec.name for spec in specs])

    async def _wait_for_leaders(self, names: Sequence[str]) -> None:
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT
        while True:
            found = await self._metadata(names)
            waiting = [
                name for name in names if name not in found or any(lead < 0 for lead in found[name])
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

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicInfo]:
        descriptions = await self._descriptions(names)
        return {
            name: TopicInfo(
                name,
                len(description.partitions),
                max((len(p.replicas) for p in description.partitions), default=0),
            )
            for name, description in descriptions.items()
        }

    async def topic_names(self) -> set[str]:
        admin = self._running_admin()
        try:
            # list_topics blocks on librdkafka's answer: off the event loop.
            metadata = await asyncio.to_thread(admin.list_topics, timeout=REQUEST_TIMEOUT)
        except KafkaException as err:
            raise BrokerError(f"no metadata from Kafka at {self._servers}: {_reason(err)}") from err
        return {name for name, topic in metadata.topics.items() if topic.error is None}

    async def _require_topics(self, topics: Iterable[str]) -> dict[str, list[int]]:
        """The partitions' leaders of each of ``topics``; BrokerError if one does not exist.

        A topic just created may be unknown to the broker asked for a moment (its metadata
        has not reached every broker yet): ask again for up to UNKNOWN_TOPIC_WAIT.
        """
        return await require_topics(self._metadata, topics, UNKNOWN_TOPIC_WAIT)

    async def _metadata(self, names: Sequence[str]) -> dict[str, list[int]]:
        """The leader's id (-1 for none) of each partition of those topics that exist."""
        descriptions = await self._descriptions(names)
        return {
            name: [p.leader.id if p.leader is not None else -1 for p in description.partitions]
            for name, description in descriptions.items()
        }

    async def _descriptions(self, names: Sequence[str]) -> dict[str, Any]:
        """librdkafka's descriptions of those of ``names`` that exist (a metadata request
        that never creates a topic)."""
        if not names:
            return {}
        futures = self._running_admin().describe_topics(
            TopicCollection(list(dict.fromkeys(names))), request_timeout=REQUEST_TIMEOUT
        )
        results = await self._admin_results(futures)
        found: dict[str, Any] = {}
        for name, result in results.items():
            if not isinstance(result, BaseException):
                found[name] = result
                self._partitions[name] = len(result.partitions)
                continue
            error = _kafka_error(result)
            code = error.code() if error is not None else None
            if code in _UNKNOWN_TOPIC:
                self._partitions.pop(name, None)
            elif code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise BrokerError(f"not authorised to use topic {name!r}") from result
            else:
                raise BrokerError(
                    f"no metadata from Kafka at {self._servers}: {_reason(result)}"
                ) from result
        return found

    async def _admin_results(
        self, futures: Mapping[T, concurrent.futures.Future[Any]]
    ) -> dict[T, Any]:
        """Each admin future's result, or the exception it failed with; BrokerError if the
        broker does not answer in time."""
        keys = list(futures)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT + 1):
                results = await asyncio.gather(
                    *(asyncio.wrap_future(futures[k]) for k in keys), return_exceptions=True
                )
        except TimeoutError as err:
            raise BrokerError(f"no answer from Kafka at {self._servers} in time") from err
        finally:
            if self._admin is not None:
                self._admin.poll(0)  # hands librdkafka's log lines to logging
        return dict(zip(keys, results, strict=True))

    async def _end_offsets(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, int]:
        latest: Any = _OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {KafkaTopicPartition(t, p): latest for t, p in partitions}
        futures = self._running_admin().list_offsets(request, request_timeout=REQUEST_TIMEOUT)
        results = await self._admin_results(futures)
        ends: dict[TopicPartition, int] = {}
        for tp, result in results.items():
            if isinstance(result, BaseException):
                raise BrokerError(f"no end offset of {tp.topic}[{tp.partition}]: {_reason(result)}")
            ends[(tp.topic, tp.partition)] = int(result.offset)
        return ends

    # -- consumers -------------------------------------------------------------------

    def group_consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> GroupConsumer:
        return ConfluentGroupConsumer(self, topics, group, on_assigned, on_revoked)

    def partition_reader(
        self, topic: str, partition: int, *, from_beginning: bool = False
    ) -> PartitionReader:
        return ConfluentPartitionReader(self, topic, partition, from_beginning)

    def share_consumer(
        self, topics: Sequence[str], group: str, *, max_records: int = 500
    ) -> ShareConsumer:
        # Imported here: that module builds on this one's connection settings and helpers.
        from kourier.transports.confluent_share import ConfluentShareConsumer

        return ConfluentShareConsumer(self, topics, group, max_records)

    def _consumer_config(self, group: str) -> dict[str, Any]:
        return {
            **self._config,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_uncommitted",  # as aiokafka, and no transactions here
            "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
            "max.partition.fetch.bytes": self._max_request_size,
            "queued.max.messages.kbytes": max(1, PREFETCH_BYTES // 1024),
        }

    # -- health ----------------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        admin = self._admin
        if admin is None:
            return False
        try:
            # DescribeCluster: one round trip to any broker, whatever the number of topics.
            answer = admin.describe_cluster(request_timeout=max(timeout, 0.001))
            async with asyncio.timeout(timeout):
                await asyncio.wrap_future(answer)
        except Exception:
            return False
        finally:
            admin.poll(0)
        return True


def _log_client_error(error: KafkaError) -> None:
    # librdkafka also logs these itself (through librdkafka_log), with more context.
    log.debug("librdkafka: %s", error)


class _DeliveryThread:
    """Owns the producer's poll: delivery callbacks run in this thread, and each poll's
    acknowledgements reach the event loop in one ``call_soon_threadsafe``.

    ``produce`` itself is called from the loop (librdkafka's producer takes calls from
    any thread). Measured against driving ``poll(0)`` from the loop (publish to
    acknowledgement, one at a time, median of 5 x 3,000): this thread 0.18 ms p50 / 1.2 ms
    p99; ``poll(0)`` after each loop turn while a record is unacknowledged 0.15 / 4.2 ms
    and 1.3x the CPU (a service always has one: a core spinning); every 1 ms 1.2 / 4.0 ms.
    """

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.producer = Producer({**config, "error_cb": self._error})
        self._loop = loop
        self._settled: list[tuple[asyncio.Future[None], str, int, KafkaError | None]] = []
        self._stopping = threading.Event()
        self._connect_errors: list[str] = []
        self._connect_failed = False
        self._connecting = True
        self._connected: asyncio.Future[str | None] = loop.create_future()
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name="kourier-producer", daemon=True)

    async def start(self) -> str | None:
        """Start polling; None once a broker has answered, else why none can."""
        self._thread.start()
        return await asyncio.shield(self._connected)

    async def stop(self) -> None:
        """Give queued records their time to be acknowledged, fail the rest, end the thread."""
        self._stopping.set()
        await _end_thread(self._thread, self._stopped)

    def delivered(
        self,
        acknowledged: asyncio.Future[None],
        topic: str,
        size: int,
        error: KafkaError | None,
        _: Message,
    ) -> None:
        """The delivery callback of one record (in this thread, inside ``poll``)."""
        self._settled.append((acknowledged, topic, size, error))

    def _run(self) -> None:
        producer = self.producer
        try:
            failure = self._connect(producer)
            self._connecting = False
            self._call(_resolve_future, self._connected, failure)
            while not self._stopping.is_set():
                producer.poll(POLL_SLICE)
                self._hand_over()
            producer.flush(REQUEST_TIMEOUT)
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.poll(0)
            self._hand_over()
        except Exception as err:
            log.exception("the Kafka producer's thread failed")
            self._call(_resolve_future, self._connected, f"the producer failed: {_reason(err)}")
        finally:
            # The last reference goes here, so librdkafka's handle is destroyed in this
            # thread rather than on the event loop.
            del self.producer, producer
            self._call(_resolve_future, self._stopped, None)

    def _connect(self, producer: Producer) -> str | None:
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while not self._stopping.is_set() and time.monotonic() < deadline:
            producer.poll(0)  # runs the error callback
            if self._connect_failed:
                break
            # The cluster id comes with the first metadata answer: a broker has answered
            # (and, with SASL, accepted the credentials).
            with contextlib.suppress(KafkaException):  # not yet
                producer.cluster_id(timeout=0.1)
                return None
        if self._connect_errors:
            return "; ".join(dict.fromkeys(self._connect_errors))
        if self._connect_failed:
            # librdkafka tells a connection the broker closed only in a log line, which
            # log.connection.close=false (no noise from idle connections) silences.
            return (
                "every broker closed the connection before answering "
                "(does security_protocol match the broker's listener?)"
            )
        return "no answer in time"

    def _error(self, error: KafkaError) -> None:
        """librdkafka's error callback (in this thread, inside ``poll``)."""
        if self._connecting:
            if error.code() != KafkaError._ALL_BROKERS_DOWN:  # the others say why
                self._connect_errors.append(error.str())
            if error.code() in _CONNECT_FAILURES or error.fatal():
                self._connect_failed = True
        _log_client_error(error)

    def _hand_over(self) -> None:
        if self._settled:
            settled, self._settled = self._settled, []
            self._call(_settle, settled)

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)


async def _end_thread(thread: threading.Thread, stopped: asyncio.Future[None]) -> None:
    """Wait, bounded, for a thread told to stop; it resolves ``stopped`` as it ends."""
    if thread.ident is None:  # never started
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REQUEST_TIMEOUT + 5):
            await asyncio.shield(stopped)
    thread.join(timeout=1.0)  # it has only to return now
    if thread.is_alive():
        log.warning("thread %s did not stop within %s s", thread.name, REQUEST_TIMEOUT + 5)


def _settle(settled: list[tuple[asyncio.Future[None], str, int, KafkaError | None]]) -> None:
    for acknowledged, topic, size, error in settled:
        if acknowledged.done():  # the caller stopped waiting
            continue
        if error is None:
            acknowledged.set_result(None)
        else:
            failure = PublishError(_publish_failure(error, topic, size))
            failure.__cause__ = KafkaException(error)
            acknowledged.set_exception(failure)


# -- consumers -----------------------------------------------------------------------------


class _RecordBuffer:
    """Records a consumer thread has fetched and ``fetch`` has not returned yet.

    Lives on the event loop; the thread only reads ``ready_bytes``, ``held_bytes`` and
    ``paused`` (a frozenset, replaced on each change, so a read is one reference). Records
    of a paused partition are held here until it is resumed (``held_bytes``); those of the
    others are ready (``ready_bytes``).
    """

    def __init__(self) -> None:
        self._records: dict[TopicPartition, collections.deque[Record]] = {}
        self.paused: frozenset[TopicPartition] = frozenset()
        self.ready_bytes = 0
        self.held_bytes = 0
        self.changed = asyncio.Event()

    def add(self, records: Iterable[Record]) -> None:
        ready = False
        for record in records:
            tp = (record.topic, record.partition)
            self._records.setdefault(tp, collections.deque()).append(record)
            if tp in self.paused:
                self.held_bytes += _size(record)
            else:
                self.ready_bytes += _size(record)
                ready = True
        # Woken by records, not by bytes: a request without key or body (a GET) is a
        # record all the same, and a fetch that waited on the bytes slept its timeout.
        if ready:
            self.changed.set()

    def take(self, limit: int) -> list[Record]:
        taken: list[Record] = []
        for tp in [tp for tp in self._records if tp not in self.paused]:
            records = self._records[tp]
            while records and len(taken) < limit:
                record = records.popleft()
                self.ready_bytes -= _size(record)
                taken.append(record)
            if not records:
                del self._records[tp]  # a partition with new records queues up at the back
            if len(taken) >= limit:
                break
        return taken

    def held(self, tp: TopicPartition) -> int:
        return len(self._records.get(tp, ()))

    def drop(self, partitions: Collection[TopicPartition]) -> None:
        for tp in partitions:
            size = sum(_size(r) for r in self._records.pop(tp, ()))
            if tp in self.paused:
                self.held_bytes -= size
            else:
                self.ready_bytes -= size
        self.paused -= set(partitions)

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        for tp in set(partitions) - self.paused:
            size = sum(_size(r) for r in self._records.get(tp, ()))
            self.ready_bytes -= size
            self.held_bytes += size
        self.paused |= set(partitions)

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        for tp in set(partitions) & self.paused:
            size = sum(_size(r) for r in self._records.get(tp, ()))
            self.held_bytes -= size
            self.ready_bytes += size
            if tp in self._records:
                self.changed.set()
        self.paused -= set(partitions)

    def clear(self) -> None:
        self._records.clear()
        self.paused = frozenset()
        self.ready_bytes = self.held_bytes = 0
        self.changed.set()  # a fetch waiting for records looks again, and finds it stopped


Command = Callable[[Consumer], None]


class _ConsumerThread:
    """Owns one librdkafka consumer: polls it, and runs every other call on it.

    confluent-kafka lets one thread at a time into a ``Consumer``, so the event loop never
    calls it: it queues commands (``call``, ``post``), which run between two polls of at
    most ``POLL_SLICE``, and while a rebalance callback waits for the loop. Fetched records
    go to ``deliver`` on the loop; errors of the consumer go to ``fail``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
        name: str,
        buffer: _RecordBuffer,
        deliver: Callable[[list[Record]], None],
        fail: Callable[[BrokerError], None],
        *,
        on_commit: Callable[[KafkaError | None, list[KafkaTopicPartition]], None] | None = None,
    ) -> None:
        extra: dict[str, Any] = {"error_cb": self._error}
        if on_commit is not None:
            extra["on_commit"] = on_commit
        self.consumer = Consumer({**config, **extra})
        self._loop = loop
        self._buffer = buffer
        self._deliver = deliver
        self._fail = fail
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._closing = False
        #: Why the thread ended on its own (an error in it), or None: a consumer whose
        #: thread died can never fetch again, and ``fetch`` says so (``dead``).
        self.died: str | None = None
        self.waiting_for_room = False
        self._revocations = 0
        self._revoked: set[TopicPartition] = set()
        #: Partitions paused in librdkafka, not only on the loop (see PAUSE_AFTER_BYTES).
        self._paused_here: set[TopicPartition] = set()
        self._stopped: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Close the consumer (leaving its group) and end the thread."""
        self._closing = True
        self._commands.put(None)
        await _end_thread(self._thread, self._stopped)

    def call(self, function: Callable[[Consumer], T]) -> asyncio.Future[T]:
        """Run ``function(consumer)`` in this thread; the future resolves on the loop."""
        done: asyncio.Future[T] = self._loop.create_future()

        def command(consumer: Consumer) -> None:
            try:
                result = function(consumer)
            except Exception as err:
                self._call(_fail_future, done, err)
            else:
                self._call(_resolve_future, done, result)

        self._commands.put(command)
        return done

    def post(self, command: Command) -> None:
        """Run ``command(consumer)`` in this thread, without waiting for it."""
        self._commands.put(command)

    def wake(self) -> None:
        self._commands.put(None)

    # -- in the thread ---------------------------------------------------------------

    def _run(self) -> None:
        consumer = self.consumer
        try:
            while not self._closing:
                self._run_commands(consumer, wait=0.0)
                if self._buffer.ready_bytes >= PREFETCH_BYTES:
                    self.waiting_for_room = True  # fetch wakes us when it has taken some
                    self._run_commands(consumer, wait=POLL_SLICE)
                    continue
                self.waiting_for_room = False
                self._follow_pauses(consumer)
                self._poll(consumer)
        except Exception as err:
            log.exception("a Kafka consumer thread failed")
            self.died = _reason(err)
            self._call(self._fail, BrokerError(f"the consumer failed: {_reason(err)}"))
        finally:
            self._closing = True
            try:
                consumer.close()  # leaves the group; runs the revoke callback, which skips ours
            except Exception as err:
                log.warning("closing a Kafka consumer failed: %s", _reason(err))
            self._run_commands(consumer, wait=0.0)  # each fails: the consumer is closed
            del self.consumer, consumer  # destroyed in this thread, not on the loop
            self._call(_resolve_future, self._stopped, None)

    def _poll(self, consumer: Consumer) -> None:
        first = consumer.poll(POLL_SLICE)
        if first is None:
            return
        # consume(n, timeout) would wait for n records: poll waits for the first, consume
        # takes what is already there.
        self._revoked = set()
        revocations = self._revocations
        messages = [first, *consumer.consume(CONSUME_BATCH - 1, 0)]
        if self._revocations != revocations and _tp(first) in self._revoked:
            # A rebalance ran inside consume(): librdkafka dropped the records it had
            # gathered of revoked partitions, but ``first`` was out before it.
            messages = messages[1:]
        # Converted on the loop: this thread holds the GIL as briefly as it can, since the
        # loop waits for it at each of its own system calls.
        self._call(self._arrived, messages)

    def _arrived(self, messages: list[Message]) -> None:
        """Records (and errors) from the consumer, on the loop."""
        records: list[Record] = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(_record(message))
            elif error.code() != KafkaError._PARTITION_EOF:
                self._fail(BrokerError(f"fetch failed: {error.str()}"))
        if records:
            self._deliver(records)

    def _follow_pauses(self, consumer: Consumer) -> None:
        """Pause in librdkafka what the loop paused once its held records pile up; resume
        there what the loop resumed."""
        wanted = self._buffer.paused
        resume = self._paused_here - wanted
        if resume:
            self._paused_here -= resume
            with contextlib.suppress(KafkaException):  # no longer assigned
                consumer.resume([KafkaTopicPartition(t, p) for t, p in resume])
        if self._buffer.held_bytes >= PAUSE_AFTER_BYTES:
            pause = wanted - self._paused_here
            if pause:
                self._paused_here |= pause
                with contextlib.suppress(KafkaException):
                    consumer.pause([KafkaTopicPartition(t, p) for t, p in pause])

    def forget_pauses(self, partitions: set[TopicPartition]) -> None:
        """A rebalance forgets pauses (called by the assign callback, after resuming)."""
        self._paused_here -= partitions

    def _run_commands(self, consumer: Consumer, wait: float) -> None:
        """Run the queued commands; with ``wait``, wait that long for the first."""
        while True:
            try:
                command = self._commands.get(timeout=wait) if wait else self._commands.get_nowait()
            except queue.Empty:
                return
            wait = 0.0
            if command is not None:
                try:
                    command(consumer)
                except Exception as err:  # a posted command has nobody to tell
                    log.warning("a Kafka consumer command failed: %s", _reason(err))

    def check_alive(self) -> None:
        """Raise if the thread died: not a ``BrokerError`` (retrying cannot help), so the
        reader's task ends and the failure shows (probes, ``kourier run``'s exit)."""
        if self.died is not None:
            raise KourierError(f"the Kafka consumer thread died: {self.died}")

    def run_on_loop(self, callback: Coroutine[Any, Any, None], timeout: float) -> None:
        """Run a rebalance callback on the loop and wait for it, serving commands meanwhile.

        Called inside ``poll``: librdkafka goes on with the rebalance when this returns.
        """
        try:
            done = asyncio.run_coroutine_threadsafe(callback, self._loop)
        except RuntimeError:  # the loop is closed
            callback.close()
            return
        done.add_done_callback(lambda _: self._commands.put(None))
        deadline = time.monotonic() + timeout
        while not done.done():
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("a rebalance callback did not finish within %.0f s", timeout)
                done.cancel()
                return
            self._run_commands(self.consumer, wait=left)

    @property
    def closing(self) -> bool:
        return self._closing

    def note_revoked(self, partitions: set[TopicPartition]) -> None:
        """Called by a revoke callback, so that ``_poll`` drops what it holds of them."""
        self._revocations += 1
        self._revoked |= partitions

    def _error(self, error: KafkaError) -> None:
        """librdkafka's error callback (in this thread, inside ``poll``)."""
        if error.fatal() or error.code() in _CONNECT_FAILURES - {KafkaError._ALL_BROKERS_DOWN}:
            self._call(self._fail, BrokerError(f"the consumer failed: {error.str()}"))
        _log_client_error(error)

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback, *args)


def _resolve_future(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class ConfluentGroupConsumer(GroupConsumer):
    """One member of a consumer group (classic protocol, eager rebalances), manual commits.

    The classic protocol was measured against KIP-848's (``group.protocol=consumer``) on
    librdkafka 2.16 and Kafka 4.1: a second member's join settled in 1.0 s against 5.1 s
    (the broker's 5 s heartbeat), though only the moved partitions paused under KIP-848.
    """

    def __init__(
        self,
        transport: ConfluentTransport,
        topics: Sequence[str],
        group: str,
        on_assigned: RebalanceCallback | None,
        on_revoked: RebalanceCallback | None,
    ) -> None:
        self._transport = transport
        self.topics = tuple(topics)
        self.group = group
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._thread: _ConsumerThread | None = None
        self._buffer = _RecordBuffer()
        self._assigned: set[TopicPartition] = set()
        self._joined: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._revoking = False
        self._commit_lock = asyncio.Lock()
        #: Futures of the asynchronous commits in flight, in the order librdkafka answers.
        self._commits: collections.deque[asyncio.Future[list[KafkaTopicPartition]]]
        self._commits = collections.deque()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is not None:
            return
        await self._transport._require_topics(self.topics)
        rebalance_timeout = self._transport.settings.drain_timeout + REBALANCE_MARGIN
        config = {
            **self._transport._consumer_config(self.group),
            "group.protocol": "classic",
            "partition.assignment.strategy": "roundrobin",  # aiokafka's: mixed groups agree
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            # librdkafka sends this as the rebalance timeout too.
            "max.poll.interval.ms": int(max(60.0, rebalance_timeout) * 1000),
        }
        loop = asyncio.get_running_loop()
        self._buffer = _RecordBuffer()
        self._failure = None
        self._joined = loop.create_future()
        thread = _ConsumerThread(
            config,
            loop,
            f"kourier-group-{self.group}",
            self._buffer,
            self._receive,
            self._fail,
            on_commit=self._committed,
        )
        thread.consumer.subscribe(
            list(self.topics),
            on_assign=functools.partial(self._assign, thread, rebalance_timeout),
            on_revoke=functools.partial(self._revoke, thread, rebalance_timeout),
        )
        self._thread = thread
        thread.start()
        try:
            async with asyncio.timeout(rebalance_timeout + REQUEST_TIMEOUT):
                await asyncio.shield(self._joined)
        except (BrokerError, TimeoutError) as err:
            await self.stop()
            raise BrokerError(
                f"cannot join group {self.group!r} on {', '.join(self.topics)}: {_reason(err)}"
            ) from err
        except BaseException:
            await self.stop()
            raise
        self._transport._clients.add(self)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._transport._clients.discard(self)
        if self._joined is not None and not self._joined.done():
            self._joined.cancel()
        self._assigned = set()
        self._buffer.clear()  # a fetch waiting for records ends now
        if thread is not None:
            await thread.stop()
        for pending in self._commits:
            _fail_future(pending, BrokerError("consumer is not started"))
        self._commits.clear()

    def _running(self) -> _ConsumerThread:
        if self._thread is None:
            raise BrokerError("consumer is not started")
        return self._thread

    # -- records ---------------------------------------------------------------------

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        self._running().check_alive()
        self._raise_failure()
        buffer = self._buffer
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            records = buffer.take(max_records)
            thread = self._thread
            if records:
                if thread is not None and thread.waiting_for_room:
                    thread.wake()
                return records
            if thread is None:
                return []  # stopped while waiting
            self._raise_failure()
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            buffer.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await buffer.changed.wait()

    def _receive(self, records: list[Record]) -> None:
        if self._thread is not None:
            # Defence in depth: the thread already drops records of revoked partitions.
            self._buffer.add(r for r in records if (r.topic, r.partition) in self._assigned)

    def _fail(self, error: BrokerError) -> None:
        if self._joined is not None and not self._joined.done():
            self._joined.set_exception(error)
        elif self._failure is None:
            self._failure = error
        self._buffer.changed.set()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    # -- rebalancing (librdkafka calls these in the consumer thread, inside poll) -------

    def _assign(
        self, thread: _ConsumerThread, timeout: float, consumer: Consumer, partitions: list[Any]
    ) -> None:
        consumer.assign(partitions)  # before on_assigned, so that it may pause them
        if partitions:
            # librdkafka keeps a partition's pause across rebalances; the contract (and
            # Kafka's other clients) forget it.
            consumer.resume(partitions)
            thread.forget_pauses({_tp(p) for p in partitions})
        if thread.closing:
            return
        thread.run_on_loop(self._assigned_now({_tp(p) for p in partitions}), timeout)

    def _revoke(
        self, thread: _ConsumerThread, timeout: float, consumer: Consumer, partitions: list[Any]
    ) -> None:
        tps = {_tp(p) for p in partitions}
        thread.note_revoked(tps)
        if not thread.closing:  # else stop has dealt with them
            thread.run_on_loop(self._revoked_now(tps), timeout)
        consumer.unassign()

    async def _assigned_now(self, partitions: set[TopicPartition]) -> None:
        self._assigned |= partitions
        try:
            # Called with an empty set too, as Kafka's own clients do: a member left
            # without partitions has still joined.
            if self._on_assigned is not None:
                await self._on_assigned(set(partitions))
        except Exception as err:
            self._callback_failed(self._on_assigned, partitions, err)
        finally:
            if self._joined is not None and not self._joined.done():
                self._joined.set_result(None)

    async def _revoked_now(self, partitions: set[TopicPartition]) -> None:
        # Fetched but not returned: the next owner reads them from the committed offset.
        self._buffer.drop(partitions)
        self._revoking = True
        try:
            if self._on_revoked is not None and partitions:
                await self._on_revoked(set(partitions))
        except Exception as err:
            self._callback_failed(self._on_revoked, partitions, err)
        finally:
            self._revoking = False
            self._assigned -= partitions

    def _callback_failed(
        self, callback: object, partitions: set[TopicPartition], err: Exception
    ) -> None:
        log.error("%s failed for %s", getattr(callback, "__qualname__", callback), partitions)
        if self._failure is None:
            self._failure = err

    # -- offsets ---------------------------------------------------------------------

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        thread = self._running()
        where = ", ".join(f"{t}[{p}]" for t, p in sorted(offsets))
        if not offsets.keys() <= self._assigned:
            raise BrokerError(
                f"commit failed for {where}: not all of them are assigned to this member"
            )
        request = [KafkaTopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if self._revoking:
                # The thread waits in the rebalance callback and serves commands, but
                # cannot poll for an asynchronous commit's answer: commit synchronously.
                answered = thread.call(
                    lambda consumer: consumer.commit(offsets=request, asynchronous=False)
                )
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    result = await answered
            else:
                # One commit in flight: Kafka 4's coordinator answers each after a few ms,
                # and commits sent without waiting pile up behind each other.
                async with self._commit_lock:
                    result = await self._commit_async(thread, request)
        except (KafkaException, TimeoutError) as err:
            error = _kafka_error(err)
            if error is not None and error.code() in _REBALANCED:
                reason = "the group has rebalanced; another member may own them now"
            else:
                reason = _reason(err)
            raise BrokerError(f"commit failed for {where}: {reason}") from err
        failed = [tp for tp in result if tp.error is not None]
        if failed:
            raise BrokerError(f"commit failed for {where}: {failed[0].error}")

    async def _commit_async(
        self, thread: _ConsumerThread, request: list[KafkaTopicPartition]
    ) -> list[KafkaTopicPartition]:
        answered: asyncio.Future[list[KafkaTopicPartition]]
        answered = asyncio.get_running_loop().create_future()

        def send(consumer: Consumer) -> None:
            try:
                consumer.commit(offsets=request, asynchronous=True)
            except Exception as err:
                thread._call(_fail_future, answered, err)
            else:
                self._commits.append(answered)  # only this thread appends

        thread.post(send)
        # Not shielded: a commit nobody waits for any more is cancelled, and its answer
        # (still taken off the queue in order) is dropped.
        async with asyncio.timeout(REQUEST_TIMEOUT):
            return await answered

    def _committed(self, error: KafkaError | None, partitions: list[KafkaTopicPartition]) -> None:
        """librdkafka's commit callback (in the consumer thread, inside poll): the
        answers come in the order the commits were sent."""
        if not self._commits or self._thread is None:
            return
        answered = self._commits.popleft()
        if error is not None:
            self._thread._call(_fail_future, answered, KafkaException(error))
        else:
            self._thread._call(_resolve_future, answered, partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned) if self._thread is not None else set()

    async def lag(self) -> dict[TopicPartition, int]:
        thread = self._running()
        assigned = sorted(self._assigned)
        if not assigned:
            return {}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT + 1):
                positions = await thread.call(functools.partial(_positions, assigned))
            ends = await self._transport._end_offsets(assigned)
        except (KafkaException, TimeoutError, BrokerError) as err:
            raise BrokerError(
                f"cannot read the lag of group {self.group!r}: {_reason(err)}"
            ) from err
        # librdkafka's position counts records this side holds; fetch has not returned them.
        return {
            tp: max(0, ends[tp] - positions[tp] + self._buffer.held(tp))
            for tp in assigned
            if tp in ends and tp in positions
        }

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        # Held back here at once; paused in librdkafka only if records pile up.
        self._buffer.pause(set(partitions) & self.assignment())

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self._buffer.resume(set(partitions) & self.assignment())


def _positions(
    partitions: Sequence[TopicPartition], consumer: Consumer
) -> dict[TopicPartition, int]:
    """The next offset to fetch of each partition (in the consumer thread)."""
    request = [KafkaTopicPartition(t, p) for t, p in partitions]
    positions = {_tp(tp): tp.offset for tp in consumer.position(request)}
    unknown = [KafkaTopicPartition(t, p) for (t, p), o in positions.items() if o < 0]
    if unknown:  # nothing fetched yet: the committed offset, else the first (earliest)
        for tp in consumer.committed(unknown, timeout=REQUEST_TIMEOUT):
            offset = tp.offset
            if offset < 0:
                offset, _ = consumer.get_watermark_offsets(tp, timeout=REQUEST_TIMEOUT)
            positions[_tp(tp)] = offset
    return positions


def _end_offset(consumer: Consumer, partition: KafkaTopicPartition) -> int:
    """The partition's end offset, asked of its leader (in the consumer thread)."""
    return _watermarks(consumer, partition)[1]


def _watermarks(consumer: Consumer, partition: KafkaTopicPartition) -> tuple[int, int]:
    """The partition's first and end offsets, asked of its leader (in the consumer thread).

    Retries what a new topic answers until its leader is known everywhere (not leader,
    leader not available), within REQUEST_TIMEOUT.
    """
    deadline = time.monotonic() + REQUEST_TIMEOUT
    while True:
        try:
            first, end = consumer.get_watermark_offsets(
                partition, timeout=max(0.1, deadline - time.monotonic())
            )
            return first, end
        except KafkaException as err:
            error = _kafka_error(err)
            retriable = error is not None and (error.retriable() or error.code() in _NO_LEADER)
            if not retriable or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class ConfluentPartitionReader(PartitionReader):
    """Reads one partition without a group, from where its end was at ``start``."""

    def __init__(
        self, transport: ConfluentTransport, topic: str, partition: int, from_beginning: bool
    ) -> None:
        self._transport = transport
        self.tp = (topic, partition)
        self.from_beginning = from_beginning
        self._thread: _ConsumerThread | None = None
        self._buffer = _RecordBuffer()
        self._failure: BrokerError | None = None

    async def start(self) -> None:
        if self._thread is not None:
            return
        topic, partition = self.tp
        found = await self._transport._require_topics([topic])
        if not 0 <= partition < len(found[topic]):
            raise BrokerError(f"no partition {partition} in topic {topic!r}")
        # librdkafka wants a group id, but a reader only assigns: it never joins or commits.
        config = self._transport._consumer_config(f"{self._transport.settings.client_id}.reader")
        self._buffer = _RecordBuffer()
        thread = _ConsumerThread(
            config,
            asyncio.get_running_loop(),
            f"kourier-reader-{topic}[{partition}]",
            self._buffer,
            self._buffer.add,
            self._fail,
        )
        thread.start()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT + 1):
                await thread.call(self._assign_at_start)
        except (KafkaException, TimeoutError) as err:
            await thread.stop()
            raise BrokerError(f"cannot read {topic}[{partition}]: {_reason(err)}") from err
        except BaseException:
            await thread.stop()
            raise
        self._thread = thread
        self._transport._clients.add(self)

    def _assign_at_start(self, consumer: Consumer) -> None:
        topic, partition = self.tp
        # Explicit offsets, never OFFSET_BEGINNING or OFFSET_END: librdkafka resolves
        # those at the first fetch, OFFSET_END would skip a record published between
        # start and then, and OFFSET_BEGINNING held the first fetch about 500 ms (a
        # caller's first registry lookup waited for it). Should retention move the start
        # past ``first`` meanwhile, auto.offset.reset (earliest) takes the new start.
        first, end = _watermarks(consumer, KafkaTopicPartition(topic, partition))
        offset = first if self.from_beginning else end
        consumer.assign([KafkaTopicPartition(topic, partition, offset)])

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._transport._clients.discard(self)
        self._buffer.clear()
        if thread is not None:
            await thread.stop()

    def _fail(self, error: BrokerError) -> None:
        self._failure = error
        self._buffer.changed.set()

    async def end_offset(self) -> int:
        thread = self._thread
        if thread is None:
            raise BrokerError("reader is not started")
        topic, partition = self.tp
        where = KafkaTopicPartition(topic, partition)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT + 1):
                return int(await thread.call(lambda consumer: _end_offset(consumer, where)))
        except (KafkaException, TimeoutError) as err:
            raise BrokerError(f"no end offset of {topic}[{partition}]: {_reason(err)}") from err

    async def fetch(self, timeout: float) -> list[Record]:
        if self._thread is None:
            raise BrokerError("reader is not started")
        self._thread.check_alive()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            records = self._buffer.take(CONSUME_BATCH * 10)
            thread = self._thread
            if records:
                if thread is not None and thread.waiting_for_room:
                    thread.wake()
                return records
            if thread is None:
                return []
            failure, self._failure = self._failure, None
            if failure is not None:
                topic, partition = self.tp
                raise BrokerError(f"fetch from {topic}[{partition}] failed: {failure}")
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._buffer.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._buffer.changed.wait()


# -- conversions -----------------------------------------------------------------------


def _tp(partition: KafkaTopicPartition | Message) -> TopicPartition:
    if isinstance(partition, Message):
        return (partition.topic() or "", partition.partition() or 0)
    return (partition.topic, partition.partition)


def _record(message: Message) -> Record:
    try:
        headers = _headers(message)
        undecodable = None
    except Exception as err:
        # confluent-kafka decodes header names as UTF-8, and one that is not breaks the
        # whole list (see ``_headers``): the headers are out of reach, key and value not.
        headers = ()
        undecodable = f"confluent-kafka cannot read its headers ({type(err).__name__}: {err})"
    return Record(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=message.key(),
        value=message.value(),
        headers=headers,
        timestamp_ms=message.timestamp()[1],
        undecodable=undecodable,
    )


#: ``message.headers()`` through a C-level call: see ``_headers``.
_READ_HEADERS = operator.methodcaller("headers")


def _headers(message: Message) -> tuple[tuple[str, bytes], ...]:
    """A message's headers, read once and never unchecked.

    For a name that is not UTF-8, confluent-kafka's ``headers()`` returns a list
    holding a NULL where the name was, with the ``UnicodeDecodeError`` left set, and
    caches that list for later calls. A call checked by CPython turns that into a
    ``SystemError``; but Python 3.11+ specialises a call site of a C method after a few
    calls, and the specialised call does not check: the list came back, and touching
    the NULL crashed the process (the fuzz test's long run found it). Calling through
    ``operator.methodcaller`` always goes through CPython's checked call path.
    """
    raw = _READ_HEADERS(message) or ()
    if isinstance(raw, dict):
        raw = list(raw.items())
    headers = tuple(
        (name, value.encode() if isinstance(value, str) else value or b"") for name, value in raw
    )
    if not all(isinstance(name, str) for name, _ in headers):
        raise ValueError("a header name is not text")
    return headers


def _size(record: Record) -> int:
    """What a record holds in memory, near enough for the prefetch bounds: its bytes and
    a fixed share for the object, so a flood of empty records is bounded too."""
    headers = sum(len(name) + len(value) for name, value in record.headers)
    return len(record.value or b"") + len(record.key or b"") + headers + BUFFERED_RECORD_BYTES


def _kafka_error(err: BaseException) -> KafkaError | None:
    if isinstance(err, KafkaException) and err.args and isinstance(err.args[0], KafkaError):
        return err.args[0]
    return None


def _publish_failure(error: KafkaError | None, topic: str, size: int) -> str:
    code = error.code() if error is not None else None
    if code in _TOO_LARGE:
        return (
            f"record of {size} bytes for topic {topic!r} is larger than the limit "
            "(the producer's max_request_bytes plus overhead, or the topic's max.message.bytes)"
        )
    if code in _UNKNOWN_TOPIC:
        return f"topic {topic!r} does not exist"
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return f"not authorised to publish to topic {topic!r}"
    if code in _TIMED_OUT:
        return (
            f"no acknowledgement for a record to {topic!r} within {REQUEST_TIMEOUT} s "
            "(the broker may still have stored it)"
        )
    if code in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
        return f"the transport stopped before a record to {topic!r} was acknowledged"
    return f"publish to {topic!r} failed: {error.str() if error is not None else 'unknown'}"


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "no answer in time"
    error = _kafka_error(err)
    if error is not None:
        return f"{error.name()}: {error.str()}"
    if isinstance(err, BrokerError):
        return str(err)
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
