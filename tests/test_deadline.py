"""The request a handler serves, as calls made inside it see it (kourier.deadline)."""

from __future__ import annotations

import pytest

import kourier
from kourier import deadline, protocol
from kourier.errors import ReplyTimeout


def test_outside_a_handler_nothing_is_bound() -> None:
    """Outside a handler there is no request, no time left, and timeouts stay as given."""
    assert deadline.current() is None
    assert deadline.current_request_id() is None
    assert kourier.time_left() is None
    assert deadline.inherit(7.0) == 7.0


def test_time_left_counts_down_to_the_bound_deadline() -> None:
    """Bound to a deadline 2 s ahead, time_left is about 2 s and caps longer timeouts."""
    token = deadline.bind(deadline.Handling("r-1", protocol.now_ms() + 2000))
    try:
        left = kourier.time_left()
        assert left is not None and 1.5 < left <= 2.0
        assert deadline.inherit(60.0) <= 2.0
        assert deadline.inherit(0.5) == 0.5
        assert deadline.current_request_id() == "r-1"
    finally:
        deadline.unbind(token)
    assert deadline.current() is None


def test_a_request_without_a_deadline_bounds_nothing() -> None:
    """A bound request without a deadline gives its id but leaves timeouts alone."""
    token = deadline.bind(deadline.Handling("r-2", None))
    try:
        assert kourier.time_left() is None
        assert deadline.inherit(3.0) == 3.0
        assert deadline.current_request_id() == "r-2"
    finally:
        deadline.unbind(token)


def test_no_time_left_raises_reply_timeout_naming_the_request() -> None:
    """Past the deadline, time_left is negative and a call's timeout cannot be had."""
    token = deadline.bind(deadline.Handling("r-3", protocol.now_ms() - 10))
    try:
        left = kourier.time_left()
        assert left is not None and left < 0
        with pytest.raises(ReplyTimeout, match="request r-3"):
            deadline.inherit(1.0)
    finally:
        deadline.unbind(token)
