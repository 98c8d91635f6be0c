"""Reading raw Kafka record batches tolerantly (``transports/record_batches.py``)."""

from __future__ import annotations

import struct

from aiokafka.record.default_records import (  # type: ignore[import-untyped]
    DefaultRecordBatchBuilder,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from kourier.transports.record_batches import read_records
from tests.rawkafka import RawRecord, record_batch


def at(offset: int, batch: bytes) -> bytes:
    """``batch`` with its base offset set, as the broker stores it."""
    return struct.pack(">q", offset) + batch[8:]


def test_records_come_out_as_written_and_a_bad_header_name_is_marked() -> None:
    """Readable records come out as they are; one whose header name is not UTF-8 comes
    out marked undecodable with its key, value and the name escaped."""
    data = at(
        40,
        record_batch(
            [
                RawRecord(b"v0", b"k0", [(b"kourier-id", b"1")]),
                RawRecord(b"v1", b"k1", [(b"\xff\xfe", b"x"), (b"ok", None)]),
                RawRecord(None, None, []),
            ]
        ),
    )
    first, bad, last = read_records("t", 2, data, 40, 10)
    assert (first.offset, first.key, first.value, first.headers) == (
        40,
        b"k0",
        b"v0",
        (("kourier-id", b"1"),),
    )
    assert first.undecodable is None
    assert (bad.offset, bad.key, bad.value) == (41, b"k1", b"v1")
    assert bad.headers == (("\\xff\\xfe", b"x"), ("ok", b""))
    assert bad.undecodable is not None and "not UTF-8" in bad.undecodable
    assert (last.offset, last.key, last.value, last.undecodable) == (42, None, None, None)


def test_reading_starts_at_the_offset_asked_for_and_stops_at_the_limit() -> None:
    """Records before ``from_offset`` are left out, and at most ``limit`` come back."""
    data = at(0, record_batch([RawRecord(bytes([n])) for n in range(5)])) + at(
        5, record_batch([RawRecord(b"x"), RawRecord(b"y")])
    )
    assert [r.offset for r in read_records("t", 0, data, 3, 3)] == [3, 4, 5]


def test_a_batch_cut_off_at_the_end_of_a_fetch_is_left_for_the_next() -> None:
    """Kafka fills a fetch up to its byte limit: a partial last batch is not read."""
    whole = at(0, record_batch([RawRecord(b"a")]))
    partial = at(1, record_batch([RawRecord(b"b")]))[:-3]
    assert [r.value for r in read_records("t", 0, whole + partial, 0, 10)] == [b"a"]


def test_a_compressed_batch_is_read() -> None:
    """A gzip batch (as the Kafka clients write them) is read like a plain one."""
    builder = DefaultRecordBatchBuilder(2, 1, 0, -1, -1, -1, 1_000_000)
    builder.append(0, 1_000, b"k", b"gzipped", [("h", b"v")])
    builder.append(1, 1_001, None, b"second", [])
    data = at(7, bytes(builder.build()))
    records = read_records("t", 0, data, 7, 10)
    assert [(r.offset, r.value, r.headers) for r in records] == [
        (7, b"gzipped", (("h", b"v"),)),
        (8, b"second", ()),
    ]


def test_bytes_that_do_not_parse_become_one_undecodable_record_at_the_batch_end() -> None:
    """A record that runs past its batch ends the batch with one undecodable record at
    the batch's last offset, so a reader steps past the whole unreadable stretch."""
    batch = bytearray(at(10, record_batch([RawRecord(b"a"), RawRecord(b"b"), RawRecord(b"c")])))
    batch[61] = 0x7E  # the first record's length varint: far past the batch
    records = read_records("t", 0, bytes(batch), 10, 10)
    assert len(records) == 1
    assert records[0].offset == 12
    assert records[0].undecodable is not None and "10 to 12" in records[0].undecodable


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), start=st.integers(0, 5))
def test_arbitrary_bytes_never_raise(data: bytes, start: int) -> None:
    """Whatever the bytes, reading returns a list and never raises."""
    assert isinstance(read_records("t", 0, data, start, 50), list)


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.builds(
            RawRecord,
            value=st.one_of(st.none(), st.binary(max_size=50)),
            key=st.one_of(st.none(), st.binary(max_size=20)),
            headers=st.lists(
                st.tuples(st.binary(max_size=8), st.one_of(st.none(), st.binary(max_size=8))),
                max_size=4,
            ),
        ),
        min_size=1,
        max_size=8,
    ),
    flip=st.integers(0, 10_000),
)
def test_corrupted_batches_never_raise(records: list[RawRecord], flip: int) -> None:
    """A real batch with one byte changed anywhere is read without raising, and every
    record of an intact one comes back with its key and value."""
    batch = record_batch(records)
    intact = read_records("t", 0, batch, 0, 100)
    assert [(r.key, r.value) for r in intact] == [(r.key, r.value) for r in records]
    broken = bytearray(batch)
    broken[flip % len(broken)] ^= 0xFF
    assert isinstance(read_records("t", 0, bytes(broken), 0, 100), list)
