"""OpenTelemetry traces: one trace from a caller through two services and back.

Each test has its own TracerProvider (the global one can be set only once per process).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from kourier.client.caller import Client
from kourier.client.transport import KourierTransport
from kourier.ops.tracing import TracingMiddleware, client_span, inject
from kourier.server.asgi import Receive, Scope, Send
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.ops.apps import orders_app
from tests.ops.conftest import until

Spans = list[ReadableSpan]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_kind(exporter: InMemorySpanExporter, *kinds: SpanKind) -> Spans:
    return [s for s in exporter.get_finished_spans() if s.kind in kinds]


def servers(exporter: InMemorySpanExporter) -> Spans:
    return by_kind(exporter, SpanKind.SERVER, SpanKind.CONSUMER)


def ancestors(span: ReadableSpan, spans: Spans) -> Spans:
    """The span's parent, its parent's parent, ... as far as they were recorded."""
    by_id = {s.context.span_id: s for s in spans}
    out = []
    current = by_id.get(span.parent.span_id) if span.parent else None
    while current is not None:
        out.append(current)
        current = by_id.get(current.parent.span_id) if current.parent else None
    return out


def traced(app: Any, name: str, settings: Settings, broker: MemoryBroker, tp: Any) -> Service:
    middleware = TracingMiddleware(
        app, name, topic=settings.request_topic(name), tracer_provider=tp
    )
    return Service(middleware, name, settings, transport=MemoryTransport(broker))


async def test_a_call_through_two_services_is_one_trace(
    settings: Settings,
    broker: MemoryBroker,
    client: Client,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """Caller → service A → (A calls B through httpx) → service B: one trace, right parents."""
    stock_app = FastAPI()

    @stock_app.get("/stock/{sku}")
    async def stock(sku: str) -> dict[str, Any]:
        return {"sku": sku, "count": 3}

    orders = FastAPI()

    @orders.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, Any]:
        # Injected by hand until the Client does it; once it does, its own span nests
        # inside this one and replaces the header, and the assertions below still hold.
        async with httpx.AsyncClient(transport=KourierTransport(a_client)) as http:
            with client_span("stock", "GET", "/stock/sku-1", tracer_provider=provider):
                reply = await http.get("http://stock/stock/sku-1", headers=inject([]))
        return {"id": order_id, "stock": reply.json()["count"]}

    a = traced(orders, "orders", settings, broker, provider)
    b = traced(stock_app, "stock", settings, broker, provider)
    a_client = Client(settings, transport=MemoryTransport(broker))
    async with a, b, a_client:
        with client_span("orders", "GET", "/orders/7", tracer_provider=provider):
            response = await client.request(
                "orders", "GET", "/orders/7", headers=inject([]), request_id="trace-me-1"
            )
        assert response.json() == {"id": 7, "stock": 3}
        await until(lambda: len(servers(exporter)) == 2)

    spans = list(exporter.get_finished_spans())
    assert len({s.context.trace_id for s in spans}) == 1
    [a_span] = [s for s in servers(exporter) if s.name == "GET /orders/{order_id}"]
    [b_span] = [s for s in servers(exporter) if s.name == "GET /stock/{sku}"]
    b_chain = ancestors(b_span, spans)
    assert b_chain[0].kind == SpanKind.CLIENT and a_span in b_chain
    a_chain = ancestors(a_span, spans)
    assert a_chain[0].kind == SpanKind.CLIENT
    assert a_chain[-1].kind == SpanKind.CLIENT and a_chain[-1].parent is None
    attributes = dict(a_span.attributes or {})
    assert attributes["messaging.system"] == "kafka"
    assert attributes["messaging.destination.name"] == settings.request_topic("orders")
    assert attributes["kourier.request_id"] == "trace-me-1"
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["http.route"] == "/orders/{order_id}"
    assert a_span.kind == SpanKind.SERVER and a_span.status.status_code == StatusCode.UNSET


async def test_an_app_that_traces_itself_nests_its_span_inside_the_service_span(
    settings: Settings,
    broker: MemoryBroker,
    client: Client,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """An app reading its parent from traceparent (as FastAPI's own telemetry does) gets ours."""
    seen: list[tuple[int, int]] = []

    async def self_tracing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        carrier = {n.decode(): v.decode() for n, v in scope["headers"]}
        parent = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        seen.append((parent.trace_id, parent.span_id))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with traced(self_tracing, "orders", settings, broker, provider):
        with client_span("orders", "GET", "/ping", tracer_provider=provider):
            await client.request("orders", "GET", "/ping", headers=inject([]))
        await until(lambda: len(servers(exporter)) == 1)
    [server] = servers(exporter)
    assert seen == [(server.context.trace_id, server.context.span_id)]


async def test_a_failing_handler_marks_its_span_as_an_error(
    settings: Settings,
    broker: MemoryBroker,
    client: Client,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """An exception in the handler gives the service span an error status and the event."""
    app, _ = orders_app()
    async with traced(app, "orders", settings, broker, provider):
        with client_span("orders", "GET", "/boom", tracer_provider=provider) as call:
            response = await client.request("orders", "GET", "/boom", headers=inject([]))
            call.set_status_code(response.status_code)
        await until(lambda: len(servers(exporter)) == 1)
    [server] = servers(exporter)
    assert server.status.status_code == StatusCode.ERROR
    assert [e.name for e in server.events] == ["exception"]
    [caller] = by_kind(exporter, SpanKind.CLIENT)
    assert caller.status.status_code == StatusCode.ERROR
    assert server.parent is not None and server.parent.span_id == caller.context.span_id


async def test_a_one_way_message_is_a_producer_and_consumer_pair(
    settings: Settings,
    broker: MemoryBroker,
    client: Client,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    """A one-way send is traced as PRODUCER on the caller and CONSUMER on the service."""
    app, _ = orders_app()
    async with traced(app, "orders", settings, broker, provider):
        with client_span("orders", "POST", "/orders", one_way=True, tracer_provider=provider):
            await client.send("orders", "POST", "/orders", headers=inject([]))
        await until(lambda: len(servers(exporter)) == 1)
    [consumer] = servers(exporter)
    [producer] = by_kind(exporter, SpanKind.PRODUCER)
    assert consumer.kind == SpanKind.CONSUMER and consumer.name == "POST /orders"
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id


def test_inject_replaces_a_stale_context_and_leaves_headers_alone_without_a_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Outside a span headers are unchanged; inside, they carry the current span's context."""
    stale = [(b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"), (b"x-a", b"1")]
    assert inject(stale) == stale
    with client_span("orders", "GET", "/orders/1?secret=1", tracer_provider=provider) as call:
        headers = inject(stale)
        assert call.span is not None
        own = call.span.get_span_context()
    [traceparent] = [v for n, v in headers if n == b"traceparent"]
    assert traceparent.decode().startswith(f"00-{own.trace_id:032x}-{own.span_id:016x}-")
    assert (b"x-a", b"1") in headers
    [span] = exporter.get_finished_spans()
    assert (span.attributes or {})["url.path"] == "/orders/1"  # never the query


async def test_without_opentelemetry_everything_passes_through(
    settings: Settings,
    broker: MemoryBroker,
    client: Client,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With opentelemetry-api missing, requests run untraced and inject changes nothing."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    app, _ = orders_app()
    async with traced(app, "orders", settings, broker, provider):
        with client_span("orders", "GET", "/orders/1", tracer_provider=provider) as call:
            headers = inject([(b"x-a", b"1")])
            response = await client.request("orders", "GET", "/orders/1", headers=headers)
            call.set_status_code(response.status_code)
            call.set_request_id("ignored")
    assert call.span is None
    assert headers == [(b"x-a", b"1")]
    assert response.json() == {"id": 1}
    assert exporter.get_finished_spans() == ()


GLOBAL_PROVIDER_SCRIPT = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from kourier.ops.tracing import client_span

with client_span("orders", "GET", "/before") as before:
    pass
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with client_span("orders", "GET", "/after") as after:
    pass
print(before.span is None, [span.name for span in exporter.get_finished_spans()])
"""


def test_a_global_provider_set_after_the_first_call_is_used() -> None:
    """Untraced while no provider is set; traced from the moment one is set globally.

    In a process of its own: the global provider can be set only once per process.
    """
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "True ['GET orders']"
