"""kourier: serve ASGI apps over Apache Kafka, and call them with httpx or natively.

The public names are imported on first use (PEP 562), so that importing a subpackage
that needs none of kourier's dependencies, such as ``kourier.localkafka`` (the local
broker, run before a virtualenv exists), does not import aiokafka and httpx.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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
    from kourier.registry import InstanceInfo, ServiceInfo
    from kourier.server.serve import Service, serve
    from kourier.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "BrokerError",
    "Client",
    "ClientStats",
    "Delivery",
    "InstanceInfo",
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
    "ServiceInfo",
    "ServiceNotFound",
    "ServiceUnavailable",
    "Settings",
    "SettingsError",
    "StreamBroken",
    "serve",
    "time_left",
]

# Where each public name is defined (one line each); tests/test_public_api.py checks
# that every name of __all__ resolves.
_HOMES = {
    "BrokerError": "kourier.errors",
    "Client": "kourier.client",
    "ClientStats": "kourier.client",
    "Delivery": "kourier.client",
    "InstanceInfo": "kourier.registry",
    "KourierError": "kourier.errors",
    "KourierTransport": "kourier.client",
    "ProtocolError": "kourier.errors",
    "PublishError": "kourier.errors",
    "ReplyStream": "kourier.client",
    "ReplyTimeout": "kourier.errors",
    "RequestTooLarge": "kourier.errors",
    "Response": "kourier.client",
    "Retry": "kourier.client",
    "Service": "kourier.server.serve",
    "ServiceInfo": "kourier.registry",
    "ServiceNotFound": "kourier.errors",
    "ServiceUnavailable": "kourier.errors",
    "Settings": "kourier.settings",
    "time_left": "kourier.deadline",
    "SettingsError": "kourier.errors",
    "StreamBroken": "kourier.errors",
    "serve": "kourier.server.serve",
}


if not _typing.TYPE_CHECKING:
    # Hidden from type checkers, so that a misspelt name is still an error there.

    def __getattr__(name: str) -> object:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module 'kourier' has no attribute {name!r}")
        value = getattr(_importlib.import_module(home), name)
        globals()[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
