"""A reply the producer cannot even queue, on the in-memory broker.

The unit-level form of what ``test_broker_faults.py::test_outage_while_dead_lettering_and_retrying``
saw on confluent-kafka: the service's first reply to a reply topic it had never written
to came during the outage, so ``publish`` itself raised (the transport could not ask the
broker about the topic: ``PublishError`` after 10 s on confluent, at once on aiokafka).
The error went up through the app's ``send``, the bridge took it for the app failing, and
sent an end marker with an error id in the reply's place, which reached the caller once
the broker was back: ``StreamBroken`` for a plain JSON reply that the app had answered.
The run also counted as failed, so it was not recorded: a retry or a redelivery ran the
handler again.

A reply that cannot be queued is a reply the broker did not acknowledge: logged, not
resent, the app's response stands and is recorded, and the caller's retry is answered
from the idempotency store.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kourier import protocol
from kourier.client import Client, Retry
from kourier.errors import PublishError
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.transports.memory import MemoryBroker, MemoryTransport
from tests.scripted import AckScript, ScriptedTransport

SETTINGS = Settings(partitions=1, reply_partitions=1, commit_interval=0.01, default_timeout=5.0)


def reply_outage(refused: int) -> AckScript:
    """Refuses to queue the first ``refused`` reply records, as a producer does that
    cannot reach any broker to learn about a reply topic it has not written to yet."""
    left = [refused]

    def script(topic: str, value: bytes) -> None:
        if topic == SETTINGS.reply_topic and left[0] > 0:
            left[0] -= 1
            raise PublishError(f"cannot publish to {topic!r}: no metadata from Kafka")

    return script


def app_counting(runs: list[str]) -> Starlette:
    async def work(request: Request) -> Response:
        work_id = request.path_params["work_id"]
        runs.append(work_id)
        await asyncio.sleep(0.2)
        return JSONResponse({"id": work_id})

    return Starlette(routes=[Route("/work/{work_id}", work, methods=["PUT"])])


def replies_stored(broker: MemoryBroker) -> list[protocol.Reply]:
    logs = broker.topics.get(SETTINGS.reply_topic, [])
    return [protocol.decode_reply(r.value, r.headers) for log in logs for r in log]


@pytest.mark.parametrize("refused", [1, 2], ids=["reply", "reply-and-first-replay"])
async def test_a_reply_that_cannot_be_queued_is_replayed_to_the_retry(
    refused: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The app answered; its reply (and, with 2, the first replay) could not be queued.
    No error end marker reaches the caller, the handler runs once, the service logs the
    reply as not sent, and the caller's retry gets the recorded answer."""
    broker = MemoryBroker()
    runs: list[str] = []
    service = Service(
        app_counting(runs),
        "e2e",
        SETTINGS,
        transport=ScriptedTransport(broker, reply_outage(refused)),
    )
    retry = Retry(attempts=6, attempt_timeout=0.3, backoff=0.05)
    with caplog.at_level(logging.ERROR, logger="kourier"):
        async with service, Client(SETTINGS, transport=MemoryTransport(broker)) as client:
            response = await client.request(
                "e2e", "PUT", "/work/slow-0", request_id="slow-0", timeout=5.0, retry=retry
            )
    assert response.status_code == 200
    assert response.json() == {"id": "slow-0"}
    assert runs == ["slow-0"], "the handler ran again: its answer was not recorded"
    assert service.stats.failed == 0 and service.stats.duplicates >= refused
    stored = replies_stored(broker)
    assert stored, "no reply reached the reply topic"
    assert all(r.error_id is None and r.status == 200 for r in stored), stored
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert not failures, failures
