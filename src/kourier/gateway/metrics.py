"""What the gateway did, as plain counters, and their Prometheus exposition.

``GatewayStats`` is always kept (plain integers, no dependency). ``/metrics`` exposes it
with prometheus-client when installed, read at scrape time, beside the ``ClientMetrics``
of the gateway's calls (latency and outcome per service). Labels are only the fixed
words below, never a service name a caller made up: only calls that reach Kafka carry
one, through ``ClientMetrics``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

#: Why the gateway answered a request itself instead of passing on a reply.
REASONS = (
    "no_route",
    "not_found",
    "unavailable",
    "timeout",
    "too_large",
    "too_many",
    "bad_request",
    "bad_reply",
    "broker",
)


@dataclass
class GatewayStats:
    """Counts since the gateway started (for metrics and tests to read)."""

    #: Replies passed on, by status class ("2xx", "4xx", ...).
    replies: Counter[str] = field(default_factory=Counter)
    #: Requests answered by the gateway itself, by reason (``REASONS``).
    refused: Counter[str] = field(default_factory=Counter)
    #: One-way messages the broker acknowledged (answered 202).
    accepted: int = 0
    #: Calls whose caller went away before the reply was over; each was cancelled.
    disconnects: int = 0
    #: Streamed replies cut short after their status was sent.
    broken: int = 0
    #: Calls being carried now.
    in_flight: int = 0


class StatsCollector:
    """A Prometheus collector that reads ``GatewayStats`` when scraped."""

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats
        replies = CounterMetricFamily(
            "kourier_gateway_replies", "Replies passed on, by status class.", labels=["code"]
        )
        for code, count in sorted(stats.replies.items()):
            replies.add_metric([code], count)
        yield replies
        refused = CounterMetricFamily(
            "kourier_gateway_refused",
            "Requests the gateway answered itself, by reason.",
            labels=["reason"],
        )
        for reason in REASONS:
            refused.add_metric([reason], stats.refused[reason])
        yield refused
        yield CounterMetricFamily(
            "kourier_gateway_accepted", "One-way messages accepted (202).", value=stats.accepted
        )
        yield CounterMetricFamily(
            "kourier_gateway_disconnects",
            "Calls cancelled because their caller went away.",
            value=stats.disconnects,
        )
        yield CounterMetricFamily(
            "kourier_gateway_broken_streams",
            "Streamed replies cut short after their status was sent.",
            value=stats.broken,
        )
        yield GaugeMetricFamily(
            "kourier_gateway_in_flight", "Calls being carried now.", value=stats.in_flight
        )


def registry_for(stats: GatewayStats) -> tuple[CollectorRegistry, Any] | None:
    """A registry exposing ``stats`` and the process's metrics, and a ``ClientMetrics``
    on it for the gateway's calls; None without prometheus-client."""
    from kourier.ops.metrics import ClientMetrics, add_process_metrics, prometheus_available

    if not prometheus_available():
        return None
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(StatsCollector(stats))
    add_process_metrics(registry)
    return registry, ClientMetrics(registry)
