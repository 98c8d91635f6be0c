"""What every call reports: a client span (OpenTelemetry, if installed) and metrics.

A call ends as ``2xx``..``5xx`` (its status), ``sent`` (one-way, acknowledged),
``timeout`` or ``error``; that and its duration go to ``ClientMetrics`` when the client
has one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from kourier.errors import ReplyTimeout
from kourier.ops.metrics import ClientMetrics
from kourier.ops.tracing import ClientSpan, client_span


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


@contextmanager
def observed_call(
    metrics: ClientMetrics | None,
    service: str,
    method: str,
    path: str,
    topic: str,
    *,
    one_way: bool = False,
) -> Iterator[Call]:
    started = time.perf_counter()
    outcome = "error"
    method = method.upper()
    with client_span(service, method, path.partition("?")[0], one_way=one_way, topic=topic) as span:
        call = Call(span)
        try:
            yield call
            if one_way:
                outcome = "sent"
            elif call.status_code:
                outcome = ClientMetrics.status_outcome(call.status_code)
        except ReplyTimeout:
            outcome = "timeout"
            raise
        finally:
            if metrics is not None:
                metrics.observe(service, method, outcome, time.perf_counter() - started)
