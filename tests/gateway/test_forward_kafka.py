"""The gateway's failure paths on each backend: in memory, and real Kafka through both
client libraries (aiokafka and confluent-kafka)."""

from __future__ import annotations

import asyncio

import pytest

from tests.gateway.app import events
from tests.gateway.conftest import Exchange, Stack, drive, http

pytestmark = pytest.mark.timeout(90)


async def test_streamed_items_arrive_as_they_are_produced(any_stack: Stack) -> None:
    """Each reply record is passed on when it arrives, before the reply ends."""
    exchange = await drive(any_stack.gateway(), "GET", "/shop/items", query=b"n=3&delay=0.4")
    assert exchange.status == 200 and exchange.complete
    times = [at for at, chunk in exchange.chunks if chunk]
    assert len(times) == 3
    assert times[-1] - times[0] >= 0.7


async def test_a_late_reply_is_a_504(any_stack: Stack) -> None:
    """No reply before X-Kourier-Timeout is a 504 problem."""
    async with http(any_stack.gateway()) as client:
        response = await client.get(
            "/shop/slow?tag=late&seconds=3", headers={"X-Kourier-Timeout": "0.5"}
        )
    assert response.status_code == 504
    assert response.json()["type"] == "urn:kourier:problem:deadline-passed"


async def test_a_disconnect_closes_the_call(any_stack: Stack) -> None:
    """A caller leaving mid-call ends the call at once and leaves no waiter."""
    gateway = any_stack.gateway()

    async def leave(exchange: Exchange) -> None:
        await asyncio.sleep(0.5)

    exchange = await drive(
        gateway, "GET", "/shop/slow", query=b"tag=gone&seconds=20", disconnect=leave
    )
    assert exchange.status == 0
    assert gateway.stats.disconnects == 1
    assert any_stack.client.inbox.waiting == 0


async def test_one_way_is_202_once_the_broker_acknowledged(any_stack: Stack) -> None:
    """Prefer: respond-async is answered 202 after the broker's ack; the service runs it."""
    async with http(any_stack.gateway()) as client:
        response = await client.post(
            "/shop/record", json={"id": "k-1"}, headers={"Prefer": "respond-async"}
        )
    assert response.status_code == 202
    for _ in range(300):
        if "recorded k-1" in events:
            break
        await asyncio.sleep(0.05)
    assert "recorded k-1" in events
