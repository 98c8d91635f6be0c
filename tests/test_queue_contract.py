"""Queue mode's contract, on the in-memory share group and on real Kafka (confluent-kafka).

aiokafka has no share consumer: there, queue mode must be refused at start.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from kourier import Client, Service, Settings
from kourier.errors import SettingsError
from kourier.transports.base import Acknowledgement, ShareConsumer, TopicSpec, Transport
from kourier.transports.memory import MemoryTransport
from kourier.transports.memory_share import share_group
from tests import apps
from tests.conftest import TransportFactory, kafka_bootstrap, unique_prefix
from tests.share_groups import configure_share_group

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["memory", pytest.param("confluent", marks=pytest.mark.kafka)])
def backend(request: pytest.FixtureRequest) -> str:
    """The transport under test: in memory, or real Kafka through confluent-kafka."""
    return str(request.param)


def configure_group(transport: Transport, group: str, **configs: str) -> None:
    """Set share-group configs (``share_record_lock_duration_ms=...``) on either broker."""
    if isinstance(transport, MemoryTransport):
        state = share_group(transport.broker, group)
        for name, value in configs.items():
            if name == "share_record_lock_duration_ms":
                state.lock_seconds = int(value) / 1000
            elif name == "share_delivery_count_limit":
                state.delivery_limit = int(value)
        return
    configure_share_group(kafka_bootstrap(), group, **configs)


@pytest.fixture
async def topic(make_transport: TransportFactory) -> AsyncIterator[tuple[Transport, str]]:
    """A started transport and a fresh 1-partition topic on it."""
    transport = make_transport()
    await transport.start()
    name = f"{unique_prefix()}queue"
    await transport.ensure_topics([TopicSpec(name, 1)])
    try:
        yield transport, name
    finally:
        await transport.stop()


async def _publish(transport: Transport, topic: str, count: int) -> None:
    acks = [await transport.publish(topic, str(i).encode()) for i in range(count)]
    for ack in acks:
        await ack


async def _fetch_some(member: ShareConsumer, timeout: float = 15.0) -> list[int]:
    """Offsets of the first non-empty fetch, each accepted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = await member.fetch(0.5)
        for delivery in deliveries:
            await member.acknowledge(delivery, Acknowledgement.ACCEPT)
        if deliveries:
            return [d.record.offset for d in deliveries]
    return []


async def test_a_new_group_starts_at_the_earliest_record(topic: tuple[Transport, str]) -> None:
    """Records published before a share group's first member joined are delivered."""
    transport, name = topic
    await _publish(transport, name, 3)
    member = transport.share_consumer([name], f"g-{uuid.uuid4().hex[:8]}")
    await member.start()
    try:
        got: list[int] = []
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline:
            got += await _fetch_some(member, timeout=2)
        assert sorted(got) == [0, 1, 2]
    finally:
        await member.stop()


async def test_settings_of_the_group_are_read_at_start(topic: tuple[Transport, str]) -> None:
    """A member learns its group's lock duration and delivery limit when it starts."""
    transport, name = topic
    group = f"g-{uuid.uuid4().hex[:8]}"
    configure_group(
        transport, group, share_record_lock_duration_ms="15000", share_delivery_count_limit="3"
    )
    member = transport.share_consumer([name], group)
    await member.start()
    try:
        assert member.lock_seconds == 15.0
        assert member.delivery_limit == 3
    finally:
        await member.stop()


async def test_release_redelivers_and_the_count_goes_up(topic: tuple[Transport, str]) -> None:
    """A released record comes back with a delivery count one higher."""
    transport, name = topic
    member = transport.share_consumer([name], f"g-{uuid.uuid4().hex[:8]}")
    await member.start()
    try:
        await _publish(transport, name, 1)
        counts: list[int] = []
        deadline = time.monotonic() + 20
        while len(counts) < 2 and time.monotonic() < deadline:
            for delivery in await member.fetch(0.5):
                counts.append(delivery.count)
                how = Acknowledgement.RELEASE if len(counts) == 1 else Acknowledgement.ACCEPT
                await member.acknowledge(delivery, how)
        assert counts == [1, 2]
    finally:
        await member.stop()


async def test_a_stopped_member_gives_back_what_it_held(topic: tuple[Transport, str]) -> None:
    """Records a member fetched and never acknowledged go to another member after its stop."""
    transport, name = topic
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = transport.share_consumer([name], group)
    second = transport.share_consumer([name], group)
    await first.start()
    await _publish(transport, name, 2)
    held: list[int] = []
    deadline = time.monotonic() + 20
    while len(held) < 2 and time.monotonic() < deadline:
        held += [d.record.offset for d in await first.fetch(0.5)]
        if held and len(held) < 2:
            break  # one batch only: it must be acknowledged before fetching more
    await first.stop()
    await second.start()
    try:
        again: list[int] = []
        deadline = time.monotonic() + 20
        while len(again) < len(held) and time.monotonic() < deadline:
            again += await _fetch_some(second, timeout=2)
        assert sorted(again) == sorted(held)
    finally:
        await second.stop()


# -- a service in queue mode -----------------------------------------------------------


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def queue_settings(settings: Settings) -> Settings:
    return settings.replace(consumption="queue", partitions=1)


async def _service(
    settings: Settings, make_transport: TransportFactory
) -> tuple[Service, Callable[[], asyncio.Future[None]]]:
    service = Service(apps.app, "orders", settings, transport=make_transport())
    await service.start()
    return service, lambda: asyncio.ensure_future(service.stop())


async def test_a_queue_mode_service_answers_every_call_shape(
    queue_settings: Settings, make_transport: TransportFactory
) -> None:
    """Two-way, streamed and one-way calls work in queue mode; each record is accepted."""
    first, stop_first = await _service(queue_settings, make_transport)
    second, stop_second = await _service(queue_settings, make_transport)
    transport = make_transport()
    await transport.start()
    try:
        async with Client(queue_settings, transport=transport) as client:
            for i in range(10):
                response = await client.request("orders", "POST", "/orders", json={"item": str(i)})
                assert response.status_code == 201 and response.json()["item"] == str(i)
            async with client.stream("orders", "GET", "/items", params={"n": 3}) as reply:
                assert [line async for line in reply.aiter_json()] == [{"i": i} for i in range(3)]
            before = len(apps.events)
            await client.send("orders", "POST", "/events", json={"queued": True})
            await _until(lambda: len(apps.events) > before)
            assert apps.events[-1] == {"queued": True}
    finally:
        await transport.stop()
        await stop_first()
        await stop_second()
    stats = [s.consumer.stats for s in (first, second) if s.consumer is not None]  # type: ignore[union-attr]
    assert sum(s.accepted for s in stats) == 12
    assert sum(s.rejected + s.released for s in stats) == 0


async def test_a_failing_one_way_message_is_dead_lettered_and_rejected(
    queue_settings: Settings, make_transport: TransportFactory
) -> None:
    """After the last retry the message goes to the dead-letter topic and is rejected."""
    settings = queue_settings.replace(retry_attempts=2, retry_backoff=0.01)
    service, stop = await _service(settings, make_transport)
    transport = make_transport()
    await transport.start()
    name = f"poison-{uuid.uuid4().hex[:6]}"
    try:
        async with Client(settings, transport=transport) as client:
            await client.send("orders", "POST", f"/flaky/{name}", params={"fail_times": 5})
            consumer = service.consumer
            assert consumer is not None
            await _until(lambda: consumer.completed >= 1)
    finally:
        await transport.stop()
        await stop()
    assert service.stats.dead_letters == 1
    assert service.consumer is not None
    assert service.consumer.stats.rejected == 1  # type: ignore[union-attr]


@pytest.mark.kafka
async def test_queue_mode_on_aiokafka_is_refused_with_the_fix(bootstrap: str) -> None:
    """aiokafka has no share consumer: starting a queue-mode service names the fix."""
    settings = Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=unique_prefix(),
        partitions=1,
        consumption="queue",
        kafka_client="aiokafka",
    )
    service = Service(apps.app, "orders", settings)
    with pytest.raises(SettingsError, match="KOURIER_KAFKA_CLIENT=confluent"):
        await service.start()
