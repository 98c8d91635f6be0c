"""httpx over kourier: KourierTransport keeps httpx code working, errors included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

import kourier.client
from kourier.client import Client, KourierTransport
from kourier.client.transport import as_httpx_error
from kourier.errors import (
    BrokerError,
    ProtocolError,
    PublishError,
    ReplyTimeout,
    RequestTooLarge,
    ServiceNotFound,
    ServiceUnavailable,
    StreamBroken,
)
from kourier.protocol import Request
from kourier.settings import Settings
from kourier.transports.base import TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import NDJSON, Replies, silent


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=KourierTransport(client), base_url="http://orders"
    ) as http_client:
        yield http_client


async def test_get_reaches_the_service_named_by_the_host(
    http: httpx.AsyncClient, serve: Serve
) -> None:
    """The URL host names the service; path and query travel as given."""
    await serve()
    response = await http.get("/orders/17", params={"expand": "lines", "q": "a b"})
    assert response.status_code == 200
    seen = response.json()
    assert (seen["method"], seen["path"]) == ("GET", "/orders/17")
    assert seen["query"] == "expand=lines&q=a+b"
    assert response.extensions["kourier"]["request_id"]
    assert response.extensions["kourier"]["error_id"] is None


async def test_post_json_and_headers(http: httpx.AsyncClient, serve: Serve) -> None:
    """Body and every header arrive, hop-by-hop ones too (as under uvicorn); host is kept."""
    await serve()
    response = await http.post(
        "/orders",
        json={"item": "book"},
        headers={
            "X-Tenant": "acme",
            "Connection": "keep-alive",
            "TE": "trailers",
            "Proxy-Authorization": "secret",
            "Upgrade": "h2c",
        },
    )
    seen = response.json()
    names = {name for name, _ in seen["headers"]}
    assert ["x-tenant", "acme"] in seen["headers"]
    assert ["host", "orders"] in seen["headers"]
    assert names >= {"connection", "te", "proxy-authorization", "upgrade"}
    assert seen["body"] == '{"item":"book"}'


async def test_key_and_request_id_extensions(http: httpx.AsyncClient, serve: Serve) -> None:
    """extensions={'kourier': {...}} sets the ordering key and the request id."""
    service = await serve()
    response = await http.post(
        "/orders", extensions={"kourier": {"key": "order-17", "request_id": "idem-1"}}
    )
    assert service.requests[0].key == b"order-17"
    assert service.requests[0].id == "idem-1"
    assert response.extensions["kourier"]["request_id"] == "idem-1"


async def test_big_body_is_reassembled(http: httpx.AsyncClient, serve: Serve) -> None:
    """A body split over several items is read whole by httpx."""
    body = b"0123456789" * 500

    async def big(request: Request, replies: Replies) -> None:
        await replies.split(body, 1000)

    await serve(big)
    assert (await http.get("/big")).content == body


async def test_streamed_lines_arrive_as_they_come(
    http: httpx.AsyncClient, client: Client, serve: Serve
) -> None:
    """http.stream() + aiter_lines() sees line 1 before line 3 is published."""
    release = asyncio.Event()

    async def ndjson(request: Request, replies: Replies) -> None:
        await replies.item(0, b'{"n": 1}\n', headers=NDJSON)
        await release.wait()
        await replies.item(1, b'{"n": 2}\n{"n": 3}\n', end=True)

    await serve(ndjson)
    async with http.stream("GET", "/feed") as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.aiter_lines()
        assert await anext(lines) == '{"n": 1}'
        assert not release.is_set()
        release.set()
        assert [line async for line in lines] == ['{"n": 2}', '{"n": 3}']
    assert client.inbox.waiting == 0


async def test_closing_a_stream_early_forgets_the_call(
    http: httpx.AsyncClient, client: Client, serve: Serve
) -> None:
    """Leaving http.stream() before the end closes the call's waiter."""

    async def endless(request: Request, replies: Replies) -> None:
        for seq in range(1000):
            await replies.item(seq, b"line\n")
            await asyncio.sleep(0.001)

    await serve(endless)
    async with http.stream("GET", "/feed") as response:
        async for _ in response.aiter_lines():
            break
    assert client.inbox.waiting == 0


async def test_no_reply_is_a_read_timeout(
    http: httpx.AsyncClient, client: Client, serve: Serve
) -> None:
    """A missing reply raises httpx.ReadTimeout after the read timeout."""
    await serve(silent)
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/", timeout=0.05)
    assert client.inbox.waiting == 0


async def test_stalled_stream_is_a_read_timeout(http: httpx.AsyncClient, serve: Serve) -> None:
    """A stream whose next item is late raises httpx.ReadTimeout while reading."""

    async def stalls(request: Request, replies: Replies) -> None:
        await replies.item(0, b"first\n")

    await serve(stalls)
    async with http.stream("GET", "/", timeout=0.2) as response:
        with pytest.raises(httpx.ReadTimeout):
            await response.aread()


async def test_no_read_timeout_uses_the_default(
    settings: Settings, broker: MemoryBroker, serve: Serve
) -> None:
    """timeout=None in httpx means settings.default_timeout, not forever."""
    await serve(silent)
    fast = settings.replace(default_timeout=0.05)
    async with (
        Client(fast, transport=MemoryTransport(broker)) as client,
        httpx.AsyncClient(transport=KourierTransport(client), base_url="http://orders") as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/", timeout=None)


async def test_broken_reply_is_a_remote_protocol_error(
    http: httpx.AsyncClient, serve: Serve
) -> None:
    """An item missing before the end marker raises httpx.RemoteProtocolError."""

    async def gap(request: Request, replies: Replies) -> None:
        await replies.item(0, b"a")
        await replies.item(2, b"c", end=True)

    await serve(gap)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get("/")


async def test_unknown_service_is_a_connect_error(
    settings: Settings, transport: MemoryTransport, serve: Serve
) -> None:
    """A service with no request topic raises httpx.ConnectError at once, as an unknown
    host does, naming the service and the closest known one; no topic is created."""
    await serve()
    manual = settings.replace(create_topics=False)
    await transport.ensure_topics([TopicSpec(manual.reply_topic, 1)])
    async with (
        Client(manual, transport=transport) as client,
        httpx.AsyncClient(transport=KourierTransport(client), base_url="http://ordres") as http,
    ):
        with pytest.raises(httpx.ConnectError, match="did you mean 'orders'") as caught:
            await http.get("/")
        assert isinstance(caught.value.__cause__, ServiceNotFound)
        assert client.inbox.waiting == 0
    assert settings.request_topic("ordres") not in await transport.topic_names()


async def test_service_without_live_instance_is_a_connect_error(
    client: Client, orders_topic: str
) -> None:
    """A service whose topic exists but has no live instance raises httpx.ConnectError
    (a refused connection) with ServiceUnavailable as its cause, without waiting."""
    async with httpx.AsyncClient(
        transport=KourierTransport(client), base_url="http://orders"
    ) as http:
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.ConnectError, match="no live instance") as caught:
            await http.get("/")
        assert asyncio.get_running_loop().time() - started < 0.5
        assert isinstance(caught.value.__cause__, ServiceUnavailable)


async def test_unsendable_requests_keep_their_errors(
    settings: Settings, broker: MemoryBroker
) -> None:
    """Too large a body and a reserved header raise kourier's own errors through httpx."""
    small = settings.replace(max_request_bytes=10)
    async with (
        Client(small, transport=MemoryTransport(broker)) as client,
        httpx.AsyncClient(transport=KourierTransport(client), base_url="http://orders") as http,
    ):
        with pytest.raises(RequestTooLarge):
            await http.post("/", content=b"x" * 11)
        with pytest.raises(ProtocolError):
            await http.get("/", headers={"kourier-deadline": "0"})
    assert not any(broker.topics.get(small.request_topic("orders"), []))


async def test_error_id_is_in_the_response_extensions(
    http: httpx.AsyncClient, serve: Serve
) -> None:
    """A 500 with an error id keeps it in extensions and raise_for_status works as usual."""

    async def failing(request: Request, replies: Replies) -> None:
        await replies.item(0, b"{}", end=True, status=500, error_id="e9")

    await serve(failing)
    response = await http.get("/")
    assert response.extensions["kourier"]["error_id"] == "e9"
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


def test_error_mapping() -> None:
    """Each kourier error maps to the httpx exception httpx code already catches."""
    request = httpx.Request("GET", "http://orders/")
    assert isinstance(as_httpx_error(ReplyTimeout("t"), request), httpx.ReadTimeout)
    assert isinstance(as_httpx_error(PublishError("p"), request), httpx.WriteError)
    assert isinstance(as_httpx_error(BrokerError("b"), request), httpx.ConnectError)
    assert isinstance(as_httpx_error(StreamBroken("s"), request), httpx.RemoteProtocolError)
    too_large = RequestTooLarge("r")
    assert as_httpx_error(too_large, request) is too_large


def test_exports_are_complete_and_sorted() -> None:
    """kourier.client exports its public names, sorted, and each one exists."""
    names = kourier.client.__all__
    assert names == sorted(names)
    assert set(names) == {
        "Client",
        "ClientStats",
        "Delivery",
        "KourierTransport",
        "ReplyStream",
        "Response",
        "Retry",
    }
    assert all(hasattr(kourier.client, name) for name in names)
