"""Operations: probes, Prometheus metrics, OpenTelemetry traces, structured logs.

prometheus-client and opentelemetry-api are optional extras, imported only when used;
importing this package never needs them.
"""

from kourier.ops.health import HealthServer
from kourier.ops.logging import (
    JsonFormatter,
    RequestContextFilter,
    bind_request,
    configure_logging,
    request_id_var,
    service_var,
)
from kourier.ops.metrics import ClientMetrics, LagSampler, ServiceMetrics
from kourier.ops.tracing import ClientSpan, TracingMiddleware, client_span, inject

__all__ = [
    "ClientMetrics",
    "ClientSpan",
    "HealthServer",
    "JsonFormatter",
    "LagSampler",
    "RequestContextFilter",
    "ServiceMetrics",
    "TracingMiddleware",
    "bind_request",
    "client_span",
    "configure_logging",
    "inject",
    "request_id_var",
    "service_var",
]
