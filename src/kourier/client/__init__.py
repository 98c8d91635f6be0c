"""The caller wing: call services over Kafka natively or through httpx."""

from kourier.client.caller import Client
from kourier.client.responses import ReplyStream, Response
from kourier.client.transport import KourierTransport

__all__ = ["Client", "KourierTransport", "ReplyStream", "Response"]
