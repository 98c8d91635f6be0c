"""A scripted stand-in for a service, so the caller wing is tested without the server wing.

It consumes a request topic with a group consumer, as a real service does, decodes each
record with ``protocol.decode_request`` and runs a script (a ``Handler``) that publishes
whatever reply records the test needs: a whole reply, a stream, late, never, out of
order, twice, or to another id. Each request is handled in its own task. The handler
factories at the end script a service that fails a caller's first attempts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from kourier import protocol
from kourier._aio import cancel_and_wait
from kourier.protocol import Reply, Request
from kourier.registry import InstanceInfo, encode, registry_topic_spec
from kourier.settings import Settings
from kourier.transports.base import GroupConsumer, TopicSpec, Transport

JSON = [(b"content-type", b"application/json")]
NDJSON = [(b"content-type", b"application/x-ndjson")]


class Replies:
    """Publishes the reply records of one request to its reply address."""

    def __init__(self, transport: Transport, request: Request, responder: str | None) -> None:
        self.transport = transport
        self.request = request
        self.responder = responder

    async def item(
        self,
        seq: int,
        body: bytes = b"",
        *,
        end: bool = False,
        status: int | None = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
        error_id: str | None = None,
        request_id: str | None = None,
    ) -> None:
        if seq == 0 and status is None:
            status = 200
        reply = Reply(
            request_id or self.request.id,
            seq,
            body,
            end=end,
            status=status,
            headers=list(headers),
            error_id=error_id,
            responder=self.responder,
        )
        key, value, record_headers = protocol.encode_reply(reply)
        await self.raw(value, record_headers, key=key)

    async def whole(
        self, body: bytes = b"", *, status: int = 200, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """A complete reply in one record."""
        await self.item(0, body, end=True, status=status, headers=headers)

    async def json(self, value: Any, *, status: int = 200) -> None:
        await self.whole(json.dumps(value).encode(), status=status, headers=JSON)

    async def split(self, body: bytes, size: int, *, status: int = 200) -> None:
        """One reply body cut into items of ``size`` bytes, as the server does for big ones."""
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        for seq, chunk in enumerate(chunks):
            await self.item(seq, chunk, end=seq == len(chunks) - 1, status=status)

    async def raw(
        self, value: bytes, headers: Sequence[tuple[str, bytes]], *, key: bytes | None = None
    ) -> None:
        """Any record at all on the reply partition, well-formed or not."""
        to = self.request.reply_to
        assert to is not None, "a one-way message has no reply address"
        ack = await self.transport.publish(
            to.topic, value, key=key, headers=headers, partition=to.partition
        )
        await ack


Handler = Callable[[Request, Replies], Coroutine[Any, Any, None]]


async def echo(request: Request, replies: Replies) -> None:
    """Reply with a JSON description of the request."""
    await replies.json(describe(request))


async def silent(request: Request, replies: Replies) -> None:
    """Never reply."""


def describe(request: Request) -> dict[str, Any]:
    return {
        "id": request.id,
        "attempt": request.attempt,
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": [[n.decode(), v.decode()] for n, v in request.headers],
        "body": request.body.decode(),
        "key": request.key.decode() if request.key is not None else None,
        "deadline_ms": request.deadline_ms,
    }


class FakeService:
    """Consumes ``topic`` in ``group`` and answers each request with ``handler``."""

    def __init__(
        self,
        transport: Transport,
        settings: Settings,
        handler: Handler = echo,
        *,
        service: str = "orders",
        topic: str | None = None,
        group: str | None = None,
        responder: str | None = None,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self.handler = handler
        self.service = service
        self.topic = topic or settings.request_topic(service)
        self.group = group or settings.group_for(service)
        self.responder = responder
        self.requests: list[Request] = []
        self._consumer: GroupConsumer | None = None
        self._loop: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        spec = TopicSpec(self.topic, self.settings.partitions)
        await self.transport.ensure_topics([spec])
        self._consumer = self.transport.group_consumer([self.topic], self.group)
        await self._consumer.start()
        self._loop = asyncio.create_task(self._consume(self._consumer))
        if "." not in self.service:
            await announce(self.transport, self.settings, self.service)

    async def stop(self) -> None:
        await cancel_and_wait(self._loop, *self._handlers)
        if self._consumer is not None:
            await self._consumer.stop()

    async def received(self, count: int = 1) -> list[Request]:
        """Wait until ``count`` requests have come in."""
        while len(self.requests) < count:
            self._arrived.clear()
            await self._arrived.wait()
        return self.requests

    async def __aenter__(self) -> FakeService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _consume(self, consumer: GroupConsumer) -> None:
        while True:
            for record in await consumer.fetch(100, 0.5):
                request = protocol.decode_request(record.key, record.value, record.headers)
                self.requests.append(request)
                self._arrived.set()
                replies = Replies(self.transport, request, self.responder)
                task = asyncio.create_task(self.handler(request, replies))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)


async def announce(
    transport: Transport,
    settings: Settings,
    service: str,
    *,
    heartbeat_at: float | None = None,
    interval: float = 3600.0,
    instance_id: str | None = None,
) -> InstanceInfo:
    """Register one instance of ``service`` in the registry, as a running service does
    (live for 3 heartbeat ``interval``s from ``heartbeat_at``, default now)."""
    await transport.ensure_topics([registry_topic_spec(settings)])
    now = time.time()
    info = InstanceInfo(
        service=service,
        instance_id=instance_id or f"fake{next(_instances)}",
        host="test",
        pid=1,
        kourier_version="test",
        app_version=None,
        routes=(),
        started_at=now,
        heartbeat_at=now if heartbeat_at is None else heartbeat_at,
        heartbeat_interval=interval,
    )
    key, value = encode(info)
    await (await transport.publish(registry_topic_spec(settings).name, value, key=key))
    return info


_instances = itertools.count(1)


async def ensure_service(transport: Transport, settings: Settings, service: str = "orders") -> None:
    """Create ``service``'s request topic and announce a live instance, with nobody
    consuming: what a test that scripts the broker needs for a two-way call to go out."""
    await transport.ensure_topics([TopicSpec(settings.request_topic(service), 1)])
    await announce(transport, settings, service)


# -- services that fail the first attempts of a request id ---------------------------


def ignore_first(count: int = 1, then: Handler = echo) -> Handler:
    """Drop the first ``count`` deliveries of each request id; answer later ones with ``then``."""
    seen: Counter[str] = Counter()

    async def handler(request: Request, replies: Replies) -> None:
        seen[request.id] += 1
        if seen[request.id] > count:
            await then(request, replies)

    return handler


def status_first(status: int, count: int = 1, then: Handler = echo) -> Handler:
    """Answer the first ``count`` deliveries of each id with ``status``; later ones, ``then``."""
    seen: Counter[str] = Counter()

    async def handler(request: Request, replies: Replies) -> None:
        seen[request.id] += 1
        if seen[request.id] > count:
            await then(request, replies)
        else:
            await replies.json({"attempt": request.attempt}, status=status)

    return handler
