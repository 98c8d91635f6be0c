"""The caller wing: call services over Kafka natively or through httpx."""

from kourier.client.caller import Client, ClientStats, Delivery
from kourier.client.responses import ReplyStream, Response
from kourier.client.retry import Retry
from kourier.client.transport import KourierTransport

__all__ = [
    "Client",
    "ClientStats",
    "Delivery",
    "KourierTransport",
    "ReplyStream",
    "Response",
    "Retry",
]
