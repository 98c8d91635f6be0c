"""Replayed dead letters are marked in their topic; topic creation logs what it created."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from kourier import admin, protocol
from kourier.errors import BrokerError
from kourier.server.serve import H_DEAD_ATTEMPTS, H_DEAD_REASON, H_DEAD_SOURCE
from kourier.settings import Settings
from kourier.transports import kafka_transport
from kourier.transports.base import TopicSpec, Transport
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.conftest import TransportFactory, kafka_bootstrap, unique_prefix

pytestmark = pytest.mark.timeout(90)


async def dead_letter(transport: Transport, settings: Settings, request_id: str) -> None:
    request = protocol.Request(request_id, "POST", "/orders", body=b'{"item": "book"}')
    key, value, headers = protocol.encode_request(request)
    headers += [
        (H_DEAD_REASON, b"handler failed with status 500 after 3 attempts"),
        (H_DEAD_SOURCE, b"x.requests[0]@1"),
        (H_DEAD_ATTEMPTS, b"3"),
    ]
    topic = settings.dead_letter_topic("orders")
    await (await transport.publish(topic, value, key=key, headers=headers, partition=0))


async def test_replay_marks_the_letters_it_replayed(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """After a replay, listing marks that letter replayed, not the others, and the marker
    record itself is not listed as a letter."""
    transport = make_transport()
    await transport.start()
    try:
        await admin.ensure_topics(transport, settings, "orders")
        await dead_letter(transport, settings, "first")
        await dead_letter(transport, settings, "second")
        letters = await admin.read_dead_letters(transport, settings, "orders")
        assert [(lt.header("kourier-id"), lt.replayed) for lt in letters] == [
            ("first", False),
            ("second", False),
        ]
        assert letters[0].record.value == b'{"item": "book"}'
        assert await admin.replay(transport, settings, "orders", letters[:1]) == 1
        again = await admin.read_dead_letters(transport, settings, "orders")
        assert [(lt.header("kourier-id"), lt.replayed) for lt in again] == [
            ("first", True),
            ("second", False),
        ]
        assert again[0].position == letters[0].position
    finally:
        await transport.stop()


@pytest.mark.kafka
@pytest.mark.parametrize("library", ["aiokafka", "confluent"])
async def test_only_the_process_that_created_a_topic_logs_it(
    library: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two transports creating the same topics at once: each topic is logged created once."""
    settings = Settings(
        bootstrap_servers=kafka_bootstrap(), kafka_client=library, topic_prefix=unique_prefix()
    )
    specs = [TopicSpec(f"{settings.topic_prefix}t{i}", 1, 1) for i in range(3)]
    first, second = kafka_transport(settings), kafka_transport(settings)
    await first.start()
    await second.start()
    try:
        with caplog.at_level(logging.INFO, logger="kourier.transports"):
            await asyncio.gather(first.ensure_topics(specs), second.ensure_topics(specs))
    finally:
        await first.stop()
        await second.stop()
    created = [
        name
        for record in caplog.records
        if record.getMessage().startswith("created topics ")
        for name in record.getMessage().removeprefix("created topics ").split(", ")
    ]
    assert sorted(created) == sorted(spec.name for spec in specs)


async def test_a_listing_stops_at_each_partitions_end_without_idling(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """Listing reads every partition up to the end it had when the read began: with an
    idle wait far longer than the test's bound, it still returns at once, with every letter
    (empty partitions included)."""
    transport = make_transport()
    await transport.start()
    try:
        await admin.ensure_topics(transport, settings, "orders")
        for request_id in ("first", "second"):
            await dead_letter(transport, settings, request_id)
        started = asyncio.get_running_loop().time()
        letters = await admin.read_dead_letters(transport, settings, "orders", idle=300.0)
        took = asyncio.get_running_loop().time() - started
        assert [lt.header("kourier-id") for lt in letters] == ["first", "second"]
        assert took < 30, f"the listing took {took:.1f} s: it waited out its idle time"
    finally:
        await transport.stop()


async def test_a_replay_that_cannot_be_marked_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """If the marker cannot be written, the replay still counts and a warning names the
    letters that will not show as replayed."""
    settings = Settings(topic_prefix=unique_prefix(), partitions=1)
    transport = MemoryTransport(MemoryBroker())
    await transport.start()
    try:
        await admin.ensure_topics(transport, settings, "orders")
        await dead_letter(transport, settings, "first")
        letters = await admin.read_dead_letters(transport, settings, "orders", idle=0.1)
        publish = transport.publish

        async def refuse_markers(
            topic: str, value: bytes | None, **options: Any
        ) -> Awaitable[None]:
            if topic == settings.dead_letter_topic("orders"):
                raise BrokerError("not authorised to use topic")
            return await publish(topic, value, **options)

        with caplog.at_level(logging.WARNING, logger="kourier.admin"):
            transport.publish = refuse_markers  # type: ignore[method-assign]
            assert await admin.replay(transport, settings, "orders", letters) == 1
        assert "could not mark them replayed" in caplog.text
        assert letters[0].position in caplog.text
    finally:
        await transport.stop()
