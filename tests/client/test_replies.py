"""The reply inbox: ordering items, routing by request id, surviving bad input."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kourier import protocol
from kourier.client import Client
from kourier.client.replies import ReplyInbox, ReplyOrder, ReplyWaiter
from kourier.errors import BrokerError, ReplyTimeout, StreamBroken
from kourier.protocol import Reply, Request
from kourier.settings import Settings
from kourier.transports.base import PartitionReader, Record, TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import Replies, silent


def item(seq: int, end: bool = False) -> Reply:
    return Reply("r1", seq, str(seq).encode(), end=end, status=200 if seq == 0 else None)


def test_order_puts_items_back_in_sequence() -> None:
    """Out-of-order items wait in the buffer until their turn."""
    order = ReplyOrder()
    for seq in (2, 0):
        assert order.add(item(seq))
    assert [r.seq for r in iter(order.pop, None)] == [0]
    assert not order.broken
    for seq in (3, 1):
        assert order.add(item(seq, end=seq == 3))
    assert [r.seq for r in iter(order.pop, None)] == [1, 2, 3]
    assert order.done


def test_order_ignores_duplicates() -> None:
    """An item whose seq was delivered or is buffered already is refused."""
    order = ReplyOrder()
    assert order.add(item(0)) and order.pop() is not None
    assert not order.add(item(0))
    assert order.add(item(2))
    assert not order.add(item(2))


def test_order_with_a_gap_before_the_end_is_broken() -> None:
    """Once the end marker is in and the next item is missing, the reply is broken."""
    order = ReplyOrder()
    order.add(item(0))
    order.add(item(2, end=True))
    assert order.pop() is not None and order.pop() is None
    assert order.broken and not order.done
    assert not order.add(item(5)), "nothing beyond the end marker is kept"


def waiter_of(settings: Settings, transport: MemoryTransport) -> ReplyWaiter:
    return ReplyWaiter(ReplyInbox(transport, settings), "r1", gather=False)


async def test_an_item_is_handed_to_the_call_waiting_for_it(
    settings: Settings, transport: MemoryTransport
) -> None:
    """An item delivered while the call waits is what its ``next`` returns, in order."""
    waiter = waiter_of(settings, transport)
    waiting = asyncio.create_task(waiter.next())
    await asyncio.sleep(0)
    waiter.deliver(item(1))
    await asyncio.sleep(0)
    assert not waiting.done(), "item 1 is not the next in order"
    waiter.deliver(item(0))
    assert (await waiting).seq == 0
    assert (await waiter.next()).seq == 1


async def test_an_item_handed_to_a_cancelled_wait_is_kept(
    settings: Settings, transport: MemoryTransport
) -> None:
    """An item handed over just before the waiting call was cancelled comes next, not lost."""
    waiter = waiter_of(settings, transport)
    waiting = asyncio.create_task(waiter.next())
    await asyncio.sleep(0)
    waiter.deliver(item(0))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await asyncio.wait_for(waiter.next(), 1)).seq == 0


async def test_a_wait_past_its_deadline_times_out_and_later_items_still_come(
    settings: Settings, transport: MemoryTransport
) -> None:
    """``next`` with a deadline raises ReplyTimeout; an item after that is still delivered."""
    waiter = waiter_of(settings, transport)
    loop = asyncio.get_running_loop()
    with pytest.raises(ReplyTimeout):
        await waiter.next(loop.time() + 0.01)
    waiter.deliver(item(0, end=True))
    assert (await waiter.next(loop.time() + 1)).end


async def test_a_broken_reply_wakes_the_waiting_call(
    settings: Settings, transport: MemoryTransport
) -> None:
    """An end marker after a gap fails the call waiting for the missing item at once."""
    waiter = waiter_of(settings, transport)
    waiter.deliver(item(0))
    assert (await waiter.next()).seq == 0
    waiting = asyncio.create_task(waiter.next())
    await asyncio.sleep(0)
    waiter.deliver(item(2, end=True))
    with pytest.raises(StreamBroken):
        await asyncio.wait_for(waiting, 1)


async def test_malformed_reply_records_do_not_kill_the_inbox(
    client: Client, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Junk on the reply partition is logged with its position and the next call works."""
    address = client.reply_address
    publish = client.transport.publish
    await publish(address.topic, b"junk", partition=address.partition)
    await publish(address.topic, b"x", headers=[("kourier-v", b"1")], partition=address.partition)
    await publish(
        address.topic,
        b"",
        headers=[("kourier-v", b"1"), ("kourier-type", b"reply"), ("kourier-id", b"a b")],
        partition=address.partition,
    )
    await serve()
    with caplog.at_level(logging.WARNING, "kourier.client"):
        response = await client.request("orders", "GET", "/")
    assert response.status_code == 200
    where = f"{address.topic}[{address.partition}]"
    assert f"{where}@0" in caplog.text and f"{where}@2" in caplog.text


async def test_waiter_map_is_empty_after_every_kind_of_call(client: Client, serve: Serve) -> None:
    """Completed, timed-out, failed and cancelled calls all forget their request ids."""
    await serve()
    await client.request("orders", "GET", "/")
    await client.send("orders", "POST", "/")
    async with client.stream("orders", "GET", "/") as stream:
        await stream.aread()
    await serve(silent, service="quiet")
    with pytest.raises(TimeoutError):
        await client.request("quiet", "GET", "/", timeout=0.02)
    call = asyncio.create_task(client.request("quiet", "GET", "/"))
    await asyncio.sleep(0.01)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert client.inbox.waiting == 0


async def test_clients_sharing_a_partition_get_only_their_replies(
    settings: Settings, broker: MemoryBroker, serve: Serve
) -> None:
    """Two callers on one reply partition each receive exactly the replies to their calls."""

    async def echo_body(request: Request, replies: Replies) -> None:
        await asyncio.sleep(0.001 * (len(request.body) % 5))
        await replies.whole(request.body)

    await serve(echo_body)
    one_partition = settings.replace(reply_partitions=1)
    async with (
        Client(one_partition, transport=MemoryTransport(broker)) as a,
        Client(one_partition, transport=MemoryTransport(broker)) as b,
    ):
        assert a.reply_address == b.reply_address

        async def call(client: Client, body: str) -> bytes:
            return (await client.request("orders", "POST", "/", content=body)).content

        bodies = [f"{name}-{n}" for n in range(20) for name in ("a", "b")]
        results = await asyncio.gather(
            *(call(a if body.startswith("a") else b, body) for body in bodies)
        )
        assert results == [body.encode() for body in bodies]
        assert a.inbox.waiting == b.inbox.waiting == 0


async def test_an_unknown_responder_is_ignored_by_a_two_way_call(
    client: Client, serve: Serve
) -> None:
    """A two-way call follows the first responder and drops another's items."""

    async def two_voices(request: Request, replies: Replies) -> None:
        await replies.item(0, b"first ")
        replies.responder = "intruder"
        await replies.item(0, b"intruder", end=True)
        replies.responder = None
        await replies.item(1, b"answer", end=True)

    await serve(two_voices)
    assert (await client.request("orders", "GET", "/")).content == b"first answer"


class FlakyReader(PartitionReader):
    """A reader whose first fetch fails, as a broker connection might."""

    def __init__(self, inner: PartitionReader) -> None:
        self.inner = inner
        self.failed = False

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def end_offset(self) -> int:
        return await self.inner.end_offset()

    async def fetch(self, timeout: float) -> list[Record]:
        if not self.failed:
            self.failed = True
            raise BrokerError("connection reset")
        return await self.inner.fetch(timeout)


class FlakyTransport(MemoryTransport):
    def partition_reader(
        self, topic: str, partition: int, *, from_beginning: bool = False
    ) -> PartitionReader:
        inner = super().partition_reader(topic, partition, from_beginning=from_beginning)
        return FlakyReader(inner)


async def test_inbox_survives_a_failing_fetch(
    settings: Settings, broker: MemoryBroker, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker error while fetching replies is logged and the inbox keeps reading."""
    await serve()
    with caplog.at_level(logging.ERROR, "kourier.client"):
        async with Client(settings, transport=FlakyTransport(broker)) as client:
            assert (await client.request("orders", "GET", "/")).status_code == 200
    assert "could not fetch replies" in caplog.text


async def test_stopping_fails_calls_in_flight(client: Client, serve: Serve) -> None:
    """A call still waiting when its client stops fails with BrokerError at once."""
    service = await serve(silent)
    call = asyncio.create_task(client.request("orders", "GET", "/", timeout=30))
    await service.received()
    await client.stop()
    with pytest.raises(BrokerError, match="stopped"):
        await call


async def test_inbox_picks_a_partition_and_reads_from_its_end(
    settings: Settings, transport: MemoryTransport
) -> None:
    """The inbox creates the reply topic, reads one partition and skips records before start."""

    async def publish(body: bytes) -> None:
        key, value, headers = protocol.encode_reply(Reply("r1", 0, body, status=200))
        ack = await transport.publish(
            settings.reply_topic, value, key=key, headers=headers, partition=3
        )
        await ack

    await transport.ensure_topics([TopicSpec(settings.reply_topic, 4)])
    await publish(b"before start")
    inbox = ReplyInbox(transport, settings, partition=3)
    await inbox.start()
    try:
        assert inbox.address == protocol.ReplyAddress(settings.reply_topic, 3)
        with inbox.expect("r1") as waiter:
            await publish(b"after start")
            deadline = asyncio.get_running_loop().time() + 1
            assert (await waiter.next(deadline)).body == b"after start"
            with pytest.raises(ValueError, match="already waiting"):
                inbox.expect("r1")
        assert inbox.waiting == 0
    finally:
        await inbox.stop()


async def test_inbox_uses_the_partitions_the_topic_really_has(
    settings: Settings, transport: MemoryTransport
) -> None:
    """A reply topic made earlier with fewer partitions limits the random choice."""
    await transport.ensure_topics([TopicSpec(settings.reply_topic, 1)])
    for _ in range(5):
        inbox = ReplyInbox(transport, settings)
        await inbox.start()
        assert inbox.address.partition == 0
        await inbox.stop()
