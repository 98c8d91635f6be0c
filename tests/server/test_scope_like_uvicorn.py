"""The app sees the scope uvicorn would give it: the same app, served both ways, compared.

uvicorn serves the app over real HTTP on a loopback port; kourier serves it over the
transport under test (in memory, and real Kafka through both client libraries). Both
run with the root path ``/api``; the app reports what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.middleware.httpsredirect import HTTPSRedirectMiddleware

from kourier import Client, KourierTransport, Service, Settings
from kourier.protocol import ReplyAddress
from kourier.protocol import Request as Envelope
from kourier.server.asgi import ONE_WAY_CLIENT, build_scope
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.conftest import TransportFactory
from tests.scope_app import app

pytestmark = pytest.mark.timeout(60)

ROOT = "/api"


HEADERS = {"x-tenant": "acme", "connection": "keep-alive", "te": "trailers"}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # pytest keeps its own signal handlers


@contextlib.asynccontextmanager
async def under_uvicorn() -> AsyncIterator[str]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        root_path=ROOT,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn stopped while starting"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def seen_under_uvicorn() -> dict[str, Any]:
    async with under_uvicorn() as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/where/x%20y?a=1&b=two", headers=HEADERS)
        response.raise_for_status()
        seen: dict[str, Any] = response.json()
        return seen


def without_host(headers: list[list[str]]) -> list[list[str]]:
    # The host differs by nature (127.0.0.1:port against the service name).
    return [h for h in headers if h[0] != "host" and not h[0].startswith("trace")]


@pytest.fixture
async def kourier_client(
    settings: Settings, make_transport: TransportFactory
) -> AsyncIterator[Client]:
    root_settings = settings.replace(root_path=ROOT)
    async with (
        Service(app, "orders", root_settings, transport=make_transport()),
        _client(settings, make_transport) as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def _client(settings: Settings, make_transport: TransportFactory) -> AsyncIterator[Client]:
    transport = make_transport()
    await transport.start()
    try:
        async with Client(settings, transport=transport) as client:
            yield client
    finally:
        await transport.stop()


async def test_httpx_through_kourier_sees_what_uvicorn_gives(kourier_client: Client) -> None:
    """Through httpx, root_path, path, query, scheme, client and headers match uvicorn's."""
    expected = await seen_under_uvicorn()
    async with httpx.AsyncClient(
        transport=KourierTransport(kourier_client), base_url="http://orders"
    ) as http:
        response = await http.get("/where/x%20y?a=1&b=two", headers=HEADERS)
    seen = response.json()
    for field in ("root_path", "path", "raw_path", "query", "scheme", "url_path"):
        assert seen[field] == expected[field], field
    assert seen["client_host_is_text"] and seen["client_port_is_int"]
    assert expected["client_host_is_text"] and expected["client_port_is_int"]
    assert without_host(seen["headers"]) == without_host(expected["headers"])
    assert ["host", "orders"] in seen["headers"]
    assert seen["link"] == "http://orders/api/where/x"
    assert expected["link"].endswith("/api/where/x")


async def test_native_client_sees_the_same_scope(kourier_client: Client) -> None:
    """The native client's call gives the app the same root_path, path, query and client."""
    expected = await seen_under_uvicorn()
    response = await kourier_client.request(
        "orders", "GET", "/where/x%20y", params={"a": "1", "b": "two"}, headers=HEADERS
    )
    seen = response.json()
    for field in ("root_path", "path", "raw_path", "query", "scheme", "url_path"):
        assert seen[field] == expected[field], field
    assert seen["client_host_is_text"] and seen["client_port_is_int"]
    assert without_host(seen["headers"]) == list(map(list, HEADERS.items()))


async def test_https_in_the_url_reaches_the_app(kourier_client: Client) -> None:
    """An https:// URL through httpx, or scheme='https' on the native client, is the
    app's scheme, and its absolute URLs use it."""
    async with httpx.AsyncClient(
        transport=KourierTransport(kourier_client), base_url="https://orders"
    ) as http:
        through_httpx = (await http.get("/where/x")).json()
    native = (await kourier_client.request("orders", "GET", "/where/x", scheme="https")).json()
    plain = (await kourier_client.request("orders", "GET", "/where/x")).json()
    assert through_httpx["scheme"] == native["scheme"] == "https"
    assert through_httpx["link"] == native["link"] == "https://orders/api/where/x"
    assert plain["scheme"] == "http"


def test_client_is_the_reply_address_or_one_way() -> None:
    """A two-way request's client is its reply address; a one-way message's is fixed."""
    two_way = Envelope("1", "GET", "/", reply_to=ReplyAddress("kourier.replies", 3))
    one_way = Envelope("2", "POST", "/")
    assert build_scope(two_way, "orders", None)["client"] == ("kourier.replies:3", 0)
    assert build_scope(one_way, "orders", None)["client"] == ONE_WAY_CLIENT


def test_scope_headers_are_a_copy() -> None:
    """Middleware that edits the scope's headers does not change the request a retry uses."""
    request = Envelope("1", "GET", "/", headers=[(b"host", b"x")])
    build_scope(request, "orders", None)["headers"].append((b"x-added", b"1"))
    assert request.headers == [(b"host", b"x")]


def test_no_root_path_leaves_the_path_alone() -> None:
    """Without a root path, path and raw_path are the caller's, root_path is empty."""
    scope = build_scope(Envelope("1", "GET", "/a%2Fb?q=1"), "orders", None)
    assert (scope["root_path"], scope["path"], scope["raw_path"]) == ("", "/a/b", b"/a%2Fb")


async def test_openapi_servers_and_https_redirects_see_the_scope() -> None:
    """FastAPI's OpenAPI names the root path as its server; HTTPSRedirectMiddleware lets
    https:// callers through and redirects http:// ones once, as behind a TLS proxy."""
    api = FastAPI()
    api.add_middleware(HTTPSRedirectMiddleware)

    @api.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    broker = MemoryBroker()
    settings = Settings(root_path=ROOT)
    async with (
        Service(api, "orders", settings, transport=MemoryTransport(broker)),
        Client(settings, transport=MemoryTransport(broker)) as client,
    ):
        async with httpx.AsyncClient(
            transport=KourierTransport(client), base_url="https://orders"
        ) as http:
            assert (await http.get("/ping")).json() == {"pong": "yes"}
            assert (await http.get("/openapi.json")).json()["servers"] == [{"url": ROOT}]
        async with httpx.AsyncClient(
            transport=KourierTransport(client), base_url="http://orders"
        ) as http:
            redirect = await http.get("/ping")
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "https://orders/api/ping"
