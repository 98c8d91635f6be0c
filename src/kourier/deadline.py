"""The request a handler is serving, and how much time it has left.

While a handler runs, the service binds a ``Handling`` (the request id and the moment
the service will cancel the handler) to a context variable. A ``Client`` call made
inside the handler (natively or through ``KourierTransport``) reads it: its timeout is
the smaller of its own and the time left, and it carries the request id as
``kourier-parent``. So a deadline set once by the first caller bounds the whole tree of
calls, as in gRPC, without OpenTelemetry. ``time_left()`` is how a handler reads its own
remaining time.

A task the handler starts inherits the binding (asyncio copies the context), so calls
it makes after the handler has returned are still bounded by that deadline.

This module is below both wings (server and client import it); it must never import
either, nor anything that talks to a broker.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass

from kourier.errors import ReplyTimeout


@dataclass(slots=True)
class Handling:
    """The request being handled: its id and, if it has one, the end of its time.

    Not frozen: a streamed reply's time is moved on with each item it sends
    (``server/cutoff.py``), and every task of the handler sees the same object.
    """

    request_id: str
    #: When the service cancels the handler, in milliseconds since the Unix epoch: the
    #: request's ``kourier-deadline`` for a two-way request, the end of the attempt's
    #: time limit (``message_timeout``) for a one-way message.
    deadline_ms: int | None


_handling: ContextVar[Handling | None] = ContextVar("kourier_handling", default=None)


def current() -> Handling | None:
    """The request whose handler is running in this context, or None outside one."""
    return _handling.get()


def bind(handling: Handling) -> Token[Handling | None]:
    """Make ``handling`` current until ``unbind`` (the service does this per run)."""
    return _handling.set(handling)


def unbind(token: Token[Handling | None]) -> None:
    _handling.reset(token)


def current_request_id() -> str | None:
    """The id of the request being handled here, or None outside a handler."""
    handling = _handling.get()
    return None if handling is None else handling.request_id


def time_left() -> float | None:
    """Seconds until the current handler is cancelled; None outside a handler or
    without a deadline. Negative once the deadline has passed.

    Use it to skip work that cannot finish in time, or to size a call to something
    that is not kourier (a database query, an HTTP call); calls through a kourier
    ``Client`` are bounded by it already.
    """
    handling = _handling.get()
    if handling is None or handling.deadline_ms is None:
        return None
    return (handling.deadline_ms - time.time_ns() // 1_000_000) / 1000


def inherit(seconds: float) -> float:
    """``seconds``, shortened to the current handler's time left.

    Raises ``ReplyTimeout`` without waiting when that time is already up: the request
    being served has passed its deadline, so nobody waits for this call's answer.
    """
    left = time_left()
    if left is None or left >= seconds:
        return seconds
    if left <= 0:
        handling = _handling.get()
        assert handling is not None
        raise ReplyTimeout(
            f"no time left: request {handling.request_id}, which this call serves, "
            "is past its deadline"
        )
    return left
