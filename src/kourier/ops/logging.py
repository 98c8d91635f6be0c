"""Structured logs that carry the request id: a context variable, a filter, a JSON format.

The service binds the request id (``bind_request``) while it handles a request; every
log line written meanwhile, by kourier or by the app, gets ``record.request_id`` and
``record.service`` from ``RequestContextFilter``, and ``record.parent_id``: the id of the
request whose handler made this call (``kourier-parent``), so the lines of the two hops
of a nested call can be joined. ``KOURIER_LOG_FORMAT=json`` turns
``configure_logging`` into one JSON object per line. Outside a request both are ``-``
in text and ``null`` in JSON.

It must never format or log header values or bodies: a request id and a service name
are all it adds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

from kourier.ops.batched_log import BatchedStreamHandler

request_id_var: ContextVar[str | None] = ContextVar("kourier_request_id", default=None)
service_var: ContextVar[str | None] = ContextVar("kourier_service", default=None)
parent_id_var: ContextVar[str | None] = ContextVar("kourier_parent_id", default=None)

#: What a record carries when no request is being handled.
NO_VALUE = "-"
TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s [%(service)s %(request_id)s%(parent)s] %(message)s"
)
#: The same, in a worker of ``kourier run --workers N``.
WORKER_TEXT_FORMAT = (
    "%(asctime)s %(levelname)s [worker %(worker)s] %(name)s "
    "[%(service)s %(request_id)s%(parent)s] %(message)s"
)
FORMATS = ("text", "json")


@contextlib.contextmanager
def bind_request(request_id: str, service: str | None = None) -> Iterator[None]:
    """Log lines written inside the block (and in tasks started there) carry the id."""
    id_token = request_id_var.set(request_id)
    service_token = service_var.set(service) if service is not None else None
    try:
        yield
    finally:
        request_id_var.reset(id_token)
        if service_token is not None:
            service_var.reset(service_token)


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` and ``service`` to every record; never drops one.

    Put it on a handler, not a logger: a logger's filters do not see the records its
    children propagate to it.
    """

    def __init__(self, service: str | None = None, worker: int | None = None) -> None:
        super().__init__()
        self.service = service
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if self.worker is not None:
            record.worker = self.worker
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or NO_VALUE
        if not hasattr(record, "service"):
            record.service = service_var.get() or self.service or NO_VALUE
        if not hasattr(record, "parent_id"):
            parent = parent_id_var.get()
            record.parent_id = parent or NO_VALUE
            # In text only when there is one: " parent=<id>" after the request id.
            record.parent = f" parent={parent}" if parent else ""
        return True


#: Broker states the Kafka client waits out and retries by itself (a new topic's leader
#: not elected yet, a coordinator moving, a rebalance in progress).
TRANSIENT_KAFKA_ERRORS = (
    "NotLeaderForPartitionError",
    "LeaderNotAvailableError",
    "UnknownTopicOrPartitionError",
    "NotCoordinatorForGroupError",
    "CoordinatorNotAvailableError",
    "CoordinatorLoadInProgressError",
    "RebalanceInProgressError",
)


class TransientKafkaNoise(logging.Filter):
    """Drops aiokafka's log records about transient states it retries by itself.

    aiokafka logs them as errors (a topic created a moment ago has no leader yet, for
    one), which reads as a failure in a service's log when nothing failed; kourier says
    what matters itself. Put it on a handler (a logger's filters do not see its
    children's records); ``--log-level debug`` leaves it off.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL or not record.name.startswith("aiokafka"):
            return True
        message = record.getMessage()
        return not any(name in message for name in TRANSIENT_KAFKA_ERRORS)


class TextFormatter(logging.Formatter):
    """``logging.Formatter``, with the date and time formatted once a second, not per line.

    A service that logs a line per request (the access log) formats the time thousands
    of times a second; the text of the current second is kept. The output is the same.
    """

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            # Set together under the handler's lock (format runs inside emit).
            self._second_text = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        if self.default_msec_format:
            return self.default_msec_format % (self._second_text, record.msecs)
        return self._second_text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, service,
    parent_id."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _value(record, "request_id"),
            "service": _value(record, "service"),
            "parent_id": _value(record, "parent_id"),
        }
        worker = getattr(record, "worker", None)
        if worker is not None:
            payload["worker"] = worker
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def _value(record: logging.LogRecord, name: str) -> str | None:
    value = getattr(record, name, None)
    return None if value in (None, NO_VALUE) else str(value)


def configure_logging(
    level: int | str = "INFO",
    *,
    service: str | None = None,
    fmt: str | None = None,
    stream: IO[str] | None = None,
    worker: int | None = None,
    batched: bool = False,
) -> logging.Handler:
    """Log to ``stream`` (stderr) through the root logger, as text or JSON.

    ``fmt`` is ``"text"`` or ``"json"``; by default ``KOURIER_LOG_FORMAT`` decides (text
    if unset). ``worker`` (set in each worker of ``kourier run --workers N``) adds
    ``[worker N]`` to text lines and a ``worker`` field to JSON ones. Calling it again
    replaces the handler it installed before. Returns the handler, so that a caller (or
    a test) can remove it. ``batched`` (``kourier run``) writes lines below WARNING in
    batches, at most 50 ms late (``ops/batched_log.py``: the access log's line per
    request).
    """
    chosen = (fmt or os.environ.get("KOURIER_LOG_FORMAT") or "text").strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format {chosen!r}: choose from {', '.join(FORMATS)}")
    out = stream if stream is not None else sys.stderr
    handler = BatchedStreamHandler(out) if batched else logging.StreamHandler(out)
    handler.addFilter(RequestContextFilter(service, worker))
    text = TEXT_FORMAT if worker is None else WORKER_TEXT_FORMAT
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter(text))
    handler.set_name("kourier")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "kourier"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
