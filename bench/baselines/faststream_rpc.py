"""The FastStream peer: a service and a caller written as a FastStream user would, on its
Kafka broker (``faststream[kafka]``, aiokafka underneath).

FastStream's Kafka ``request()`` only works under its test client, so two-way calls are
the do-it-yourself request/reply its documentation suggests: the caller publishes with
``reply_to`` (its own reply topic) and a ``correlation_id``, and consumes that topic with
a subscriber of its own that hands each reply to the call waiting for its correlation
id; the service's handler just returns its answer, which FastStream publishes to the
message's ``reply_to`` with the same correlation id.

* two-way: ``{"ok":true,"echo":<body>}`` for :data:`bench.common.ECHO_BODY`, the body
  taken as ``dict[str, Any]`` as ``bench.app``'s ``POST /echo`` does;
* one-way: a subscriber typed with :class:`Event`, a pydantic model of a 200-byte JSON
  payload (FastStream decodes and validates each message); the end marker is one more
  message on the same topic with the raw baselines' ``kind: end`` / ``expect: n``
  headers, and the service prints ``END <n> <monotonic>`` once it has handled ``n``
  events (as ``bench.app`` does, so the figure stays end to end whatever the order);
* streamed replies: left out. FastStream's reply is the handler's one return value;
  a stream would be hand-written publishing, not FastStream's way.

Set-up: FastStream's defaults (one message at a time per subscriber: ``max_workers=64``
measured slower, see bench/README.md) except where the comparison needs otherwise:
``acks="all"``
on both sides as kourier's producer, ``auto_offset_reset="earliest"`` (the topics are
fresh, and records sent before the partitions are assigned must not be skipped) and
``logger=None``, which turns off FastStream's access log (two lines per message on
stdout by default; kourier writes none per request, and stdout carries ``READY``/``END``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from faststream.kafka import KafkaBroker, KafkaMessage, RecordMetadata
from faststream.kafka.publisher.usecase import DefaultPublisher
from pydantic import BaseModel

from bench.baselines import _shared as shared
from bench.common import (
    CALL_TIMEOUT_S,
    ECHO_BODY,
    H_EXPECT,
    H_KIND,
    KIND_END,
    Bench,
    EventCount,
    ServiceProcess,
    Topics,
    announce,
    temporary_topics,
    wait_for_shutdown,
)

MODULE = "bench.baselines.faststream_rpc"
#: The echo request as a FastStream caller sends it: a dict, which FastStream encodes.
ECHO: dict[str, Any] = json.loads(ECHO_BODY)
#: As kourier's producer (and the raw baselines'): every in-sync replica.
ACKS = "all"


class Event(BaseModel):
    """A one-way event: one string field, padded so its JSON is the bench's size."""

    data: str


def event_of_size(size: int) -> Event:
    """An event whose JSON encoding (``{"data":"..."}``) is ``size`` bytes."""
    return Event(data="x" * max(0, size - len('{"data":""}')))


def make_broker(bootstrap: str) -> KafkaBroker:
    return KafkaBroker(bootstrap, acks=ACKS, logger=None)


def current_message(broker: KafkaBroker) -> KafkaMessage:
    """The message a handler is handling, from the broker's context.

    Not as a handler parameter (``message: KafkaMessage``, ``Context(...)``, ``Header``):
    FastStream resolves those through fast_depends, which runs their synchronous
    resolver in a worker thread, a thread hop per message (measured: 220 against 60-70 µs
    of service CPU per one-way message, bench/README.md). Reading the context repository
    is FastStream's documented way to reach it from code, and costs a dictionary lookup.
    """
    message: KafkaMessage = broker.context.get_local("message")
    return message


async def publish_events(
    publisher: DefaultPublisher, n: int, size: int
) -> list[asyncio.Future[RecordMetadata]]:
    """Publish ``n`` events without waiting for each ack (``no_confirm``); their acks.

    Awaiting each publish would wait a round trip per message; a FastStream user sending
    a burst lets them go and waits for the acks together, as the raw baselines do.
    """
    event = event_of_size(size)
    publish = publisher.publish
    return [await publish(event, no_confirm=True) for _ in range(n)]


# -- service side ---------------------------------------------------------------------------


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.event = asyncio.Event()

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            self.event.set()


def build_service(where: shared.Serving) -> tuple[KafkaBroker, list[_Assigned]]:
    """The service's broker with its two subscribers, and their assignment listeners."""
    broker = make_broker(where.bootstrap)
    requests, events = _Assigned(), _Assigned()
    count = EventCount()
    group = where.group

    @broker.subscriber(
        where.requests, group_id=group, auto_offset_reset="earliest", listener=requests
    )
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "echo": body}

    @broker.subscriber(where.events, group_id=group, auto_offset_reset="earliest", listener=events)
    async def on_event(event: Event) -> None:
        headers = current_message(broker).headers
        if headers.get(H_KIND) == KIND_END.decode():
            count.end(int(headers[H_EXPECT]))
        else:
            count.event()

    return broker, [requests, events]


async def serve(where: shared.Serving) -> None:
    broker, listeners = build_service(where)
    await broker.start()
    try:
        async with asyncio.timeout(shared.ASSIGNMENT_LIMIT_S):
            for listener in listeners:
                await listener.event.wait()
        announce("READY")
        await wait_for_shutdown()
    finally:
        await broker.stop()


# -- caller side ----------------------------------------------------------------------------


class FastStreamBench(Bench):
    """The caller: a started broker publishing requests and consuming its reply topic."""

    name = "faststream"
    service: ServiceProcess

    def __init__(self, bootstrap: str, topics: Topics, service: ServiceProcess) -> None:
        self.service = service
        self._topics = topics
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.broker = make_broker(bootstrap)
        self._events = self.broker.publisher(topics.events)
        self._requests = self.broker.publisher(topics.requests)
        self.broker.subscriber(topics.replies, auto_offset_reset="earliest")(self._on_reply)

    async def _on_reply(self, reply: dict[str, Any]) -> None:
        waiter = self._waiting.pop(current_message(self.broker).correlation_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    async def call(self) -> None:
        correlation = uuid.uuid4().hex
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = reply
        try:
            await self._requests.publish(
                ECHO, correlation_id=correlation, reply_to=self._topics.replies
            )
            async with asyncio.timeout(CALL_TIMEOUT_S):
                answer = await reply
        finally:
            self._waiting.pop(correlation, None)
        if answer.get("ok") is not True:
            raise RuntimeError(f"unexpected reply {answer!r:.80}")

    def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        raise NotImplementedError("faststream: no streamed reply (see the module docstring)")

    async def one_way(self, n: int, size: int = 200) -> float:
        started = time.monotonic()
        acks = await publish_events(self._events, n, size)
        marker = {H_KIND: KIND_END.decode(), H_EXPECT: str(n)}
        acks.append(await self._events.publish(event_of_size(0), headers=marker, no_confirm=True))
        count, finished = await self.service.expect("END", timeout_s=60.0)
        await asyncio.gather(*acks)
        if int(count) != n:
            raise RuntimeError(f"faststream: service saw {count} events, expected {n}")
        return n / (float(finished) - started)


def service_process(bootstrap: str, topics: Topics) -> ServiceProcess:
    return ServiceProcess.serving(
        MODULE,
        *("--bootstrap", bootstrap, "--requests", topics.requests),
        *("--events", topics.events, "--group", f"bench.{topics.run_id}.service"),
    )


@contextlib.asynccontextmanager
async def open_bench(bootstrap: str, *, partitions: int = 1) -> AsyncIterator[FastStreamBench]:
    """Fresh topics, the FastStream service in a child process and a started caller."""
    async with temporary_topics(bootstrap, partitions) as topics:
        service = service_process(bootstrap, topics)
        bench = FastStreamBench(bootstrap, topics, service)
        try:
            await asyncio.gather(service.start(), bench.broker.start())
            yield bench
        finally:
            await bench.broker.stop()
            await service.stop()


@contextlib.asynccontextmanager
async def open_service(
    bootstrap: str, *, partitions: int = 1
) -> AsyncIterator[Callable[[], ServiceProcess]]:
    """Fresh topics and a maker of FastStream service processes on them."""
    async with temporary_topics(bootstrap, partitions) as topics:
        yield lambda: service_process(bootstrap, topics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="run the service (used as a child process)")
    for flag in ("--bootstrap", "--requests", "--events", "--group"):
        serving.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    where = shared.Serving(args.bootstrap, args.requests, args.events, args.group)
    asyncio.run(serve(where))


if __name__ == "__main__":
    main()
