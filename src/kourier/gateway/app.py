"""The gateway: an ASGI app that lets plain HTTP callers reach services on Kafka.

``Gateway`` answers its own paths (``/livez``, ``/readyz``, ``/metrics``, ``/docs``) and
carries every other request to the service its routing names (``forward.py``). Any
``Problem`` raised on the way is answered as ``application/problem+json``. Serve it
with ``kourier gateway`` (uvicorn), or mount it in an app of your own; it has no auth
of its own: wrap it in ASGI middleware (docs/gateway.md, examples/gateway_auth.py).

It must never answer a request for a service with anything but that service's reply
or a problem, and never start a call before its client is started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kourier.client import Client
from kourier.gateway import problems
from kourier.gateway.asgi import Receive, Scope, Send, answer
from kourier.gateway.catalog import CachedCatalog, Catalog, StaticCatalog, registry_of
from kourier.gateway.docs import DocsPage
from kourier.gateway.forward import Forwarder
from kourier.gateway.limits import ClientGone, Limits
from kourier.gateway.metrics import GatewayStats, registry_for
from kourier.gateway.openapi import OpenAPICache
from kourier.gateway.problems import Problem
from kourier.gateway.routing import PathRouting, Routing, raw_path
from kourier.ops.metrics import INSTALL_HINT
from kourier.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger("kourier.gateway")

LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"
#: First path segments the gateway keeps for itself under path routing.
RESERVED = frozenset({"livez", "readyz", "metrics", "docs"})


class Gateway:
    """An ASGI app carrying HTTP requests to services over Kafka through ``client``.

    ``catalog`` lists the services (default: the client's service registry, if it has
    one); ``routing`` tells a request's service (default ``PathRouting``); calls wait
    ``default_timeout`` seconds (default: the client's ``settings.default_timeout``)
    unless ``X-Kourier-Timeout`` says otherwise, up to ``max_timeout``. A client passed
    in is the caller's to start and stop; ``Gateway.from_settings`` makes one that the
    gateway starts and stops itself (on ASGI lifespan, or ``async with gateway``).
    """

    def __init__(
        self,
        client: Client,
        *,
        catalog: Catalog | None = None,
        routing: Routing | None = None,
        limits: Limits | None = None,
        default_timeout: float | None = None,
        max_timeout: float = 300.0,
        docs: bool = True,
        stats: GatewayStats | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.client = client
        self.settings: Settings = client.settings
        if catalog is None and (registry := registry_of(client)) is not None:
            catalog = CachedCatalog(registry)
        self.catalog = catalog
        self.routing: Routing = routing if routing is not None else PathRouting()
        self.limits = limits if limits is not None else Limits(client.settings.max_request_bytes)
        self.stats = stats if stats is not None else GatewayStats()
        if metrics_registry is None:
            metrics_registry = self._metrics_registry(client)
        self.metrics_registry = metrics_registry
        timeout = default_timeout if default_timeout is not None else self.settings.default_timeout
        if not 0 < timeout <= max_timeout:
            raise ValueError(f"default_timeout must be > 0 and <= max_timeout, got {timeout!r}")
        self.forward = Forwarder(
            client, self.catalog, self.limits, self.stats, timeout, max_timeout
        )
        self.docs = (
            DocsPage(self.catalog, OpenAPICache(client), self.routing, self.settings)
            if docs
            else None
        )
        self._owns_client = False
        self._ready_at = 0.0
        self._broker_ok = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        services: Iterable[str] | None = None,
        **options: Any,
    ) -> Gateway:
        """A gateway with a client of its own, and metrics when prometheus-client is there.

        ``services`` limits the gateway to those names (404 for others); without it,
        the service registry decides, if the client has one.
        """
        settings = settings if settings is not None else Settings.from_env()
        client = Client(settings)
        names = None if services is None else list(services)
        registry_catalog = registry_of(client)
        catalog: Catalog | None = None
        if registry_catalog is not None:
            catalog = CachedCatalog(registry_catalog, only=names)
        elif names is not None:
            catalog = StaticCatalog(names)
        gateway = cls(client, catalog=catalog, **options)
        gateway._owns_client = True
        return gateway

    def _metrics_registry(self, client: Client) -> CollectorRegistry | None:
        """A Prometheus registry with the gateway's counters, and the client's call
        metrics on it when the client has none; None without prometheus-client."""
        found = registry_for(self.stats)
        if found is None:
            return None
        registry, client_metrics = found
        if client.metrics is None:
            client.metrics = client_metrics
        return registry

    async def start(self) -> None:
        if self._owns_client:
            await self.client.start()
        logger.info("gateway started on Kafka %s", self.settings.bootstrap_servers)

    async def stop(self) -> None:
        if self._owns_client:
            await self.client.stop()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = raw_path(scope)
        route = self.routing.route(scope)
        own = route is None or (isinstance(self.routing, PathRouting) and route.service in RESERVED)
        try:
            if own:
                await self._own(scope, path, send)
            elif route is not None:
                await self.forward(scope, receive, send, route)
        except Problem as problem:
            self.stats.refused[_reason(problem)] += 1
            # The caller is told; the log says it too where the fault is not the caller's.
            log = logger.warning if problem.status >= 500 else logger.debug
            request_id = problem.extra.get("request_id") or "-"
            log(
                "%s %s: %d %s (request %s)",
                scope["method"],
                path,
                problem.status,
                problem.detail,
                request_id,
            )
            await problem.send(send, instance=path)
        except ClientGone:
            self.stats.disconnects += 1
            logger.info("%s %s: the caller went away while sending the body", scope["method"], path)

    async def _own(self, scope: Scope, path: str, send: Send) -> None:
        if path == LIVEZ:
            await answer(send, 200, b"ok\n")
        elif path == READYZ:
            reason = await self.readiness()
            await answer(send, 503 if reason else 200, (reason or "ok").encode() + b"\n")
        elif path == METRICS:
            await self._metrics(send)
        elif self.docs is not None and DocsPage.handles(path):
            await self.docs(scope, path, send)
        else:
            raise problems.no_route()

    async def readiness(self) -> str | None:
        """None when the gateway can carry calls, else why not (one line)."""
        now = asyncio.get_running_loop().time()
        if now - self._ready_at > 1.0:  # a probe storm costs one ping a second
            self._ready_at = now
            try:
                self._broker_ok = await self.client.transport.ping(2.0)
            except Exception:
                logger.debug("broker ping failed", exc_info=True)
                self._broker_ok = False
        return None if self._broker_ok else "broker unreachable: ping failed"

    async def _metrics(self, send: Send) -> None:
        if self.metrics_registry is None:
            await answer(send, 501, INSTALL_HINT.encode() + b"\n")
            return
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.metrics_registry)
        await answer(send, 200, body, CONTENT_TYPE_LATEST.encode("ascii"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    logger.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


_REASONS = {
    "no-route": "no_route",
    "service-not-found": "not_found",
    "service-unavailable": "unavailable",
    "deadline-passed": "timeout",
    "body-too-large": "too_large",
    "too-many-calls": "too_many",
    "bad-request": "bad_request",
    "bad-reply": "bad_reply",
    "broker-unavailable": "broker",
}


def _reason(problem: Problem) -> str:
    return _REASONS.get(problem.kind, "bad_request")
