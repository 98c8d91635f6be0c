"""Every call reports to ClientMetrics and carries the caller's trace context."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from kourier import Client, ReplyTimeout
from kourier.ops.metrics import ClientMetrics
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.client.conftest import Serve
from tests.client.fake_service import silent


async def test_outcomes_are_counted(serve: Serve, settings: Settings, broker: MemoryBroker) -> None:
    """An answered call counts as 2xx, a one-way send as sent, a timeout as timeout."""
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    await serve()
    async with Client(settings, transport=MemoryTransport(broker), metrics=metrics) as client:
        await client.request("orders", "GET", "/a")
        await client.send("orders", "POST", "/b")
    await serve(silent, service="quiet")
    async with Client(settings, transport=MemoryTransport(broker), metrics=metrics) as client:
        with pytest.raises(ReplyTimeout):
            await client.request("quiet", "GET", "/c", timeout=0.1)

    def count(service: str, method: str, outcome: str) -> float | None:
        labels = {"service": service, "method": method, "outcome": outcome}
        return registry.get_sample_value("kourier_client_requests_total", labels)

    assert count("orders", "GET", "2xx") == 1
    assert count("orders", "POST", "sent") == 1
    assert count("quiet", "GET", "timeout") == 1
    assert registry.get_sample_value("kourier_client_timeouts_total", {"service": "quiet"}) == 1
