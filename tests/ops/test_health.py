"""Liveness and readiness probes of a service, checked over HTTP as Kubernetes would."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from kourier.client.caller import Client
from kourier.ops.health import HealthServer
from kourier.server.hooks import Hooks
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.ops.apps import orders_app
from tests.ops.conftest import get, probe, until, until_probe


class FlakyBroker(MemoryTransport):
    """A transport whose broker answers pings only while ``up`` is true."""

    up = False

    async def ping(self, timeout: float) -> bool:
        return self.up


async def test_readiness_follows_the_service_from_start_to_drain(
    settings: Settings, broker: MemoryBroker, client: Client
) -> None:
    """Not ready before start, ready once started and joined, not ready while draining."""
    app, controls = orders_app()
    service = Service(app, "orders", settings, transport=MemoryTransport(broker))
    async with HealthServer(service, 0, "127.0.0.1") as health:
        await until_probe(health.port, "/readyz", 503, contains="starting")
        assert await probe(health.port, "/livez") == (200, "ok\n")
        await service.start()
        assert await until_probe(health.port, "/readyz", 200) == "ok\n"

        call = asyncio.create_task(client.request("orders", "GET", "/wait"))
        assert service.consumer is not None
        consumer = service.consumer
        await until(lambda: consumer.in_flight == 1)
        stopping = asyncio.create_task(service.stop())
        await until(lambda: service.draining)
        await until_probe(health.port, "/readyz", 503, contains="draining")
        assert (await probe(health.port, "/livez"))[0] == 200

        controls.release.set()
        await stopping
        assert (await call).status_code == 200


async def test_not_ready_while_the_broker_does_not_answer_a_ping(
    settings: Settings, broker: MemoryBroker
) -> None:
    """A failed ping makes the service not ready; the next good ping makes it ready again."""
    app, _ = orders_app()
    transport = FlakyBroker(broker)
    service = Service(app, "orders", settings, transport=transport)
    async with service, HealthServer(service, 0, "127.0.0.1", sample_interval=0.05) as health:
        await until_probe(health.port, "/readyz", 503, contains="broker unreachable")
        assert (await probe(health.port, "/livez"))[0] == 200
        transport.up = True
        await until_probe(health.port, "/readyz", 200)


async def test_not_live_while_a_handler_blocks_the_event_loop(
    settings: Settings, broker: MemoryBroker, client: Client
) -> None:
    """A handler that blocks the loop fails liveness, seen from another thread meanwhile."""
    app, controls = orders_app()
    service = Service(app, "orders", settings, transport=MemoryTransport(broker))
    async with service, HealthServer(service, 0, "127.0.0.1", stall_timeout=0.3) as health:
        await until_probe(health.port, "/livez", 200)
        call = asyncio.create_task(client.request("orders", "GET", "/block?seconds=1.5"))

        def watch_while_blocked() -> tuple[int, str, bool]:
            assert controls.blocking.wait(5)
            while True:
                status, body = get(health.port, "/livez")
                if status != 200 or controls.unblocked.is_set():
                    return status, body, controls.unblocked.is_set()
                time.sleep(0.02)

        status, body, unblocked = await asyncio.to_thread(watch_while_blocked)
        assert (status, unblocked) == (503, False)
        assert "event loop blocked" in body
        assert (await call).json() == {"blocked": 1.5}
        await until_probe(health.port, "/livez", 200)
        await until_probe(health.port, "/readyz", 200)


async def test_not_live_while_the_consume_loop_is_stuck_at_its_bound(
    settings: Settings, broker: MemoryBroker, client: Client
) -> None:
    """All slots held past stall_timeout fails liveness; a freed slot makes it live again."""
    app, controls = orders_app()
    one_slot = settings.replace(concurrency=1)
    service = Service(app, "orders", one_slot, transport=MemoryTransport(broker))
    async with service, HealthServer(service, 0, "127.0.0.1", stall_timeout=0.4) as health:
        call = asyncio.create_task(client.request("orders", "GET", "/wait"))
        body = await until_probe(health.port, "/livez", 503, contains="consume loop stalled")
        assert "1 requests held" in body
        controls.release.set()
        assert (await call).status_code == 200
        await until_probe(health.port, "/livez", 200)


async def test_a_fetch_that_stalls_with_records_waiting_is_not_live() -> None:
    """No consume progress with lag > 0 fails liveness; with no lag, an idle consumer lives."""
    lag = {("t.orders", 0): 3}

    async def read_lag() -> dict[tuple[str, int], int]:
        return dict(lag)

    consumer = SimpleNamespace(
        last_progress=time.monotonic() - 60, in_flight=0, joined=True, lag=read_lag
    )
    ready = asyncio.Event()
    ready.set()
    service: Any = SimpleNamespace(
        name="orders",
        consumer=consumer,
        draining=False,
        ready=ready,
        settings=Settings(),
        transport=MemoryTransport(),
        hooks=Hooks(),
        stats=SimpleNamespace(retries=0, duplicates=0),
        failure=None,
    )
    health = HealthServer(service, 0, "127.0.0.1", stall_timeout=1.0, sample_interval=0.05)
    async with health:
        await until_probe(health.port, "/livez", 503, contains="3 records waiting")
        lag.clear()
        await until_probe(health.port, "/livez", 200)
        await until_probe(health.port, "/readyz", 200)


async def test_stop_releases_the_port_and_the_threads(
    settings: Settings, broker: MemoryBroker
) -> None:
    """After stop nothing listens and no health thread is left; unknown paths are 404."""
    app, _ = orders_app()
    service = Service(app, "orders", settings, transport=MemoryTransport(broker))
    health = HealthServer(service, 0, "127.0.0.1")
    await health.start()
    port = health.port
    assert port != 0
    assert (await probe(port, "/nowhere"))[0] == 404
    await health.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("kourier-health")]
    with pytest.raises(OSError):
        await probe(port, "/livez")
