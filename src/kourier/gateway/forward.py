"""One HTTP request carried over Kafka as a kourier call, and its reply carried back.

Two-way: the request goes out as it came (method, target, headers, body) and the
reply's status, headers and body items come back as they arrive, so NDJSON and SSE
stream through. One-way (``Prefer: respond-async``, RFC 7240): 202 with the request id
once the broker has the message. The caller's deadline is ``X-Kourier-Timeout``
(seconds). A caller that goes away cancels its call: the reply stream is closed and
the task awaiting it cancelled, so the service is told to stop (where it supports
cancellation) and no waiter is left behind.

It must never pass on hop-by-hop headers, never start a call past the in-flight limit
or with a body over the size limit, and never lose a failure: each is answered as a
problem, or, once the reply has started, logged with the request id and counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from kourier import protocol
from kourier._aio import cancel_and_wait
from kourier.client import Client
from kourier.errors import (
    BrokerError,
    KourierError,
    ProtocolError,
    ReplyTimeout,
    RequestTooLarge,
    ServiceNotFound,
    ServiceUnavailable,
    StreamBroken,
)
from kourier.gateway import problems
from kourier.gateway.asgi import Receive, Scope, Send, header
from kourier.gateway.catalog import Catalog
from kourier.gateway.limits import ClientGone, InFlight, Limits, read_body
from kourier.gateway.metrics import GatewayStats
from kourier.gateway.problems import Problem
from kourier.gateway.routing import Route

logger = logging.getLogger("kourier.gateway")

#: The caller's deadline, in seconds (a decimal number), for the whole call.
TIMEOUT_HEADER = b"x-kourier-timeout"
#: The request id of the call, on every answer (also the one-way 202).
REQUEST_ID_HEADER = b"x-kourier-request-id"
#: Headers that describe one connection, not the request (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        TIMEOUT_HEADER,
    }
)


def prefers_async(scope: Scope) -> bool:
    """True if the request carries ``Prefer: respond-async`` (RFC 7240)."""
    for name, value in scope.get("headers", ()):
        if name.lower() != b"prefer":
            continue
        for preference in bytes(value).split(b","):
            token = preference.split(b";")[0].split(b"=")[0].strip().lower()
            if token == b"respond-async":
                return True
    return False


def forwarded_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request's headers for the service: end-to-end ones, then X-Forwarded-*."""
    headers = [
        (bytes(name).lower(), bytes(value))
        for name, value in scope.get("headers", ())
        if bytes(name).lower() not in HOP_BY_HOP
    ]
    for name, _ in headers:
        if name.startswith(protocol.PREFIX.encode()):
            raise problems.bad_request(
                f"header {name.decode('latin-1')[:60]!r}: names starting with "
                f"{protocol.PREFIX!r} are reserved for the wire protocol"
            )
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", str(client[0]).encode("latin-1")))
    headers.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("latin-1")))
    host = header(scope, b"host")
    if host is not None:
        headers.append((b"x-forwarded-host", host.encode("latin-1")))
    return headers


def _reply_headers(raw: list[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
    kept = [(name, value) for name, value in raw if name.lower() not in HOP_BY_HOP]
    kept.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
    return kept


@dataclass
class Forwarder:
    """Carries requests to services through ``client``; one instance per gateway."""

    client: Client
    catalog: Catalog | None
    limits: Limits
    stats: GatewayStats
    default_timeout: float
    max_timeout: float

    def __post_init__(self) -> None:
        self.in_flight = InFlight(self.limits.max_in_flight, self.stats)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        seconds = self.timeout_of(scope)
        one_way = prefers_async(scope)
        await self._check_service(route.service, two_way=not one_way)
        with self.in_flight.enter():
            body = await read_body(scope, receive, self.limits.max_body_bytes)
            headers = forwarded_headers(scope)
            request_id = protocol.new_request_id()
            try:
                if one_way:
                    await self._one_way(scope, route, headers, body, request_id, send)
                else:
                    await self._two_way(
                        scope, route, headers, body, seconds, request_id, receive, send
                    )
            except KourierError as exc:
                limit = self.client.settings.max_request_bytes
                raise _problem(exc, route.service, seconds, request_id, limit) from exc
            except ValueError as exc:  # the call refused what the caller sent
                raise problems.bad_request(str(exc)) from exc

    def timeout_of(self, scope: Scope) -> float:
        raw = header(scope, TIMEOUT_HEADER)
        if raw is None:
            return self.default_timeout
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= self.max_timeout:
            raise problems.bad_request(
                f"X-Kourier-Timeout {raw[:40]!r}: give seconds, above 0 and at most "
                f"{self.max_timeout:g}"
            )
        return seconds

    async def _check_service(self, service: str, *, two_way: bool) -> None:
        """404 for a service the gateway may not call (a ``--service`` list), else the
        call's own fail-fast decides: the client raises ServiceNotFound (404) when no
        request topic exists and ServiceUnavailable (503) when no instance is live. The
        registry alone cannot tell "unknown" from "all instances stopped" (a clean stop
        withdraws the instance), so it is not asked here. A catalog without ``allows``
        (one of the user's) is read as the list of services."""
        if self.catalog is None:
            return
        allows = getattr(self.catalog, "allows", None)
        if callable(allows):
            if not allows(service):
                raise problems.not_found(
                    service,
                    why=f"{service!r} is not one of the services this gateway serves "
                    "(kourier gateway --service).",
                )
            return
        try:
            services = await self.catalog.services()
        except Exception as exc:
            # The call itself still fails fast if the service is missing.
            logger.warning(
                "could not read the service catalog (%s); calling %r anyway", exc, service
            )
            return
        info = services.get(service)
        if info is None:
            raise problems.not_found(service, sorted(services)[:20])
        if two_way and not info.live:
            raise problems.unavailable(service, f"No instance of {service!r} is live.")

    async def _one_way(
        self,
        scope: Scope,
        route: Route,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        request_id: str,
        send: Send,
    ) -> None:
        explicit = header(scope, TIMEOUT_HEADER) is not None
        await self.client.send(
            route.service,
            scope["method"],
            route.target,
            headers=headers,
            content=body,
            timeout=self.timeout_of(scope) if explicit else None,
            request_id=request_id,
        )
        self.stats.accepted += 1
        document = {"request_id": request_id, "service": route.service}
        payload = json.dumps(document).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode("ascii")),
                    (b"preference-applied", b"respond-async"),
                    (REQUEST_ID_HEADER, request_id.encode("ascii")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload, "more_body": False})

    async def _two_way(
        self,
        scope: Scope,
        route: Route,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        seconds: float,
        request_id: str,
        receive: Receive,
        send: Send,
    ) -> None:
        started = asyncio.Event()
        call = asyncio.create_task(
            self._stream(scope, route, headers, body, seconds, request_id, send, started)
        )
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({call, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not call.done():
                await cancel_and_wait(call)
                if gone.done():
                    self.stats.disconnects += 1
                    logger.info(
                        "request %s to %r: the caller went away; call cancelled",
                        request_id,
                        route.service,
                    )
            await cancel_and_wait(gone)
        if call.cancelled():
            return
        error = call.exception()
        if error is None:
            return
        if gone.done() and not gone.cancelled():
            # Sending to a caller who left may fail: that is the disconnect, not a fault.
            self.stats.disconnects += 1
            logger.info("request %s to %r: the caller went away", request_id, route.service)
            return
        if not started.is_set():
            raise error
        # The status is out: the caller sees the body cut short (no final chunk).
        self.stats.broken += 1
        logger.error(
            "request %s to %r: reply broke after its status was sent: %s",
            request_id,
            route.service,
            error,
        )

    async def _stream(
        self,
        scope: Scope,
        route: Route,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        seconds: float,
        request_id: str,
        send: Send,
        started: asyncio.Event,
    ) -> None:
        async with self.client.stream(
            route.service,
            scope["method"],
            route.target,
            headers=headers,
            content=body,
            timeout=seconds,
            request_id=request_id,
            retry=False,
        ) as reply:
            start = {
                "type": "http.response.start",
                "status": reply.status_code,
                "headers": _reply_headers(list(reply.headers.raw), request_id),
            }
            started.set()
            await send(start)
            async for chunk in reply:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.stats.replies[f"{reply.status_code // 100}xx"] += 1


async def _disconnected(receive: Receive) -> None:
    """Returns when the caller closes its connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _problem(
    exc: KourierError, service: str, seconds: float, request_id: str, max_request_bytes: int
) -> Problem:
    if isinstance(exc, ServiceNotFound):
        return problems.not_found(service, why=str(exc))
    if isinstance(exc, ServiceUnavailable):
        return problems.unavailable(service, f"{exc}.")
    if isinstance(exc, ReplyTimeout):
        return problems.timed_out(service, seconds, request_id)
    if isinstance(exc, RequestTooLarge):
        return problems.too_large(None, max_request_bytes)
    if isinstance(exc, StreamBroken):
        return problems.bad_reply(service, str(exc), request_id)
    if isinstance(exc, ProtocolError):
        return problems.bad_request(str(exc))
    if isinstance(exc, BrokerError):
        return problems.broker_unavailable(str(exc))
    return problems.bad_reply(service, str(exc), request_id)


__all__ = ["REQUEST_ID_HEADER", "TIMEOUT_HEADER", "ClientGone", "Forwarder", "prefers_async"]
