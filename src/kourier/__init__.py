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
]

# Where each public name is defined; tests/test_public_api.py checks it against __all__.
_HOMES = {
    **dict.fromkeys(
        [
            "Client",
            "ClientStats",
            "Delivery",
            "KourierTransport",
            "ReplyStream",
            "Response",
            "Retry",
        ],
        "kourier.client",
    ),
    **dict.fromkeys(
        [
            "BrokerError",
            "KourierError",
            "ProtocolError",
            "PublishError",
            "ReplyTimeout",
            "RequestTooLarge",
            "ServiceNotFound",
            "ServiceUnavailable",
            "SettingsError",
            "StreamBroken",
        ],
        "kourier.errors",
    ),
    "Service": "kourier.server.serve",
    "serve": "kourier.server.serve",
    "Settings": "kourier.settings",
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
