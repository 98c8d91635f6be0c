"""kourier's pytest plugin, registered through the ``pytest11`` entry point.

Fixtures (all named ``kourier_*`` so they never shadow a project's own):

- ``kourier_settings``: ``Settings`` for one test, also exported as ``KOURIER_*``
  variables so that an app's own ``Client()``/``Settings.from_env()`` reach the same
  broker: a fresh in-memory one, or, with ``pytest --kourier-kafka``, real Kafka under a
  topic prefix no other test uses.
- ``kourier_broker``: the in-memory ``Broker`` of the test, to read back what was sent.
- ``kourier_service``: a factory, ``await kourier_service(app, "orders")`` -> ``ServedApp``.
- ``kourier_client``: a started ``Client`` on ``kourier_settings``.
- ``kourier_kafka`` (session): the bootstrap servers of a real broker:
  ``KOURIER_BOOTSTRAP_SERVERS`` if set, else one started with ``kourier kafka start``.

The async fixtures need pytest-asyncio (``pip install 'kourier[testing]'``). Loading the
plugin must never change a test run that uses none of its fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from kourier.client import Client
from kourier.server.asgi import ASGIApp
from kourier.settings import MEMORY_SCHEME, Settings
from kourier.testing.broker import Broker, memory_broker
from kourier.testing.served import ServedApp, serve_app

try:
    import pytest_asyncio
except ImportError:  # the plugin loads without it; its async fixtures say what is missing
    pytest_asyncio = None  # type: ignore[assignment]

KAFKA_OPTION = "--kourier-kafka"
#: Seconds ``kourier kafka start`` may take (the first run downloads Kafka's jars).
KAFKA_START_TIMEOUT = 600.0

StartService = Callable[..., Awaitable[ServedApp]]
_BROKER = pytest.StashKey[Broker]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kourier")
    group.addoption(
        KAFKA_OPTION,
        action="store_true",
        default=False,
        help="run kourier's fixtures on a real Kafka broker (KOURIER_BOOTSTRAP_SERVERS, "
        "else one started with `kourier kafka start`) instead of in memory",
    )


def _async_fixture(function: Callable[..., Any]) -> Any:
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(function)

    @pytest.fixture(name=function.__name__)
    def missing() -> None:
        pytest.fail(
            f"{function.__name__} is an async fixture and needs pytest-asyncio: "
            "pip install 'kourier[testing]'"
        )

    return missing


def start_local_kafka() -> dict[str, str]:
    """Start (or find running) the local broker of ``kourier kafka start``; its variables.

    The command prints ``KEY=VALUE`` lines, the last one ``KOURIER_BOOTSTRAP_SERVERS``.
    The broker is left running for the next test run: ``kourier kafka stop`` stops it.
    """
    command = [sys.executable, "-m", "kourier", "kafka", "start"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=KAFKA_START_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`kourier kafka start` did not finish in {KAFKA_START_TIMEOUT:.0f} s")
    if done.returncode != 0:
        pytest.fail(
            f"`kourier kafka start` failed (exit {done.returncode}): {done.stderr.strip()}\n"
            "Set KOURIER_BOOTSTRAP_SERVERS to a broker you run to use that one instead."
        )
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line.strip())
    if not found.get("KOURIER_BOOTSTRAP_SERVERS"):
        pytest.fail(f"`kourier kafka start` named no KOURIER_BOOTSTRAP_SERVERS: {done.stdout!r}")
    return found


@pytest.fixture(scope="session")
def kourier_kafka() -> str:
    """The bootstrap servers of a real Kafka broker for this test session."""
    servers = os.environ.get("KOURIER_BOOTSTRAP_SERVERS", "")
    if servers and not servers.startswith(MEMORY_SCHEME):
        return servers
    return start_local_kafka()["KOURIER_BOOTSTRAP_SERVERS"]


def _on_kafka(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption(KAFKA_OPTION))


@pytest.fixture
def kourier_settings(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings of this test's broker, exported as KOURIER_BOOTSTRAP_SERVERS/_TOPIC_PREFIX."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    monkeypatch.setenv("KOURIER_TOPIC_PREFIX", prefix)
    if _on_kafka(request):
        servers = request.getfixturevalue("kourier_kafka")
        monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", servers)
        yield Settings.from_env()
        return
    with memory_broker() as broker:
        monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", broker.url)
        request.node.stash[_BROKER] = broker
        yield broker.settings


@pytest.fixture
def kourier_broker(request: pytest.FixtureRequest, kourier_settings: Settings) -> Broker:
    """The in-memory broker of this test (what was sent, what was dead-lettered)."""
    if _on_kafka(request):
        pytest.skip(f"kourier_broker reads the in-memory broker back; {KAFKA_OPTION} runs on Kafka")
    broker: Broker = request.node.stash[_BROKER]
    return broker


@_async_fixture
async def kourier_service(kourier_settings: Settings) -> AsyncIterator[StartService]:
    """``await kourier_service(app, "orders", **options)``: the app served for this test.

    ``options`` are those of ``kourier.testing.serve_app`` (``raise_app_exceptions``,
    ``hooks``, ``client_options``) and ``settings`` changes (``concurrency=1``...).
    """
    async with AsyncExitStack() as stack:

        async def start(
            app: ASGIApp,
            service: str,
            *,
            raise_app_exceptions: bool = True,
            hooks: Any = None,
            client_options: Any = None,
            **changes: Any,
        ) -> ServedApp:
            settings = kourier_settings.replace(**changes) if changes else kourier_settings
            return await stack.enter_async_context(
                serve_app(
                    app,
                    service,
                    settings,
                    raise_app_exceptions=raise_app_exceptions,
                    hooks=hooks,
                    client_options=client_options,
                )
            )

        yield start


@_async_fixture
async def kourier_client(kourier_settings: Settings) -> AsyncIterator[Client]:
    """A started ``kourier.Client`` on this test's broker."""
    async with Client(kourier_settings) as client:
        yield client
