"""Errors say what to do: a timeout names its call and the knobs, an unreachable broker
names the setting and the local broker command."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from kourier import Client, KourierTransport, ReplyTimeout, Service, Settings
from kourier.errors import BrokerError
from kourier.server.asgi import Receive, Scope, Send
from kourier.transports import kafka_transport
from tests.conftest import TransportFactory

pytestmark = pytest.mark.timeout(60)


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers /slow after 2 s; streams /drip's first item at once and the second late."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] == "/drip":
        await send({"type": "http.response.body", "body": b"one\n", "more_body": True})
    await asyncio.sleep(2)
    await send({"type": "http.response.body", "body": b"late"})


@pytest.fixture
async def client(settings: Settings, make_transport: TransportFactory) -> AsyncIterator[Client]:
    transport = make_transport()
    await transport.start()
    try:
        async with (
            Service(slow_app, "orders", settings, transport=make_transport()),
            Client(settings, transport=transport) as started,
        ):
            yield started
    finally:
        await transport.stop()


def assert_says_what_to_do(message: str, call: str, seconds: str) -> None:
    assert call in message
    assert f"timeout {seconds} s" in message
    for knob in ("timeout=", "KOURIER_DEFAULT_TIMEOUT", "--timeout"):
        assert knob in message, knob


async def test_a_timeout_names_the_call_and_the_knobs(client: Client) -> None:
    """ReplyTimeout names service, method, path, the timeout and how to change it."""
    with pytest.raises(ReplyTimeout) as info:
        await client.request("orders", "get", "/slow", timeout=0.3)
    assert_says_what_to_do(str(info.value), "orders GET /slow", "0.3")
    assert (info.value.service, info.value.method, info.value.path) == ("orders", "get", "/slow")
    assert info.value.timeout == 0.3


async def test_an_httpx_read_timeout_says_the_same(client: Client) -> None:
    """Through httpx the ReadTimeout carries the same words."""
    async with httpx.AsyncClient(
        transport=KourierTransport(client), base_url="http://orders", timeout=0.3
    ) as http:
        with pytest.raises(httpx.ReadTimeout) as info:
            await http.post("/slow", content=b"x")
    assert_says_what_to_do(str(info.value), "orders POST /slow", "0.3")


async def test_a_late_streamed_item_names_the_call(client: Client) -> None:
    """A streamed item that comes too late names the call and says it was a later item."""
    # A client's first two-way call reads the registry first (on confluent-kafka about
    # 0.5 s: the first fetch of a reader), which is not what this test times.
    await client.services()
    async with client.stream("orders", "GET", "/drip", timeout=0.5) as reply:
        items = reply.__aiter__()
        assert await items.__anext__() == b"one\n"
        with pytest.raises(ReplyTimeout) as info:
            await items.__anext__()
    assert_says_what_to_do(str(info.value), "orders GET /drip", "0.5")
    assert "the next streamed item" in str(info.value)


@pytest.mark.parametrize("library", ["aiokafka", "confluent"])
async def test_an_unreachable_broker_says_how_to_reach_one(library: str) -> None:
    """Both Kafka transports name KOURIER_BOOTSTRAP_SERVERS and 'kourier kafka start'."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        transport = kafka_transport(
            Settings(bootstrap_servers=f"127.0.0.1:{port}", kafka_client=library)
        )
        with pytest.raises(BrokerError) as info:
            await transport.start()
    message = str(info.value)
    assert f"cannot connect to Kafka at 127.0.0.1:{port}" in message
    assert "KOURIER_BOOTSTRAP_SERVERS" in message
    assert "kourier kafka start" in message
