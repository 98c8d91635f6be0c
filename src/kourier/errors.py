"""The exceptions kourier raises, in one tree.

    KourierError
    ├── SettingsError          a setting is missing or invalid (names the setting)
    ├── ProtocolError          a record breaks wire format v1
    ├── RequestTooLarge        a request body does not fit in one record
    ├── BrokerError            the broker could not be reached or refused an operation
    │   └── PublishError       a record was not acknowledged by the broker
    ├── ServiceNotFound        no such service: nothing serves its request topic
    ├── ServiceUnavailable     the service exists but no instance of it is live
    ├── ReplyTimeout           no reply (or no next streamed item) before the deadline
    │                          (also a TimeoutError)
    └── StreamBroken           a streamed reply lost an item or ended without its end marker

Through the httpx transport, ReplyTimeout surfaces as ``httpx.ReadTimeout`` and the
others as ``httpx.TransportError`` subclasses, so httpx code keeps its except clauses.
"""

from __future__ import annotations


class KourierError(Exception):
    """Base of every exception kourier raises on purpose."""


class SettingsError(KourierError, ValueError):
    """A setting is missing or has an invalid value."""


class ProtocolError(KourierError, ValueError):
    """A record does not follow the wire format."""


class RequestTooLarge(KourierError, ValueError):
    """A request does not fit in one record of the configured maximum size."""


class BrokerError(KourierError):
    """The broker could not be reached, or it refused an operation."""


class PublishError(BrokerError):
    """The broker did not acknowledge a record."""


class ServiceNotFound(KourierError, LookupError):
    """No service of that name exists (its request topic does not); names close ones."""


class ServiceUnavailable(KourierError):
    """The service exists, but no instance of it is live to answer a two-way call."""


class ReplyTimeout(KourierError, TimeoutError):
    """The reply (or the next item of a streamed reply) did not arrive in time.

    A caller's timeout names its call: ``service``, ``method``, ``path`` and the
    ``timeout`` in seconds (None on a timeout not yet tied to a call).
    """

    service: str | None = None
    method: str | None = None
    path: str | None = None
    timeout: float | None = None


class StreamBroken(KourierError):
    """A streamed reply skipped an item or stopped without its end marker."""
