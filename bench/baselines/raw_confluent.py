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

import asyncio
import collections
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from bench.baselines import _shared as shared
from bench.common import Committer, Offsets, Topics, echo_reply, stream_item

MODULE = "bench.baselines.raw_confluent"


@dataclass(frozen=True, slots=True)
class Tuning(shared.Tuning):
    """The shared knobs, and one of librdkafka's."""

    #: librdkafka's max.in.flight.requests.per.connection; None keeps its default (1e6).
    #: With linger 0 and no limit, every message under load becomes its own ProduceRequest;
    #: 1 makes messages queue behind the request in flight and go out as one batch.
    max_in_flight: int | None = None


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


# -- asyncio bridges ------------------------------------------------------------------------


DeliveryCallback = Callable[[KafkaError | None, Message], None]


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
        if self._poller.ident is not None:  # a start that failed never began it
            await asyncio.to_thread(self._poller.join, timeout_s)

    async def produce(
        self,
        topic: str,
        value: bytes,
        *,
        on_delivery: DeliveryCallback,
        partition: int = -1,
        headers: shared.Headers | None = None,
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
        if self._thread.ident is not None:  # a start that failed never began it
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
    """The echo service on librdkafka: echoes requests, counts one-way events."""

    def __init__(self, serving: shared.Serving, tuning: Tuning) -> None:
        self._serving = serving
        client_id = "bench-confluent-service"
        self._producer = AsyncProducer(producer_conf(serving.bootstrap, client_id, tuning))
        self._batches: asyncio.Queue[list[Message]] = asyncio.Queue()
        self._consumer = ConsumerThread(
            consumer_conf(serving.bootstrap, client_id, serving.group, tuning),
            self._batches.put_nowait,
        )
        self._committer = Committer(self._commit)
        self._events = shared.EventTally()

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
        self._consumer.consumer.subscribe(self._serving.topics, on_assign=on_assign)
        self._consumer.start()
        try:
            await shared.serve(self._handle_loop, self._committer, assigned)
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
                if topic == self._serving.events:
                    self._events.event(message.headers())
                else:
                    await self._answer(message, deliveries)
                offsets[(topic, message.partition() or 0)] = (message.offset() or 0) + 1
            self._committer.submit([deliveries.seal()], offsets)

    async def _answer(self, message: Message, deliveries: Deliveries) -> None:
        ask = shared.Ask.of(message.headers())
        produce = self._producer.produce
        if ask.items is None:
            await produce(
                ask.reply_to,
                echo_reply(message.value() or b""),
                partition=ask.partition,
                headers=ask.reply_headers(),
                on_delivery=deliveries.track(),
            )
            return
        last = ask.items - 1
        for i in range(ask.items):
            await produce(
                ask.reply_to,
                stream_item(i),
                partition=ask.partition,
                headers=ask.reply_headers(last=i == last),
                on_delivery=deliveries.track(),
            )


# -- caller side ----------------------------------------------------------------------------


async def _watermark_end(consumer: Consumer, tp: TopicPartition) -> tuple[int, int]:
    """The partition's watermarks; a topic created a moment ago may not be known yet."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            low, high = await asyncio.to_thread(consumer.get_watermark_offsets, tp, 5.0)
            return int(low), int(high)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class Caller(shared.RawCaller):
    """Two-way calls, streamed calls and one-way bursts on librdkafka."""

    def __init__(self, bootstrap: str, topics: Topics, tuning: Tuning) -> None:
        super().__init__(topics)
        client_id = "bench-confluent-caller"
        self._producer = AsyncProducer(producer_conf(bootstrap, client_id, tuning))
        self._consumer = ConsumerThread(
            consumer_conf(bootstrap, client_id, f"bench.{topics.run_id}.caller", tuning),
            self._dispatch,
        )
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
        _, end = await _watermark_end(consumer, reply_tp)
        consumer.assign([TopicPartition(self._topics.replies, 0, end)])
        self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.close()
        await self._producer.close()

    async def _send_request(self, body: bytes, asks: shared.Headers, correlation: bytes) -> None:
        await self._producer.produce(
            self._topics.requests,
            body,
            headers=shared.request_headers(correlation, self._address, asks),
            on_delivery=functools.partial(self._request_delivered, correlation),
        )

    async def burst(self, n: int, size: int) -> None:
        """Send ``n`` one-way events then an end marker; delivery failures are counted."""
        payload = b"x" * size
        produce = self._producer.produce
        topic = self._topics.events
        for _ in range(n):
            await produce(topic, payload, on_delivery=self._event_delivered)
        await produce(topic, b"", headers=shared.end_marker(n), on_delivery=self._event_delivered)

    async def delivered(self) -> None:
        """Raise if a delivery of the bursts so far failed (the service saw the marker)."""
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
                    self._replies.fail, correlation, KafkaException(error)
                )

    def _dispatch(self, messages: list[Message]) -> None:
        accept = self._replies.accept
        for message in messages:
            if message.error() is None:
                accept(message.headers(), message.value() or b"")


# -- the benchmark target -------------------------------------------------------------------

BASELINE = shared.Baseline("raw_confluent", MODULE, Tuning, Caller, EchoService)
open_bench = BASELINE.open_bench
open_service = BASELINE.open_service

if __name__ == "__main__":
    BASELINE.main()
