"""kourier as a benchmark target: a real ``kourier run bench.app:app`` process, called from
this process natively (``kourier.Client``) or through httpx (``KourierTransport``).

The service is ``python -m kourier run bench.app:app --service bench``: the same FastAPI
app the HTTP baseline serves under uvicorn, in a process of its own, ready at its
``ready: service`` log line (the consumer has its partitions). One mapping of
``KOURIER_*`` variables is both the service's environment and the caller's
``Settings.from_env(...)``, so the two sides cannot disagree; inherited ``KOURIER_*``
variables are dropped, except ``KOURIER_KAFKA_CLIENT``, which picks the Kafka client
under kourier on both sides unless ``kafka_client`` is given. Everything else is
kourier's defaults but the partitions: one per topic, as in the raw baselines. The
topics (``bench.<id8>.bench.requests``, ``.bench.dead-letters``, ``.replies``) are
created before the service starts and deleted afterwards.

* two-way: ``POST /echo`` with ``ECHO_BODY``; the native caller checks the status and
  the body's first bytes like the raw baselines, the httpx caller parses the JSON like
  the HTTP baseline;
* streamed: ``GET /items?n=``, one reply item per NDJSON line;
* one-way (native only): the end marker ``POST /events/end?expect=n`` and then ``n``
  ``Client.enqueue("bench", "POST", "/events")`` from one coroutine, then one
  ``Client.flush()`` for all the acks, as the raw baselines produce. The service prints
  ``END`` once its app has *handled* the n-th event (``bench.app``), and the rate is n
  over the time from before the marker to that moment. httpx has no one-way call:
  through ``KourierTransport`` every request waits for its reply, so the httpx variant
  posts like the HTTP baseline does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from bench.common import (
    CALL_TIMEOUT_S,
    ECHO_BODY,
    Bench,
    ServiceProcess,
    Topics,
    create_topics,
    delete_topics,
)
from kourier import Client, KourierTransport, Settings
from kourier.registry import registry_topic

SERVICE = "bench"
APP = "bench.app:app"
#: The log line ``kourier run`` writes once the service consumes (partitions assigned).
READY_LOG = "ready: service"
JSON_HEADERS = {"content-type": "application/json"}
#: One-way requests in flight for the httpx variant (as ``bench.baselines.http``).
HTTPX_ONE_WAY_INFLIGHT = 64
#: A body that is not ``{"ok":true...`` means the wrong answer.
ECHO_PREFIX = b'{"ok":true'


def kourier_env(bootstrap: str, prefix: str, *, kafka_client: str | None = None) -> dict[str, str]:
    """The ``KOURIER_*`` settings of one session, for the service and the caller alike."""
    env = {
        "KOURIER_BOOTSTRAP_SERVERS": bootstrap,
        "KOURIER_TOPIC_PREFIX": prefix,
        "KOURIER_PARTITIONS": "1",
        "KOURIER_REPLY_PARTITIONS": "1",
        "KOURIER_DEFAULT_TIMEOUT": str(CALL_TIMEOUT_S),
        # No line per request, as every peer runs: uvicorn with access_log=False,
        # FastStream with logger=None, the raw baselines log nothing. (kourier's access
        # log is on by default; bench/README.md says what a line costs.)
        "KOURIER_ACCESS_LOG": "false",
    }
    client = kafka_client or os.environ.get("KOURIER_KAFKA_CLIENT")
    if client:
        env["KOURIER_KAFKA_CLIENT"] = client
    return env


def service_process(
    settings_env: Mapping[str, str],
    *,
    concurrency: int | None = None,
    health_port: int | None = None,
    app: str = APP,
) -> ServiceProcess:
    """``kourier run bench.app:app --service bench`` (or ``app``) with these settings, not
    started yet."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KOURIER_")}
    argv = [sys.executable, "-m", "kourier", "run", app, "--service", SERVICE]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    ready_url = None
    if health_port is not None:
        argv += ["--health-port", str(health_port)]
        ready_url = f"http://127.0.0.1:{health_port}/readyz"
    return ServiceProcess(
        argv, env={**inherited, **settings_env}, ready_log=READY_LOG, ready_url=ready_url
    )


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick; free again once closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def session_settings(
    bootstrap: str, kafka_client: str | None
) -> AsyncIterator[dict[str, str]]:
    """Fresh settings (a unique prefix) whose topics exist, with 1 partition each."""
    prefix = f"bench.{Topics.unique().run_id}."
    env = kourier_env(bootstrap, prefix, kafka_client=kafka_client)
    settings = Settings.from_env(env)
    names = [
        settings.request_topic(SERVICE),
        settings.dead_letter_topic(SERVICE),
        settings.reply_topic,
    ]
    await create_topics(bootstrap, names, partitions=1)
    try:
        yield env
    finally:
        with contextlib.suppress(Exception):
            # The registry topic is the service's to create (compacted), ours to delete.
            await delete_topics(bootstrap, [*names, registry_topic(settings)])


class KourierBench(Bench):
    """The caller side: a started ``Client``, used directly or under httpx."""

    service: ServiceProcess

    def __init__(
        self,
        name: str,
        client: Client,
        service: ServiceProcess,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.service = service
        self._http = http

    async def call(self) -> None:
        if self._http is None:
            response = await self.client.request(
                SERVICE, "POST", "/echo", content=ECHO_BODY, headers=JSON_HEADERS
            )
            if response.status_code != 200 or not response.content.startswith(ECHO_PREFIX):
                raise RuntimeError(f"unexpected reply {response.content[:80]!r}")
            return
        reply = await self._http.post("/echo", content=ECHO_BODY, headers=JSON_HEADERS)
        reply.raise_for_status()
        if reply.json().get("ok") is not True:
            raise RuntimeError(f"unexpected reply {reply.text[:80]!r}")

    async def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        if self._http is None:
            async with self.client.stream(SERVICE, "GET", "/items", params={"n": n_items}) as reply:
                if reply.status_code != 200:
                    raise RuntimeError(f"{self.name}: /items answered {reply.status_code}")
                async for item in reply:
                    for line in item.splitlines():
                        yield line
            return
        async with self._http.stream("GET", "/items", params={"n": n_items}) as response:
            response.raise_for_status()
            async for text in response.aiter_lines():
                if text:
                    yield text.encode()

    async def one_way(self, n: int, size: int = 200) -> float:
        if self._http is not None:
            return await self._posted(n, size)
        payload = b"x" * size
        started = time.monotonic()
        await self.client.send(SERVICE, "POST", "/events/end", params={"expect": n})
        # As the raw baselines produce: queue every record, then wait for all the acks.
        for _ in range(n):
            await self.client.enqueue(SERVICE, "POST", "/events", content=payload)
        await self.client.flush()
        count, finished = await self.service.expect("END", timeout_s=60.0)
        if int(count) != n:
            raise RuntimeError(f"{self.name}: service saw {count} events, expected {n}")
        return n / (float(finished) - started)

    async def _posted(self, n: int, size: int) -> float:
        """One-way as httpx code can do it: POSTs answered 202, some in flight at once."""
        assert self._http is not None
        http = self._http
        payload = b"x" * size
        remaining = n

        async def sender() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                (await http.post("/events", content=payload)).raise_for_status()

        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(min(HTTPX_ONE_WAY_INFLIGHT, n)):
                tasks.create_task(sender())
        return n / (time.monotonic() - started)

    async def sleep_call(self, ms: int) -> None:
        timeout = ms / 1000 + CALL_TIMEOUT_S
        if self._http is None:
            response = await self.client.request(
                SERVICE, "GET", "/sleep", params={"ms": ms}, timeout=timeout
            )
            if response.status_code != 200:
                raise RuntimeError(f"{self.name}: /sleep answered {response.status_code}")
            return
        reply = await self._http.get("/sleep", params={"ms": ms}, timeout=timeout)
        reply.raise_for_status()


@contextlib.asynccontextmanager
async def open_service(
    bootstrap: str,
    *,
    kafka_client: str | None = None,
    health: bool = True,
    app: str = APP,
    **_: Any,
) -> AsyncIterator[Callable[[], ServiceProcess]]:
    """Existing topics and a maker of ``kourier run`` processes on them (to time start-up).

    With ``health`` each process serves ``/readyz`` on a free port, polled once it logged
    that it is ready (``ServiceProcess.url_ready_at``). ``app``: what ``kourier run``
    serves. Other options (``caller``) are ignored.
    """
    async with session_settings(bootstrap, kafka_client) as env:
        yield lambda: service_process(env, health_port=free_port() if health else None, app=app)


@contextlib.asynccontextmanager
async def open_bench(
    bootstrap: str,
    *,
    caller: str = "native",
    kafka_client: str | None = None,
    concurrency: int | None = None,
    app: str = APP,
    **_: Any,
) -> AsyncIterator[KourierBench]:
    """A ``kourier run`` service on fresh topics and a started caller in this process.

    ``caller``: ``"native"`` (``kourier.Client``) or ``"httpx"`` (``httpx.AsyncClient``
    over ``KourierTransport``). ``kafka_client``: ``"aiokafka"`` or ``"confluent"``
    (default: ``KOURIER_KAFKA_CLIENT``, else kourier's). ``concurrency``: the service's
    ``--concurrency`` (default: kourier's). ``app``: what ``kourier run`` serves
    (``bench.app:app``; ``bench.bare_app:app`` has the same routes without a framework).
    Other options (``inflight``) are ignored.
    """
    if caller not in ("native", "httpx"):
        raise ValueError(f"caller must be 'native' or 'httpx', not {caller!r}")
    async with session_settings(bootstrap, kafka_client) as env:
        service = service_process(env, concurrency=concurrency, app=app)
        client = Client(Settings.from_env(env))
        try:
            async with asyncio.TaskGroup() as starting:
                starting.create_task(service.start())
                starting.create_task(client.start())
            if caller == "native":
                yield KourierBench("kourier" if app == APP else "kourier_bare", client, service)
                return
            async with httpx.AsyncClient(
                transport=KourierTransport(client),
                base_url=f"http://{SERVICE}",
                timeout=CALL_TIMEOUT_S,
            ) as http:
                yield KourierBench("kourier_httpx", client, service, http)
        finally:
            await client.stop()
            await service.stop()
