"""OpenTelemetry traces across kourier calls (the optional extra ``kourier[tracing]``).

W3C trace context travels as ordinary HTTP headers of the request (``traceparent``,
``tracestate``), which the wire format already carries. The caller opens a
``client_span`` and ``inject``s the current context into the request's headers; the
service's ``TracingMiddleware`` extracts it and runs the app inside a child span, so
calls the handler makes (kourier or httpx over kourier) become that span's children.

Everything here works without opentelemetry-api installed: the middleware passes
requests through, ``inject`` returns the headers as they were, ``client_span`` yields
a span that records nothing. It must never put a query string, a body or a header
value other than the trace context into a span.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

    from kourier.server.asgi import ASGIApp, Receive, Scope, Send

Headers = Sequence[tuple[bytes, bytes]]

SERVER_TRACER = "kourier.server"
CLIENT_TRACER = "kourier.client"


class _Otel(NamedTuple):
    trace: ModuleType
    propagate: ModuleType


_MISSING = object()
#: OpenTelemetry can also make the global provider from this variable, on first use.
_NO_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
_loaded: tuple[object, _Otel | None] | None = None


def _load() -> _Otel | None:
    """The OpenTelemetry API, or None if it is not installed.

    Cached per ``sys.modules["opentelemetry"]`` object (one dict lookup per use, not an
    import), so hiding or installing the package at run time is still seen.
    """
    global _loaded
    module = sys.modules.get("opentelemetry", _MISSING)
    cached = _loaded
    if cached is not None and cached[0] is module:
        return cached[1]
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        otel = None
    else:
        otel = _Otel(trace, propagate)
    _loaded = (sys.modules.get("opentelemetry", _MISSING), otel)
    return otel


def _active(otel: _Otel, tracer_provider: TracerProvider | None) -> bool:
    """True if spans would be recorded: a provider was given or set globally.

    Without one, OpenTelemetry's API hands out non-recording spans; skipping them is
    what keeps tracing free when it is installed but not configured.
    """
    if tracer_provider is not None:
        return True
    # Per request, so the common answer (nothing configured) is found without the
    # environment look-up get_tracer_provider() makes on each call: OpenTelemetry keeps
    # the global provider in a module attribute that stays None until one is set. If
    # that attribute ever goes away, the public call below still answers.
    if _NO_PROVIDER_FROM_ENV and getattr(otel.trace, "_TRACER_PROVIDER", _MISSING) is None:
        return False
    return not isinstance(otel.trace.get_tracer_provider(), otel.trace.ProxyTracerProvider)


class TracingMiddleware:
    """ASGI middleware: one SERVER span (CONSUMER for one-way) per request.

    The span is named ``"{method} {route}"`` once the framework has matched a route
    (the path before that), continues the caller's trace from the request headers, is
    current while the app runs, and ends with an error status on a 5xx or an exception.
    The app sees this span's context in its ``traceparent`` header, so a framework that
    makes its own server span (FastAPI does when a provider is set) nests it inside.
    Outside kourier (the same app under uvicorn) it is a plain HTTP server span.
    """

    def __init__(
        self,
        app: ASGIApp,
        service_name: str,
        *,
        topic: str | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.app = app
        self.service_name = service_name
        self.topic = topic or service_name
        self._otel = _load()
        self._provider = tracer_provider
        self._tracer: Any = None
        if self._otel is not None:
            self._tracer = self._otel.trace.get_tracer(
                SERVER_TRACER, tracer_provider=tracer_provider
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        otel = self._otel
        if scope["type"] != "http" or otel is None or not _active(otel, self._provider):
            await self.app(scope, receive, send)
            return
        kourier = (scope.get("extensions") or {}).get("kourier")
        method = str(scope["method"])
        kind = otel.trace.SpanKind.SERVER
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": scope["path"]}
        if kourier is not None:
            if kourier.get("one_way"):
                kind = otel.trace.SpanKind.CONSUMER
            attributes["messaging.system"] = "kafka"
            attributes["messaging.destination.name"] = self.topic
            attributes["messaging.operation.type"] = "process"
            attributes["kourier.service"] = self.service_name
            if kourier.get("request_id"):
                attributes["kourier.request_id"] = kourier["request_id"]
        parent = otel.propagate.extract(_carrier(otel, scope.get("headers") or []))
        with self._tracer.start_as_current_span(
            method, context=parent, kind=kind, attributes=attributes
        ) as span:
            # Frameworks that trace on their own (FastAPI's native telemetry, the ASGI
            # instrumentation) read the parent from the headers: make it this span, so
            # their spans nest under it instead of beside it. In place: the bridge reads
            # the matched route from this very scope afterwards.
            scope["headers"] = inject(scope.get("headers") or [])
            status: int | None = None

            async def traced_send(message: MutableMapping[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                route = _route(scope)
                span.update_name(f"{method} {route or scope['path']}")
                if route is not None:
                    span.set_attribute("http.route", route)
                if status is not None and status >= 500:
                    span.set_status(otel.trace.StatusCode.ERROR, f"HTTP {status}")


def inject(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The headers plus the current trace context (replacing any context already there).

    Without a current span, or without OpenTelemetry, the headers come back unchanged.
    """
    out = list(headers)
    otel = _load()
    if otel is None or not otel.trace.get_current_span().get_span_context().is_valid:
        return out
    carrier: dict[str, str] = {}
    otel.propagate.inject(carrier)
    if not carrier:
        return out
    names = {name.lower().encode("latin-1") for name in carrier}
    out = [(name, value) for name, value in out if name.lower() not in names]
    out.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items())
    return out


def tracing_enabled(tracer_provider: TracerProvider | None = None) -> bool:
    """True if a call's span would be recorded (OpenTelemetry installed and configured)."""
    otel = _load()
    return otel is not None and _active(otel, tracer_provider)


class ClientSpan:
    """The caller's span of one call; every method is a no-op without OpenTelemetry."""

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def set_request_id(self, request_id: str) -> None:
        if self.span is not None:
            self.span.set_attribute("kourier.request_id", request_id)

    def set_status_code(self, status: int) -> None:
        """Record the response status; for a caller, 4xx and 5xx are errors."""
        if self.span is None:
            return
        self.span.set_attribute("http.response.status_code", status)
        if status >= 400:
            from opentelemetry.trace import StatusCode

            self.span.set_status(StatusCode.ERROR, f"HTTP {status}")


@contextlib.contextmanager
def client_span(
    service: str,
    method: str,
    target: str,
    *,
    one_way: bool = False,
    topic: str | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Iterator[ClientSpan]:
    """A CLIENT span (PRODUCER for one-way) around one call, current inside the block.

    Call ``inject`` inside the block so that the service's span becomes its child. An
    exception leaving the block is recorded on the span and marks it as an error.
    """
    otel = _load()
    if otel is None or not _active(otel, tracer_provider):
        yield ClientSpan(None)
        return
    tracer = otel.trace.get_tracer(CLIENT_TRACER, tracer_provider=tracer_provider)
    kind = otel.trace.SpanKind.PRODUCER if one_way else otel.trace.SpanKind.CLIENT
    attributes = {
        "http.request.method": method,
        "url.path": target.partition("?")[0],
        "messaging.system": "kafka",
        "messaging.destination.name": topic or service,
        "messaging.operation.type": "send",
        "kourier.service": service,
    }
    with tracer.start_as_current_span(
        f"{method} {service}", kind=kind, attributes=attributes
    ) as span:
        yield ClientSpan(span)


def _carrier(otel: _Otel, headers: Headers) -> dict[str, str]:
    """The trace-context headers as the propagator reads them; repeated ones joined."""
    fields = otel.propagate.get_global_textmap().fields
    carrier: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in fields:
            value = raw_value.decode("latin-1")
            carrier[name] = f"{carrier[name]},{value}" if name in carrier else value
    return carrier


def _route(scope: Scope) -> str | None:
    """The route template the framework matched (Starlette and FastAPI set it)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None
