"""The native caller: request, send, stream, gather, deadlines and validation."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import httpx
import pytest

from kourier import protocol
from kourier.client import Client
from kourier.errors import (
    ProtocolError,
    PublishError,
    ReplyTimeout,
    RequestTooLarge,
    StreamBroken,
)
from kourier.protocol import Request
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import NDJSON, Handler, Replies, ensure_service, silent
from tests.scripted import ScriptedTransport, never_acknowledged


def records(broker: MemoryBroker, topic: str) -> list[Request]:
    logs = broker.topics.get(topic, [])
    return [protocol.decode_request(r.key, r.value, r.headers) for log in logs for r in log]


# -- two-way -------------------------------------------------------------------------


async def test_request_gets_the_response(client: Client, serve: Serve) -> None:
    """A request reaches the service and its reply comes back as a Response."""
    await serve()
    response = await client.request("orders", "get", "/orders/17")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["method"] == "GET"
    assert response.json()["path"] == "/orders/17"
    assert response.request_id and response.error_id is None
    assert client.inbox.waiting == 0


async def test_json_body_headers_and_params_travel(client: Client, serve: Serve) -> None:
    """A JSON body, user headers and query parameters reach the service as given."""
    await serve()
    response = await client.request(
        "orders",
        "POST",
        "/orders?z=0",
        json={"item": "book", "qty": 2},
        headers={"X-Tenant": "acme"},
        params={"a": 1, "b": ["x", "y"]},
    )
    seen = response.json()
    assert seen["query"] == "z=0&a=1&b=x&b=y"
    assert ["x-tenant", "acme"] in seen["headers"]
    assert ["content-type", "application/json"] in seen["headers"]
    assert seen["body"] == '{"item":"book","qty":2}'


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tenant": "acme", "Content-Type": "text/plain"},
        {"x-tenant": "acme"},
        {"X-Name": "Zoë"},  # not ASCII: refused as httpx refuses it
        [("X-Tenant", "acme"), ("x-tenant", "again")],
        {b"X-Raw": b"bytes"},
    ],
)
@pytest.mark.parametrize("json_body", [False, True])
def test_call_headers_are_the_pairs_httpx_would_send(headers: Any, json_body: bool) -> None:
    """Whatever form the headers take, the call sends httpx's pairs, and a JSON body
    adds its content type only where none was given."""
    from kourier.client.requests import user_headers as _user_headers

    try:
        expected = httpx.Headers(headers)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            _user_headers(headers, json_body=json_body)
        return
    if json_body and "content-type" not in expected:
        expected["content-type"] = "application/json"
    assert _user_headers(headers, json_body=json_body) == list(expected.raw)


async def test_request_carries_deadline_key_and_id(client: Client, serve: Serve) -> None:
    """The record carries the given id, the ordering key and a deadline of now + timeout."""
    service = await serve()
    before = protocol.now_ms()
    response = await client.request(
        "orders", "GET", "/", key="order-17", request_id="call-1", timeout=3
    )
    request = service.requests[0]
    assert response.request_id == request.id == "call-1"
    assert request.key == b"order-17"
    assert request.reply_to == client.reply_address
    assert request.deadline_ms is not None
    assert before + 3000 <= request.deadline_ms <= protocol.now_ms() + 3000


async def test_error_response_keeps_the_error_id(client: Client, serve: Serve) -> None:
    """A 500 with an error id is a Response; raise_for_status names the id."""

    async def failing(request: Request, replies: Replies) -> None:
        await replies.item(0, b'{"detail":"boom"}', end=True, status=500, error_id="e42")

    await serve(failing)
    response = await client.request("orders", "GET", "/")
    assert response.status_code == 500 and response.error_id == "e42"
    with pytest.raises(httpx.HTTPStatusError, match="e42"):
        response.raise_for_status()


async def test_big_body_is_reassembled(client: Client, serve: Serve) -> None:
    """A body the service split into several items arrives whole, in order."""
    body = bytes(range(256)) * 40

    async def big(request: Request, replies: Replies) -> None:
        await replies.split(body, 1000)

    await serve(big)
    response = await client.request("orders", "GET", "/big")
    assert response.content == body


async def test_items_out_of_order_and_duplicated(client: Client, serve: Serve) -> None:
    """Items are put back in seq order and duplicates (a request answered twice) ignored."""

    async def jumbled(request: Request, replies: Replies) -> None:
        await replies.item(0, b"a")
        await replies.item(2, b"c")
        await replies.item(1, b"b")
        await replies.item(1, b"B")
        await replies.item(0, b"A")
        await replies.item(3, b"d", end=True)
        await replies.item(0, b"A", end=True)

    await serve(jumbled)
    assert (await client.request("orders", "GET", "/")).content == b"abcd"


async def test_end_marker_after_a_gap_is_broken(client: Client, serve: Serve) -> None:
    """An end marker whose earlier item never came raises StreamBroken."""

    async def gap(request: Request, replies: Replies) -> None:
        await replies.item(0, b"a")
        await replies.item(2, b"c", end=True)

    await serve(gap)
    with pytest.raises(StreamBroken, match="item 1"):
        await client.request("orders", "GET", "/")
    assert client.inbox.waiting == 0


async def test_failure_mid_response_is_broken(client: Client, serve: Serve) -> None:
    """An end marker with an error id after a 200 began means the reply is incomplete."""

    async def crashed(request: Request, replies: Replies) -> None:
        await replies.item(0, b"part")
        await replies.item(1, end=True, error_id="e7")

    await serve(crashed)
    with pytest.raises(StreamBroken, match="e7"):
        await client.request("orders", "GET", "/")


async def test_reply_to_another_id_is_ignored(client: Client, serve: Serve) -> None:
    """A reply for an id nobody waits for is dropped; the right one still arrives."""

    async def confused(request: Request, replies: Replies) -> None:
        await replies.item(0, b"wrong", end=True, request_id="someone-else")
        await replies.whole(b"right")

    await serve(confused)
    assert (await client.request("orders", "GET", "/")).content == b"right"


# -- deadlines -------------------------------------------------------------------------


async def test_no_reply_raises_reply_timeout(client: Client, serve: Serve) -> None:
    """Without a reply the call fails at its deadline and forgets its waiter."""
    await serve(silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReplyTimeout):
        await client.request("orders", "GET", "/", timeout=0.1)
    assert 0.1 <= loop.time() - started < 1.0
    assert client.inbox.waiting == 0


async def test_default_timeout_comes_from_settings(
    settings: Settings, transport: MemoryTransport, serve: Serve
) -> None:
    """A call without a timeout waits settings.default_timeout."""
    await serve(silent)
    async with Client(settings.replace(default_timeout=0.05), transport=transport) as client:
        with pytest.raises(ReplyTimeout):
            await client.request("orders", "GET", "/")


async def test_late_reply_is_dropped(
    client: Client, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply that comes after the deadline is logged at debug and dropped."""
    sent = asyncio.Event()

    async def late_once(request: Request, replies: Replies) -> None:
        late = request.body == b"late"
        if late:
            await asyncio.sleep(0.1)
        await replies.whole(request.body)
        if late:
            sent.set()

    await serve(late_once)
    with caplog.at_level(logging.DEBUG, "kourier.client"):
        with pytest.raises(ReplyTimeout):
            await client.request("orders", "GET", "/", content="late", timeout=0.05)
        await sent.wait()
        # Replies are routed in partition order: this one comes after the late one.
        assert (await client.request("orders", "GET", "/", content="next")).content == b"next"
    assert "no call waits for" in caplog.text
    assert client.inbox.waiting == 0


async def test_cancelled_call_forgets_its_waiter(client: Client, serve: Serve) -> None:
    """Cancelling a call in flight removes its waiter."""
    service = await serve(silent)
    call = asyncio.create_task(client.request("orders", "GET", "/"))
    await service.received()
    assert client.inbox.waiting == 1
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert client.inbox.waiting == 0


# -- validation ------------------------------------------------------------------------


async def test_oversize_body_is_refused_before_sending(
    settings: Settings, transport: MemoryTransport, broker: MemoryBroker
) -> None:
    """A body over max_request_bytes raises RequestTooLarge and publishes nothing."""
    async with Client(settings.replace(max_request_bytes=100), transport=transport) as client:
        with pytest.raises(RequestTooLarge):
            await client.request("orders", "POST", "/", content=b"x" * 101)
        with pytest.raises(RequestTooLarge):
            await client.send("orders", "POST", "/", content=b"x" * 101)
        assert client.inbox.waiting == 0
    assert records(broker, settings.request_topic("orders")) == []


async def test_reserved_header_is_refused(
    client: Client, broker: MemoryBroker, settings: Settings
) -> None:
    """A user header named kourier-* raises ProtocolError and publishes nothing."""
    with pytest.raises(ProtocolError, match="reserved"):
        await client.request("orders", "GET", "/", headers={"Kourier-Id": "forged"})
    assert records(broker, settings.request_topic("orders")) == []
    assert client.inbox.waiting == 0


async def test_bad_call_arguments_are_refused(client: Client) -> None:
    """Bad paths, methods, ids, timeouts and body combinations raise ValueError."""
    with pytest.raises(ValueError, match="start with"):
        await client.request("orders", "GET", "orders")
    with pytest.raises(ValueError, match="HTTP method"):
        await client.request("orders", "GET /", "/")
    with pytest.raises(ValueError, match="request id"):
        await client.request("orders", "GET", "/", request_id="no spaces")
    with pytest.raises(ValueError, match="timeout"):
        await client.request("orders", "GET", "/", timeout=0)
    with pytest.raises(ValueError, match="not both"):
        await client.request("orders", "GET", "/", content=b"x", json={})
    with pytest.raises(TypeError, match="key"):
        await client.request("orders", "GET", "/", key=17)  # type: ignore[arg-type]


async def test_call_before_start_is_refused(settings: Settings) -> None:
    """A client that is not started says so instead of hanging."""
    client = Client(settings, transport=MemoryTransport())
    with pytest.raises(RuntimeError, match="not started"):
        await client.send("orders", "POST", "/")


def test_default_transport_is_kafka(settings: Settings) -> None:
    """Without a transport the client makes a KafkaTransport from its settings."""
    from kourier.transports.kafka import KafkaTransport

    client = Client(settings)
    assert isinstance(client.transport, KafkaTransport)


# -- one-way ---------------------------------------------------------------------------


async def test_send_returns_after_ack_with_the_record_on_the_topic(
    client: Client, broker: MemoryBroker, settings: Settings, orders_topic: str
) -> None:
    """send() returns the request id once the record is on the request topic."""
    request_id = await client.send("orders", "POST", "/events", json={"n": 1}, key="k1")
    [record] = records(broker, settings.request_topic("orders"))
    assert record.id == request_id
    assert record.one_way and record.deadline_ms is None
    assert record.body == b'{"n":1}' and record.key == b"k1"
    assert client.inbox.waiting == 0


async def test_send_with_timeout_carries_a_deadline(
    client: Client, broker: MemoryBroker, settings: Settings, orders_topic: str
) -> None:
    """A one-way message with a timeout carries a deadline for the service."""
    await client.send("orders", "POST", "/events", timeout=30)
    [record] = records(broker, settings.request_topic("orders"))
    assert record.deadline_ms is not None and record.deadline_ms > protocol.now_ms() + 29_000


async def test_enqueue_returns_before_the_ack_and_the_delivery_gives_the_id(
    client: Client, broker: MemoryBroker, settings: Settings, orders_topic: str
) -> None:
    """enqueue() queues without waiting; awaiting the Delivery gives the id once acked."""
    deliveries = [
        await client.enqueue("orders", "POST", "/events", json={"n": n}, key="k") for n in range(5)
    ]
    ids = [await delivery for delivery in deliveries]
    assert all(delivery.done() for delivery in deliveries)
    assert ids == [delivery.request_id for delivery in deliveries] and len(set(ids)) == 5
    assert await deliveries[0] == ids[0]  # a delivery may be awaited again
    sent = records(broker, settings.request_topic("orders"))
    assert [r.id for r in sent] == ids
    assert [r.body for r in sent] == [f'{{"n":{n}}}'.encode() for n in range(5)]
    await client.flush()


def refuse_some(topic: str, value: bytes) -> asyncio.Future[None] | None:
    """Fails the ack, a moment later, of every record whose value says "refuse"."""
    if b"refuse" not in value:
        return None
    ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(ack.set_exception, PublishError("broker said no"))
    return ack


async def test_concurrent_flushes_each_wait_for_every_ack(settings: Settings) -> None:
    """Two flushes wait for the same acks; cancelling one leaves the other waiting."""
    acks: list[asyncio.Future[None]] = []

    def held(topic: str, value: bytes) -> asyncio.Future[None]:
        acks.append(asyncio.get_running_loop().create_future())
        return acks[-1]

    transport = ScriptedTransport(script=held)
    await ensure_service(MemoryTransport(transport.broker), settings)
    async with Client(settings, transport=transport) as client:
        for _ in range(3):
            await client.enqueue("orders", "POST", "/events", content=b"x")
        first = asyncio.create_task(client.flush())
        second = asyncio.create_task(client.flush())
        await asyncio.sleep(0.01)
        first.cancel()
        acks[0].set_result(None)
        acks[1].set_result(None)
        await asyncio.sleep(0.01)
        assert first.cancelled() and not second.done()
        acks[2].set_result(None)
        await asyncio.wait_for(second, 1)


async def test_an_unacknowledged_request_times_out_at_its_deadline(settings: Settings) -> None:
    """No ack: ReplyTimeout at the deadline, saying so; a cancelled call stays cancelled."""
    transport = ScriptedTransport(script=never_acknowledged)
    await ensure_service(MemoryTransport(transport.broker), settings)
    async with Client(settings, transport=transport) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ReplyTimeout, match="did not acknowledge"):
            await client.request("orders", "GET", "/", timeout=0.2)
        assert 0.2 <= asyncio.get_running_loop().time() - started < 1.0
        call = asyncio.create_task(client.request("orders", "GET", "/", timeout=5))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert client.inbox.waiting == 0 and client.stats.timeouts == 1


async def test_a_request_the_broker_refuses_fails_at_once(settings: Settings) -> None:
    """A two-way request whose publish the broker refuses raises PublishError as soon as
    the refusal comes, not at the deadline, and leaves no waiter behind."""
    transport = ScriptedTransport(script=refuse_some)
    await ensure_service(MemoryTransport(transport.broker), settings)
    async with Client(settings, transport=transport) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(PublishError, match="broker said no"):
            await client.request("orders", "POST", "/", content="refuse", timeout=5)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert client.inbox.waiting == 0 and client.stats.timeouts == 0


async def test_flush_raises_for_a_refused_message_nobody_awaited(settings: Settings) -> None:
    """A failed delivery is never silent: its await raises, and so does the next flush."""
    transport = ScriptedTransport(script=refuse_some)
    await ensure_service(MemoryTransport(transport.broker), settings)
    async with Client(settings, transport=transport) as client:
        good = await client.enqueue("orders", "POST", "/events", content=b"fine")
        bad = await client.enqueue("orders", "POST", "/events", content=b"refuse me")
        await client.enqueue("orders", "POST", "/events", content=b"refuse me too")
        with pytest.raises(PublishError, match="broker said no"):
            await bad
        assert await good == good.request_id
        with pytest.raises(PublishError, match=r"^2 enqueued message\(s\) were not acknowledged"):
            await client.flush()
        await client.flush()  # reported once: the next flush has nothing to say
        with pytest.raises(PublishError, match="broker said no"):
            await client.send("orders", "POST", "/events", content=b"refuse")


async def test_enqueue_validates_before_queueing(
    client: Client, broker: MemoryBroker, settings: Settings
) -> None:
    """A bad one-way message raises at once and nothing reaches the topic."""
    with pytest.raises(ValueError, match="timeout"):
        await client.enqueue("orders", "POST", "/events", timeout=-1)
    with pytest.raises(ValueError, match="start with"):
        await client.enqueue("orders", "POST", "events")
    assert records(broker, settings.request_topic("orders")) == []


@pytest.mark.parametrize(
    ("path", "params", "target"),
    [
        ("/orders/17", None, "/orders/17"),
        ("/a%2Fb?x=1&y=%41", None, "/a%2Fb?x=1&y=%41"),
        ("/a b?q=é", None, "/a%20b?q=%C3%A9"),
        ("/100%", None, "/100%"),  # httpx leaves a stray % as it is
        ("//double", None, "//double"),
        ("/o?z=0", {"a": 1, "b": ["x", "y"]}, "/o?z=0&a=1&b=x&b=y"),
    ],
)
async def test_the_target_is_encoded_as_httpx_would(
    client: Client,
    broker: MemoryBroker,
    settings: Settings,
    orders_topic: str,
    path: str,
    params: Any,
    target: str,
) -> None:
    """Safe targets pass as they are, others are percent-encoded; "//x" stays a path."""
    await client.send("orders", "GET", path, params=params)
    [record] = records(broker, settings.request_topic("orders"))
    assert record.target == target


def test_request_ids_are_unique_hex_and_differ_in_a_forked_child() -> None:
    """32 hex digits, never repeated in a process, and a child process draws anew."""
    ids = {protocol.new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write, protocol.new_request_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    parent = protocol.new_request_id()
    assert len(child) == 32 and child[:20] != parent[:20]


# -- streams ---------------------------------------------------------------------------


async def test_stream_items_arrive_as_they_come(client: Client, serve: Serve) -> None:
    """Item 1 is read before item 3 is even published, then the rest follow in order."""
    release = asyncio.Event()

    async def ndjson(request: Request, replies: Replies) -> None:
        await replies.item(0, headers=NDJSON)
        await replies.item(1, b'{"n": 1}\n{"n"')
        await release.wait()
        await replies.item(2, b': 2}\n{"n": 3}')
        await replies.item(3, b"\n", end=True)

    await serve(ndjson)
    async with client.stream("orders", "GET", "/feed") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "application/x-ndjson"
        items = stream.aiter_json()
        assert await anext(items) == {"n": 1}
        assert not release.is_set()
        release.set()
        assert [item async for item in items] == [{"n": 2}, {"n": 3}]
    assert client.inbox.waiting == 0


async def test_stream_yields_each_non_empty_body(client: Client, serve: Serve) -> None:
    """Iterating a stream yields every item body except empty ones."""

    async def parts(request: Request, replies: Replies) -> None:
        await replies.item(0, b"zero")
        await replies.item(1, b"")
        await replies.item(2, b"two")
        await replies.item(3, end=True)

    await serve(parts)
    async with client.stream("orders", "GET", "/") as stream:
        assert [chunk async for chunk in stream] == [b"zero", b"two"]


async def test_stream_idle_timeout(client: Client, serve: Serve) -> None:
    """A stream whose next item does not come within the timeout raises ReplyTimeout."""

    async def stalls(request: Request, replies: Replies) -> None:
        await replies.item(0, b"first")
        await asyncio.sleep(0.05)
        await replies.item(1, b"second")

    await serve(stalls)
    seen: list[bytes] = []
    async with client.stream("orders", "GET", "/", timeout=0.2) as stream:
        with pytest.raises(ReplyTimeout):
            async for chunk in stream:
                seen.append(chunk)
    assert seen == [b"first", b"second"]
    assert client.inbox.waiting == 0


async def test_stream_first_item_deadline(client: Client, serve: Serve) -> None:
    """Entering a stream fails with ReplyTimeout when item 0 never comes."""
    await serve(silent)
    with pytest.raises(ReplyTimeout):
        async with client.stream("orders", "GET", "/", timeout=0.05):
            pass  # pragma: no cover
    assert client.inbox.waiting == 0


async def test_leaving_a_stream_early_forgets_it(client: Client, serve: Serve) -> None:
    """Breaking out of a stream drops its waiter; its remaining items are ignored."""

    async def endless(request: Request, replies: Replies) -> None:
        for seq in range(1000):
            await replies.item(seq, b"x")
            await asyncio.sleep(0.001)

    await serve(endless)
    async with client.stream("orders", "GET", "/") as stream:
        async for _ in stream:
            break
    assert client.inbox.waiting == 0


# -- scatter-gather --------------------------------------------------------------------


async def test_gather_collects_from_three_responders(client: Client, serve: Serve) -> None:
    """One request to a shared topic gets one response from each of three services."""
    topic = "kourier.broadcast"

    def answer(name: str) -> Handler:
        async def handler(request: Request, replies: Replies) -> None:
            await replies.split(name.encode() * 3, 2)  # several items each, interleaved

        return handler

    for name in ("stock", "billing", "shipping"):
        await serve(answer(name), topic=topic, group=name, responder=name)
    responses = await client.gather(topic, "GET", "/health", count=3, timeout=2)
    assert {r.responder: r.content for r in responses} == {
        "stock": b"stockstockstock",
        "billing": b"billingbillingbilling",
        "shipping": b"shippingshippingshipping",
    }
    assert client.inbox.waiting == 0


async def test_gather_without_count_waits_for_the_deadline(client: Client, serve: Serve) -> None:
    """Without count, gather returns what came by the deadline, even from anonymous repliers."""
    for name in ("a", "b"):
        await serve(topic="kourier.broadcast", group=name)
    loop = asyncio.get_running_loop()
    started = loop.time()
    responses = await client.gather("kourier.broadcast", "GET", "/", timeout=0.3)
    assert loop.time() - started >= 0.3
    assert len(responses) == 2 and {r.responder for r in responses} == {None}


async def test_gather_stops_at_count(client: Client, serve: Serve) -> None:
    """With count, gather returns as soon as that many responders have answered."""
    for name in ("a", "b", "c"):
        await serve(service="orders", group=name, responder=name)
    responses = await client.gather("orders", "GET", "/", count=2, timeout=5)
    assert len(responses) == 2


async def test_gather_with_no_reply_times_out(client: Client, serve: Serve) -> None:
    """A gather that hears from nobody raises ReplyTimeout."""
    await serve(silent)
    with pytest.raises(ReplyTimeout):
        await client.gather("orders", "GET", "/", timeout=0.05)
    assert client.inbox.waiting == 0
