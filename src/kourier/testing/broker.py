"""An in-memory broker under a name, and what was sent through it, read back.

``memory_broker("orders-test")`` opens a broker that every ``Client``/``Service`` whose
settings say ``bootstrap_servers="memory://orders-test"`` (or whose environment has
``KOURIER_BOOTSTRAP_SERVERS=memory://orders-test``) reaches, in this process only. It
must never reach a real broker, nor outlive its ``with`` block.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kourier import protocol
from kourier.errors import ProtocolError
from kourier.protocol import Request
from kourier.settings import MEMORY_SCHEME, Settings
from kourier.transports.base import Record
from kourier.transports.memory import MemoryBroker, close_named, open_named

# Header names of a dead letter, as the service writes them (docs/reliability.md).
_REASON = "kourier-dead-letter-reason"
_SOURCE = "kourier-dead-letter-source"
_ATTEMPTS = "kourier-dead-letter-attempts"


@dataclass(frozen=True)
class DeadLetter:
    """A record a service gave up on: why, where it came from, after how many attempts.

    ``request`` is the decoded request, or None when the record itself was malformed.
    """

    request: Request | None
    reason: str
    source: str
    attempts: int
    record: Record


class Broker:
    """An in-memory broker open as ``memory://<name>``; reads back what went through it.

    ``settings`` are the settings that reach it: ``KOURIER_*`` from the environment with
    ``bootstrap_servers`` set to this broker (topic names follow their ``topic_prefix``).
    """

    def __init__(self, name: str, memory: MemoryBroker, settings: Settings) -> None:
        self.name = name
        self.memory = memory
        self.settings = settings

    @property
    def url(self) -> str:
        """``memory://<name>``: the ``bootstrap_servers`` of this broker."""
        return f"{MEMORY_SCHEME}{self.name}"

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic`` in the order they were appended (all partitions)."""
        partitions = self.memory.topics.get(topic, [])
        return sorted(
            (record for log in partitions for record in log),
            key=lambda r: (r.timestamp_ms, r.partition, r.offset),
        )

    def sent(self, service: str) -> list[Request]:
        """The requests sent to ``service`` (two-way and one-way), oldest first.

        What callers put on the service's request topic, whether or not a service has
        handled it yet; a record that is not a valid request is left out.
        """
        out: list[Request] = []
        for record in self.records(self.settings.request_topic(service)):
            try:
                out.append(protocol.decode_request(record.key, record.value, record.headers))
            except ProtocolError:
                continue
        return out

    def messages(self, service: str) -> list[Request]:
        """The one-way messages sent to ``service`` (``Client.send``), oldest first."""
        return [request for request in self.sent(service) if request.one_way]

    def dead_letters(self, service: str) -> list[DeadLetter]:
        """What ``service`` dead-lettered, oldest first."""
        out: list[DeadLetter] = []
        for record in self.records(self.settings.dead_letter_topic(service)):
            headers = dict(record.headers)
            try:
                request: Request | None = protocol.decode_request(
                    record.key, record.value, record.headers
                )
            except ProtocolError:
                request = None
            out.append(
                DeadLetter(
                    request,
                    headers.get(_REASON, b"").decode("utf-8", "replace"),
                    headers.get(_SOURCE, b"").decode("utf-8", "replace"),
                    int(headers.get(_ATTEMPTS, b"0") or b"0"),
                    record,
                )
            )
        return out

    def __repr__(self) -> str:
        return f"<Broker {self.url} topics={sorted(self.memory.topics)}>"


@contextmanager
def memory_broker(name: str | None = None, **settings: Any) -> Iterator[Broker]:
    """Open a fresh in-memory broker as ``memory://<name>`` for the ``with`` block.

    Without a name it gets a unique one. ``settings`` override the environment's
    ``KOURIER_*`` values in ``Broker.settings`` (``topic_prefix``, ``partitions``...).
    """
    name = name or f"kourier-{uuid.uuid4().hex[:12]}"
    memory = MemoryBroker()
    broker_settings = Settings.from_env(**settings, bootstrap_servers=f"{MEMORY_SCHEME}{name}")
    open_named(name, memory)
    try:
        yield Broker(name, memory, broker_settings)
    finally:
        close_named(name)
