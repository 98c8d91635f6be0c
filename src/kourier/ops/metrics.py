"""Prometheus metrics for services and callers (the optional extra ``kourier[metrics]``).

``ServiceMetrics().install(service)`` counts what the service's hooks report; the
in-flight gauge and the retry count are read at scrape time, the consumer lag from a
``LagSampler`` that reads it on the service's loop (reading it may need the broker).
``ClientMetrics.observe`` is what a caller reports per call. Each object has its own
``CollectorRegistry`` unless one is given, so two services (or two tests) in one
process never collide.

Labels must stay few: a route is the framework's template (``/orders/{order_id}``),
never the raw path, and a method outside HTTP's own is counted as ``_OTHER``. It must
never label with anything a caller chooses freely (ids, paths, header values).
prometheus-client is imported only when metrics are built.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kourier._aio import cancel_and_wait, within

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from kourier.server.hooks import DeadLetterEvent, ErrorEvent, ReplyEvent, RequestEvent
    from kourier.server.serve import Service

logger = logging.getLogger("kourier.ops")

INSTALL_HINT = "metrics need prometheus-client: pip install 'kourier[metrics]'"
UNMATCHED = "unmatched"
OTHER_METHOD = "_OTHER"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
#: Handler time: HTTP-like latencies.
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Publish to reply: includes time queued in Kafka, which after an outage is minutes.
END_TO_END_BUCKETS = (*HANDLER_BUCKETS, 60.0, 120.0, 300.0, 900.0)


def prometheus_available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return prometheus_client


def add_process_metrics(registry: CollectorRegistry) -> None:
    """The process's own metrics (memory, CPU, open files, GC, Python version)."""
    pc = _prometheus()
    pc.ProcessCollector(registry=registry)
    pc.PlatformCollector(registry=registry)
    pc.GCCollector(registry=registry)


def method_label(method: str) -> str:
    """The method as a label value: HTTP's own methods, anything else as ``_OTHER``."""
    upper = method.upper()
    return upper if upper in HTTP_METHODS else OTHER_METHOD


class ServiceMetrics:
    """The metrics of one or more services in one registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, lag_interval: float = 5.0
    ) -> None:
        pc = _prometheus()
        self.registry: CollectorRegistry = (
            registry if registry is not None else pc.CollectorRegistry()
        )
        self.lag_interval = lag_interval
        r = self.registry
        self.requests = pc.Counter(
            "kourier_requests",
            "Requests handled, by route template and response status.",
            ["service", "route", "method", "status"],
            registry=r,
        )
        self.handler_seconds = pc.Histogram(
            "kourier_handler_seconds",
            "Handler start to the broker's ack of the last reply (retries included).",
            ["service", "route", "method"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = pc.Histogram(
            "kourier_end_to_end_seconds",
            "Time from the request record's timestamp to the end of its handling.",
            ["service"],
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )

        def per_service(name: str, doc: str) -> Any:
            return pc.Counter(name, doc, ["service"], registry=r)

        self.dead_letters = per_service("kourier_dead_letters", "Records dead-lettered.")
        self.expired = per_service(
            "kourier_expired",
            "Requests skipped because their deadline had passed, or cut when it passed.",
        )
        self.errors = per_service(
            "kourier_errors", "Handler runs that raised or gave no response (each attempt)."
        )
        self._services: list[tuple[Service, LagSampler]] = []
        r.register(_ScrapeTimeCollector(self._services))
        r.register(_QueueCollector(self._services))

    def install(self, service: Service, *, lag: LagSampler | None = None) -> None:
        """Count ``service``'s requests from its hooks; read its consumer at scrape time.

        The lag comes from ``lag`` if given (its owner starts and stops it); otherwise
        from a sampler that runs while the service runs (its start and stop hooks).
        """
        service.hooks.add("reply", self._on_reply)
        service.hooks.add("error", self._on_error)
        service.hooks.add("expired", self._on_expired)
        service.hooks.add("dead_letter", self._on_dead_letter)
        if lag is None:
            lag = LagSampler(service, self.lag_interval)
            own = lag
            service.hooks.add("start", lambda _: own.start())
            service.hooks.add("stop", lambda _: own.stop())
            if service.consumer is not None:  # installed on a running service
                lag.start()
        self._services.append((service, lag))

    def _on_reply(self, event: ReplyEvent) -> None:
        route = event.route or UNMATCHED
        method = method_label(event.request.method)
        status = str(event.status) if event.status is not None else "none"
        self.requests.labels(event.service, route, method, status).inc()
        self.handler_seconds.labels(event.service, route, method).observe(event.duration)
        waited = time.time() - event.record.timestamp_ms / 1000
        # A clock behind the producer's would give a negative age: count it as zero.
        self.end_to_end_seconds.labels(event.service).observe(max(0.0, waited))

    def _on_error(self, event: ErrorEvent) -> None:
        self.errors.labels(event.service).inc()

    def _on_expired(self, event: RequestEvent) -> None:
        self.expired.labels(event.service).inc()

    def _on_dead_letter(self, event: DeadLetterEvent) -> None:
        self.dead_letters.labels(event.service).inc()


class _ScrapeTimeCollector:
    """Values read from the services when Prometheus scrapes.

    In-flight requests and lag come from the consumer; retries and idempotent replays
    from ``service.stats`` (they happen inside one request's handling, with no hook).
    It runs on the scraping thread, so it only reads plain attributes, never the loop.
    """

    def __init__(self, services: list[tuple[Service, LagSampler]]) -> None:
        self._services = services

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        in_flight, lag, retries, duplicates, cancelled, timed_out, refused = self._families()
        for service, sampler in list(self._services):
            name = [service.name]
            consumer = service.consumer
            in_flight.add_metric(name, consumer.in_flight if consumer else 0)
            for (topic, partition), value in sorted(sampler.latest.items()):
                lag.add_metric([service.name, topic, str(partition)], value)
            retries.add_metric(name, service.stats.retries)
            duplicates.add_metric(name, service.stats.duplicates)
            cancelled.add_metric(name, service.stats.cancelled)
            timed_out.add_metric(name, service.stats.timed_out)
            stats = service.stats
            for why, count in (
                ("malformed", stats.malformed),
                ("undecodable", stats.undecodable),
                ("too_large", stats.too_large),
                ("bad_reply_address", stats.bad_reply_address),
            ):
                refused.add_metric([service.name, why], count)
        yield from (in_flight, lag, retries, duplicates, cancelled, timed_out, refused)

    @staticmethod
    def _families() -> tuple[Any, Any, Any, Any, Any, Any, Any]:
        core = _prometheus().metrics_core
        return (
            core.GaugeMetricFamily(
                "kourier_in_flight",
                "Requests held by the consumer (running or queued by key).",
                labels=["service"],
            ),
            core.GaugeMetricFamily(
                "kourier_consumer_lag",
                "Records in the partition not yet fetched by this instance.",
                labels=["service", "topic", "partition"],
            ),
            core.CounterMetricFamily(
                "kourier_retries",
                "Attempts of one-way work run again after a failure.",
                labels=["service"],
            ),
            core.CounterMetricFamily(
                "kourier_duplicates",
                "Repeated requests answered by replaying the recorded reply.",
                labels=["service"],
            ),
            core.CounterMetricFamily(
                "kourier_cancelled",
                "Requests whose caller cancelled them: handlers cut, or skipped before they ran.",
                labels=["service"],
            ),
            core.CounterMetricFamily(
                "kourier_timed_out",
                "One-way handler runs cut at the time limit (message_timeout; each attempt).",
                labels=["service"],
            ),
            core.CounterMetricFamily(
                "kourier_refused",
                "Request records dead-lettered before the app ran, by why: malformed, "
                "undecodable (the Kafka client could not read it), too_large, "
                "bad_reply_address.",
                labels=["service", "why"],
            ),
        )


#: Upper bounds of the delivery-count histogram (the broker's largest limit is 10).
DELIVERY_COUNT_BUCKETS = (1, 2, 3, 4, 5, 10)


class _QueueCollector:
    """Queue mode's counts, read from a service's queue consumer when Prometheus scrapes:
    records acquired, accepted, released, rejected, acknowledgements refused, and how
    many arrived with each delivery count (a histogram). Nothing for ordered mode."""

    def __init__(self, services: list[tuple[Service, LagSampler]]) -> None:
        self._services = services

    def describe(self) -> Iterator[Metric]:
        counters, histogram = self._families()
        yield from (*counters.values(), histogram)

    def collect(self) -> Iterator[Metric]:
        from kourier.server.queue import QueueConsumer

        counters, histogram = self._families()
        for service, _ in list(self._services):
            consumer = service.consumer
            if not isinstance(consumer, QueueConsumer):
                continue
            stats = consumer.stats
            for name, family in counters.items():
                family.add_metric([service.name], getattr(stats, name))
            counts = dict(stats.delivery_counts)
            buckets = [
                (str(bound), sum(n for c, n in counts.items() if c <= bound))
                for bound in DELIVERY_COUNT_BUCKETS
            ]
            buckets.append(("+Inf", sum(counts.values())))
            total = sum(c * n for c, n in counts.items())
            histogram.add_metric([service.name], buckets, total)
        yield from (*counters.values(), histogram)

    @staticmethod
    def _families() -> tuple[dict[str, Any], Any]:
        core = _prometheus().metrics_core
        docs = {
            "acquired": "Request records this instance acquired from its share group.",
            "accepted": "Records acknowledged as handled (accept).",
            "released": "Records given back to the share group for another delivery.",
            "rejected": "Records rejected after being dead-lettered.",
            "ack_failures": "Acknowledgements the broker refused (the record's lock ran out).",
            "overran": "Handlers cancelled at their lock bound.",
        }
        counters = {
            name: core.CounterMetricFamily(f"kourier_queue_{name}", doc, labels=["service"])
            for name, doc in docs.items()
        }
        histogram = core.HistogramMetricFamily(
            "kourier_queue_delivery_count",
            "Deliveries of each acquired record so far (1: first time; more: redelivered).",
            labels=["service"],
        )
        return counters, histogram


class LagSampler:
    """Reads a service's consumer lag on its event loop, for readers on other threads.

    ``consumer.lag()`` may ask the broker, so it is read every ``interval`` seconds by a
    task, never by a scrape or a probe. ``latest`` is replaced whole, never changed in
    place; it is empty while the lag is unknown (not consuming, the broker not
    answering), since a stale number would mislead more than a missing one.
    """

    def __init__(self, service: Service, interval: float = 5.0, timeout: float = 5.0) -> None:
        self.service = service
        self.interval = interval
        self.timeout = timeout
        self.latest: dict[tuple[str, int], int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def total(self) -> int:
        return sum(self.latest.values())

    def start(self) -> None:
        """Start sampling on the running loop (again after ``stop``)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kourier-lag:{self.service.name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.latest = {}

    async def _run(self) -> None:
        while True:
            self.latest = await self._read()
            await asyncio.sleep(self.interval)

    async def _read(self) -> dict[tuple[str, int], int]:
        consumer = self.service.consumer
        if consumer is None:
            return {}
        try:
            return dict(await within(consumer.lag(), self.timeout))
        except Exception:
            logger.debug("lag of %r not readable now", self.service.name, exc_info=True)
            return {}


class ClientMetrics:
    """Metrics of a caller: one ``observe`` per finished call.

    ``outcome`` is one short word from a fixed set: the status class (``"2xx"``,
    ``"4xx"``, ``"5xx"``...) or ``"timeout"`` or ``"error"`` (the broker refused it or
    the reply stream broke). ``status_outcome`` gives the class of a status.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        pc = _prometheus()
        self.registry: CollectorRegistry = (
            registry if registry is not None else pc.CollectorRegistry()
        )
        self.requests = pc.Counter(
            "kourier_client_requests",
            "Calls made, by outcome.",
            ["service", "method", "outcome"],
            registry=self.registry,
        )
        self.timeouts = pc.Counter(
            "kourier_client_timeouts",
            "Calls that got no reply before their deadline.",
            ["service"],
            registry=self.registry,
        )
        self.seconds = pc.Histogram(
            "kourier_client_seconds",
            "Time from sending a call to its complete reply.",
            ["service", "method"],
            buckets=HANDLER_BUCKETS,
            registry=self.registry,
        )
        self.replies_dropped = pc.Counter(
            "kourier_client_replies_dropped",
            "Records on this caller's reply partition stepped over, by why: malformed, "
            "or undecodable (the Kafka client could not read it).",
            ["why"],
            registry=self.registry,
        )

    def reply_dropped(self, why: str) -> None:
        self.replies_dropped.labels(why).inc()

    def observe(self, service: str, method: str, outcome: str, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(service, method, outcome).inc()
        if outcome == "timeout":
            self.timeouts.labels(service).inc()
        self.seconds.labels(service, method).observe(seconds)

    @staticmethod
    def status_outcome(status: int) -> str:
        return f"{status // 100}xx"
