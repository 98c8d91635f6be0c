"""The access log and the worker's name in log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from kourier.client.caller import Client
from kourier.ops.access_log import access_log_hooks
from kourier.ops.logging import configure_logging
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.ops.apps import orders_app
from tests.ops.conftest import until


@pytest.fixture
def access() -> Iterator[list[logging.LogRecord]]:
    """The records of the kourier.access logger, for one test."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("kourier.access")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_one_line_per_request_names_what_happened(
    settings: Settings, broker: MemoryBroker, client: Client, access: list[logging.LogRecord]
) -> None:
    """Each handled request, two-way or one-way, is one kourier.access line with the
    service, method, target, status, duration and request id."""
    app, _ = orders_app()
    service = Service(
        app, "orders", settings, transport=MemoryTransport(broker), hooks=access_log_hooks()
    )
    async with service:
        await client.request("orders", "GET", "/orders/7?x=1", request_id="lookup-7")
        await client.request("orders", "GET", "/nowhere", request_id="missing-1")
        await client.send("orders", "POST", "/orders", json={"item": "x"}, request_id="send-1")
        await until(lambda: len(access) == 3)
    first, second, third = (r.getMessage() for r in access)
    assert first.startswith('orders "GET /orders/7?x=1" 200 ')
    assert first.endswith("ms request_id=lookup-7")
    assert float(first.split()[4].removesuffix("ms")) >= 0
    assert second.startswith('orders "GET /nowhere" 404 ')
    assert third.startswith('orders "POST /orders" ')
    assert third.endswith("request_id=send-1 one-way")
    assert all(r.levelno == logging.INFO for r in access)


async def test_a_failing_request_names_its_error_id(
    settings: Settings, broker: MemoryBroker, client: Client, access: list[logging.LogRecord]
) -> None:
    """A request whose handler raised shows its status 500 and the error id."""
    app, _ = orders_app()
    service = Service(
        app, "orders", settings, transport=MemoryTransport(broker), hooks=access_log_hooks()
    )
    async with service:
        response = await client.request("orders", "GET", "/boom", request_id="boom-1")
        await until(lambda: len(access) == 1)
    [line] = [r.getMessage() for r in access]
    assert '"GET /boom" 500 ' in line
    assert line.endswith(f"error_id={response.headers['x-error-id']}")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_worker_names_itself_in_every_line(fmt: str) -> None:
    """With a worker index, text lines say [worker N] and JSON lines have a worker field."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("INFO", fmt=fmt, stream=stream, worker=2)
    try:
        logging.getLogger("kourier.test").info("hello")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    line = stream.getvalue().strip()
    if fmt == "json":
        assert json.loads(line)["worker"] == 2
    else:
        assert "[worker 2] kourier.test" in line


def test_a_single_process_has_no_worker_field() -> None:
    """Without a worker index, JSON lines have no worker field and text no [worker]."""
    for fmt in ("text", "json"):
        stream = io.StringIO()
        root = logging.getLogger()
        level = root.level
        handler = configure_logging("INFO", fmt=fmt, stream=stream)
        try:
            logging.getLogger("kourier.test").info("hello")
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
        assert "worker" not in stream.getvalue()
