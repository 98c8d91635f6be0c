"""The gateway carries HTTP requests as kourier calls (in process, in-memory broker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping

import pytest

from kourier import admin
from kourier.errors import (
    BrokerError,
    RequestTooLarge,
    ServiceNotFound,
    ServiceUnavailable,
    StreamBroken,
)
from kourier.gateway import Limits, StaticCatalog
from kourier.gateway.catalog import ListedService, ServiceView
from tests.gateway.app import events
from tests.gateway.conftest import Exchange, Stack, drive, http

pytestmark = pytest.mark.timeout(30)


async def test_two_way_call_passes_method_query_headers_and_body(stack: Stack) -> None:
    """A POST comes back with the service's status and body; query and headers arrived."""
    async with http(stack.gateway()) as client:
        response = await client.post(
            "/shop/echo?x=1&y=%20",
            json={"name": "book", "quantity": 2},
            headers={"Idempotency-Key": "k-1", "X-Custom": "yes"},
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "item": {"name": "book", "quantity": 2},
        "query": "x=1&y=%20",
        "idempotency_key": "k-1",
        "forwarded_for": "127.0.0.1",
        "custom": "yes",
    }
    assert len(response.headers["x-kourier-request-id"]) == 32


async def test_the_services_own_errors_come_back_as_they_are(stack: Stack) -> None:
    """A 422 from the app's validation is passed on, not turned into a gateway problem."""
    async with http(stack.gateway()) as client:
        response = await client.post("/shop/echo", json={"quantity": 2})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"


async def test_streamed_reply_items_arrive_before_the_stream_ends(stack: Stack) -> None:
    """Each NDJSON line is sent on as it comes, not after the whole reply."""
    exchange = await drive(stack.gateway(), "GET", "/shop/items", query=b"n=3&delay=0.3")
    assert exchange.status == 200
    assert exchange.complete
    lines = [json.loads(line) for line in exchange.body.splitlines()]
    assert lines == [{"i": 0}, {"i": 1}, {"i": 2}]
    first_line_at = next(at for at, chunk in exchange.chunks if chunk)
    assert exchange.chunks[-1][0] - first_line_at >= 0.5


async def test_server_sent_events_pass_through(stack: Stack) -> None:
    """An SSE reply keeps its content type and its event framing."""
    exchange = await drive(stack.gateway(), "GET", "/shop/events", query=b"n=2")
    assert exchange.headers[b"content-type"].startswith(b"text/event-stream")
    assert exchange.body == b"id: 0\ndata: tick 0\n\nid: 1\ndata: tick 1\n\n"


async def test_a_reply_that_breaks_mid_stream_is_cut_short(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A service failing after its status went out leaves the body without its end."""
    gateway = stack.gateway()
    exchange = await drive(gateway, "GET", "/shop/broken")
    assert exchange.status == 200
    assert exchange.body == b'{"i": 0}\n'
    assert not exchange.complete
    assert gateway.stats.broken == 1
    assert "reply broke after its status was sent" in caplog.text


async def test_prefer_respond_async_answers_202_once_the_broker_has_it(stack: Stack) -> None:
    """A one-way call gets 202 with its request id, and the service handles it."""
    async with http(stack.gateway()) as client:
        response = await client.post(
            "/shop/record", json={"id": "m-1"}, headers={"Prefer": "respond-async, wait=5"}
        )
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    assert response.json()["request_id"] == response.headers["x-kourier-request-id"]
    for _ in range(100):
        if "recorded m-1" in events:
            break
        await asyncio.sleep(0.02)
    assert "recorded m-1" in events


async def test_deadline_from_the_timeout_header_gives_504(stack: Stack) -> None:
    """A reply later than X-Kourier-Timeout is a 504 problem naming the request id."""
    gateway = stack.gateway()
    async with http(gateway) as client:
        response = await client.get(
            "/shop/slow?tag=t504&seconds=2", headers={"X-Kourier-Timeout": "0.3"}
        )
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:kourier:problem:deadline-passed"
    assert problem["status"] == 504
    assert problem["instance"] == "/shop/slow"
    assert len(problem["request_id"]) == 32
    assert gateway.stats.refused["timeout"] == 1


@pytest.mark.parametrize("value", ["0", "-1", "soon", "301", "nan"])
async def test_a_bad_timeout_header_is_a_400(stack: Stack, value: str) -> None:
    """X-Kourier-Timeout must be seconds above 0 and within the gateway's maximum."""
    async with http(stack.gateway()) as client:
        response = await client.get("/shop/items", headers={"X-Kourier-Timeout": value})
    assert response.status_code == 400
    assert "X-Kourier-Timeout" in response.json()["detail"]


async def test_a_reserved_header_is_refused(stack: Stack) -> None:
    """A caller cannot smuggle wire-protocol headers (kourier-*) to the service."""
    async with http(stack.gateway()) as client:
        response = await client.get("/shop/items", headers={"kourier-reply-to": "x:0"})
    assert response.status_code == 400
    assert "reserved" in response.json()["detail"]


class Catalog:
    """A fake registry: ``shop`` is live, ``closed`` has no live instance."""

    async def services(self) -> Mapping[str, ServiceView]:
        return {"shop": ListedService("shop"), "closed": ListedService("closed", live=False)}


async def test_unknown_service_in_the_catalog_is_404(stack: Stack) -> None:
    """A service the catalog does not know is a 404 problem that lists the known ones."""
    async with http(stack.gateway(catalog=Catalog())) as client:
        response = await client.get("/nosuch/items")
    assert response.status_code == 404
    assert response.json()["type"] == "urn:kourier:problem:service-not-found"
    assert "closed, shop" in response.json()["detail"]


async def test_service_without_live_instance_is_503_for_two_way_calls(stack: Stack) -> None:
    """A two-way call to a service with no live instance is a 503 problem with
    Retry-After; a one-way message is still accepted, to wait in Kafka."""
    await admin.ensure_topics(stack.client.transport, stack.settings, "closed")
    async with http(stack.gateway(catalog=Catalog())) as client:
        response = await client.get("/closed/items")
        one_way = await client.post(
            "/closed/record", json={"id": "later"}, headers={"Prefer": "respond-async"}
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["service"] == "closed"
    assert one_way.status_code == 202


async def test_the_allow_list_limits_the_services(stack: Stack) -> None:
    """With a fixed list of services, others are 404 and listed ones are called."""
    async with http(stack.gateway(catalog=StaticCatalog(["shop"]))) as client:
        assert (await client.get("/other/items")).status_code == 404
        assert (await client.get("/shop/items")).status_code == 200


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ServiceNotFound("no service 'shop'; did you mean 'shops'?"), 404),
        (ServiceUnavailable("no live instance of 'shop'"), 503),
        (StreamBroken("the service failed while answering"), 502),
        (BrokerError("no broker answered"), 503),
        (RequestTooLarge("request body too large"), 413),
    ],
)
async def test_call_errors_map_to_problems(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    """When the call itself fails (the registry's fail-fast checks among others), the
    caller gets the matching problem status, for two-way and one-way calls alike."""

    def failing(*args: object, **kwargs: object) -> object:
        raise error

    monkeypatch.setattr(stack.client, "stream", failing)
    monkeypatch.setattr(stack.client, "send", failing)
    async with http(stack.gateway()) as client:
        two_way = await client.get("/shop/items")
        one_way = await client.post("/shop/record", headers={"Prefer": "respond-async"})
    for response in (two_way, one_way):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    if status == 404:
        assert "did you mean" in two_way.json()["detail"]


async def test_a_body_over_the_limit_is_413(stack: Stack) -> None:
    """A declared or a streamed body over max_body_bytes is refused with 413."""
    gateway = stack.gateway(limits=Limits(max_body_bytes=10))
    async with http(gateway) as client:
        response = await client.post("/shop/echo", content=b"x" * 11)
    assert response.status_code == 413
    assert response.json()["limit"] == 10

    async def chunks() -> AsyncIterator[bytes]:
        yield b"x" * 6
        yield b"x" * 6

    async with http(gateway) as client:
        response = await client.post("/shop/echo", content=chunks())
    assert response.status_code == 413


async def test_calls_over_the_in_flight_limit_get_429(stack: Stack) -> None:
    """With one call in flight and a limit of one, the next is refused with 429."""
    gateway = stack.gateway(limits=Limits(max_in_flight=1))
    first = asyncio.create_task(drive(gateway, "GET", "/shop/slow", query=b"tag=a&seconds=0.5"))
    await asyncio.sleep(0.1)
    async with http(gateway) as client:
        response = await client.get("/shop/items")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert (await first).status == 200
    async with http(gateway) as client:
        assert (await client.get("/shop/items")).status_code == 200


async def test_a_caller_that_goes_away_cancels_its_call(stack: Stack) -> None:
    """On disconnect the call is cancelled at once: no waiter is left in the inbox."""
    gateway = stack.gateway()

    async def leave_soon(exchange: Exchange) -> None:
        await asyncio.sleep(0.2)

    started = asyncio.get_running_loop().time()
    exchange = await drive(
        gateway, "GET", "/shop/slow", query=b"tag=gone&seconds=3", disconnect=leave_soon
    )
    assert asyncio.get_running_loop().time() - started < 2
    assert exchange.status == 0  # nothing was sent to a caller who is gone
    assert gateway.stats.disconnects == 1
    assert stack.client.inbox.waiting == 0


async def test_a_caller_leaving_mid_stream_stops_the_stream(stack: Stack) -> None:
    """A caller that leaves after the first streamed item gets no more, and the call ends."""
    gateway = stack.gateway()

    async def after_first_line(exchange: Exchange) -> None:
        await exchange.body_seen.wait()

    exchange = await drive(
        gateway, "GET", "/shop/items", query=b"n=10&delay=0.3", disconnect=after_first_line
    )
    assert exchange.status == 200
    assert not exchange.complete
    assert len([chunk for _, chunk in exchange.chunks if chunk]) < 5
    assert gateway.stats.disconnects == 1
    assert stack.client.inbox.waiting == 0


async def test_probes_and_metrics(stack: Stack) -> None:
    """/livez and /readyz answer 200; /metrics counts refusals and the calls made."""
    async with http(stack.gateway()) as client:
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/shop/items")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'kourier_gateway_refused_total{reason="no_route"} 1.0' in metrics
    assert 'kourier_gateway_replies_total{code="2xx"} 1.0' in metrics
    assert "kourier_gateway_in_flight 0.0" in metrics
    assert 'kourier_client_requests_total{method="GET",outcome="2xx",service="shop"}' in metrics


async def test_readyz_fails_when_the_broker_does_not_answer(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz is 503 while the broker ping fails."""

    async def no(timeout: float) -> bool:
        return False

    monkeypatch.setattr(stack.client.transport, "ping", no)
    async with http(stack.gateway()) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "broker" in response.text
