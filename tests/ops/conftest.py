"""Fixtures for the ops tests: memory-only settings, a broker, a client, HTTP probes."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable

import pytest

from kourier.client.caller import Client
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.conftest import unique_prefix


@pytest.fixture
def settings() -> Settings:
    """In-memory only (the root fixture also runs on Kafka): topics no other test uses."""
    return Settings(
        topic_prefix=unique_prefix(),
        partitions=3,
        reply_partitions=4,
        commit_interval=0.05,
        drain_timeout=5.0,
        default_timeout=10.0,
        retry_attempts=2,
        retry_backoff=0.01,
    )


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def client(settings: Settings, broker: MemoryBroker) -> AsyncIterator[Client]:
    async with Client(settings, transport=MemoryTransport(broker)) as caller:
        yield caller


def get(port: int, path: str) -> tuple[int, str]:
    """GET from the health server, blocking: (status, body)."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


async def probe(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def until_probe(
    port: int, path: str, status: int, *, contains: str = "", timeout: float = 5.0
) -> str:
    """Probe until it answers ``status`` (and ``contains``); the body, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        got, body = await probe(port, path)
        if got == status and contains in body:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: wanted {status} {contains!r}, last got {got} {body!r}")
        await asyncio.sleep(0.02)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
