"""No handler outlives its caller: `kourier run` processes on the real broker.

The service runs ``tests/e2e/cancel_app.py``; its handlers write what happens to them
(started, each item, cancelled) to a file per process, which the tests read. Callers
are this test process (a ``Client``) and, for Ctrl-C, a `kourier request --stream`
subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kourier.admin import read_dead_letters
from kourier.client import Client
from kourier.errors import ReplyTimeout
from kourier.settings import Settings
from tests.conftest import kafka_bootstrap
from tests.processes import ROOT, LoggedProcess

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(120)]

SERVICE = "cancels"


@pytest.fixture(scope="module", params=["aiokafka", "confluent"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_KAFKA_CLIENT": str(request.param),
        "KOURIER_TOPIC_PREFIX": f"cx{uuid.uuid4().hex[:8]}.",
        "KOURIER_PARTITIONS": "2",
        "KOURIER_CONCURRENCY": "2",
        "KOURIER_MESSAGE_TIMEOUT": "1",
        "KOURIER_RETRY_ATTEMPTS": "2",
        "KOURIER_RETRY_BACKOFF": "0.1",
        "KOURIER_E2E_DIR": str(tmp_path_factory.mktemp("cancels")),
        "KOURIER_E2E_SERVICE": SERVICE,
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="module")
def service(env: dict[str, str]) -> Iterator[LoggedProcess]:
    process = LoggedProcess(
        [sys.executable, "-m", "kourier", "run", "tests.e2e.cancel_app:app", "--service", SERVICE],
        env,
        lambda line: "ready: service" in line,
    )
    try:
        assert process.ready.wait(60), "".join(process.lines[-20:])
        yield process
    finally:
        if process.running:
            process.process.terminate()
        process.process.wait(timeout=60)
        process.join_reader()
        if process.process.stderr is not None:
            process.process.stderr.close()


@pytest.fixture
async def client(env: dict[str, str], service: LoggedProcess) -> AsyncIterator[Client]:
    settings = Settings.from_env(env)
    async with Client(settings) as started:
        yield started


def events(env: dict[str, str]) -> list[str]:
    folder = Path(env["KOURIER_E2E_DIR"])
    return [line for path in folder.glob("events-*.log") for line in path.read_text().split("\n")]


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Wait for ``check``; the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def items_of(env: dict[str, str], tag: str) -> int:
    return sum(line.startswith(f"item {tag} ") for line in events(env))


async def test_a_two_way_handler_is_cancelled_at_its_deadline(
    env: dict[str, str], service: LoggedProcess, client: Client
) -> None:
    """With the caller's cancels switched off, the service itself cancels handlers still
    running at their deadline: both see CancelledError, their slots serve the next call."""
    client.cancels.send = lambda *args: None  # type: ignore[method-assign]
    tag = uuid.uuid4().hex[:6]
    calls = [
        client.request(SERVICE, "GET", f"/hang/{tag}{i}", timeout=1.5) for i in range(2)
    ]  # both slots of the service
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(outcome, ReplyTimeout), outcome
    await until(lambda: {f"cancelled {tag}0", f"cancelled {tag}1"} <= set(events(env)), 5)
    await until(
        lambda: (
            sum(f"/hang/{tag}" in line and "past its deadline" in line for line in service.lines)
            == 2
        ),
        5,
    )
    response = await client.request(SERVICE, "GET", "/time-left", timeout=5)
    assert response.status_code == 200


async def test_closing_a_stream_cancels_the_handler(
    env: dict[str, str], service: LoggedProcess, client: Client
) -> None:
    """Leaving a stream early cancels its handler: it sees CancelledError and stops."""
    tag = uuid.uuid4().hex[:6]
    async with client.stream(SERVICE, "GET", f"/stream/{tag}?ms=20", timeout=30) as reply:
        seen = 0
        async for _ in reply.aiter_lines():
            seen += 1
            if seen == 3:
                break
    await until(lambda: f"cancelled {tag}" in events(env), 5)
    produced = items_of(env, tag)
    await asyncio.sleep(0.5)
    assert items_of(env, tag) == produced, "the handler went on producing"


def test_ctrl_c_on_the_cli_stops_the_services_handler(
    env: dict[str, str], service: LoggedProcess
) -> None:
    """SIGINT to `kourier request --stream` mid-stream cancels the service's handler."""
    tag = uuid.uuid4().hex[:6]
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kourier",
            "request",
            SERVICE,
            "GET",
            f"/stream/{tag}?ms=50",
            "--stream",
            "--timeout",
            "60",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stdout is not None
        for _ in range(3):
            assert cli.stdout.readline(), "the stream ended early"
        cli.send_signal(signal.SIGINT)
        code = cli.wait(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
        cli.communicate()
    assert code == 130
    wait_for(lambda: f"cancelled {tag}" in events(env), 5)
    produced = items_of(env, tag)
    time.sleep(0.5)
    assert items_of(env, tag) == produced, "the handler went on producing"


async def test_a_hung_one_way_handler_is_dead_lettered_after_its_time_limit(
    env: dict[str, str], service: LoggedProcess, client: Client
) -> None:
    """A one-way handler that never returns is cut after message_timeout (1 s), retried
    once, then dead-lettered with a reason that says it timed out."""
    tag = uuid.uuid4().hex[:6]
    request_id = await client.send(SERVICE, "POST", f"/hang/{tag}")
    await until(lambda: events(env).count(f"cancelled {tag}") == 2, 15)
    letters = []
    for _ in range(50):
        letters = [
            letter
            for letter in await read_dead_letters(client.transport, client.settings, SERVICE)
            if letter.header("kourier-id") == request_id
        ]
        if letters:
            break
        await asyncio.sleep(0.2)
    [letter] = letters
    assert letter.reason.startswith("handler timed out (time limit 1 s) after 2 attempts")
    assert letter.attempts == 2
    assert events(env).count(f"start {tag}") == 2


async def test_a_nested_call_is_bounded_by_its_parent_and_names_it(
    env: dict[str, str], service: LoggedProcess, client: Client
) -> None:
    """A call made inside a handler with a 60 s timeout of its own gets at most what its
    parent has left, carries the parent's request id, and the log line of the nested
    handler shows both ids."""
    response = await client.request(SERVICE, "GET", "/nested", timeout=3)
    body = response.json()
    nested = body["nested"]
    assert 0 < nested["time_left"] <= 3
    assert nested["parent_id"] == response.request_id == body["request_id"]
    wait_for(
        lambda: any(
            f"{nested['request_id']} parent={response.request_id}]" in line
            for line in service.lines
        ),
        5,
    )
