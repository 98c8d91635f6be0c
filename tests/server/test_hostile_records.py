"""Property: whatever a record holds, the consumer survives and accounts for it.

Arbitrary keys, headers and values are published to a running service's request topic.
Each one either decodes (and is handled like any request) or is dead-lettered, with a
400 reply when it names a usable reply address; and the next valid request is answered.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kourier import protocol
from kourier.errors import ProtocolError
from kourier.server.serve import Service
from tests.server.conftest import REPLY_TO, SETTINGS, Wire, eventually

names = st.one_of(
    st.sampled_from(
        [
            "kourier-v",
            "kourier-type",
            "kourier-id",
            "kourier-method",
            "kourier-target",
            "kourier-reply-to",
            "kourier-deadline",
            "kourier-attempt",
            "content-type",
        ]
    ),
    st.text(max_size=12),
)
values = st.one_of(
    st.sampled_from(
        [
            b"1",
            b"request",
            b"message",
            b"GET",
            b"POST",
            b"/hello/x",
            b"/events",
            b"0",
            REPLY_TO.encode(),
            b"abc123",
            b"99999999999999999999",
        ]
    ),
    st.binary(max_size=30),
)
records = st.tuples(
    st.one_of(st.none(), st.binary(max_size=20)),
    st.one_of(st.none(), st.binary(max_size=200)),
    st.lists(st.tuples(names, values), max_size=10),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(record=records)
async def test_any_record_is_handled_or_dead_lettered(
    wire: tuple[Wire, Service], record: tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
) -> None:
    """The consumer never dies; a broken record becomes a dead letter (and maybe a 400)."""
    w, service = wire
    key, value, headers = record
    malformed_before = service.stats.malformed
    dead_before = service.stats.dead_letters
    try:
        protocol.decode_request(key, value, headers)
        valid = True
    except ProtocolError:
        valid = False
    await w.transport.publish(
        SETTINGS.request_topic("orders"), value or b"", key=key, headers=headers
    )
    if not valid:
        await eventually(lambda: service.stats.malformed == malformed_before + 1)
        await eventually(lambda: service.stats.dead_letters == dead_before + 1)
        request_id = protocol.request_id_of(headers)
        if request_id is not None and protocol.reply_to_of(headers) == REPLY_TO:
            replies = await w.replies(request_id)
            assert any(r.status == 400 for r in replies)
    sentinel = await w.call("GET", "/hello/alive")
    replies = await w.replies(sentinel.id)
    assert replies[0].status == 200
