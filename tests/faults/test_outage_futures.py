"""No unhandled-exception log from kourier's own futures while the broker is down.

A caller whose calls time out during an outage used to print "Future exception was
never retrieved" (aiokafka's ``NodeNotReadyError``) once per call: the acknowledgement
came after the caller had stopped waiting, and nobody looked at its outcome. This kills
a broker of the test's own under a running service and caller, times calls out against
it, waits until every publish has failed, collects garbage (where asyncio reports
futures nobody retrieved), and checks that the event loop reported nothing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import pytest

from kourier import Client, Service, Settings
from kourier.errors import KourierError
from tests import apps
from tests.conftest import unique_prefix
from tests.faults.harness import PrivateBroker

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.mark.parametrize("client_library", ["aiokafka", "confluent"])
async def test_calls_timing_out_in_an_outage_leave_no_unretrieved_future(
    private_broker: PrivateBroker, client_library: str
) -> None:
    """Two-way calls and one-way sends that fail while the broker is down leave no
    "exception was never retrieved" (or any other) report of the event loop."""
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reports.append(context))
    # Log records keep their tracebacks, and so every object the failing frames held,
    # alive until the test ends: asyncio would then report an unretrieved future in the
    # next test. Without records, the futures are collected below, in this test.
    logging.disable(logging.CRITICAL)
    try:
        await calls_in_an_outage(private_broker, client_library)
        # asyncio reports a future nobody retrieved when it is collected: once the
        # service, the caller and their clients are gone.
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.1)
    finally:
        logging.disable(logging.NOTSET)
        loop.set_exception_handler(None)
    assert [str(report.get("message")) for report in reports] == []


async def calls_in_an_outage(broker: PrivateBroker, client_library: str) -> None:
    """Call a service, kill the broker, time calls out against it, wait until every
    publish has failed, and stop everything."""
    config = Settings(
        topic_prefix=unique_prefix(),
        partitions=1,
        bootstrap_servers=broker.bootstrap,
        kafka_client=client_library,
        commit_interval=0.05,
        drain_timeout=2.0,
    )
    before = set(threading.enumerate())
    service = Service(apps.app, "orders", config)
    client = Client(config)
    await service.start()
    await client.start()
    try:
        assert (await client.request("orders", "GET", "/hello/up")).status_code == 200
        broker.kill_node(1)
        calls = [
            *(client.request("orders", "GET", f"/hello/{n}", timeout=1.5) for n in range(10)),
            *(client.send("orders", "POST", "/events", json={"n": n}) for n in range(5)),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, KourierError) for o in outcomes), outcomes
        # A queued publish fails the transport's request timeout (10 s) after it was
        # queued. The two-way calls' publishes were queued just before the one-way sends,
        # whose failures gather has waited for (about 10 s), so they have failed too; the
        # pause is a margin for the scheduling between them, not another timeout's worth.
        await asyncio.sleep(2)
    finally:
        await client.stop()
        await service.stop()
    # Stopped during the outage, a librdkafka consumer may still be closing in its own
    # thread (kourier's wait for it is bounded); with the broker back it finishes. A
    # thread left running would log into, and fail, later tests.
    await asyncio.to_thread(broker.start_node, 1)
    async with asyncio.timeout(90):
        while left := _kourier_threads_since(before):  # noqa: ASYNC110  (other threads)
            await asyncio.sleep(0.5)
    assert left == []


def _kourier_threads_since(before: set[threading.Thread]) -> list[str]:
    return [
        t.name for t in threading.enumerate() if t not in before and t.name.startswith("kourier-")
    ]
