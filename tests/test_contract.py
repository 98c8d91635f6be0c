"""The contract every transport keeps, run on the in-memory broker and on real Kafka.

A service (the FastAPI app in tests/apps.py) and callers in one process, talking only
through the transport under test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from kourier import Client, KourierTransport, ReplyTimeout, RequestTooLarge, Service, Settings
from tests import apps
from tests.conftest import TransportFactory

pytestmark = pytest.mark.timeout(120)

Connect = Callable[..., "asyncio.Future[Client]"]


class Stack:
    """Starts services and clients on one broker and stops them all at the end."""

    def __init__(self, settings: Settings, make_transport: TransportFactory) -> None:
        self.settings = settings
        self.make_transport = make_transport
        self.exit = AsyncExitStack()

    async def service(self, settings: Settings | None = None) -> Service:
        service = Service(
            apps.app, "orders", settings or self.settings, transport=self.make_transport()
        )
        await self.exit.enter_async_context(service)
        return service

    async def client(self, settings: Settings | None = None) -> Client:
        transport = self.make_transport()
        await transport.start()
        self.exit.push_async_callback(transport.stop)
        return await self.exit.enter_async_context(
            Client(settings or self.settings, transport=transport)
        )

    async def http(self, client: Client) -> httpx.AsyncClient:
        return await self.exit.enter_async_context(
            httpx.AsyncClient(transport=KourierTransport(client), base_url="http://orders")
        )


@pytest.fixture
async def stack(settings: Settings, make_transport: TransportFactory) -> AsyncIterator[Stack]:
    stack = Stack(settings, make_transport)
    async with stack.exit:
        yield stack


async def test_two_way_json_through_httpx(stack: Stack) -> None:
    """Plain httpx code posts JSON and gets the handler's status and body back."""
    await stack.service()
    http = await stack.http(await stack.client())
    response = await http.post("/orders", json={"item": "book", "quantity": 2})
    assert response.status_code == 201
    assert response.json() == {"item": "book", "quantity": 2}
    assert response.headers["content-type"] == "application/json"


async def test_http_status_codes_mean_what_they_mean(stack: Stack) -> None:
    """404 for an unknown route, 422 for invalid input, 500 with an error id on a crash."""
    await stack.service()
    http = await stack.http(await stack.client())
    assert (await http.get("/nowhere")).status_code == 404
    assert (await http.post("/orders", json={"quantity": "x"})).status_code == 422
    crashed = await http.get("/boom")
    assert crashed.status_code == 500
    assert len(crashed.headers["x-error-id"]) == 16


async def test_streamed_reply_items_arrive_as_they_are_produced(stack: Stack) -> None:
    """The first item reaches the caller long before the last one is produced."""
    await stack.service()
    client = await stack.client()
    started = time.monotonic()
    arrivals: list[float] = []
    async with client.stream("orders", "GET", "/items", params={"n": 4, "delay": 0.3}) as reply:
        assert reply.status_code == 200
        async for line in reply.aiter_json():
            arrivals.append(time.monotonic() - started)
            assert line == {"i": len(arrivals) - 1}
    assert len(arrivals) == 4
    assert arrivals[-1] - arrivals[0] > 0.6
    assert arrivals[0] < arrivals[-1] - 0.5


async def test_httpx_stream_reads_ndjson_lines(stack: Stack) -> None:
    """httpx's client.stream() and aiter_lines() work over a streamed reply."""
    await stack.service()
    http = await stack.http(await stack.client())
    async with http.stream("GET", "/items?n=5") as response:
        lines = [line async for line in response.aiter_lines() if line]
    assert lines == [f'{{"i": {i}}}' for i in range(5)]


async def test_one_way_send_is_handled_and_answers_nothing(stack: Stack) -> None:
    """send() returns once the broker has the message; the handler then runs."""
    service = await stack.service()
    client = await stack.client()
    apps.events.clear()
    await client.send("orders", "POST", "/events", json={"kind": "ping"})
    for _ in range(200):
        if apps.events:
            break
        await asyncio.sleep(0.05)
    assert apps.events == [{"kind": "ping"}]
    assert service.stats.one_way == 1
    assert client.inbox.waiting == 0


async def test_enqueued_one_way_messages_are_all_handled_in_key_order(stack: Stack) -> None:
    """Hundreds of enqueued messages: one flush, all handled, each key's in order."""
    service = await stack.service()
    client = await stack.client()
    apps.events.clear()
    deliveries = [
        await client.enqueue(
            "orders", "POST", "/events", json={"key": n % 3, "n": n}, key=str(n % 3)
        )
        for n in range(300)
    ]
    await client.flush()
    assert all(delivery.done() for delivery in deliveries)
    for _ in range(400):
        if len(apps.events) >= 300:
            break
        await asyncio.sleep(0.05)
    assert sorted(event["n"] for event in apps.events) == list(range(300))
    for key in range(3):
        handled = [event["n"] for event in apps.events if event["key"] == key]
        assert handled == sorted(handled)
    assert service.stats.one_way == 300


async def test_a_caller_timeout_raises_and_the_late_reply_is_dropped(stack: Stack) -> None:
    """A slow handler makes the caller time out; its reply later is ignored."""
    await stack.service()
    client = await stack.client()
    http = await stack.http(client)
    with pytest.raises(ReplyTimeout):
        await client.request("orders", "GET", "/slow?seconds=1.5", timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        await http.get("/slow?seconds=1.5", timeout=0.3)
    assert client.inbox.waiting == 0
    await asyncio.sleep(1.6)  # the late replies arrive and are dropped
    ok = await client.request("orders", "GET", "/hello/after", timeout=10)
    assert ok.status_code == 200
    assert client.inbox.waiting == 0


async def test_callers_on_one_reply_partition_get_only_their_own_replies(stack: Stack) -> None:
    """Two callers forced to share a reply partition never see each other's replies."""
    one_partition = stack.settings.replace(reply_partitions=1)
    await stack.service(one_partition)
    callers = [await stack.client(one_partition), await stack.client(one_partition)]

    async def call(client: Client, n: int) -> tuple[str, str]:
        response = await client.request("orders", "POST", "/echo", content=b"x" * n)
        return response.request_id, response.json()["request_id"]

    results = await asyncio.gather(*(call(callers[i % 2], i) for i in range(60)))
    assert all(sent == answered for sent, answered in results)
    assert all(c.inbox.waiting == 0 for c in callers)


async def test_two_service_instances_share_the_requests(stack: Stack) -> None:
    """Two instances in one group split the partitions and answer every request."""
    first = await stack.service()
    second = await stack.service()
    client = await stack.client()
    for _ in range(100):
        if (
            first.consumer
            and second.consumer
            and first.consumer.assigned
            and (second.consumer.assigned)
        ):
            break
        await asyncio.sleep(0.1)
    responses = await asyncio.gather(
        *(client.request("orders", "GET", f"/hello/{i}", key=str(i)) for i in range(60))
    )
    assert [r.json()["hello"] for r in responses] == [str(i) for i in range(60)]
    assert first.stats.handled + second.stats.handled == 60
    assert first.stats.handled > 0 and second.stats.handled > 0


async def test_a_body_larger_than_one_record_arrives_whole(stack: Stack) -> None:
    """A 2.5 MB response body is split into items and put back together."""
    await stack.service()
    client = await stack.client()
    response = await client.request("orders", "GET", "/big?size=2500000")
    assert response.content == b"x" * 2_500_000


async def test_an_oversized_request_fails_before_anything_is_sent(stack: Stack) -> None:
    """A body over max_request_bytes raises RequestTooLarge and publishes nothing."""
    service = await stack.service()
    client = await stack.client()
    with pytest.raises(RequestTooLarge):
        await client.request("orders", "POST", "/echo", content=b"x" * 1_000_001)
    ok = await client.request("orders", "POST", "/echo", content=b"x" * 100)
    assert ok.json()["size"] == 100
    assert service.stats.handled == 1


async def test_a_handler_error_id_is_in_the_service_log(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The error id the caller sees is the one the service logged with the traceback."""
    caplog.set_level(logging.ERROR, logger="kourier.server")
    await stack.service()
    client = await stack.client()
    response = await client.request("orders", "GET", "/boom")
    assert response.status_code == 500
    assert response.error_id is not None
    assert any(response.error_id in record.getMessage() for record in caplog.records)


async def test_scatter_gather_collects_one_reply_per_service(stack: Stack) -> None:
    """Three services consuming one shared topic each answer one gather call."""
    shared = f"{stack.settings.topic_prefix}broadcast.hello"
    for name in ("inventory", "pricing", "shipping"):
        service = Service(
            apps.app, name, stack.settings, transport=stack.make_transport(), topics=[shared]
        )
        await stack.exit.enter_async_context(service)
    client = await stack.client()
    responses = await client.gather(shared, "GET", "/hello/all", count=3, timeout=20)
    assert sorted(r.responder or "" for r in responses) == ["inventory", "pricing", "shipping"]
    assert all(r.status_code == 200 and r.json()["hello"] == "all" for r in responses)
    assert client.inbox.waiting == 0
