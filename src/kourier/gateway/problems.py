"""Error answers of the gateway as problem details (RFC 9457, ``application/problem+json``).

Every answer the gateway makes up itself (not one a service gave) is a ``Problem``:
a status, a ``type`` URI that names the kind of failure, a title that does not change
between occurrences, and a ``detail`` that says what happened this time and what to do.
This module only shapes answers; it never decides which one a failure gets (the app
does) and never puts a header value or a body the caller sent into one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kourier.gateway.asgi import Send

CONTENT_TYPE = b"application/problem+json"
_TYPE_BASE = "urn:kourier:problem:"


# Not frozen: raising an exception sets its __traceback__.
@dataclass(eq=False)
class Problem(Exception):
    """An answer the gateway makes itself; raise it anywhere below the app to send it."""

    status: int
    kind: str
    title: str
    detail: str
    #: Extension members (RFC 9457 section 3.2): ``service``, ``request_id``...
    extra: dict[str, Any] = field(default_factory=dict)
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @property
    def type(self) -> str:
        return _TYPE_BASE + self.kind

    def body(self, instance: str | None = None) -> bytes:
        document: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            document["instance"] = instance
        document.update(self.extra)
        return json.dumps(document, ensure_ascii=False).encode("utf-8")

    async def send(self, send: Send, instance: str | None = None) -> None:
        body = self.body(instance)
        headers = [
            (b"content-type", CONTENT_TYPE),
            (b"content-length", str(len(body)).encode("ascii")),
            *self.headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def not_found(service: str, known: list[str] | None = None, why: str | None = None) -> Problem:
    hint = f" Known services: {', '.join(sorted(known))}." if known else ""
    detail = why or f"No service named {service!r} is known to this gateway."
    return Problem(
        404,
        "service-not-found",
        "No such service",
        detail + hint,
        {"service": service},
    )


def no_route() -> Problem:
    return Problem(
        404,
        "no-route",
        "No service named in the request",
        "Name the service as the first path segment: /{service}/{path}.",
    )


def unavailable(service: str, why: str) -> Problem:
    return Problem(
        503,
        "service-unavailable",
        "Service unavailable",
        f"{why} Try again later: a two-way call is not queued while no instance is "
        "live (a one-way call, with 'Prefer: respond-async', is).",
        {"service": service},
        ((b"retry-after", b"1"),),
    )


def broker_unavailable(why: str) -> Problem:
    return Problem(
        503,
        "broker-unavailable",
        "Kafka unavailable",
        f"The gateway could not hand the call to Kafka: {why}",
        headers=((b"retry-after", b"1"),),
    )


def timed_out(service: str, seconds: float, request_id: str | None) -> Problem:
    return Problem(
        504,
        "deadline-passed",
        "No reply before the deadline",
        f"{service!r} did not answer within {seconds:g}s. Raise X-Kourier-Timeout "
        "(seconds) if the call needs longer.",
        {"service": service, "request_id": request_id},
    )


def too_large(size: int | None, limit: int) -> Problem:
    got = f"of {size} bytes " if size is not None else ""
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"The body {got}is over the limit of {limit} bytes per request.",
        {"limit": limit},
    )


def too_many(limit: int) -> Problem:
    return Problem(
        429,
        "too-many-calls",
        "Too many calls in flight",
        f"The gateway already carries {limit} calls; retry after a moment.",
        {"limit": limit},
        ((b"retry-after", b"1"),),
    )


def bad_request(detail: str) -> Problem:
    return Problem(400, "bad-request", "Bad request", detail)


def bad_reply(service: str, detail: str, request_id: str | None) -> Problem:
    return Problem(
        502,
        "bad-reply",
        "The service's reply could not be passed on",
        detail,
        {"service": service, "request_id": request_id},
    )
