"""The caller's one-way sending rate: kourier's ``enqueue`` + ``flush`` against a raw
aiokafka producer and FastStream's publisher, the same records, the same acks.

    python -m bench.sending --bootstrap 127.0.0.1:9092 [--n 50000] [--reps 3]

Each sender puts ``n`` one-way messages of ``size`` bytes on a fresh 1-partition topic
from one coroutine without waiting for each ack, then waits until the broker has
acknowledged them all; nothing consumes them. Measured: messages per second from the
first send to the last ack, and this process's CPU time per message (all threads).

* ``kourier``: ``Client.enqueue(service, "POST", "/events", content=...)`` n times, then
  one ``Client.flush()``; kourier's producer: ``acks="all"``, no idempotence,
  ``linger_ms`` from its settings (0 by default), no compression.
* ``aiokafka``: an ``AIOKafkaProducer`` with those same settings sending the very record
  kourier's wire format makes of that message (value and headers encoded once by
  ``kourier.protocol``), keeping the futures ``send`` gives and gathering them: kourier's
  cost over its Kafka client, nothing else.
* ``faststream``: FastStream's Kafka publisher with ``acks="all"``, publishing the
  pydantic event of ``bench.baselines.faststream_rpc`` with ``no_confirm=True`` and
  gathering the acks (FastStream encodes the model each time, as its users' code does).

Each sender first sends a tenth of ``n`` unmeasured (connections, metadata, warm code).
The order of the senders rotates between repetitions. kourier runs on ``kafka_client``,
else ``KOURIER_KAFKA_CLIENT``, else its default, as in ``bench.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from bench.common import Topics, cpu_seconds, create_topics, delete_topics, median
from bench.targets.kourier import SERVICE, session_settings
from kourier import Client, Settings, protocol

SENDERS = ("kourier", "aiokafka", "faststream")
#: A burst: send ``n`` messages of ``size`` bytes and wait for every ack.
Burst = Callable[[int, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def kourier_sender(bootstrap: str, kafka_client: str | None) -> AsyncIterator[Burst]:
    async with session_settings(bootstrap, kafka_client) as env:
        client = Client(Settings.from_env(env))
        await client.start()
        try:

            async def burst(n: int, size: int) -> None:
                payload = b"x" * size
                enqueue = client.enqueue
                for _ in range(n):
                    await enqueue(SERVICE, "POST", "/events", content=payload)
                await client.flush()

            yield burst
        finally:
            await client.stop()


def kourier_record(size: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers kourier's wire format gives a one-way ``POST /events``."""
    request = protocol.Request(protocol.new_request_id(), "POST", "/events", body=b"x" * size)
    _, value, headers = protocol.encode_request(request)
    return value, list(headers)


@contextlib.asynccontextmanager
async def fresh_topic(bootstrap: str) -> AsyncIterator[str]:
    topic = Topics.unique("bench.send").events
    await create_topics(bootstrap, [topic])
    try:
        yield topic
    finally:
        with contextlib.suppress(Exception):
            await delete_topics(bootstrap, [topic])


@contextlib.asynccontextmanager
async def aiokafka_sender(bootstrap: str, kafka_client: str | None) -> AsyncIterator[Burst]:
    del kafka_client
    linger_ms = Settings().linger_ms  # kourier's default, as its producer uses
    async with fresh_topic(bootstrap) as topic:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=linger_ms
        )
        await producer.start()
        try:

            async def burst(n: int, size: int) -> None:
                value, headers = kourier_record(size)
                send = producer.send
                acks = [await send(topic, value, headers=headers) for _ in range(n)]
                await asyncio.gather(*acks)

            yield burst
        finally:
            await producer.stop()


@contextlib.asynccontextmanager
async def faststream_sender(bootstrap: str, kafka_client: str | None) -> AsyncIterator[Burst]:
    from bench.baselines.faststream_rpc import make_broker, publish_events

    del kafka_client
    async with fresh_topic(bootstrap) as topic:
        broker = make_broker(bootstrap)
        publisher = broker.publisher(topic)
        await broker.start()
        try:

            async def burst(n: int, size: int) -> None:
                await asyncio.gather(*await publish_events(publisher, n, size))

            yield burst
        finally:
            await broker.stop()


OPENERS: dict[str, Callable[[str, str | None], contextlib.AbstractAsyncContextManager[Burst]]] = {
    "kourier": kourier_sender,
    "aiokafka": aiokafka_sender,
    "faststream": faststream_sender,
}


async def measure(
    sender: str, bootstrap: str, n: int, size: int = 200, kafka_client: str | None = None
) -> dict[str, float]:
    """One sender's ``send_mps`` (messages/s to the last ack) and ``send_cpu_us`` (this
    process's CPU per message)."""
    async with OPENERS[sender](bootstrap, kafka_client) as burst:
        await burst(max(1, n // 10), size)
        cpu = cpu_seconds(os.getpid())
        started = time.perf_counter()
        await burst(n, size)
        elapsed = time.perf_counter() - started
        used = cpu_seconds(os.getpid()) - cpu
    return {"send_mps": n / elapsed, "send_cpu_us": used / n * 1e6}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sending", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--senders", default=",".join(SENDERS))
    parser.add_argument("--kafka-client", choices=["aiokafka", "confluent"])
    args = parser.parse_args(argv)
    senders = [s for s in args.senders.split(",") if s]

    async def run() -> dict[str, list[dict[str, float]]]:
        found: dict[str, list[dict[str, Any]]] = {s: [] for s in senders}
        for rep in range(args.reps):
            shift = rep % len(senders)
            for sender in [*senders[shift:], *senders[:shift]]:
                values = await measure(sender, args.bootstrap, args.n, args.size, args.kafka_client)
                found[sender].append(values)
                print(f"rep {rep + 1} {sender}: {values}", flush=True)
        return found

    found = asyncio.run(run())
    print(f"load average: {os.getloadavg()}")
    for sender, rounds in found.items():
        rate = median([r["send_mps"] for r in rounds])
        cpu = median([r["send_cpu_us"] for r in rounds])
        print(f"{sender}: median {rate:,.0f} msgs/s, {cpu:.1f} µs CPU per message")


if __name__ == "__main__":
    main()
