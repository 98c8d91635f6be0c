"""Prometheus metrics of a service and of a caller, scraped as Prometheus would."""

from __future__ import annotations

import asyncio
import sys

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kourier import protocol
from kourier.client.caller import Client
from kourier.ops.health import HealthServer
from kourier.ops.metrics import ClientMetrics, ServiceMetrics
from kourier.protocol import Request
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.testing.plugin import StartService
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.ops.apps import orders_app
from tests.ops.conftest import probe, until, until_probe

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_scraped_metrics_count_requests_by_route_template(
    kourier_service: StartService,
) -> None:
    """Requests are counted per route template and status, never per raw path."""
    app, _ = orders_app()
    orders = await kourier_service(app, "orders", raise_app_exceptions=False)
    service = orders.service
    async with HealthServer(service, 0, "127.0.0.1") as health:
        for target in ("/orders/1", "/orders/2", "/nowhere", "/boom"):
            await orders.client.request("orders", "GET", target)
        await until(lambda: service.stats.replied == 4)
        status, text = await probe(health.port, "/metrics")
    assert status == 200
    samples = parse(text)
    order = {"service": "orders", "route": "/orders/{order_id}", "method": "GET"}
    assert value(samples, "kourier_requests_total", **order, status="200") == 2
    assert value(samples, "kourier_handler_seconds_count", **order) == 2
    unmatched = {"service": "orders", "route": "unmatched", "method": "GET", "status": "404"}
    assert value(samples, "kourier_requests_total", **unmatched) == 1
    boom = {"service": "orders", "route": "/boom", "method": "GET", "status": "500"}
    assert value(samples, "kourier_requests_total", **boom) == 1
    assert value(samples, "kourier_errors_total", service="orders") == 1
    assert value(samples, "kourier_end_to_end_seconds_count", service="orders") == 4
    assert value(samples, "kourier_in_flight", service="orders") == 0
    assert not [labels for _, labels in samples if ("route", "/orders/1") in labels]
    assert any(name == "python_info" for name, _ in samples)  # the process's own metrics


async def test_expired_dead_lettered_and_retried_work_is_counted(
    settings: Settings, broker: MemoryBroker, client: Client
) -> None:
    """Expired requests, dead letters and retries of one-way work show in the scrape."""
    app, _ = orders_app()
    transport = MemoryTransport(broker)
    service = Service(app, "orders", settings, transport=transport)
    metrics = ServiceMetrics()
    metrics.install(service)
    async with service:
        late = Request("late-1", "GET", "/orders/1", deadline_ms=protocol.now_ms() - 1000)
        key, raw, headers = protocol.encode_request(late)
        await (await transport.publish(service.request_topic, raw, key=key, headers=headers))
        await (await transport.publish(service.request_topic, b"not a request"))
        await client.send("orders", "GET", "/boom")  # fails twice, then is dead-lettered
        await until(lambda: service.stats.dead_letters == 2 and service.stats.expired == 1)
        samples = parse(generate_latest(metrics.registry).decode())
    assert value(samples, "kourier_expired_total", service="orders") == 1
    assert value(samples, "kourier_dead_letters_total", service="orders") == 2
    assert value(samples, "kourier_retries_total", service="orders") == 1
    assert value(samples, "kourier_errors_total", service="orders") == 2
    assert value(samples, "kourier_refused_total", service="orders", why="malformed") == 1
    assert value(samples, "kourier_refused_total", service="orders", why="undecodable") == 0


async def test_lag_and_in_flight_show_the_work_waiting(
    settings: Settings, broker: MemoryBroker, client: Client
) -> None:
    """With its one slot held, a service shows 1 in flight and every waiting record as lag."""
    app, controls = orders_app()
    one_slot = settings.replace(concurrency=1)
    service = Service(app, "orders", one_slot, transport=MemoryTransport(broker))
    metrics = ServiceMetrics(lag_interval=0.02)
    metrics.install(service)

    def scrape() -> Samples:
        return parse(generate_latest(metrics.registry).decode())

    def lag(samples: Samples) -> float:
        return sum(v for (name, _), v in samples.items() if name == "kourier_consumer_lag")

    async with service:
        calls = [asyncio.create_task(client.request("orders", "GET", "/wait")) for _ in range(3)]
        await until(lambda: lag(scrape()) == 3)
        samples = scrape()
        assert value(samples, "kourier_in_flight", service="orders") == 1
        partitions = {dict(labels)["partition"] for name, labels in samples if "lag" in name}
        assert partitions == {"0", "1", "2"}
        controls.release.set()
        assert [(await call).status_code for call in calls] == [200, 200, 200]
        await until(lambda: lag(scrape()) == 0)
    assert lag(scrape()) == 0  # not consuming: unknown, so left out


def test_client_metrics_count_calls_by_outcome() -> None:
    """A caller's calls are counted by outcome; timeouts also on their own counter."""
    metrics = ClientMetrics()
    metrics.observe("orders", "GET", ClientMetrics.status_outcome(200), 0.01)
    metrics.observe("orders", "get", "timeout", 5.0)
    metrics.observe("orders", "BREW", ClientMetrics.status_outcome(503), 0.2)
    samples = parse(generate_latest(metrics.registry).decode())
    calls = "kourier_client_requests_total"
    assert value(samples, calls, service="orders", method="GET", outcome="2xx") == 1
    assert value(samples, calls, service="orders", method="GET", outcome="timeout") == 1
    assert value(samples, calls, service="orders", method="_OTHER", outcome="5xx") == 1
    assert value(samples, "kourier_client_timeouts_total", service="orders") == 1
    assert value(samples, "kourier_client_seconds_count", service="orders", method="GET") == 2


async def test_client_metrics_count_reply_records_stepped_over(
    settings: Settings, broker: MemoryBroker
) -> None:
    """Records on a caller's reply partition that are not replies, or that the client
    library cannot read, are counted by why."""
    metrics = ClientMetrics()
    async with Client(settings, transport=MemoryTransport(broker), metrics=metrics) as caller:
        address = caller.inbox.address
        broker.append(address.topic, b"x", None, [(b"\xff", b"")], address.partition)
        broker.append(address.topic, b"x", None, [("kourier-v", b"9")], address.partition)
        await until(lambda: sum(caller.inbox.dropped.values()) == 2)
    samples = parse(generate_latest(metrics.registry).decode())
    dropped = "kourier_client_replies_dropped_total"
    assert value(samples, dropped, why="undecodable") == 1
    assert value(samples, dropped, why="malformed") == 1


async def test_without_prometheus_client_metrics_answer_501_with_a_hint(
    settings: Settings, broker: MemoryBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the extra, /metrics says how to install it and the probes still work."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"kourier\[metrics\]"):
        ServiceMetrics()
    app, _ = orders_app()
    service = Service(app, "orders", settings, transport=MemoryTransport(broker))
    async with service, HealthServer(service, 0, "127.0.0.1") as health:
        status, body = await probe(health.port, "/metrics")
        assert status == 501 and "pip install 'kourier[metrics]'" in body
        await until_probe(health.port, "/readyz", 200)


async def test_queue_mode_counts_acknowledgements_and_delivery_counts(
    settings: Settings, broker: MemoryBroker, client: Client
) -> None:
    """A queue-mode service exposes acquired/accepted counts and a delivery-count histogram,
    and its readiness follows its share-group members."""
    app, _ = orders_app()
    queue_settings = settings.replace(consumption="queue", partitions=1)
    service = Service(app, "orders", queue_settings, transport=MemoryTransport(broker))
    async with service, HealthServer(service, 0, "127.0.0.1") as health:
        await until_probe(health.port, "/readyz", 200)
        for target in ("/orders/1", "/orders/2", "/orders/3"):
            await client.request("orders", "GET", target)
        await until(lambda: service.stats.replied == 3)
        await until(lambda: service.consumer is not None and service.consumer.completed == 3)
        status, text = await probe(health.port, "/metrics")
    assert status == 200
    samples = parse(text)
    assert value(samples, "kourier_queue_acquired_total", service="orders") == 3
    assert value(samples, "kourier_queue_accepted_total", service="orders") == 3
    assert value(samples, "kourier_queue_rejected_total", service="orders") == 0
    assert value(samples, "kourier_queue_delivery_count_bucket", service="orders", le="1") == 3
    assert value(samples, "kourier_queue_delivery_count_count", service="orders") == 3
