"""Where a record's CPU goes inside kourier's service, layer by layer, with no broker.

    python -m bench.layers [--app bench|bare] [--two-way] [--records N] [--reps R]

Runs a ``Service`` in this process on pre-built request records (``POST /events``, or
``POST /echo`` with ``--two-way``, as the benchmark sends them), over a transport that
acknowledges every publish at once, and times each layer from the inside out on fresh
records: the app called by hand (``bench.common.call_asgi``, as ``raw_aiokafka_app``
does), the same through kourier's tracing middleware, ``run_app`` (the ASGI bridge),
``Service._handle_once`` (the per-request flow), ``_handle_request`` (deadline, size and
idempotency checks) and ``_handle`` (decoding, the request-id context). Then the consume
loop (``RequestConsumer``) alone, on a group consumer that hands out pre-built records
and a handler that does nothing: the task per record, order and offset tracking.

Each figure is the median over ``--reps`` of CPU microseconds per record, after one
warm-up pass; a layer's own cost is its difference to the one inside it. These are
private parts of kourier, timed where they are, so this tool changes with them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import statistics
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, cast

from bench.common import ECHO_BODY, JSON_CONTENT, call_asgi
from kourier import Settings, protocol
from kourier.cli import positive_int
from kourier.protocol import Reply, ReplyAddress, Request
from kourier.server.asgi import build_scope, run_app
from kourier.server.consumer import RequestConsumer
from kourier.server.serve import Service
from kourier.transports.base import GroupConsumer, Record, TopicInfo, TopicPartition
from kourier.transports.memory import MemoryTransport

SERVICE = "bench"
TOPIC = "kourier.bench.requests"
LAYERS = (
    "app, called by hand",
    "+ tracing middleware",
    "+ ASGI bridge (run_app)",
    "+ per-request flow (_handle_once)",
    "+ deadline, size, idempotency (_handle_request)",
    "+ decode, request-id context (_handle)",
)


class InstantAcks(MemoryTransport):
    """Publishes nowhere; every publish is acknowledged at once."""

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> Awaitable[None]:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicInfo]:
        # Every reply address exists: the service checks one before running the app.
        return {name: TopicInfo(name, 1, 1) for name in names}


def records(n: int, two_way: bool) -> list[Record]:
    """``n`` request records as a kourier caller encodes them, each with its own id."""
    out = []
    for offset in range(n):
        request = Request(
            protocol.new_request_id(),
            "POST",
            "/echo" if two_way else "/events",
            headers=list(JSON_CONTENT) if two_way else [],
            body=ECHO_BODY if two_way else b"x" * 200,
            reply_to=ReplyAddress("kourier.replies", 0) if two_way else None,
            deadline_ms=protocol.now_ms() + 600_000,
        )
        key, value, headers = protocol.encode_request(request)
        out.append(Record(TOPIC, 0, offset, key, value, tuple(headers), 0))
    return out


async def _discard_body(status: int, body: bytes, more: bool) -> None:
    pass


async def _discard_reply(reply: Reply) -> None:
    pass


async def service_layers(app: Any, two_way: bool, n: int, reps: int) -> dict[str, float]:
    """CPU µs per record through each layer of ``Service`` (the median of ``reps``)."""
    service = Service(app, SERVICE, Settings(), transport=InstantAcks())
    await service._lifespan.startup()
    try:
        runs: dict[str, list[float]] = {layer: [] for layer in LAYERS}
        for rep in range(reps + 1):  # the first is the warm-up
            for layer in LAYERS:
                batch = records(n, two_way)
                pairs = [(protocol.decode_request(r.key, r.value, r.headers), r) for r in batch]
                gc.collect()
                started = time.process_time()
                await _through(service, app, layer, pairs)
                if rep:
                    runs[layer].append((time.process_time() - started) / n * 1e6)
        return {layer: statistics.median(values) for layer, values in runs.items()}
    finally:
        await service._lifespan.shutdown()


async def _through(
    service: Service, app: Any, layer: str, pairs: list[tuple[Request, Record]]
) -> None:
    if layer == LAYERS[0] or layer == LAYERS[1]:
        served: Any = app if layer == LAYERS[0] else service.app
        for request, _ in pairs:
            scope = cast(dict[str, Any], build_scope(request, SERVICE, None))  # it is one
            await call_asgi(served, scope, request.body, _discard_body)
    elif layer == LAYERS[2]:
        for request, _ in pairs:
            await run_app(service.app, request, SERVICE, _discard_reply)
    elif layer == LAYERS[3]:
        for request, record in pairs:
            await service._handle_once(request, record)
    elif layer == LAYERS[4]:
        for request, record in pairs:
            await service._handle_request(request, record)
    else:
        for _, record in pairs:
            await service._handle(record)


class PrebuiltConsumer(GroupConsumer):
    """Hands out pre-built records of one partition, as many as asked for at a time."""

    def __init__(
        self, batch: list[Record], on_assigned: Callable[[set[TopicPartition]], Awaitable[None]]
    ) -> None:
        self._records = batch
        self._next = 0
        self._on_assigned = on_assigned
        self.drained = asyncio.Event()

    async def start(self) -> None:
        await self._on_assigned({(TOPIC, 0)})

    async def stop(self) -> None:
        pass

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        if self._next >= len(self._records):
            self.drained.set()
            await asyncio.sleep(timeout)
            return []
        taken = self._records[self._next : self._next + max_records]
        self._next += len(taken)
        return taken

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {(TOPIC, 0)}

    async def lag(self) -> dict[TopicPartition, int]:
        return {(TOPIC, 0): len(self._records) - self._next}

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        pass

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        pass


class PrebuiltTransport(InstantAcks):
    def __init__(self, batch: list[Record]) -> None:
        super().__init__()
        self._batch = batch
        self.consumer: PrebuiltConsumer | None = None

    def group_consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assigned: Any = None,
        on_revoked: Any = None,
    ) -> GroupConsumer:
        self.consumer = PrebuiltConsumer(self._batch, on_assigned)
        return self.consumer


async def _nothing(record: Record) -> None:
    pass


async def consume_loop(n: int, reps: int, concurrency: int = 64) -> float:
    """CPU µs per record of the consume loop alone (a handler that does nothing)."""
    runs = []
    for rep in range(reps + 1):
        transport = PrebuiltTransport(records(n, two_way=False))
        loop = RequestConsumer(
            transport,
            [TOPIC],
            "bench",
            _nothing,
            concurrency=concurrency,
            commit_interval=1.0,
            drain_timeout=1.0,
        )
        await loop.start()
        assert transport.consumer is not None
        gc.collect()
        started = time.process_time()
        await transport.consumer.drained.wait()
        elapsed = time.process_time() - started
        await loop.stop()
        if loop.completed != n:
            raise RuntimeError(f"the consume loop finished {loop.completed} of {n} records")
        if rep:
            runs.append(elapsed / n * 1e6)
    return statistics.median(runs)


def load_app(name: str) -> Any:
    """``bench.app`` (FastAPI) or ``bench.bare_app`` (the same routes, no framework)."""
    module = importlib.import_module("bench.app" if name == "bench" else "bench.bare_app")
    return module.app


async def measure(app_name: str, two_way: bool, n: int, reps: int) -> list[tuple[str, float]]:
    layers = await service_layers(load_app(app_name), two_way, n, reps)
    rows = list(layers.items())
    rows.append(
        ("consume loop alone, per record (task, order, offsets)", await consume_loop(n, reps))
    )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--app", choices=("bench", "bare"), default="bench")
    parser.add_argument("--two-way", action="store_true")
    parser.add_argument("--records", type=positive_int, default=20_000, help="per layer and pass")
    parser.add_argument("--reps", type=positive_int, default=3, help="timed passes (median)")
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args.app, args.two_way, args.records, args.reps))
    kind = "two-way POST /echo" if args.two_way else "one-way POST /events"
    print(f"{kind}, bench.{args.app}_app" if args.app == "bare" else f"{kind}, bench.app")
    previous = None
    for label, us in rows:
        own = f"  ({us - previous:+.1f})" if previous is not None and label.startswith("+") else ""
        print(f"  {label:58s} {us:7.1f} µs{own}")
        previous = us


if __name__ == "__main__":
    main()
