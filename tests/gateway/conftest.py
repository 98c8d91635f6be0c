"""In-process gateway stacks: a service on the in-memory broker, a client, a gateway.

``drive`` calls an ASGI app directly (no server), so a test sees each message the app
sends, when it sends it, and can play a caller that goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from kourier import Client, Service, Settings
from kourier.gateway import Gateway
from kourier.gateway.asgi import ASGIApp, Message
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.conftest import TransportFactory, unique_prefix
from tests.gateway import app as service_app


@dataclass
class Stack:
    """A service ``shop`` and a started client, on one in-memory broker."""

    settings: Settings
    client: Client
    exit: AsyncExitStack

    def gateway(self, **options: Any) -> Gateway:
        return Gateway(self.client, **options)


@asynccontextmanager
async def started_stack(
    settings: Settings, make_transport: TransportFactory
) -> AsyncIterator[Stack]:
    """Service ``shop`` and a started client on the broker ``make_transport`` reaches."""
    service_app.events.clear()
    async with AsyncExitStack() as exit:
        await exit.enter_async_context(
            Service(service_app.app, "shop", settings, transport=make_transport())
        )
        transport = make_transport()
        await transport.start()
        exit.push_async_callback(transport.stop)
        client = await exit.enter_async_context(Client(settings, transport=transport))
        yield Stack(settings, client, exit)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """A stack on the in-memory broker."""
    settings = Settings(
        topic_prefix=unique_prefix(),
        partitions=2,
        reply_partitions=2,
        default_timeout=5.0,
        # Handlers a test walked away from (no cancellation yet) must not hold teardown.
        drain_timeout=1.0,
    )
    broker = MemoryBroker()
    async with started_stack(settings, lambda: MemoryTransport(broker)) as stack:
        yield stack


@pytest.fixture
async def any_stack(settings: Settings, make_transport: TransportFactory) -> AsyncIterator[Stack]:
    """A stack on each backend: in memory, and real Kafka through both client libraries."""
    async with started_stack(settings, make_transport) as stack:
        yield stack


def http(app: ASGIApp) -> httpx.AsyncClient:
    """An httpx client that calls ``app`` in process (it reads whole responses)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@dataclass
class Exchange:
    """What an app sent for one request, each message with the time it was sent."""

    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    complete: bool = False
    #: Set when the first non-empty body chunk is sent.
    body_seen: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)


async def drive(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
    disconnect: Callable[[Exchange], Awaitable[None]] | None = None,
) -> Exchange:
    """Run one HTTP request through ``app``; ``disconnect`` returns when the caller leaves."""
    exchange = Exchange()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnect is None:
            await asyncio.Event().wait()
        else:
            await disconnect(exchange)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            exchange.headers = dict(message["headers"])
        elif message["type"] == "http.response.body":
            exchange.chunks.append((time.monotonic(), message.get("body", b"")))
            if message.get("body"):
                exchange.body_seen.set()
            exchange.complete = not message.get("more_body", False)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"gw"), *(headers or [])],
        "client": ("127.0.0.1", 5000),
        "server": ("gw", 80),
    }
    await app(scope, receive, send)
    return exchange
