"""Request/reply and one-way messaging over plain aiokafka, written by hand and tuned for latency.

Service side (``python -m bench.baselines.raw_aiokafka serve --bootstrap B --requests T
--events E --group G``): one consumer in a group, subscribed to the request and the event
topic, small ``fetch_max_wait_ms``; a producer with ``linger_ms=0`` for the replies;
offsets committed by hand, off the fetch path, once the replies they caused are acked.
:class:`EchoService` answers with hand-written bytes; what it does with a record
(:meth:`EchoService._answer`, :meth:`EchoService._handle_events`) is all that
:mod:`bench.baselines.raw_aiokafka_app` changes to call ``bench.app`` instead.

Caller side (:class:`Caller`): a producer plus a consumer manually assigned to its own
reply topic partition and positioned at its end before the first request. Requests carry
``correlation-id``, ``reply-to`` and ``reply-partition`` headers; a dict maps correlation
ids to the futures (or, for streamed replies, the queues) waiting for the answer
(:class:`bench.baselines._shared.Replies`).

``open_bench(bootstrap)`` wires both into a :class:`bench.common.Bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]

from bench.baselines import _shared as shared
from bench.common import Committer, Offsets, Topics, echo_reply, stream_item

MODULE = "bench.baselines.raw_aiokafka"

#: acks="all" matches librdkafka's default, so both raw baselines ask for the same durability.
ACKS = "all"


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
    """Answers requests with :func:`bench.common.echo_reply`, counts one-way events."""

    def __init__(self, serving: shared.Serving, tuning: shared.Tuning) -> None:
        self._serving = serving
        self._producer = _producer(serving.bootstrap, "bench-aiokafka-service", tuning.linger_ms)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=serving.bootstrap,
            client_id="bench-aiokafka-service",
            group_id=serving.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=tuning.fetch_max_wait_ms,
        )
        self._committer = Committer(self._commit)
        self._events = shared.EventTally()

    async def _commit(self, offsets: Offsets) -> None:
        await self._consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    async def run(self) -> None:
        """Serve until stdin closes or a signal arrives; prints READY once assigned."""
        await self._producer.start()
        await self._consumer.start()
        try:
            assigned = asyncio.Event()
            listener = _AssignmentListener(assigned)
            self._consumer.subscribe(self._serving.topics, listener=listener)
            await shared.serve(self._fetch_loop, self._committer, assigned)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def _fetch_loop(self) -> None:
        events_topic = self._serving.events
        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            acks: list[asyncio.Future[Any]] = []
            offsets: Offsets = {}
            for tp, records in batches.items():
                if tp.topic == events_topic:
                    await self._handle_events(records)
                else:
                    for record in records:
                        acks.extend(await self._answer(record))
                offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
            if offsets:
                self._committer.submit(acks, offsets)

    async def _answer(self, record: ConsumerRecord[bytes, bytes]) -> list[asyncio.Future[Any]]:
        """Send the answers to one request; their delivery futures."""
        ask = shared.Ask.of(record.headers)
        if ask.items is None:
            return [await self._reply(ask, echo_reply(record.value or b""))]
        n = ask.items
        return [await self._reply(ask, stream_item(i), last=i == n - 1) for i in range(n)]

    async def _reply(
        self, ask: shared.Ask, value: bytes, *, last: bool = False, status: int | None = None
    ) -> asyncio.Future[Any]:
        """Queue one answer record; its delivery future."""
        headers = ask.reply_headers(last=last, status=status)
        ack: asyncio.Future[Any] = await self._producer.send(
            ask.reply_to, value, partition=ask.partition, headers=headers
        )
        return ack

    async def _handle_events(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            self._events.event(record.headers)


# -- caller side ----------------------------------------------------------------------------


class Caller(shared.RawCaller):
    """Two-way calls, streamed calls and one-way bursts on aiokafka."""

    def __init__(self, bootstrap: str, topics: Topics, tuning: shared.Tuning) -> None:
        super().__init__(topics)
        self._reply_tp = TopicPartition(topics.replies, 0)
        self._producer = _producer(bootstrap, "bench-aiokafka-caller", tuning.linger_ms)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="bench-aiokafka-caller",
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=tuning.fetch_max_wait_ms,
        )
        self._reader: asyncio.Task[None] | None = None
        self._burst: list[asyncio.Future[Any]] = []

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

    async def _send_request(self, body: bytes, asks: shared.Headers, correlation: bytes) -> None:
        headers = shared.request_headers(correlation, self._address, asks)
        ack = await self._producer.send(self._topics.requests, body, headers=headers)
        ack.add_done_callback(functools.partial(self._sent, correlation))

    def _sent(self, correlation: bytes, ack: asyncio.Future[Any]) -> None:
        if not ack.cancelled() and (error := ack.exception()) is not None:
            self._replies.fail(correlation, error)

    async def burst(self, n: int, size: int) -> None:
        """Send ``n`` one-way events then an end marker saying ``n``; keeps their acks."""
        payload = b"x" * size
        send = self._producer.send
        topic = self._topics.events
        acks = [await send(topic, payload) for _ in range(n)]
        acks.append(await send(topic, b"", headers=shared.end_marker(n)))
        self._burst = acks

    async def delivered(self) -> None:
        acks, self._burst = self._burst, []
        await asyncio.gather(*acks)

    async def _read_replies(self) -> None:
        while True:
            batch = await self._consumer.getmany(self._reply_tp, timeout_ms=1000)
            for record in batch.get(self._reply_tp, ()):
                self._replies.accept(record.headers, record.value or b"")


# -- the benchmark target -------------------------------------------------------------------

BASELINE = shared.Baseline("raw_aiokafka", MODULE, shared.Tuning, Caller, EchoService)
open_bench = BASELINE.open_bench
open_service = BASELINE.open_service

if __name__ == "__main__":
    BASELINE.main()
