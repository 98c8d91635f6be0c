"""Wire format v1: what round-trips, and what a decoder refuses."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kourier import protocol
from kourier.errors import ProtocolError
from kourier.protocol import Reply, ReplyAddress, Request


def _request(**changes: object) -> Request:
    base = Request(
        id="abc123",
        method="POST",
        target="/orders/a%20b?x=1&y=2",
        headers=[(b"content-type", b"application/json"), (b"x-a", b"1"), (b"x-a", b"2")],
        body=b'{"n": 1}',
        deadline_ms=1_700_000_000_000,
        reply_to=ReplyAddress("kourier.replies", 3),
        key=b"order-1",
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_request_round_trips() -> None:
    """Every field of a two-way request survives encoding and decoding."""
    request = _request()
    decoded = protocol.decode_request(*protocol.encode_request(request))
    assert decoded == request
    assert decoded.path == "/orders/a%20b"
    assert decoded.query == "x=1&y=2"


def test_one_way_message_has_no_reply_address() -> None:
    """A message record decodes as one-way."""
    decoded = protocol.decode_request(*protocol.encode_request(_request(reply_to=None)))
    assert decoded.one_way
    assert protocol.record_type(protocol.encode_request(_request(reply_to=None))[2]) == (b"message")


def test_reply_round_trips() -> None:
    """Status, headers, sequence, end marker and error id survive a round trip."""
    reply = Reply("abc", 0, b"body", end=False, status=201, headers=[(b"x", b"y")], error_id="e1")
    key, value, headers = protocol.encode_reply(reply)
    assert key == b"abc"
    assert protocol.decode_reply(value, headers) == reply


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: [x for x in h if x[0] != "kourier-v"], "not a kourier record"),
        (lambda h: [("kourier-v", b"2") if x[0] == "kourier-v" else x for x in h], "version"),
        (lambda h: [x for x in h if x[0] != "kourier-id"], "missing kourier-id"),
        (lambda h: [*h, ("kourier-id", b"again")], "appears twice"),
        (lambda h: _set(h, "kourier-method", b"GE T"), "not an HTTP method"),
        (lambda h: _set(h, "kourier-target", b"no-slash"), "origin-form"),
        (lambda h: _set(h, "kourier-target", b"/\xff"), "UTF-8"),
        (lambda h: _set(h, "kourier-target", b"/" + b"a" * 20_000), "longer than"),
        (lambda h: _set(h, "kourier-deadline", b"-5"), "non-negative integer"),
        (lambda h: _set(h, "kourier-reply-to", b"nopartition"), "topic:partition"),
        (lambda h: _set(h, "kourier-type", b"reply"), "not a request"),
        (lambda h: _set(h, "kourier-id", b"bad id with spaces"), "valid request id"),
        (lambda h: [*h, ("Bad Header", b"x")], "valid HTTP header name"),
        (lambda h: h + [("x", b"y")] * 400, "headers is more than"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(mutate: object, message: str) -> None:
    """Each broken rule raises ProtocolError saying what is wrong."""
    key, value, headers = protocol.encode_request(_request())
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_request(key, value, mutate(headers))  # type: ignore[operator]


def _set(headers: list[tuple[str, bytes]], name: str, value: bytes) -> list[tuple[str, bytes]]:
    return [(n, value if n == name else v) for n, v in headers]


def test_reserved_and_invalid_user_headers_are_refused() -> None:
    """Callers cannot smuggle protocol headers or invalid names."""
    with pytest.raises(ProtocolError, match="reserved"):
        protocol.validate_user_headers([(b"Kourier-Id", b"x")])
    with pytest.raises(ProtocolError, match="not a valid"):
        protocol.validate_user_headers([(b"a b", b"x")])
    assert protocol.validate_user_headers([(b"X-Trace", b"1")]) == [(b"x-trace", b"1")]


def test_reply_item_zero_needs_a_status() -> None:
    """Item 0 without a valid status is a format error."""
    _, value, headers = protocol.encode_reply(Reply("abc", 0, b"", status=None))
    with pytest.raises(ProtocolError, match="status"):
        protocol.decode_reply(value, headers)
    _, value, headers = protocol.encode_reply(Reply("abc", 0, b"", status=700))
    with pytest.raises(ProtocolError, match="status"):
        protocol.decode_reply(value, headers)


header_names = st.one_of(
    st.sampled_from(
        [
            "kourier-v",
            "kourier-type",
            "kourier-id",
            "kourier-method",
            "kourier-target",
            "kourier-reply-to",
            "kourier-deadline",
            "kourier-seq",
            "kourier-status",
            "kourier-end",
            "kourier-parent",
            "kourier-reason",
            "content-type",
        ]
    ),
    st.text(max_size=20),
)
header_values = st.one_of(
    st.sampled_from(
        [b"1", b"request", b"message", b"reply", b"cancel", b"GET", b"/x", b"t:1", b"0"]
    ),
    st.binary(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=50)),
    value=st.one_of(st.none(), st.binary(max_size=200)),
    headers=st.lists(st.tuples(header_names, header_values), max_size=12),
)
def test_decoding_arbitrary_records_never_fails_any_other_way(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    """Any key, value and headers either decode or raise ProtocolError, nothing else."""
    for decode in (
        lambda: protocol.decode_request(key, value, headers),
        lambda: protocol.decode_reply(value, headers),
        lambda: protocol.decode_cancel(headers),
    ):
        with contextlib.suppress(ProtocolError):
            decode()
    protocol.request_id_of(headers)
    protocol.reply_to_of(headers)


def test_a_cancel_round_trips_keyed_by_its_request_id() -> None:
    """A cancel is an empty record keyed by the request id, with an optional reason."""
    key, value, headers = protocol.encode_cancel(protocol.Cancel("r-1", "closed"))
    assert (key, value) == (b"r-1", b"")
    assert protocol.decode_cancel(headers) == protocol.Cancel("r-1", "closed")
    _, _, bare = protocol.encode_cancel(protocol.Cancel("r-2"))
    assert protocol.decode_cancel(bare) == protocol.Cancel("r-2")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([("kourier-v", b"1"), ("kourier-type", b"request"), ("kourier-id", b"r")], "not a cancel"),
        ([("kourier-v", b"1"), ("kourier-type", b"cancel")], "missing kourier-id"),
        ([("kourier-v", b"1"), ("kourier-type", b"cancel"), ("kourier-id", b"a b")], "valid"),
        (
            [
                ("kourier-v", b"1"),
                ("kourier-type", b"cancel"),
                ("kourier-id", b"r"),
                ("kourier-reason", b"Not Allowed!"),
            ],
            "kourier-reason",
        ),
    ],
)
def test_malformed_cancels_are_refused_with_a_reason(
    headers: list[tuple[str, bytes]], message: str
) -> None:
    """A cancel with the wrong type, no or a bad id, or a bad reason is a ProtocolError."""
    with pytest.raises(ProtocolError, match=message):
        protocol.decode_cancel(headers)


def test_the_parent_request_id_round_trips_and_is_checked() -> None:
    """kourier-parent carries the calling handler's request id; a bad one is refused."""
    request = Request("child", "GET", "/", parent_id="parent-1", reply_to=ReplyAddress("r", 0))
    key, value, headers = protocol.encode_request(request)
    assert protocol.decode_request(key, value, headers).parent_id == "parent-1"
    orphan = protocol.encode_request(Request("x", "GET", "/"))
    assert protocol.decode_request(*orphan).parent_id is None
    bad = [(n, b"no spaces allowed" if n == protocol.H_PARENT else v) for n, v in headers]
    with pytest.raises(ProtocolError, match="kourier-parent"):
        protocol.decode_request(key, value, bad)
