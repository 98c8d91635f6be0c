"""Calls fail fast, as HTTP does: an unknown service, or one with no live instance."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from kourier.client import Client
from kourier.errors import ServiceNotFound, ServiceUnavailable
from kourier.settings import Settings
from kourier.transports.base import TopicInfo, TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import FakeService, announce


def elapsed_since(started: float) -> float:
    return asyncio.get_running_loop().time() - started


async def test_an_unknown_service_fails_at_once_suggesting_the_closest_name(
    client: Client, serve: Serve, broker: MemoryBroker, settings: Settings
) -> None:
    """A misspelt service: ServiceNotFound within a fraction of a second, naming it and
    the close names; no request topic is created for it, by any kind of call."""
    await serve()  # "orders" exists
    started = asyncio.get_running_loop().time()
    with pytest.raises(ServiceNotFound, match=r"no service 'ordres'; did you mean 'orders'\?"):
        await client.request("ordres", "GET", "/", timeout=5)
    assert elapsed_since(started) < 0.5
    with pytest.raises(ServiceNotFound, match="ordres"):
        await client.send("ordres", "POST", "/")
    with pytest.raises(ServiceNotFound, match="ordres"):
        await client.enqueue("ordres", "POST", "/")
    with pytest.raises(ServiceNotFound, match="ordres"):
        async with client.stream("ordres", "GET", "/"):
            pass
    with pytest.raises(ServiceNotFound, match="kourier topics ensure ordres"):
        await client.gather("ordres", "GET", "/", timeout=1)
    assert settings.request_topic("ordres") not in broker.topics
    assert client.inbox.waiting == 0


async def test_suggestions_come_from_request_topics_this_client_has_used(
    client: Client, transport: MemoryTransport, settings: Settings
) -> None:
    """A service whose request topic this client has already sent to is suggested even
    if it is not in the registry (it never announced itself); the caller does not list
    every topic of the cluster for a suggestion."""
    await transport.ensure_topics([TopicSpec(settings.request_topic("payments"), 1)])
    await client.send("payments", "POST", "/")
    with pytest.raises(ServiceNotFound, match="did you mean 'payments'"):
        await client.send("paymnets", "POST", "/")


async def test_no_suggestion_when_nothing_is_close(client: Client) -> None:
    """With nothing close, the error names the service and how to create it, no guess."""
    with pytest.raises(ServiceNotFound) as caught:
        await client.request("zzz", "GET", "/")
    assert "did you mean" not in str(caught.value)
    assert "'zzz'" in str(caught.value)


async def test_a_service_without_a_live_instance_fails_fast_but_takes_messages(
    client: Client, orders_topic: str, broker: MemoryBroker
) -> None:
    """Topic but no instance: two-way calls raise ServiceUnavailable at once; a one-way
    send still goes into the topic, where it waits for an instance."""
    started = asyncio.get_running_loop().time()
    with pytest.raises(ServiceUnavailable, match="no live instance of service 'orders'"):
        await client.request("orders", "GET", "/", timeout=5)
    with pytest.raises(ServiceUnavailable):
        async with client.stream("orders", "GET", "/", timeout=5):
            pass
    with pytest.raises(ServiceUnavailable):
        await client.gather("orders", "GET", "/", timeout=5)
    assert elapsed_since(started) < 0.5
    assert client.inbox.waiting == 0
    await client.send("orders", "POST", "/events")
    assert sum(len(p) for p in broker.topics[orders_topic]) == 1


async def test_an_instance_whose_heartbeat_stopped_long_ago_fails_fast(
    client: Client, orders_topic: str, transport: MemoryTransport, settings: Settings
) -> None:
    """A registration more than 6 heartbeat intervals old (a killed instance) does not
    count, and is not waited for; the error says when it was last heard from."""
    await announce(transport, settings, "orders", heartbeat_at=time.time() - 7 * 3600)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ServiceUnavailable, match=r"last heartbeat .* was 25200 s ago"):
        await client.request("orders", "GET", "/")
    assert elapsed_since(started) < 0.5


async def test_a_late_heartbeat_is_waited_for_one_interval(
    client: Client, orders_topic: str, broker: MemoryBroker, settings: Settings
) -> None:
    """An instance whose heartbeat lapsed only lately (as after a broker outage) is
    waited for up to one interval, without wait_for_instance: without a heartbeat,
    ServiceUnavailable comes after that interval; with one, the call goes through."""
    transport = MemoryTransport(broker)
    await announce(transport, settings, "orders", heartbeat_at=time.time() - 1.8, interval=0.5)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ServiceUnavailable, match=r"after waiting 0\.5 s"):
        await client.request("orders", "GET", "/", timeout=5)
    assert 0.45 <= elapsed_since(started) < 1.2
    await announce(transport, settings, "orders", heartbeat_at=time.time() - 2.0, interval=0.5)
    call = asyncio.create_task(client.request("orders", "GET", "/back", timeout=5))
    await asyncio.sleep(0.1)
    assert not call.done()
    async with FakeService(transport, settings):  # announces itself: a fresh heartbeat
        response = await call
    assert response.json()["path"] == "/back"


async def test_waiting_for_an_instance_answers_once_one_starts(
    broker: MemoryBroker, settings: Settings, orders_topic: str
) -> None:
    """With wait_for_instance, a call made during a restart waits for the instance."""
    patient = settings.replace(wait_for_instance=3.0)
    service = FakeService(MemoryTransport(broker), settings)
    async with Client(patient, transport=MemoryTransport(broker)) as client:
        call = asyncio.create_task(client.request("orders", "GET", "/late", timeout=5))
        await asyncio.sleep(0.2)
        assert not call.done()
        async with service:
            response = await call
    assert response.json()["path"] == "/late"


async def test_waiting_for_an_instance_ends_with_the_call_timeout(
    broker: MemoryBroker, settings: Settings, orders_topic: str
) -> None:
    """wait_for_instance never outlasts the call: its timeout bounds the wait."""
    patient = settings.replace(wait_for_instance=30.0)
    async with Client(patient, transport=MemoryTransport(broker)) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ServiceUnavailable, match=r"after waiting 0\.3 s"):
            await client.request("orders", "GET", "/", timeout=0.3)
        assert 0.25 <= elapsed_since(started) < 1.0


async def test_gather_on_a_shared_topic_needs_only_the_topic(
    client: Client, serve: Serve, settings: Settings
) -> None:
    """A shared topic has no registry entry: gather checks that it exists, and then
    collects what comes; a missing shared topic is ServiceNotFound naming the topic."""
    shared = f"{settings.topic_prefix}prices"
    await serve(topic=shared, group="a", responder="a")
    [response] = await client.gather(shared, "GET", "/", count=1, timeout=2)
    assert response.status_code == 200
    with pytest.raises(ServiceNotFound, match=r"no topic 'kourier\.prics'"):
        await client.gather("kourier.prics", "GET", "/", timeout=1)


class CountingTransport(MemoryTransport):
    """Counts the metadata requests a caller makes."""

    describes = 0

    async def describe_topics(self, names: Sequence[str]) -> dict[str, TopicInfo]:
        self.describes += 1
        return await super().describe_topics(names)


async def test_after_the_first_call_the_lookup_asks_the_broker_nothing(
    broker: MemoryBroker, settings: Settings, serve: Serve
) -> None:
    """The topic's existence is asked once per service; later calls cost no round trip."""
    await serve()
    transport = CountingTransport(broker)
    await transport.ensure_topics([TopicSpec(settings.request_topic("audit"), 1)])
    async with Client(settings, transport=transport) as client:
        await client.request("orders", "GET", "/")
        await client.send("audit", "POST", "/")
        asked = transport.describes
        for _ in range(20):
            await client.request("orders", "GET", "/")
            await client.send("audit", "POST", "/")
        assert transport.describes == asked
