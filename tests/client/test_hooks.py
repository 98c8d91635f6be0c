"""Caller hooks: request hooks change a call before it is sent, response hooks see answers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from kourier import protocol
from kourier.client import Client, KourierTransport, ReplyStream, Response, Retry
from kourier.errors import ProtocolError, SettingsError
from kourier.protocol import Request
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import ignore_first


def add_auth(request: Request) -> None:
    request.headers.append((b"authorization", b"Bearer t0ken"))


def published(broker: MemoryBroker, settings: Settings) -> list[Request]:
    logs = broker.topics.get(settings.request_topic("orders"), [])
    return [protocol.decode_request(r.key, r.value, r.headers) for log in logs for r in log]


async def test_auth_header_hook_reaches_the_service(
    settings: Settings, transport: MemoryTransport, serve: Serve
) -> None:
    """A sync request hook's header is in the request the service receives."""
    await serve()
    async with Client(settings, transport=transport, hooks={"request": [add_auth]}) as client:
        seen = (await client.request("orders", "GET", "/")).json()
    assert ["authorization", "Bearer t0ken"] in seen["headers"]


async def test_async_request_hook_applies_to_one_way_sends(
    settings: Settings, transport: MemoryTransport, broker: MemoryBroker, orders_topic: str
) -> None:
    """An async request hook runs for send() too, so a tenant id travels with messages."""

    async def add_tenant(request: Request) -> None:
        request.headers.append((b"X-Tenant", b"acme"))

    async with Client(settings, transport=transport, hooks={"request": [add_tenant]}) as client:
        await client.send("orders", "POST", "/events")
    [record] = published(broker, settings)
    assert (b"x-tenant", b"acme") in record.headers


async def test_request_hook_runs_once_per_call_not_per_attempt(
    settings: Settings, transport: MemoryTransport, serve: Serve
) -> None:
    """A retried call passes its request hooks once; every attempt carries their changes."""
    calls: list[str] = []

    def count(request: Request) -> None:
        calls.append(request.id)
        add_auth(request)

    service = await serve(ignore_first(1))
    retry = Retry(attempts=2, backoff=0.01, attempt_timeout=0.1)
    async with Client(
        settings, transport=transport, retry=retry, hooks={"request": [count]}
    ) as client:
        response = await client.request("orders", "GET", "/")
    assert calls == [response.request_id]
    assert all((b"authorization", b"Bearer t0ken") in r.headers for r in service.requests)


async def test_response_hooks_see_the_status(
    settings: Settings, transport: MemoryTransport, serve: Serve
) -> None:
    """Response hooks get request's Response, stream's ReplyStream, gather's each; not send's."""
    seen: list[tuple[str, int]] = []

    async def record(answer: Any) -> None:
        assert isinstance(answer, Response | ReplyStream)
        seen.append((type(answer).__name__, answer.status_code))

    await serve()
    await serve(group="second")
    async with Client(settings, transport=transport, hooks={"response": [record]}) as client:
        await client.request("orders", "GET", "/")
        async with client.stream("orders", "GET", "/") as stream:
            assert seen[-1] == ("ReplyStream", 200)
            await stream.aread()
        await client.gather("orders", "GET", "/", count=2)
        await client.send("orders", "POST", "/")
    assert seen == [("Response", 200), ("ReplyStream", 200), ("Response", 200), ("Response", 200)]


async def test_hook_errors_reach_the_caller(
    settings: Settings, transport: MemoryTransport, broker: MemoryBroker, serve: Serve
) -> None:
    """An exception in a hook reaches the caller; a failing request hook publishes nothing."""

    def broken(subject: object) -> None:
        raise RuntimeError("bug in my hook")

    async with Client(settings, transport=transport, hooks={"request": [broken]}) as client:
        with pytest.raises(RuntimeError, match="bug in my hook"):
            await client.request("orders", "GET", "/")
        assert client.inbox.waiting == 0
    assert published(broker, settings) == []
    await serve()
    async with Client(settings, transport=transport, hooks={"response": [broken]}) as client:
        with pytest.raises(RuntimeError, match="bug in my hook"):
            await client.request("orders", "GET", "/")
        with pytest.raises(RuntimeError, match="bug in my hook"):
            async with client.stream("orders", "GET", "/"):
                pass  # pragma: no cover
        async with httpx.AsyncClient(
            transport=KourierTransport(client), base_url="http://orders"
        ) as http:
            with pytest.raises(RuntimeError, match="bug in my hook"):
                await http.get("/")
        assert client.inbox.waiting == 0


async def test_hook_changes_are_validated(
    settings: Settings, transport: MemoryTransport, broker: MemoryBroker
) -> None:
    """A request hook cannot slip a reserved kourier- header past the checks."""

    def forge(request: Request) -> None:
        request.headers.append((b"kourier-deadline", b"0"))

    async with Client(settings, transport=transport, hooks={"request": [forge]}) as client:
        with pytest.raises(ProtocolError, match="reserved"):
            await client.request("orders", "GET", "/")
    assert published(broker, settings) == []


def test_bad_hooks_raise_settings_error(settings: Settings) -> None:
    """An unknown hook name, a hook that is not callable or not in a list is a SettingsError."""
    transport = MemoryTransport()
    with pytest.raises(SettingsError, match="'reply' is not a caller hook"):
        Client(settings, transport=transport, hooks={"reply": [add_auth]})
    with pytest.raises(SettingsError, match="not callable"):
        Client(settings, transport=transport, hooks={"request": ["add_auth"]})  # type: ignore[list-item]
    with pytest.raises(SettingsError, match="list"):
        Client(settings, transport=transport, hooks={"request": add_auth})  # type: ignore[dict-item]


async def test_httpx_event_hooks_work_through_the_transport(client: Client, serve: Serve) -> None:
    """httpx's own event_hooks add a header that reaches the service and see the response."""
    statuses: list[int] = []

    async def tag(request: httpx.Request) -> None:
        request.headers["x-request-tag"] = "from-httpx"

    async def note(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    await serve()
    async with httpx.AsyncClient(
        transport=KourierTransport(client),
        base_url="http://orders",
        event_hooks={"request": [tag], "response": [note]},
    ) as http:
        seen = (await http.get("/")).json()
    assert ["x-request-tag", "from-httpx"] in seen["headers"]
    assert statuses == [200]
