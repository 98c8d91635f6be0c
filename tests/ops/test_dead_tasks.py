"""A background task that dies is never a zombie: probes turn red, serve stops, calls fail.

Each test breaks one task with an error no code path expects (a bug), which is what
``docs/reliability.md`` ("Tasks and what their death does") promises to surface.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

import pytest

from kourier.client.caller import Client
from kourier.errors import BrokerError, KourierError
from kourier.ops.health import HealthServer
from kourier.server.serve import Service, serve
from kourier.settings import Settings
from kourier.transports.base import (
    Delivery,
    GroupConsumer,
    RebalanceCallback,
    Record,
    ShareConsumer,
    TopicPartition,
)
from kourier.transports.memory import MemoryBroker, MemoryGroupConsumer, MemoryTransport
from kourier.transports.memory_share import MemoryShareConsumer
from tests.ops.apps import orders_app
from tests.ops.conftest import probe, until, until_probe


class Bug(Exception):
    """An error no kourier code path expects."""


class BreakableConsumer(MemoryGroupConsumer):
    """A group consumer whose fetch or commit raises ``Bug`` once told to."""

    broken_fetch = False
    broken_commit = False

    async def fetch(self, max_records: int, timeout: float) -> list[Record]:
        if self.broken_fetch:
            raise Bug("fetch broke")
        return await super().fetch(max_records, timeout)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.broken_commit and offsets:
            raise Bug("commit broke")
        await super().commit(offsets)


class BreakableTransport(MemoryTransport):
    """Hands out ``BreakableConsumer``s and keeps the last one."""

    consumer: BreakableConsumer | None = None

    def group_consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_assigned: RebalanceCallback | None = None,
        on_revoked: RebalanceCallback | None = None,
    ) -> GroupConsumer:
        self.consumer = BreakableConsumer(self.broker, topics, group, on_assigned, on_revoked)
        return self.consumer


@pytest.mark.parametrize("loop", ["fetch", "commit"])
async def test_a_dead_consume_loop_turns_both_probes_red_at_once(
    settings: Settings, broker: MemoryBroker, client: Client, loop: str
) -> None:
    """The fetch or commit loop dying turns /livez and /readyz 503 within a second,
    long before any stall timeout, with the error named."""
    app, _ = orders_app()
    transport = BreakableTransport(broker)
    service = Service(app, "orders", settings, transport=transport)
    async with HealthServer(service, 0, "127.0.0.1", stall_timeout=60.0) as health:
        await service.start()
        try:
            await until_probe(health.port, "/readyz", 200)
            assert transport.consumer is not None
            if loop == "fetch":
                transport.consumer.broken_fetch = True
            else:
                transport.consumer.broken_commit = True
                await client.send("orders", "POST", "/orders")
            started = time.monotonic()
            body = await until_probe(health.port, "/livez", 503, contains="died")
            assert f"{loop} broke" in body
            assert time.monotonic() - started < 2.0
            status, body = await probe(health.port, "/readyz")
            assert status == 503 and "died" in body
            assert isinstance(service.failure, Bug)
        finally:
            await service.stop()


async def test_serve_stops_and_raises_when_a_consume_loop_dies(
    settings: Settings, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve`` (so ``kourier run``) stops the instance and raises the error, logged, so
    the process exits non-zero and is restarted instead of idling as a zombie."""
    app, _ = orders_app()
    transport = BreakableTransport(broker)

    def ready(instance: Service) -> None:
        assert transport.consumer is not None
        transport.consumer.broken_fetch = True

    caplog.set_level(logging.CRITICAL, "kourier.server")
    with pytest.raises(KourierError, match="a task it needs died") as raised:
        async with asyncio.timeout(10):
            await serve(app, "orders", settings, transport=transport, ready=ready)
    assert isinstance(raised.value.__cause__, Bug)
    assert any("kourier-fetch task died" in r.getMessage() for r in caplog.records)


class BreakableShareConsumer(MemoryShareConsumer):
    """A share-group member whose fetch raises ``Bug`` once told to."""

    broken_fetch = False

    async def fetch(self, timeout: float) -> list[Delivery]:
        if self.broken_fetch:
            raise Bug("share fetch broke")
        return await super().fetch(timeout)


class BreakableShareTransport(MemoryTransport):
    """Hands out ``BreakableShareConsumer``s and keeps them."""

    def __init__(self, broker: MemoryBroker) -> None:
        super().__init__(broker)
        self.members: list[BreakableShareConsumer] = []

    def share_consumer(
        self, topics: Sequence[str], group: str, *, max_records: int = 500
    ) -> ShareConsumer:
        member = BreakableShareConsumer(self.broker, topics, group, max_records)
        self.members.append(member)
        return member


async def test_a_dead_queue_fetch_loop_stops_serve_like_the_ordered_one(
    settings: Settings, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """In queue mode too, a member's fetch loop dying is kept as the service's failure,
    turns the instance's ``failed`` on, and ``serve`` stops and raises it."""
    app, _ = orders_app()
    transport = BreakableShareTransport(broker)

    def ready(instance: Service) -> None:
        transport.members[0].broken_fetch = True

    caplog.set_level(logging.CRITICAL, "kourier.server")
    with pytest.raises(KourierError, match="a task it needs died") as raised:
        async with asyncio.timeout(10):
            await serve(
                app,
                "orders",
                settings.replace(consumption="queue"),
                transport=transport,
                ready=ready,
            )
    assert isinstance(raised.value.__cause__, Bug)
    assert any("kourier-queue-fetch-0 task died" in r.getMessage() for r in caplog.records)


async def test_a_dead_reply_inbox_fails_its_calls_and_every_new_one(
    settings: Settings, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """If the reply inbox's task dies, calls waiting for replies fail at once with the
    error, and so does every later call, instead of each waiting out its timeout."""
    app, controls = orders_app()
    async with (
        Service(app, "orders", settings, transport=MemoryTransport(broker)),
        Client(settings, transport=MemoryTransport(broker)) as client,
    ):
        waiting = asyncio.create_task(client.request("orders", "GET", "/wait", timeout=30))
        await until(lambda: client.inbox.waiting == 1)

        def broken_route(record: Record) -> None:
            raise Bug("route broke")

        client.inbox.route = broken_route  # type: ignore[method-assign]
        caplog.set_level(logging.ERROR, "kourier.client")
        # Any reply reaches the broken route: the answer to the waiting call.
        controls.release.set()
        with pytest.raises(BrokerError, match="reply inbox stopped"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(BrokerError, match="reply inbox stopped"):
            await client.request("orders", "GET", "/orders/1", timeout=30)
        assert any("stopped reading" in r.getMessage() for r in caplog.records)


@pytest.mark.kafka
async def test_a_dead_confluent_consumer_thread_stops_the_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """confluent-kafka's consumer thread dying is not retried forever as a broker error:
    the service's fetch loop ends with it and the service reports the failure."""
    from tests.conftest import kafka_bootstrap, unique_prefix

    config = Settings(
        topic_prefix=unique_prefix(),
        partitions=1,
        bootstrap_servers=kafka_bootstrap(),
        kafka_client="confluent",
    )
    app, _ = orders_app()
    service = Service(app, "orders", config)
    await service.start()
    try:
        consumer = service.consumer
        assert consumer is not None
        thread = consumer._consumer._thread  # type: ignore[union-attr]

        def broken_poll(_: object) -> None:
            raise Bug("poll broke")

        thread._poll = broken_poll
        await until(lambda: service.failure is not None, timeout=10)
        assert "consumer thread died" in str(service.failure)
        assert "poll broke" in str(service.failure)
    finally:
        await service.stop()
