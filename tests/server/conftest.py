"""Fixtures for service tests: a service on the in-memory broker and a raw wire caller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from kourier import protocol
from kourier.protocol import Reply, ReplyAddress, Request
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.transports.base import PartitionReader, TopicSpec
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests import apps

SETTINGS = Settings(commit_interval=0.01, max_reply_bytes=1000, max_request_bytes=5000)
REPLY_TO = ReplyAddress(SETTINGS.reply_topic, 0)


class Wire:
    """Publishes raw request records and reads the replies, as a caller would."""

    def __init__(self, transport: MemoryTransport, reader: PartitionReader) -> None:
        self.transport = transport
        self.reader = reader
        self._seen: dict[str, list[Reply]] = {}

    async def call(self, method: str, target: str, **fields: object) -> Request:
        request = Request(protocol.new_request_id(), method, target, reply_to=REPLY_TO)
        for name, value in fields.items():
            setattr(request, name, value)
        key, value, headers = protocol.encode_request(request)
        await self.transport.publish(
            SETTINGS.request_topic("orders"), value, key=key, headers=headers
        )
        return request

    async def replies(self, request_id: str, timeout: float = 3.0, *, ends: int = 1) -> list[Reply]:
        """Every reply item for ``request_id`` so far, once ``ends`` replies have ended."""
        out = self._seen.setdefault(request_id, [])
        deadline = asyncio.get_running_loop().time() + timeout
        while sum(r.end for r in out) < ends:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no complete reply, got {out}")
            for record in await self.reader.fetch(0.1):
                reply = protocol.decode_reply(record.value, record.headers)
                self._seen.setdefault(reply.request_id, []).append(reply)
        return out


@pytest.fixture
async def wire() -> AsyncIterator[tuple[Wire, Service]]:
    """A running orders service and a wire caller on one in-memory broker."""
    broker = MemoryBroker()
    transport = MemoryTransport(broker)
    await transport.ensure_topics([TopicSpec(SETTINGS.reply_topic, 1)])
    reader = transport.partition_reader(SETTINGS.reply_topic, 0)
    await reader.start()
    service = Service(apps.app, "orders", SETTINGS, transport=MemoryTransport(broker))
    await service.start()
    yield Wire(transport, reader), service
    await service.stop()


async def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true; fail the test if it is not within ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
