"""Fixtures of the caller wing's tests: an in-memory broker, a started client, services.

These tests run on the in-memory transport only (the scripted ``FakeService`` stands
in for the server wing), so ``settings`` here is not parametrized by backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kourier.client import Client
from kourier.settings import Settings
from kourier.transports.base import TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.fake_service import FakeService, Handler, echo

Serve = Callable[..., Awaitable[FakeService]]


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def transport(broker: MemoryBroker) -> MemoryTransport:
    return MemoryTransport(broker)


@pytest.fixture
def settings() -> Settings:
    return Settings(partitions=2, reply_partitions=4, default_timeout=2.0)


@pytest.fixture
async def client(settings: Settings, transport: MemoryTransport) -> AsyncIterator[Client]:
    async with Client(settings, transport=transport) as started:
        yield started


@pytest.fixture
async def orders_topic(transport: MemoryTransport, settings: Settings) -> str:
    """The request topic of "orders", created as its service would (callers never do)."""
    topic = settings.request_topic("orders")
    await transport.ensure_topics([TopicSpec(topic, settings.partitions)])
    return topic


@pytest.fixture
async def serve(settings: Settings, broker: MemoryBroker) -> AsyncIterator[Serve]:
    """Start a ``FakeService`` (own connection to the broker) that stops after the test."""
    services: list[FakeService] = []

    async def start(handler: Handler = echo, **options: Any) -> FakeService:
        service = FakeService(MemoryTransport(broker), settings, handler, **options)
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()
