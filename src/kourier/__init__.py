"""kourier: serve ASGI apps over Apache Kafka, and call them with httpx or natively."""

from kourier.client import (
    Client,
    ClientStats,
    Delivery,
    KourierTransport,
    ReplyStream,
    Response,
    Retry,
)
from kourier.deadline import time_left
from kourier.errors import (
    BrokerError,
    KourierError,
    ProtocolError,
    PublishError,
    ReplyTimeout,
    RequestTooLarge,
    ServiceNotFound,
    ServiceUnavailable,
    SettingsError,
    StreamBroken,
)
from kourier.server.serve import Service, serve
from kourier.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "Client",
    "ClientStats",
    "Delivery",
    "KourierError",
    "KourierTransport",
    "ProtocolError",
    "PublishError",
    "ReplyStream",
    "ReplyTimeout",
    "RequestTooLarge",
    "Response",
    "Retry",
    "Service",
    "ServiceNotFound",
    "ServiceUnavailable",
    "Settings",
    "SettingsError",
    "StreamBroken",
    "serve",
    "time_left",
]
