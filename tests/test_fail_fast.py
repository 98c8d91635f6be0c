"""The registry and failing fast, on every transport: in memory and real Kafka through
both client libraries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from kourier import Client, KourierTransport, Service
from kourier.errors import ServiceNotFound, ServiceUnavailable
from kourier.registry import registry_topic_spec
from kourier.settings import Settings
from kourier.transports.base import TopicSpec
from tests.apps import app
from tests.conftest import TransportFactory


def elapsed_since(started: float) -> float:
    return asyncio.get_running_loop().time() - started


@contextlib.asynccontextmanager
async def client_of(settings: Settings, make_transport: TransportFactory) -> AsyncIterator[Client]:
    """A started client on its own started transport."""
    transport = make_transport()
    await transport.start()
    try:
        async with Client(settings, transport=transport) as client:
            yield client
    finally:
        await transport.stop()


async def test_unknown_service_fails_at_once_naming_it_and_a_suggestion(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """A misspelt service fails in well under a second with ServiceNotFound (httpx:
    ConnectError), naming it and the running service it resembles; nothing is created."""
    async with (
        Service(app, "orders", settings, transport=make_transport()),
        client_of(settings, make_transport) as client,
    ):
        await client.request("orders", "GET", "/hello/x")  # the lookup is warm, as in use
        for call in (
            client.request("ordres", "GET", "/hello/x", timeout=10),
            client.send("ordres", "POST", "/events", json={}),
        ):
            started = asyncio.get_running_loop().time()
            with pytest.raises(ServiceNotFound, match="no service 'ordres'; did you mean 'orders'"):
                await call
            # Typically 5-100 ms; the bound leaves room for a loaded 2-core CI machine.
            assert elapsed_since(started) < 0.8
        async with httpx.AsyncClient(
            transport=KourierTransport(client), base_url="http://ordres"
        ) as http:
            with pytest.raises(httpx.ConnectError, match="did you mean 'orders'"):
                await http.get("/hello/x")
        topics = await client.transport.topic_names()
    assert settings.request_topic("ordres") not in topics
    assert settings.request_topic("orders") in topics


async def test_a_cold_client_also_fails_fast_on_an_unknown_service(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """The first call of a new client (registry read from the start) still fails within
    a second."""
    async with client_of(settings, make_transport) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ServiceNotFound, match="'nobody'"):
            await client.request("nobody", "GET", "/", timeout=10)
        assert elapsed_since(started) < 1.0


async def test_no_live_instance_fails_fast_and_a_send_still_queues(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """Topics but no instance: two-way calls raise ServiceUnavailable (httpx:
    ConnectError) at once; a one-way send is taken and handled once an instance starts."""
    transport = make_transport()
    await transport.start()
    try:
        # The registry exists on any cluster where a service ever ran; a topic created
        # a moment ago costs its first reader a leader election, which is not the lookup.
        await transport.ensure_topics(
            [TopicSpec(settings.request_topic("orders"), 1), registry_topic_spec(settings)]
        )
    finally:
        await transport.stop()
    async with client_of(settings, make_transport) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(ServiceUnavailable, match="no live instance of service 'orders'"):
            await client.request("orders", "GET", "/hello/x", timeout=10)
        async with httpx.AsyncClient(
            transport=KourierTransport(client), base_url="http://orders"
        ) as http:
            with pytest.raises(httpx.ConnectError, match="no live instance"):
                await http.get("/hello/x")
        assert elapsed_since(started) < 1.0
        await client.send("orders", "POST", "/events", json={"kind": "queued"})


async def test_an_instance_appears_then_withdraws_on_a_clean_stop(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """A started instance is live in client.services(); after a clean stop its tombstone
    removes it and two-way calls fail fast again."""
    async with client_of(settings, make_transport) as client:
        service = Service(app, "orders", settings, transport=make_transport())
        async with service:
            found = await client.services()
            [info] = found["orders"].live
            assert info.instance_id == service.announcer.instance_id
            assert ("GET", "/hello/{name}") in info.routes
            assert (await client.request("orders", "GET", "/hello/x")).status_code == 200
        for _ in range(100):
            if "orders" not in await client.services():
                break
            await asyncio.sleep(0.05)
        assert "orders" not in await client.services()
        with pytest.raises(ServiceUnavailable):
            await client.request("orders", "GET", "/hello/x")


async def test_waiting_for_an_instance_spans_a_restart(
    settings: Settings, make_transport: TransportFactory
) -> None:
    """With wait_for_instance, a call made while no instance runs is answered by the
    instance that starts a moment later."""
    async with Service(app, "orders", settings, transport=make_transport()):
        pass  # the topics exist, the instance is gone
    patient = settings.replace(wait_for_instance=20.0)
    async with client_of(patient, make_transport) as client:
        call = asyncio.create_task(client.request("orders", "GET", "/hello/late", timeout=30))
        await asyncio.sleep(0.3)
        assert not call.done()
        async with Service(app, "orders", settings, transport=make_transport()):
            response = await call
    assert response.json()["hello"] == "late"
