"""The caller's own cost, A/B in one sitting: ``python -m bench.caller --bootstrap HOST:PORT``.

Two comparisons, each alternated round by round in one process (A, B, A, B...) so the
machine's load falls on both sides alike; the report gives every round and the medians.

* ``one-way``: ``n`` x 200 B one-way messages on one topic, sending side only (nobody
  consumes them): a raw aiokafka producer as a user would write it with kourier's
  acks, linger, idempotence and request size (no compression, as kourier), sending
  each value and then awaiting every ack, against ``Client.enqueue`` of each and one
  ``Client.flush()``. Messages per second and this process's CPU per message (user +
  system, all threads).
* ``two-way``: ``POST /echo`` with 64 calls in flight against a ``kourier run
  bench.bare_app:app`` service in a process of its own, through the native ``Client``
  and through ``httpx.AsyncClient`` over ``KourierTransport``, the same calls
  ``bench.run``'s ``kourier`` and ``kourier_httpx`` targets make. Calls per second and
  the CPU per call of this process (the caller) and of the service. After each httpx
  round, "httpx alone": the same calls through httpx with a transport that answers at
  once, no Kafka, one at a time: what httpx itself costs per call, the floor under
  the httpx caller's CPU.

To compare two versions of kourier, run the command once per version (``PYTHONPATH``
pointing at the other tree's ``src``), alternating the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import httpx
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from bench.common import CALL_TIMEOUT_S, ECHO_BODY, ServiceProcess, cpu_seconds, echo_reply
from bench.targets.kourier import (
    JSON_HEADERS,
    SERVICE,
    KourierBench,
    service_process,
    session_settings,
)
from kourier import Client, KourierTransport, Settings, protocol
from kourier.client.replies import ReplyInbox
from kourier.registry import InstanceInfo, registry_topic_spec
from kourier.registry import encode as encode_instance
from kourier.transports.base import Record, TopicSpec
from kourier.transports.kafka import RECORD_OVERHEAD_BYTES
from kourier.transports.memory import MemoryBroker, MemoryTransport

BARE_APP = "bench.bare_app:app"
PAYLOAD_BYTES = 200
JSON_REPLY = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Round:
    """One measured run of one side: its rate and this process's CPU per unit."""

    side: str
    rate: float
    caller_us: float
    service_us: float = float("nan")


def _process_cpu() -> float:
    return time.process_time()


async def _raw_one_way(settings: Settings, topic: str, n: int) -> float:
    """Seconds to send ``n`` values with a raw aiokafka producer and have every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        linger_ms=settings.linger_ms,
        max_request_size=max(settings.max_request_bytes, settings.max_reply_bytes)
        + RECORD_OVERHEAD_BYTES,
    )
    await producer.start()
    try:
        payload = b"x" * PAYLOAD_BYTES
        await (await producer.send(topic, payload))  # connected and warm, as kourier's
        started = time.perf_counter()
        acks = [await producer.send(topic, payload) for _ in range(n)]
        await asyncio.gather(*acks)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def _kourier_one_way(client: Client, n: int) -> float:
    """Seconds to ``enqueue`` ``n`` one-way messages and ``flush`` them."""
    payload = b"x" * PAYLOAD_BYTES
    started = time.perf_counter()
    for _ in range(n):
        await client.enqueue(SERVICE, "POST", "/events", content=payload)
    await client.flush()
    return time.perf_counter() - started


async def _measured(side: str, n: int, run: Callable[[], Awaitable[float]]) -> Round:
    cpu = _process_cpu()
    seconds = await run()
    used = _process_cpu() - cpu
    return Round(side, n / seconds, used / n * 1e6)


async def one_way(bootstrap: str, n: int, rounds: int) -> list[Round]:
    """Raw producer and ``enqueue`` + ``flush``, alternated, on one topic."""
    results: list[Round] = []
    async with session_settings(bootstrap, None) as env:
        settings = Settings.from_env(env)
        topic = settings.request_topic(SERVICE)
        async with Client(settings) as client:
            await client.send(SERVICE, "POST", "/events", content=b"warm-up")
            for i in range(rounds * 2):
                if i % 2 == 0:
                    results.append(
                        await _measured("raw aiokafka", n, lambda: _raw_one_way(settings, topic, n))
                    )
                else:
                    results.append(
                        await _measured("enqueue+flush", n, lambda: _kourier_one_way(client, n))
                    )
                _print(results[-1], "msgs/s", "µs/msg")
    return results


async def two_way(bootstrap: str, seconds: float, inflight: int, rounds: int) -> list[Round]:
    """Native ``Client`` and httpx over ``KourierTransport``, alternated, one service."""
    results: list[Round] = []
    async with session_settings(bootstrap, None) as env:
        service = service_process(env, app=BARE_APP)
        client = Client(Settings.from_env(env))
        await asyncio.gather(service.start(), client.start())
        try:
            async with httpx.AsyncClient(
                transport=KourierTransport(client),
                base_url=f"http://{SERVICE}",
                timeout=CALL_TIMEOUT_S,
            ) as http:
                sides = [
                    KourierBench("native", client, service),
                    KourierBench("httpx", client, service, http),
                ]
                for side in sides:  # warm both paths and the service
                    await side.concurrent(inflight, seconds=0.5, warmup_s=0.0)
                for i in range(rounds * 2):
                    side = sides[i % 2]
                    assert service.pid is not None
                    cpu, service_cpu = _process_cpu(), cpu_seconds(service.pid)
                    result = await side.concurrent(inflight, seconds=seconds, warmup_s=0.5)
                    used = _process_cpu() - cpu
                    service_used = cpu_seconds(service.pid) - service_cpu
                    calls = max(result.completed, 1)
                    results.append(
                        Round(
                            side.name, result.rate, used / calls * 1e6, service_used / calls * 1e6
                        )
                    )
                    _print(results[-1], "req/s", "µs/call")
                    if i % 2 == 1:
                        alone = await httpx_alone(5_000)
                        results.append(Round("httpx alone", float("nan"), alone))
                        print(f"  httpx alone (instant transport, no Kafka): {alone:.1f} µs/call")
        finally:
            await client.stop()
            await service.stop()
    return results


class InstantTransport(httpx.AsyncBaseTransport):
    """Answers every request at once with the echo's reply: httpx's own cost, no kourier."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return httpx.Response(200, headers=JSON_HEADERS, content=echo_reply(ECHO_BODY))


async def httpx_alone(calls: int) -> float:
    """CPU µs per ``POST /echo`` through httpx with an instant transport, as ``call`` does it."""
    async with httpx.AsyncClient(
        transport=InstantTransport(), base_url=f"http://{SERVICE}", timeout=CALL_TIMEOUT_S
    ) as http:
        cpu = _process_cpu()
        for _ in range(calls):
            reply = await http.post("/echo", content=ECHO_BODY, headers=JSON_HEADERS)
            reply.raise_for_status()
            if reply.json().get("ok") is not True:
                raise RuntimeError(f"unexpected reply {reply.text[:80]!r}")
        return (_process_cpu() - cpu) / calls * 1e6


class InstantReplier(MemoryTransport):
    """The in-memory broker, except that a request is answered as it is published: its
    reply goes straight to the client's reply inbox on the next turn of the loop. What
    a call costs then is the caller's own code, with no broker and no service."""

    def __init__(self) -> None:
        super().__init__(MemoryBroker())
        self.inbox: ReplyInbox | None = None
        self._offset = 0

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        if self.inbox is None or not topic.endswith(".requests"):
            return await super().publish(
                topic, value, key=key, headers=headers, partition=partition
            )
        request = protocol.decode_request(key, value, headers)
        reply = protocol.Reply(
            request.id, 0, echo_reply(request.body), status=200, headers=JSON_REPLY
        )
        reply_key, reply_value, reply_headers = protocol.encode_reply(reply)
        self._offset += 1
        record = Record("replies", 0, self._offset, reply_key, reply_value, reply_headers, 0)
        loop = asyncio.get_running_loop()
        loop.call_soon(self.inbox.route, record)
        acknowledged = loop.create_future()
        acknowledged.set_result(None)
        return acknowledged


async def in_process(calls: int, rounds: int) -> list[Round]:
    """CPU per sequential ``POST /echo`` through the native client and through httpx over
    ``KourierTransport``, both on an ``InstantReplier``; then httpx alone."""
    settings = Settings(partitions=1, reply_partitions=1)
    transport = InstantReplier()
    await transport.ensure_topics([TopicSpec(settings.request_topic(SERVICE), 1)])
    await _announce(transport, settings)
    results: list[Round] = []
    async with Client(settings, transport=transport) as client:
        transport.inbox = client.inbox
        async with httpx.AsyncClient(
            transport=KourierTransport(client), base_url=f"http://{SERVICE}", timeout=10
        ) as http:
            sides = [
                KourierBench("native", client, cast(ServiceProcess, None)),
                KourierBench("httpx", client, cast(ServiceProcess, None), http),
            ]
            for side in sides:
                for _ in range(200):
                    await side.call()
            for i in range(rounds * 2):
                side = sides[i % 2]
                cpu = _process_cpu()
                started = time.perf_counter()
                for _ in range(calls):
                    await side.call()
                used = _process_cpu() - cpu
                results.append(
                    Round(side.name, calls / (time.perf_counter() - started), used / calls * 1e6)
                )
                _print(results[-1], "calls/s", "µs/call")
                if i % 2 == 1:
                    alone = await httpx_alone(calls)
                    results.append(Round("httpx alone", float("nan"), alone))
                    print(f"  httpx alone (instant transport, no kourier): {alone:.1f} µs/call")
    return results


async def _announce(transport: MemoryTransport, settings: Settings) -> None:
    """Register one live instance of the bench service, as ``kourier run`` would."""
    await transport.ensure_topics([registry_topic_spec(settings)])
    now = time.time()
    info = InstanceInfo(
        service=SERVICE,
        instance_id="instant",
        host="bench",
        pid=os.getpid(),
        kourier_version="bench",
        app_version=None,
        routes=(),
        started_at=now,
        heartbeat_at=now,
        heartbeat_interval=3600.0,
    )
    key, value = encode_instance(info)
    await (await transport.publish(registry_topic_spec(settings).name, value, key=key))


def _print(result: Round, unit: str, per: str) -> None:
    service = "" if result.service_us != result.service_us else f", service {result.service_us:.0f}"
    print(
        f"  {result.side:>14}: {result.rate:>9,.0f} {unit}, caller {result.caller_us:.1f}"
        f"{service} {per}",
        flush=True,
    )


def summary(results: list[Round]) -> None:
    sides = list(dict.fromkeys(r.side for r in results))
    medians = {}
    for side in sides:
        mine = [r for r in results if r.side == side]
        rate = statistics.median(r.rate for r in mine)
        cpu = statistics.median(r.caller_us for r in mine)
        medians[side] = (rate, cpu)
        service = [r.service_us for r in mine if r.service_us == r.service_us]
        extra = f", service {statistics.median(service):.0f} µs" if service else ""
        shown = "" if rate != rate else f"{rate:>9,.0f}/s, "
        print(f"  median {side:>14}: {shown}caller {cpu:.1f} µs{extra}")
    if len(sides) >= 2:
        (rate_a, cpu_a), (rate_b, cpu_b) = medians[sides[0]], medians[sides[1]]
        print(
            f"  {sides[1]} ÷ {sides[0]}: rate {rate_b / rate_a:.2f}x, "
            f"caller CPU {cpu_b / cpu_a:.2f}x"
        )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.caller", description=__doc__)
    parser.add_argument(
        "what", nargs="?", choices=["one-way", "two-way", "in-process", "all"], default="all"
    )
    parser.add_argument("--calls", type=int, default=5_000, help="in-process calls per round")
    parser.add_argument("--bootstrap", default=os.environ.get("KOURIER_BOOTSTRAP_SERVERS"))
    parser.add_argument("--messages", type=int, default=20_000, help="one-way messages per round")
    parser.add_argument("--seconds", type=float, default=3.0, help="two-way window per round")
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    args = parser.parse_args(argv)
    if not args.bootstrap and args.what != "in-process":
        parser.error("--bootstrap or KOURIER_BOOTSTRAP_SERVERS is needed")
    print(f"load average before: {_load()}", flush=True)
    if args.what in ("one-way", "all"):
        print(f"one-way, {args.messages:,} x {PAYLOAD_BYTES} B per round:", flush=True)
        summary(await one_way(args.bootstrap, args.messages, args.rounds))
    if args.what in ("two-way", "all"):
        print(f"two-way POST /echo, {args.inflight} in flight, {args.seconds} s per round:")
        summary(await two_way(args.bootstrap, args.seconds, args.inflight, args.rounds))
    if args.what in ("in-process", "all"):
        print(f"in process, instant replier, {args.calls:,} sequential POST /echo per round:")
        summary(await in_process(args.calls, args.rounds))
    print(f"load average after: {_load()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
