"""A hostile producer for tests: writes records to Kafka byte for byte, as given.

Kafka's clients refuse to write what a hostile or buggy producer can (aiokafka takes
header names as ``str`` only; confluent-kafka turns a ``bytes`` name into the text of its
``repr``). This builds record batches (message format v2) itself and sends them in a
produce request, so header names can be any bytes, keys and values any bytes or null.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaClient  # type: ignore[import-untyped]
from aiokafka.errors import for_code  # type: ignore[import-untyped]
from aiokafka.protocol.metadata import MetadataRequest  # type: ignore[import-untyped]
from aiokafka.protocol.produce import ProduceRequest  # type: ignore[import-untyped]
from aiokafka.record.util import calc_crc32c  # type: ignore[import-untyped]


@dataclass
class RawRecord:
    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[bytes, bytes | None]] = field(default_factory=list)


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def record_batch(records: Sequence[RawRecord], timestamp_ms: int | None = None) -> bytes:
    """One uncompressed v2 record batch holding ``records`` (base offset 0)."""
    now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    body = bytearray()
    for delta, record in enumerate(records):
        inner = (
            b"\x00"
            + _varint(0)
            + _varint(delta)
            + _field(record.key)
            + _field(record.value)
            + _varint(len(record.headers))
            + b"".join(_field(name) + _field(value) for name, value in record.headers)
        )
        body += _varint(len(inner)) + inner
    # attributes .. records count, which the CRC covers
    after_crc = (
        struct.pack(">hiqqqhii", 0, len(records) - 1, now, now, -1, -1, -1, len(records)) + body
    )
    crc = calc_crc32c(after_crc)
    length = 4 + 1 + 4 + len(after_crc)  # leader epoch, magic, crc, rest
    return struct.pack(">qiibI", 0, length, -1, 2, crc) + after_crc


class RawProducer:
    """Sends raw record batches to a partition's leader; the broker assigns the offsets."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)

    async def start(self) -> None:
        await self._client.bootstrap()

    async def stop(self) -> None:
        await self._client.close()

    async def send(self, topic: str, partition: int, records: Sequence[RawRecord]) -> int:
        """Write ``records`` as one batch; the offset of the first, once acknowledged.

        A topic created a moment ago may have no leader ready yet: retriable refusals
        are tried again for up to 10 s, as a Kafka client would.
        """
        batch = record_batch(records)
        deadline = time.monotonic() + 10
        while True:
            leader = await self._leader(topic, partition)
            request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
            response = await self._client.send(leader, request)
            error = next(
                (
                    (code, offset)
                    for _topic, partitions in response.topics
                    for number, code, offset, *_ in partitions
                    if number == partition
                ),
                None,
            )
            if error is None:
                raise RuntimeError("no answer for the partition")
            code, offset = error
            if code == 0:
                return int(offset)
            refusal = for_code(code)
            if not refusal.retriable or time.monotonic() > deadline:
                raise RuntimeError(f"produce refused: {refusal.__name__}")
            await asyncio.sleep(0.1)

    async def _leader(self, topic: str, partition: int) -> int:
        deadline = time.monotonic() + 10
        while True:
            node = self._client.get_random_node()
            response = await self._client.send(node, MetadataRequest([topic]))
            for _error, name, _internal, partitions, *_ in response.topics:
                for entry in partitions if name == topic else ():
                    if entry[1] == partition and entry[2] >= 0:
                        return int(entry[2])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no leader for {topic}[{partition}]")
            await asyncio.sleep(0.1)


class RawWriter:
    """Writes raw records on any backend: the memory broker directly, Kafka byte for byte."""

    def __init__(self, transport: object, bootstrap_servers: str | None) -> None:
        from kourier.transports.memory import MemoryTransport

        self._memory = transport.broker if isinstance(transport, MemoryTransport) else None
        self._producer = None if self._memory is not None else RawProducer(bootstrap_servers or "")

    async def start(self) -> None:
        if self._producer is not None:
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def write(self, topic: str, partition: int, records: Sequence[RawRecord]) -> None:
        """Write ``records`` to one partition, as one batch on Kafka."""
        if self._producer is not None:
            await self._producer.send(topic, partition, records)
            return
        assert self._memory is not None
        for record in records:
            headers = [(name, value or b"") for name, value in record.headers]
            self._memory.append(topic, record.value or b"", record.key, headers, partition)
