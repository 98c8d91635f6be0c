"""What every call reports: a client span (OpenTelemetry, if installed) and metrics.

A call ends as ``2xx``..``5xx`` (its status), ``sent`` (one-way, acknowledged),
``timeout`` or ``error``; that and its duration go to ``ClientMetrics`` when the client
has one.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from types import TracebackType

from kourier.errors import ReplyTimeout
from kourier.ops.metrics import ClientMetrics
from kourier.ops.tracing import ClientSpan, client_span, tracing_enabled

_NO_SPAN = ClientSpan(None)


class Call:
    """What a call tells its span as it goes."""

    __slots__ = ("_span", "status_code")

    def __init__(self, span: ClientSpan) -> None:
        self._span = span
        self.status_code = 0

    def request_id(self, request_id: str) -> None:
        self._span.set_request_id(request_id)

    def status(self, status: int) -> None:
        self.status_code = status
        if status:
            self._span.set_status_code(status)


class _Unobserved:
    """The stand-in for ``ObservedCall`` when there is neither a span nor metrics to feed:
    one shared object, so an unobserved call allocates nothing here."""

    __slots__ = ()

    def __enter__(self) -> Call:
        return _UNOBSERVED_CALL

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


#: Shared by every unobserved call: its span is the no-op one, and its status is never read.
_UNOBSERVED_CALL = Call(_NO_SPAN)
UNOBSERVED = _Unobserved()


def observe(
    metrics: ClientMetrics | None,
    service: str,
    method: str,
    path: str,
    topic: str,
    *,
    one_way: bool = False,
) -> AbstractContextManager[Call]:
    """The span and metrics of one call, or ``UNOBSERVED`` when nothing would record them."""
    if metrics is None and not tracing_enabled():
        return UNOBSERVED
    return ObservedCall(metrics, service, method, path, topic, one_way=one_way)


class ObservedCall:
    """The span and the metrics of one call, around the block that makes it.

    A class rather than a generator-based context manager: it is entered on every call,
    and without tracing or metrics it costs a fifth as much.
    """

    __slots__ = ("_call", "_method", "_metrics", "_one_way", "_service", "_span", "_started")

    def __init__(
        self,
        metrics: ClientMetrics | None,
        service: str,
        method: str,
        path: str,
        topic: str,
        *,
        one_way: bool = False,
    ) -> None:
        self._metrics = metrics
        self._service = service
        self._method = method.upper()
        self._one_way = one_way
        self._span: AbstractContextManager[ClientSpan] | None = None
        if tracing_enabled():
            target = path.partition("?")[0]
            self._span = client_span(service, self._method, target, one_way=one_way, topic=topic)
        self._call = Call(_NO_SPAN)
        self._started = 0.0

    def __enter__(self) -> Call:
        self._started = time.perf_counter()
        if self._span is not None:
            self._call = Call(self._span.__enter__())
        return self._call

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._span is not None:
                self._span.__exit__(exc_type, exc, tb)
        finally:
            if self._metrics is not None:
                self._metrics.observe(
                    self._service,
                    self._method,
                    self._outcome(exc_type),
                    time.perf_counter() - self._started,
                )

    def _outcome(self, exc_type: type[BaseException] | None) -> str:
        if exc_type is None:
            if self._one_way:
                return "sent"
            if self._call.status_code:
                return ClientMetrics.status_outcome(self._call.status_code)
            return "error"
        if issubclass(exc_type, ReplyTimeout):
            return "timeout"
        return "error"
