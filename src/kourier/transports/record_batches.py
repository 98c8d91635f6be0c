"""Kafka record batches read tolerantly: every record comes out, readable or not.

A Kafka client's record reader turns a whole fetched batch into records, and some
readers fail on one record the broker accepted but they cannot represent: aiokafka
raises ``UnicodeDecodeError`` for a header *name* that is not valid UTF-8 (Kafka's
protocol calls names strings, but brokers never check them), losing the batch and
stalling the partition on it. This module reads the raw bytes of a fetch (message
format v2, Kafka 0.11 and later) itself, so that the transport can hand up each record
with its position: the readable ones as they are, the others marked ``undecodable``
with the reason and whatever could be read (key, value, header names with the bad
bytes escaped).

It only reads; it never decides what happens to a record (the service dead-letters an
undecodable request, a reply inbox logs and counts it). It must never raise on any
input: bytes of a batch it cannot parse end that batch with one undecodable record at
the batch's last offset, naming the offsets it covers, so the reader steps past them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from kourier.transports.base import Record

#: Byte offsets of a v2 batch header's fields (Kafka's ``RecordBatch`` layout).
_HEADER = struct.Struct(">qiibIhiqqqhii")
_HEADER_SIZE = _HEADER.size  # 61
_MAGIC_AT = 16
_LOG_OVERHEAD = 12  # baseOffset (8) + batchLength (4): what batchLength does not count
_CONTROL = 0x20
_LOG_APPEND_TIME = 0x08


class _Truncated(Exception):
    """A field runs past the end of its record or batch."""


def read_records(
    topic: str, partition: int, data: bytes, from_offset: int, limit: int
) -> list[Record]:
    """Up to ``limit`` records at or after ``from_offset`` in the raw ``data`` of a fetch.

    Control batches (transaction markers) are skipped; a batch cut off at the end of the
    data (Kafka fills a fetch up to its byte limit) ends the list. Records of message
    format 0 and 1 (before Kafka 0.11) have no headers and are not read here: the list
    stops at them, as a client's own reader reads them safely.
    """
    records: list[Record] = []
    pos = 0
    view = memoryview(data)
    while len(records) < limit and pos + _HEADER_SIZE <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + _LOG_OVERHEAD + length
        if length < _HEADER_SIZE - _LOG_OVERHEAD or end > len(data):
            break  # a partial batch: fetch again from its offset
        if data[pos + _MAGIC_AT] != 2:
            break
        records.extend(
            r
            for r in _batch(topic, partition, view[pos:end], base_offset)
            if r.offset >= from_offset
        )
        pos = end
    return records[:limit]


def _batch(topic: str, partition: int, batch: memoryview, base_offset: int) -> list[Record]:
    (_, _, _, _, _, attributes, last_delta, base_ts, max_ts, _, _, _, count) = _HEADER.unpack_from(
        batch, 0
    )
    if attributes & _CONTROL:
        return []
    try:
        body = _decompress(attributes & 0x07, bytes(batch[_HEADER_SIZE:]))
    except Exception as err:  # any codec error: the whole batch is unreadable
        return [_unreadable(topic, partition, base_offset, base_ts, f"batch cannot be read: {err}")]
    out: list[Record] = []
    pos = 0
    expected = base_offset
    for _ in range(count):
        try:
            record, pos = _record(topic, partition, body, pos, base_offset, base_ts)
        except (_Truncated, ValueError, IndexError) as err:
            # Where the next record starts is unknown: the rest of the batch is one
            # unreadable stretch, reported at its last offset so the reader steps past it.
            last = max(base_offset + last_delta, expected)
            reason = f"records at offsets {expected} to {last} cannot be parsed: {err}"
            out.append(_unreadable(topic, partition, last, base_ts, reason))
            break
        if attributes & _LOG_APPEND_TIME:
            record = _with_timestamp(record, max_ts)
        out.append(record)
        expected = record.offset + 1
    return out


def _record(
    topic: str, partition: int, body: bytes, pos: int, base_offset: int, base_ts: int
) -> tuple[Record, int]:
    length, pos = _varint(body, pos)
    end = pos + length
    if length < 0 or end > len(body):
        raise _Truncated(f"record length {length} runs past the batch")
    pos += 1  # attributes: unused in format v2
    ts_delta, pos = _varint(body, pos)
    offset_delta, pos = _varint(body, pos)
    key, pos = _bytes(body, pos, end)
    value, pos = _bytes(body, pos, end)
    header_count, pos = _varint(body, pos)
    if header_count < 0:
        raise ValueError(f"negative header count {header_count}")
    headers: list[tuple[str, bytes]] = []
    problems: list[str] = []
    for index in range(header_count):
        raw_name, pos = _bytes(body, pos, end)
        header_value, pos = _bytes(body, pos, end)
        name_bytes = raw_name or b""
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            name = name_bytes.decode("utf-8", "backslashreplace")
            problems.append(f"header {index} has a name that is not UTF-8 ({name_bytes!r:.80})")
        headers.append((name, header_value or b""))
    record = Record(
        topic=topic,
        partition=partition,
        offset=base_offset + offset_delta,
        key=key,
        value=value,
        headers=tuple(headers),
        timestamp_ms=base_ts + ts_delta,
        undecodable="; ".join(problems) or None,
    )
    return record, end


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint, as Kafka writes lengths and deltas."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _Truncated("a varint runs past the end")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _bytes(data: bytes, pos: int, end: int) -> tuple[bytes | None, int]:
    length, pos = _varint(data, pos)
    if length < 0:
        return None, pos
    if pos + length > end:
        raise _Truncated(f"a field of {length} bytes runs past its record")
    return data[pos : pos + length], pos + length


def _decompress(codec: int, payload: bytes) -> bytes:
    if codec == 0:
        return payload
    if codec == 1:
        return zlib.decompress(payload, 16 + zlib.MAX_WBITS)
    return _codec(codec)(payload)


def _codec(codec: int) -> Callable[[bytes], bytes]:
    # Imported here: only the aiokafka transport reads raw batches, and these codecs are
    # aiokafka's wrappers of the optional compression libraries.
    from aiokafka import codec as kafka_codec  # type: ignore[import-untyped]

    decoders: dict[int, Callable[[bytes], bytes]] = {
        2: kafka_codec.snappy_decode,
        3: kafka_codec.lz4_decode,
        4: kafka_codec.zstd_decode,
    }
    if codec not in decoders:
        raise ValueError(f"unknown compression codec {codec}")
    return decoders[codec]


def _unreadable(topic: str, partition: int, offset: int, ts: int, reason: str) -> Record:
    return Record(topic, partition, offset, None, None, (), ts, undecodable=reason)


def _with_timestamp(record: Record, timestamp_ms: int) -> Record:
    return Record(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.value,
        record.headers,
        timestamp_ms,
        record.undecodable,
    )
