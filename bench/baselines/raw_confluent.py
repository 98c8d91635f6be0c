"""Request/reply and one-way messaging over plain confluent-kafka, written by hand for latency.

The same pattern as :mod:`bench.baselines.raw_aiokafka`, on librdkafka:

* :class:`AsyncProducer` -- a ``confluent_kafka.Producer`` with a thread that does nothing
  but ``poll()``, so delivery callbacks run there; they reach the event loop through
  ``call_soon_threadsafe`` -- once per batch of replies (:class:`Deliveries`), and for a
  request only when it failed. ``linger.ms=0``, Nagle off.
* :class:`ConsumerThread` -- a ``confluent_kafka.Consumer`` owned by one thread that waits
  with ``poll()``, takes what else is fetched with ``consume(n, timeout=0)`` and hands the
  batch to the event loop. Commits are queued to that thread (the handle is only touched
  by its owner) and awaited through ``on_commit``. ``fetch.wait.max.ms`` small.

``confluent_kafka.aio`` is deliberately not used: ``AIOProducer.produce`` refuses headers
(``NotImplementedError``) and buffers messages locally (``batch_size=1000``,
``buffer_timeout=1.0`` s) before handing them to librdkafka, and ``AIOConsumer`` runs every
call through a thread pool.

Service side: ``python -m bench.baselines.raw_confluent serve --bootstrap B --requests T
--events E --group G``. ``open_bench(bootstrap)`` wires both sides into a
:class:`bench.common.Bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from bench.common import (
    CALL_TIMEOUT_S,
    ECHO_BODY,
    H_CORRELATION,
    H_ITEMS,
    H_KIND,
    H_LAST,
    H_REPLY_PARTITION,
    H_REPLY_TO,
    KIND_END,
    KIND_STREAM,
    Bench,
    Committer,
    Offsets,
    ServiceProcess,
    Topics,
    announce,
    echo_reply,
    stream_item,
    temporary_topics,
    wait_for_shutdown,
)

MODULE = "bench.baselines.raw_confluent"

#: Headers as produce() takes them and Message.headers() returns them.
Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True, slots=True)
class Tuning:
    """The knobs the benchmark varies; both sides of a session use the same."""

    linger_ms: int = 0
    fetch_max_wait_ms: int = 5
    #: librdkafka's max.in.flight.requests.per.connection; None keeps its default (1e6).
    #: With linger 0 and no limit, every message under load becomes its own ProduceRequest;
    #: 1 makes messages queue behind the request in flight and go out as one batch.
    max_in_flight: int | None = None

    def to_args(self) -> list[str]:
        args = [
            "--linger-ms",
            str(self.linger_ms),
            "--fetch-max-wait-ms",
            str(self.fetch_max_wait_ms),
        ]
        if self.max_in_flight is not None:
            args += ["--max-in-flight", str(self.max_in_flight)]
        return args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        default = cls()
        parser.add_argument("--linger-ms", type=int, default=default.linger_ms)
        parser.add_argument("--fetch-max-wait-ms", type=int, default=default.fetch_max_wait_ms)
        parser.add_argument("--max-in-flight", type=int, default=default.max_in_flight)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Tuning:
        return cls(args.linger_ms, args.fetch_max_wait_ms, args.max_in_flight)


def producer_conf(bootstrap: str, client_id: str, tuning: Tuning) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "linger.ms": tuning.linger_ms,
        "acks": "all",
        "enable.idempotence": False,
        "socket.nagle.disable": True,
    }
    if tuning.max_in_flight is not None:
        conf["max.in.flight.requests.per.connection"] = tuning.max_in_flight
    return conf


def consumer_conf(bootstrap: str, client_id: str, group: str, tuning: Tuning) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": tuning.fetch_max_wait_ms,
        "fetch.min.bytes": 1,
        "socket.nagle.disable": True,
    }


def header(headers: Headers | dict[str, str | bytes | None] | None, key: str) -> bytes | None:
    """The value of header ``key`` (the first one, as bytes), or None."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    for name, value in pairs:
        if name == key:
            return value.encode() if isinstance(value, str) else value
    return None


def required_header(message: Message, key: str) -> bytes:
    value = header(message.headers(), key)
    if value is None:
        raise ValueError(f"request without {key} header at offset {message.offset()}")
    return value


# -- asyncio bridges ------------------------------------------------------------------------


DeliveryCallback = Callable[[KafkaError | None, Message], None]
StreamItem = tuple[bytes, bool] | Exception  # (value, is last) or why the stream failed


class AsyncProducer:
    """A librdkafka producer used from asyncio; a thread does nothing but ``poll()``.

    Delivery callbacks therefore run in that thread: they hop to the event loop with
    ``call_soon_threadsafe`` only when there is something to tell it (see
    :class:`Deliveries` and :meth:`Caller.call`).
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        self._producer = Producer(conf)
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="producer-poll", daemon=True)

    def start(self) -> None:
        self._poller.start()

    async def close(self, timeout_s: float = 10.0) -> None:
        await asyncio.to_thread(self._producer.flush, timeout_s)
        self._closing.set()
        await asyncio.to_thread(self._poller.join, timeout_s)

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        on_delivery: DeliveryCallback,
        partition: int = -1,
        headers: Headers | None = None,
    ) -> None:
        """Queue one message, waiting while librdkafka's local queue is full."""
        while True:
            try:
                self._producer.produce(
                    topic, value, partition=partition, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # local queue full: let the poll thread drain it
                await asyncio.sleep(0.001)

    def _poll(self) -> None:
        while not self._closing.is_set():
            self._producer.poll(0.1)


class Deliveries:
    """One asyncio future for the delivery reports of a group of messages.

    :meth:`track` returns the ``on_delivery`` callback for one more message; call
    :meth:`seal` after the last. ``done`` resolves once every report is in (failing with
    the first error): one wake-up of the event loop per group rather than per message.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._lock = threading.Lock()
        self._pending = 0
        self._sealed = False
        self._error: KafkaError | None = None

    def track(self) -> DeliveryCallback:
        with self._lock:
            self._pending += 1
        return self._report

    def seal(self) -> asyncio.Future[None]:
        with self._lock:
            self._sealed = True
            finished = self._pending == 0
        if finished:
            _resolve(self.done, self._error)
        return self.done

    def _report(self, error: KafkaError | None, _: Message) -> None:  # poll thread
        with self._lock:
            self._pending -= 1
            self._error = self._error or error
            finished = self._sealed and self._pending == 0
        if finished:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                self._loop.call_soon_threadsafe(_resolve, self.done, self._error)


def _resolve(done: asyncio.Future[None], error: KafkaError | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(KafkaException(error))


class ConsumerThread:
    """Owns a librdkafka consumer: consumes in its own thread, delivers batches to the loop.

    ``deliver`` runs on the event loop with each batch. :meth:`commit` queues a commit to
    the owning thread, which sends it between two polls; the returned future resolves
    from the ``on_commit`` callback, so a caller that waits for it keeps at most one
    commit in flight (with Kafka 4's group coordinator lingering 5 ms per append, a
    fire-and-forget commit per batch piles up thousands of pending commits).
    """

    def __init__(
        self,
        conf: dict[str, Any],
        deliver: Callable[[list[Message]], None],
        *,
        batch_size: int = 1000,
        poll_s: float = 0.1,
    ) -> None:
        self.consumer = Consumer({**conf, "on_commit": self._on_commit})
        self._deliver = deliver
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commits: queue.SimpleQueue[tuple[list[TopicPartition], asyncio.Future[None]]]
        self._commits = queue.SimpleQueue()
        self._committing: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer", daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def commit(self, offsets: Offsets) -> asyncio.Future[None]:
        assert self._loop is not None, "start() first"
        done: asyncio.Future[None] = self._loop.create_future()
        self._commits.put(([TopicPartition(t, p, o) for (t, p), o in offsets.items()], done))
        return done

    async def close(self, timeout_s: float = 10.0) -> None:
        self._closing.set()
        await asyncio.to_thread(self._thread.join, timeout_s)

    def _run(self) -> None:
        assert self._loop is not None
        poll, consume = self.consumer.poll, self.consumer.consume
        try:
            while not self._closing.is_set():
                # consume(n, timeout) returns only once it has n messages or the timeout
                # expired, so wait for the first message with poll() and then take what
                # is already fetched without waiting.
                first = poll(self._poll_s)
                if first is not None:
                    rest = consume(num_messages=self._batch_size - 1, timeout=0)
                    self._loop.call_soon_threadsafe(self._deliver, [first, *rest])
                self._send_commits()
        finally:
            self.consumer.close()

    def _send_commits(self) -> None:
        while not self._commits.empty():
            offsets, done = self._commits.get()
            self._committing.append(done)
            self.consumer.commit(offsets=offsets, asynchronous=True)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Runs in the consumer thread, inside poll(); commits complete in order.
        if not self._committing or self._loop is None:
            return
        done = self._committing.popleft()
        if error is None:
            error = next((p.error for p in partitions if p.error is not None), None)
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(_resolve, done, error)


# -- service side ---------------------------------------------------------------------------


class EchoService:
    """Answers requests with :func:`bench.common.echo_reply` and counts one-way events."""

    def __init__(
        self,
        bootstrap: str,
        requests_topic: str,
        events_topic: str,
        group: str,
        tuning: Tuning,
    ) -> None:
        self._topics = [requests_topic, events_topic]
        self._events_topic = events_topic
        client_id = "bench-confluent-service"
        self._producer = AsyncProducer(producer_conf(bootstrap, client_id, tuning))
        self._batches: asyncio.Queue[list[Message]] = asyncio.Queue()
        self._consumer = ConsumerThread(
            consumer_conf(bootstrap, client_id, group, tuning),
            self._batches.put_nowait,
        )
        self._committer = Committer(self._commit)
        self._events_seen = 0

    async def _commit(self, offsets: Offsets) -> None:
        await self._consumer.commit(offsets)

    async def run(self) -> None:
        """Serve until stdin closes or a signal arrives; prints READY once assigned."""
        loop = asyncio.get_running_loop()
        assigned = asyncio.Event()

        def on_assign(_: Consumer, partitions: list[TopicPartition]) -> None:
            if partitions:
                loop.call_soon_threadsafe(assigned.set)

        self._producer.start()
        self._consumer.consumer.subscribe(self._topics, on_assign=on_assign)
        self._consumer.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                handling = tasks.create_task(self._handle_loop())
                committing = tasks.create_task(self._committer.run())
                async with asyncio.timeout(60):
                    await assigned.wait()
                announce("READY")
                await wait_for_shutdown()
                handling.cancel()
                await self._committer.drain()
                committing.cancel()
        finally:
            await self._consumer.close()
            await self._producer.close()

    async def _handle_loop(self) -> None:
        while True:
            messages = await self._batches.get()
            deliveries = Deliveries()
            offsets: Offsets = {}
            for message in messages:
                if (error := message.error()) is not None:
                    raise KafkaException(error)
                topic = message.topic() or ""
                if topic == self._events_topic:
                    self._count_event(message)
                else:
                    await self._answer(message, deliveries)
                offsets[(topic, message.partition() or 0)] = (message.offset() or 0) + 1
            self._committer.submit([deliveries.seal()], offsets)

    async def _answer(self, message: Message, deliveries: Deliveries) -> None:
        reply_to = required_header(message, H_REPLY_TO).decode()
        partition = int(required_header(message, H_REPLY_PARTITION))
        correlation = required_header(message, H_CORRELATION)
        produce = self._producer.produce
        if header(message.headers(), H_KIND) != KIND_STREAM:
            await produce(
                reply_to,
                echo_reply(message.value() or b""),
                partition=partition,
                headers=[(H_CORRELATION, correlation)],
                on_delivery=deliveries.track(),
            )
            return
        n_items = int(required_header(message, H_ITEMS))
        for i in range(n_items):
            item_headers: Headers = [(H_CORRELATION, correlation)]
            if i == n_items - 1:
                item_headers.append((H_LAST, b"1"))
            await produce(
                reply_to,
                stream_item(i),
                partition=partition,
                headers=item_headers,
                on_delivery=deliveries.track(),
            )

    def _count_event(self, message: Message) -> None:
        if header(message.headers(), H_KIND) == KIND_END:
            announce("END", self._events_seen, repr(time.monotonic()))
            self._events_seen = 0
        else:
            self._events_seen += 1


# -- caller side ----------------------------------------------------------------------------


class Caller:
    """Two-way calls, streamed calls and one-way bursts from the calling process."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        tuning: Tuning,
    ) -> None:
        self._topics = topics
        self._reply_headers: Headers = [
            (H_REPLY_TO, topics.replies.encode()),
            (H_REPLY_PARTITION, b"0"),
        ]
        client_id = "bench-confluent-caller"
        self._producer = AsyncProducer(producer_conf(bootstrap, client_id, tuning))
        self._consumer = ConsumerThread(
            consumer_conf(bootstrap, client_id, f"bench.{topics.run_id}.caller", tuning),
            self._dispatch,
        )
        self._calls: dict[bytes, asyncio.Future[bytes]] = {}
        self._streams: dict[bytes, asyncio.Queue[StreamItem]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event_failures = 0  # written by the producer's poll thread only
        self._event_error: KafkaError | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer.start()
        consumer = self._consumer.consumer
        reply_tp = TopicPartition(self._topics.replies, 0)
        # Assign at an explicit offset: OFFSET_END would be resolved lazily by the first
        # fetch, and a reply landing before that would be skipped.
        _, end = await asyncio.to_thread(consumer.get_watermark_offsets, reply_tp, 10.0)
        consumer.assign([TopicPartition(self._topics.replies, 0, end)])
        self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.close()
        await self._producer.close()

    async def call(self, body: bytes, timeout_s: float = CALL_TIMEOUT_S) -> bytes:
        correlation = uuid.uuid4().bytes
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[correlation] = reply
        try:
            await self._producer.produce(
                self._topics.requests,
                body,
                headers=[(H_CORRELATION, correlation), *self._reply_headers],
                on_delivery=functools.partial(self._request_delivered, correlation),
            )
            async with asyncio.timeout(timeout_s):
                return await reply
        finally:
            self._calls.pop(correlation, None)

    async def stream(self, n_items: int, timeout_s: float = CALL_TIMEOUT_S) -> AsyncIterator[bytes]:
        correlation = uuid.uuid4().bytes
        items: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._streams[correlation] = items
        try:
            await self._producer.produce(
                self._topics.requests,
                b"",
                headers=[
                    (H_CORRELATION, correlation),
                    *self._reply_headers,
                    (H_KIND, KIND_STREAM),
                    (H_ITEMS, str(n_items).encode()),
                ],
                on_delivery=functools.partial(self._request_delivered, correlation),
            )
            last = False
            while not last:
                async with asyncio.timeout(timeout_s):
                    item = await items.get()
                if isinstance(item, Exception):
                    raise item
                value, last = item
                yield value
        finally:
            self._streams.pop(correlation, None)

    async def burst(self, n: int, size: int) -> None:
        """Send ``n`` one-way events then an end marker; delivery failures are counted."""
        payload = b"x" * size
        produce = self._producer.produce
        topic = self._topics.events
        for _ in range(n):
            await produce(topic, payload, on_delivery=self._event_delivered)
        await produce(topic, b"", headers=[(H_KIND, KIND_END)], on_delivery=self._event_delivered)

    def check_deliveries(self) -> None:
        if self._event_failures:
            raise KafkaException(self._event_error)

    def _event_delivered(self, error: KafkaError | None, _: Message) -> None:  # poll thread
        if error is not None:
            self._event_failures += 1
            self._event_error = error

    def _request_delivered(
        self, correlation: bytes, error: KafkaError | None, _: Message
    ) -> None:  # poll thread: wake the loop only for a failure
        if error is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(
                    self._request_failed, correlation, KafkaException(error)
                )

    def _request_failed(self, correlation: bytes, error: KafkaException) -> None:
        reply = self._calls.pop(correlation, None)
        if reply is not None and not reply.done():
            reply.set_exception(error)
        items = self._streams.get(correlation)
        if items is not None:
            items.put_nowait(error)

    def _dispatch(self, messages: list[Message]) -> None:
        for message in messages:
            if message.error() is not None:
                continue
            headers = message.headers()
            correlation = header(headers, H_CORRELATION)
            if correlation is None:
                continue
            value = message.value() or b""
            reply = self._calls.pop(correlation, None)
            if reply is not None:
                if not reply.done():
                    reply.set_result(value)
                continue
            items = self._streams.get(correlation)
            if items is not None:
                items.put_nowait((value, header(headers, H_LAST) is not None))


# -- the benchmark target -------------------------------------------------------------------


class RawConfluent(Bench):
    name = "raw_confluent"
    service: ServiceProcess

    def __init__(self, caller: Caller, service: ServiceProcess) -> None:
        self._caller = caller
        self.service = service

    async def call(self) -> None:
        reply = await self._caller.call(ECHO_BODY)
        if not reply.startswith(b'{"ok":true'):
            raise RuntimeError(f"unexpected reply {reply[:80]!r}")

    def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        return self._caller.stream(n_items)

    async def one_way(self, n: int, size: int = 200) -> float:
        started = time.monotonic()
        await self._caller.burst(n, size)
        count, finished = await self.service.expect("END", timeout_s=60.0)
        self._caller.check_deliveries()
        if int(count) != n:
            raise RuntimeError(f"{self.name}: service saw {count} events, expected {n}")
        return n / (float(finished) - started)


def service_process(bootstrap: str, topics: Topics, tuning: Tuning) -> ServiceProcess:
    """The echo service on ``topics`` as a child process, not started yet."""
    return ServiceProcess.serving(
        MODULE,
        *("--bootstrap", bootstrap, "--requests", topics.requests),
        *("--events", topics.events, "--group", f"bench.{topics.run_id}.service"),
        *tuning.to_args(),
    )


@contextlib.asynccontextmanager
async def open_service(
    bootstrap: str, *, partitions: int = 1, **tuning: Any
) -> AsyncIterator[Callable[[], ServiceProcess]]:
    """Unique topics and a maker of echo service processes on them (to time start-up)."""
    settings = Tuning(**tuning)
    async with temporary_topics(bootstrap, partitions) as topics:
        yield lambda: service_process(bootstrap, topics, settings)


@contextlib.asynccontextmanager
async def open_bench(
    bootstrap: str, *, partitions: int = 1, **tuning: Any
) -> AsyncIterator[RawConfluent]:
    """Unique topics, the echo service in a child process and a started caller.

    ``tuning``: fields of :class:`Tuning` (linger_ms, fetch_max_wait_ms, max_in_flight).
    """
    settings = Tuning(**tuning)
    async with temporary_topics(bootstrap, partitions) as topics:
        service = service_process(bootstrap, topics, settings)
        caller = Caller(bootstrap, topics, settings)
        try:
            await asyncio.gather(service.start(), caller.start())
            yield RawConfluent(caller, service)
        finally:
            await caller.stop()
            await service.stop()


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the echo service (used as a child process)")
    serve.add_argument("--bootstrap", required=True)
    serve.add_argument("--requests", required=True, help="request topic")
    serve.add_argument("--events", required=True, help="one-way event topic")
    serve.add_argument("--group", required=True, help="consumer group id")
    Tuning.add_arguments(serve)
    args = parser.parse_args(argv)
    asyncio.run(run_service(args))


async def run_service(args: argparse.Namespace) -> None:
    service = EchoService(
        args.bootstrap,
        args.requests,
        args.events,
        args.group,
        Tuning.from_args(args),
    )
    await service.run()


if __name__ == "__main__":
    main()
