"""Request/reply and one-way messaging over plain aiokafka, written by hand and tuned for latency.

Service side (``python -m bench.baselines.raw_aiokafka serve --bootstrap B --requests T
--events E --group G``): one consumer in a group, subscribed to the request and the event
topic, small ``fetch_max_wait_ms``; a producer with ``linger_ms=0`` for the replies;
offsets committed by hand, off the fetch path, once the replies they caused are acked.

Caller side (:class:`Caller`): a producer plus a consumer manually assigned to its own
reply topic partition and positioned at its end before the first request. Requests carry
``correlation-id``, ``reply-to`` and ``reply-partition`` headers; a dict maps correlation
ids to the futures (or, for streamed replies, the queues) waiting for the answer.

``open_bench(bootstrap)`` wires both into a :class:`bench.common.Bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

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

MODULE = "bench.baselines.raw_aiokafka"

#: acks="all" matches librdkafka's default, so both raw baselines ask for the same durability.
ACKS = "all"


@dataclass(frozen=True, slots=True)
class Tuning:
    """The knobs the benchmark varies; both sides of a session use the same."""

    linger_ms: int = 0
    fetch_max_wait_ms: int = 5

    def to_args(self) -> list[str]:
        return [
            "--linger-ms",
            str(self.linger_ms),
            "--fetch-max-wait-ms",
            str(self.fetch_max_wait_ms),
        ]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        default = cls()
        parser.add_argument("--linger-ms", type=int, default=default.linger_ms)
        parser.add_argument("--fetch-max-wait-ms", type=int, default=default.fetch_max_wait_ms)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Tuning:
        return cls(args.linger_ms, args.fetch_max_wait_ms)


Headers = Sequence[tuple[str, bytes]]


def header(headers: Headers, key: str) -> bytes | None:
    for name, value in headers:
        if name == key:
            return value
    return None


def _producer(bootstrap: str, client_id: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id=client_id, linger_ms=linger_ms, acks=ACKS
    )


# -- service side ---------------------------------------------------------------------------


class _AssignmentListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, assigned: asyncio.Event) -> None:
        self._assigned = assigned

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            self._assigned.set()


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
        self._producer = _producer(bootstrap, "bench-aiokafka-service", tuning.linger_ms)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="bench-aiokafka-service",
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=tuning.fetch_max_wait_ms,
        )
        self._committer = Committer(self._commit)
        self._events_seen = 0

    async def _commit(self, offsets: Offsets) -> None:
        await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    async def run(self) -> None:
        """Serve until stdin closes or a signal arrives; prints READY once assigned."""
        await self._producer.start()
        await self._consumer.start()
        try:
            assigned = asyncio.Event()
            self._consumer.subscribe(self._topics, listener=_AssignmentListener(assigned))
            async with asyncio.TaskGroup() as tasks:
                fetching = tasks.create_task(self._fetch_loop())
                committing = tasks.create_task(self._committer.run())
                async with asyncio.timeout(60):
                    await assigned.wait()
                announce("READY")
                await wait_for_shutdown()
                fetching.cancel()
                await self._committer.drain()
                committing.cancel()
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def _fetch_loop(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            acks: list[asyncio.Future[Any]] = []
            offsets: Offsets = {}
            for tp, records in batches.items():
                if tp.topic == self._events_topic:
                    self._count_events(records)
                else:
                    for record in records:
                        acks.extend(await self._answer(record))
                offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
            if offsets:
                self._committer.submit(acks, offsets)

    async def _answer(self, record: ConsumerRecord[bytes, bytes]) -> list[asyncio.Future[Any]]:
        headers = dict(record.headers)
        reply_to = headers[H_REPLY_TO].decode()
        partition = int(headers[H_REPLY_PARTITION])
        correlation = headers[H_CORRELATION]
        send = self._producer.send
        if headers.get(H_KIND) != KIND_STREAM:
            body = echo_reply(record.value or b"")
            reply_headers = [(H_CORRELATION, correlation)]
            return [await send(reply_to, body, partition=partition, headers=reply_headers)]
        n_items = int(headers[H_ITEMS])
        acks = []
        for i in range(n_items):
            item_headers = [(H_CORRELATION, correlation)]
            if i == n_items - 1:
                item_headers.append((H_LAST, b"1"))
            acks.append(
                await send(reply_to, stream_item(i), partition=partition, headers=item_headers)
            )
        return acks

    def _count_events(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if record.headers and header(record.headers, H_KIND) == KIND_END:
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
        self._reply_tp = TopicPartition(topics.replies, 0)
        self._reply_headers = [
            (H_REPLY_TO, topics.replies.encode()),
            (H_REPLY_PARTITION, b"0"),
        ]
        self._producer = _producer(bootstrap, "bench-aiokafka-caller", tuning.linger_ms)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="bench-aiokafka-caller",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=tuning.fetch_max_wait_ms,
        )
        self._calls: dict[bytes, asyncio.Future[bytes]] = {}
        self._streams: dict[bytes, asyncio.Queue[tuple[bytes, bool]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        self._consumer.assign([self._reply_tp])
        await self._consumer.seek_to_end(self._reply_tp)
        await self._consumer.position(self._reply_tp)  # resolved before any request goes out
        self._reader = asyncio.create_task(self._read_replies())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()
        await self._producer.stop()

    async def call(self, body: bytes, timeout_s: float = CALL_TIMEOUT_S) -> bytes:
        correlation = uuid.uuid4().bytes
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[correlation] = reply
        try:
            ack = await self._producer.send(
                self._topics.requests,
                body,
                headers=[(H_CORRELATION, correlation), *self._reply_headers],
            )
            ack.add_done_callback(lambda sent: _fail_on_error(sent, reply))
            async with asyncio.timeout(timeout_s):
                return await reply
        finally:
            self._calls.pop(correlation, None)

    async def stream(self, n_items: int, timeout_s: float = CALL_TIMEOUT_S) -> AsyncIterator[bytes]:
        correlation = uuid.uuid4().bytes
        items: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self._streams[correlation] = items
        try:
            await self._producer.send(
                self._topics.requests,
                b"",
                headers=[
                    (H_CORRELATION, correlation),
                    *self._reply_headers,
                    (H_KIND, KIND_STREAM),
                    (H_ITEMS, str(n_items).encode()),
                ],
            )
            last = False
            while not last:
                async with asyncio.timeout(timeout_s):
                    value, last = await items.get()
                yield value
        finally:
            self._streams.pop(correlation, None)

    async def burst(self, n: int, size: int) -> list[asyncio.Future[Any]]:
        """Send ``n`` one-way events then an end marker; returns their delivery futures."""
        payload = b"x" * size
        send = self._producer.send
        topic = self._topics.events
        acks = [await send(topic, payload) for _ in range(n)]
        acks.append(await send(topic, b"", headers=[(H_KIND, KIND_END)]))
        return acks

    async def _read_replies(self) -> None:
        while True:
            batch = await self._consumer.getmany(self._reply_tp, timeout_ms=1000)
            for record in batch.get(self._reply_tp, ()):
                correlation = header(record.headers, H_CORRELATION)
                if correlation is None:
                    continue
                value = record.value or b""
                reply = self._calls.pop(correlation, None)
                if reply is not None:
                    if not reply.done():
                        reply.set_result(value)
                    continue
                items = self._streams.get(correlation)
                if items is not None:
                    items.put_nowait((value, header(record.headers, H_LAST) is not None))


def _fail_on_error(sent: asyncio.Future[Any], reply: asyncio.Future[bytes]) -> None:
    if not sent.cancelled() and (error := sent.exception()) is not None and not reply.done():
        reply.set_exception(error)


# -- the benchmark target -------------------------------------------------------------------


class RawAiokafka(Bench):
    name = "raw_aiokafka"
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
        acks = await self._caller.burst(n, size)
        count, finished = await self.service.expect("END", timeout_s=60.0)
        await asyncio.gather(*acks)
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
) -> AsyncIterator[RawAiokafka]:
    """Unique topics, the echo service in a child process and a started caller.

    ``tuning``: fields of :class:`Tuning` (linger_ms, fetch_max_wait_ms).
    """
    settings = Tuning(**tuning)
    async with temporary_topics(bootstrap, partitions) as topics:
        service = service_process(bootstrap, topics, settings)
        caller = Caller(bootstrap, topics, settings)
        try:
            await asyncio.gather(service.start(), caller.start())
            yield RawAiokafka(caller, service)
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
