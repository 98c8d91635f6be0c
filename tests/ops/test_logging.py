"""Structured logs: every line written while a request is handled carries its id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from kourier.ops.logging import (
    TEXT_FORMAT,
    JsonFormatter,
    RequestContextFilter,
    TextFormatter,
    TransientKafkaNoise,
    bind_request,
    configure_logging,
    parent_id_var,
)
from kourier.testing.plugin import StartService
from tests.ops.apps import orders_app, with_request_id


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    """The root logger's output as JSON lines, for one test."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("INFO", fmt="json", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_log_lines_of_a_request_carry_its_id_and_the_service(
    kourier_service: StartService, log: io.StringIO
) -> None:
    """A handler's log lines, exceptions included, name the request and the service."""
    app, _ = orders_app()
    # with_request_id stands in for the binding the service will do itself.
    bound = with_request_id(app, "orders")
    orders = await kourier_service(bound, "orders", raise_app_exceptions=False)
    await orders.client.request("orders", "GET", "/orders/7", request_id="lookup-7")
    await orders.client.request("orders", "GET", "/oops", request_id="oops-1")
    records = lines(log)
    [lookup] = [r for r in records if r["message"] == "looking up order 7"]
    assert lookup["request_id"] == "lookup-7"
    assert lookup["service"] == "orders"
    assert lookup["level"] == "INFO" and lookup["logger"] == "tests.orders"
    assert str(lookup["time"]).endswith("+00:00")
    [failure] = [r for r in records if r["message"] == "could not reserve stock"]
    assert failure["request_id"] == "oops-1" and failure["level"] == "ERROR"
    assert "ValueError: no such warehouse" in str(failure["exc_info"])


def test_outside_a_request_text_shows_a_dash_and_json_null() -> None:
    """Without a request the id is '-' in text and null in JSON; bound, it is the id."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    RequestContextFilter().filter(record)
    assert json.loads(JsonFormatter().format(record))["request_id"] is None
    text = logging.Formatter("[%(service)s %(request_id)s] %(message)s")
    assert text.format(record) == "[- -] hello you"
    bound = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    with bind_request("r-1", "orders"):
        RequestContextFilter().filter(bound)
    assert text.format(bound) == "[orders r-1] hello"


def test_the_log_format_comes_from_kourier_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """KOURIER_LOG_FORMAT=json selects JSON lines; an unknown format is refused."""
    root = logging.getLogger()
    monkeypatch.setenv("KOURIER_LOG_FORMAT", "json")
    first = configure_logging(level=root.level, stream=io.StringIO())
    again = configure_logging(level=root.level, stream=io.StringIO())
    root.removeHandler(again)
    assert isinstance(first.formatter, JsonFormatter)
    assert first is not again and first not in root.handlers
    monkeypatch.setenv("KOURIER_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="yaml"):
        configure_logging()


def test_transient_kafka_states_are_dropped_and_everything_else_kept() -> None:
    """aiokafka's 'no leader yet' errors are noise; its other errors and ours are not."""
    noise = TransientKafkaNoise()

    def record(name: str, level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    fetcher = "aiokafka.consumer.fetcher"
    assert not noise.filter(
        record(
            fetcher,
            logging.ERROR,
            "Failed fetch offsets from 1: [Error 6] NotLeaderForPartitionError",
        )
    )
    assert noise.filter(record(fetcher, logging.ERROR, "Unable connect to node with id 1"))
    assert noise.filter(record(fetcher, logging.CRITICAL, "UnknownTopicOrPartitionError"))
    assert noise.filter(record("kourier.server", logging.ERROR, "NotLeaderForPartitionError"))


def test_a_nested_request_logs_its_parents_id_too() -> None:
    """Bound with a parent, text lines show ``parent=<id>`` after the request id and JSON
    lines a parent_id; without one, neither."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    token = parent_id_var.set("p-1")
    try:
        with bind_request("r-2", "orders"):
            RequestContextFilter().filter(record)
    finally:
        parent_id_var.reset(token)
    assert "[%(service)s %(request_id)s%(parent)s]" in TEXT_FORMAT
    text = logging.Formatter("[%(service)s %(request_id)s%(parent)s] %(message)s")
    assert text.format(record) == "[orders r-2 parent=p-1] hello"
    assert json.loads(JsonFormatter().format(record))["parent_id"] == "p-1"
    alone = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    RequestContextFilter().filter(alone)
    assert text.format(alone) == "[- -] hello"
    assert json.loads(JsonFormatter().format(alone))["parent_id"] is None


def test_the_text_format_writes_the_time_as_logging_does() -> None:
    """TextFormatter keeps the text of the current second, and its lines are the ones
    logging.Formatter writes, across seconds and within one."""
    plain, kept = logging.Formatter(TEXT_FORMAT), TextFormatter(TEXT_FORMAT)
    for created in (1_700_000_000.001, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_000.25):
        record = logging.LogRecord("kourier.access", logging.INFO, __file__, 1, "line", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        RequestContextFilter("svc").filter(record)
        assert kept.format(record) == plain.format(record)
