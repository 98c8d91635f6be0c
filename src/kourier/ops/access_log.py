"""The access log: one line per handled request on the ``kourier.access`` logger.

uvicorn logs every request by default; ``kourier run`` does too (``--no-access-log``
or ``KOURIER_ACCESS_LOG=false`` turn it off). It watches the service through its
``reply`` hook only, and must never log header values or bodies: the line names the
service, method, target, status, duration and request id, nothing the caller sent
besides.
"""

from __future__ import annotations

import logging

from kourier.server.hooks import Hooks, ReplyEvent

logger = logging.getLogger("kourier.access")


def access_line(event: ReplyEvent) -> str:
    """``orders "GET /orders/17" 200 3.1ms request_id=...`` (one-way: ``one-way`` after)."""
    request = event.request
    status = "-" if event.status is None else str(event.status)
    line = (
        f'{event.service} "{request.method} {request.target}" {status} '
        f"{event.duration * 1000:.1f}ms request_id={request.id}"
    )
    if request.one_way:
        line += " one-way"
    if event.error_id is not None:
        line += f" error_id={event.error_id}"
    return line


def log_access(event: ReplyEvent) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", access_line(event))


def access_log_hooks() -> Hooks:
    """Service hooks that write the access log."""
    return Hooks({"reply": log_access})
