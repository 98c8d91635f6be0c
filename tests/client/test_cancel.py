"""The caller's side of cancellation and propagation, on the in-memory broker.

A scripted service stands in for the server wing; the test reads the cancels topic
itself to see what the client published.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from kourier import deadline, protocol
from kourier.client import Client, KourierTransport
from kourier.errors import ReplyTimeout
from kourier.protocol import Request
from kourier.settings import Settings
from kourier.transports.base import PartitionReader, TopicSpec
from kourier.transports.memory import MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import Replies, echo, silent
from tests.server.conftest import eventually


async def started_stream(request: Request, replies: Replies) -> None:
    """Item 0 and one more, then nothing: a stream still going."""
    await replies.item(0, b"first\n")
    await replies.item(1, b"second\n")


async def cancels_topic(transport: MemoryTransport, settings: Settings) -> PartitionReader:
    topic = settings.cancel_topic("orders")
    await transport.ensure_topics([TopicSpec(topic, 1)])
    reader = transport.partition_reader(topic, 0)
    await reader.start()
    return reader


async def read_cancels(reader: PartitionReader, count: int = 1) -> list[protocol.Cancel]:
    found: list[protocol.Cancel] = []
    deadline_at = time.monotonic() + 3
    while len(found) < count:
        assert time.monotonic() < deadline_at, f"only {found}"
        for record in await reader.fetch(0.05):
            cancel = protocol.decode_cancel(record.headers)
            assert record.key == cancel.request_id.encode()
            assert record.value in (b"", None)
            found.append(cancel)
    return found


async def test_a_timeout_publishes_a_cancel(
    client: Client, serve: Serve, transport: MemoryTransport, settings: Settings
) -> None:
    """A call that ends in ReplyTimeout publishes a cancel with reason "timeout"."""
    reader = await cancels_topic(transport, settings)
    service = await serve(silent)
    with pytest.raises(ReplyTimeout):
        await client.request("orders", "GET", "/", timeout=0.1)
    [cancel] = await read_cancels(reader)
    assert cancel == protocol.Cancel(service.requests[0].id, "timeout")
    await eventually(lambda: client.cancels.sent == 1)


async def test_a_cancelled_task_publishes_a_cancel(
    client: Client, serve: Serve, transport: MemoryTransport, settings: Settings
) -> None:
    """Cancelling the task that awaits a call publishes a cancel with reason "cancelled"."""
    reader = await cancels_topic(transport, settings)
    service = await serve(silent)
    call = asyncio.create_task(client.request("orders", "GET", "/", timeout=30))
    await service.received()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    [cancel] = await read_cancels(reader)
    assert cancel == protocol.Cancel(service.requests[0].id, "cancelled")


async def test_a_stream_closed_early_publishes_a_cancel_and_a_finished_one_does_not(
    client: Client, serve: Serve, transport: MemoryTransport, settings: Settings
) -> None:
    """Leaving a stream before its end marker publishes "closed"; whole replies, and a
    stream read to its end, publish nothing."""
    reader = await cancels_topic(transport, settings)
    service = await serve(started_stream)
    async with client.stream("orders", "GET", "/s") as reply:
        async for _ in reply:
            break
    [cancel] = await read_cancels(reader)
    assert cancel == protocol.Cancel(service.requests[0].id, "closed")
    service.handler = _whole_stream
    async with client.stream("orders", "GET", "/whole") as reply:
        assert [chunk async for chunk in reply] == [b"a", b"b"]
    await client.request("orders", "GET", "/")
    assert await reader.fetch(0.1) == []
    await eventually(lambda: client.cancels.sent == 1)


async def _whole_stream(request: Request, replies: Replies) -> None:
    await replies.item(0, b"a")
    await replies.item(1, b"b", end=True)


async def test_httpx_closing_a_stream_early_publishes_a_cancel_and_a_whole_reply_does_not(
    client: Client, serve: Serve, transport: MemoryTransport, settings: Settings
) -> None:
    """Through KourierTransport, a response closed before its end marker publishes
    "closed"; a reply that came whole publishes nothing and leaves no waiter."""
    reader = await cancels_topic(transport, settings)
    service = await serve(started_stream)
    async with httpx.AsyncClient(
        transport=KourierTransport(client), base_url="http://orders"
    ) as http:
        async with http.stream("GET", "/s") as response:
            async for _ in response.aiter_lines():
                break
        [cancel] = await read_cancels(reader)
        assert cancel == protocol.Cancel(service.requests[0].id, "closed")
        service.handler = echo
        async with http.stream("GET", "/whole") as response:
            assert client.inbox.waiting == 0, "a whole reply holds no waiter while read"
            assert (await response.aread()).startswith(b"{")
        assert (await http.get("/")).status_code == 200
    assert await reader.fetch(0.1) == []
    assert client.inbox.waiting == 0
    await eventually(lambda: client.cancels.sent == 1)


async def test_no_cancel_goes_to_a_service_without_a_cancels_topic(
    client: Client, serve: Serve
) -> None:
    """An older service has no cancels topic: the caller neither creates it nor raises;
    the cancel is counted as not sent."""
    await serve(silent)
    for _ in range(2):
        with pytest.raises(ReplyTimeout):
            await client.request("orders", "GET", "/", timeout=0.05)
    await eventually(lambda: client.cancels.not_sent == 2)
    assert client.cancels.sent == 0
    assert settings_cancel_topic(client) not in client.transport.broker.topics  # type: ignore[attr-defined]


def settings_cancel_topic(client: Client) -> str:
    return client.settings.cancel_topic("orders")


async def test_stop_sends_the_cancels_still_on_their_way(
    settings: Settings, serve: Serve, transport: MemoryTransport
) -> None:
    """A client stopped right after a call gave up still publishes that call's cancel."""
    reader = await cancels_topic(transport, settings)
    await serve(silent)
    client = Client(settings, transport=MemoryTransport(transport.broker))
    async with client:
        with pytest.raises(ReplyTimeout):
            await client.request("orders", "GET", "/", timeout=0.05)
    assert len(await read_cancels(reader)) == 1


async def test_a_call_inside_a_handler_inherits_its_deadline_and_names_its_parent(
    client: Client, serve: Serve
) -> None:
    """Inside a handler, a call's deadline is the handler's when that is sooner, and the
    handler's request id travels as kourier-parent; a one-way send keeps its own."""
    service = await serve(_echo_two_way)
    parent_deadline = protocol.now_ms() + 1000
    token = deadline.bind(deadline.Handling("parent-1", parent_deadline))
    try:
        await client.request("orders", "GET", "/", timeout=30)
        await client.send("orders", "POST", "/later")
    finally:
        deadline.unbind(token)
    nested, later = await service.received(2)
    assert nested.parent_id == "parent-1" and later.parent_id == "parent-1"
    assert nested.deadline_ms is not None and nested.deadline_ms <= parent_deadline
    assert later.deadline_ms is None


async def _echo_two_way(request: Request, replies: Replies) -> None:
    if request.reply_to is not None:
        await echo(request, replies)


async def test_a_call_from_a_handler_out_of_time_is_not_sent(client: Client, serve: Serve) -> None:
    """A handler already past its deadline gets ReplyTimeout at once; nothing is sent."""
    service = await serve()
    token = deadline.bind(deadline.Handling("late", protocol.now_ms() - 1))
    try:
        with pytest.raises(ReplyTimeout, match="no time left: request late"):
            await client.request("orders", "GET", "/", timeout=30)
    finally:
        deadline.unbind(token)
    await asyncio.sleep(0.05)
    assert service.requests == []
