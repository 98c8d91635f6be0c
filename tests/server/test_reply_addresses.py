"""Checking reply addresses before the app runs (``server/reply_addresses.py``)."""

from __future__ import annotations

import asyncio
import time

from kourier.errors import BrokerError
from kourier.protocol import ReplyAddress
from kourier.server.reply_addresses import ReplyAddresses
from kourier.transports.base import TopicInfo, TopicSpec
from kourier.transports.memory import MemoryTransport


async def test_an_address_is_good_bad_or_illegal() -> None:
    """An existing partition is good; a missing topic or partition, or an illegal name,
    is a problem that says what is wrong."""
    transport = MemoryTransport()
    await transport.ensure_topics([TopicSpec("replies", 2)])
    addresses = ReplyAddresses(transport)
    assert await addresses.problem(ReplyAddress("replies", 1)) is None
    assert await addresses.problem(ReplyAddress("replies", 2)) == (
        "reply topic 'replies' has no partition 2"
    )
    assert await addresses.problem(ReplyAddress("nowhere", 0)) == (
        "reply topic 'nowhere' does not exist"
    )
    assert "not a legal topic name" in str(await addresses.problem(ReplyAddress("a b", 0)))


async def test_a_topic_created_a_moment_ago_is_found_on_a_second_look() -> None:
    """A reply topic the broker learns of within the recheck delays is accepted, and a
    missing one is refused within half a second."""
    transport = MemoryTransport()
    addresses = ReplyAddresses(transport)

    async def create_soon() -> None:
        await asyncio.sleep(0.05)
        await transport.ensure_topics([TopicSpec("late", 1)])

    creating = asyncio.create_task(create_soon())
    assert await addresses.problem(ReplyAddress("late", 0)) is None
    await creating
    started = time.monotonic()
    assert await addresses.problem(ReplyAddress("never", 0)) is not None
    assert time.monotonic() - started < 0.6


async def test_a_broker_that_cannot_be_asked_refuses_nothing() -> None:
    """When the broker cannot be asked, the address counts as good (a failing reply is
    logged where it fails), so an outage never turns requests into dead letters."""

    class Unreachable(MemoryTransport):
        async def describe_topics(self, names: object) -> dict[str, TopicInfo]:
            raise BrokerError("no metadata")

    assert await ReplyAddresses(Unreachable()).problem(ReplyAddress("replies", 0)) is None
