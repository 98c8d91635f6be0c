"""What one gateway carries at most: the size of a request body and the calls in flight.

Both bounds protect the gateway and Kafka from one caller: a body over the limit is
refused before it is read to the end (413), a call over the in-flight limit before it
reaches Kafka (429). It must never buffer more of a body than the limit allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kourier.gateway import problems
from kourier.gateway.asgi import Receive, Scope, header
from kourier.gateway.metrics import GatewayStats


@dataclass(frozen=True)
class Limits:
    """The gateway's bounds; see docs/gateway.md for how to size them."""

    #: Largest request body taken (bytes); a larger one is answered 413.
    max_body_bytes: int = 1_000_000
    #: Calls carried at once; one more is answered 429 with ``Retry-After``.
    max_in_flight: int = 1000

    def __post_init__(self) -> None:
        if self.max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {self.max_body_bytes}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")


class InFlight:
    """Counts the calls being carried in ``stats.in_flight``; refuses one past the limit."""

    def __init__(self, limit: int, stats: GatewayStats) -> None:
        self.limit = limit
        self.stats = stats

    @contextmanager
    def enter(self) -> Iterator[None]:
        if self.stats.in_flight >= self.limit:
            raise problems.too_many(self.limit)
        self.stats.in_flight += 1
        try:
            yield
        finally:
            self.stats.in_flight -= 1


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, or ``Problem`` 413 as soon as it is known to be too big."""
    declared = header(scope, b"content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise problems.bad_request(f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > limit:
            raise problems.too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise problems.too_large(None, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class ClientGone(Exception):
    """The caller closed the connection before the gateway answered."""
