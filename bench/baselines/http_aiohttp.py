"""The HTTP peer with a fast client: bench.app under uvicorn (``bench.baselines.http``'s
service), called with ``aiohttp.ClientSession``.

``bench.baselines.http`` calls the same service with httpx, whose per-request cost in the
caller bounds that target at 64 in flight; this one is what an HTTP user who wants speed
writes: one session with keep-alive (aiohttp's default) and a ``TCPConnector`` whose limit
is the calls in flight, so no call waits for a connection and none is opened twice.

* two-way: ``POST /echo`` with :data:`bench.common.ECHO_BODY`, the JSON parsed;
* streamed: ``GET /items?n=`` read line by line (NDJSON);
* one-way: ``POST /events`` answered 202, ``ONE_WAY_INFLIGHT`` requests outstanding, as
  ``bench.baselines.http`` does (HTTP has no fire-and-forget).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from bench.baselines.http import JSON_HEADERS, MODULE, ONE_WAY_INFLIGHT
from bench.common import CALL_TIMEOUT_S, ECHO_BODY, Bench, ServiceProcess


class AiohttpBench(Bench):
    name = "http_aiohttp"
    service: ServiceProcess

    def __init__(self, session: aiohttp.ClientSession, service: ServiceProcess) -> None:
        self._session = session
        self.service = service

    async def call(self) -> None:
        async with self._session.post("/echo", data=ECHO_BODY, headers=JSON_HEADERS) as response:
            response.raise_for_status()
            body = await response.json()
        if body.get("ok") is not True:
            raise RuntimeError(f"unexpected reply {body!r:.80}")

    async def sleep_call(self, ms: int) -> None:
        async with self._session.get("/sleep", params={"ms": ms}) as response:
            response.raise_for_status()
            await response.read()

    async def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        async with self._session.get("/items", params={"n": n_items}) as response:
            response.raise_for_status()
            async for line in response.content:
                line = line.rstrip(b"\n")
                if line:
                    yield line

    async def one_way(self, n: int, size: int = 200) -> float:
        payload = b"x" * size
        remaining = n

        async def sender() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with self._session.post("/events", data=payload) as response:
                    response.raise_for_status()
                    await response.read()

        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(min(ONE_WAY_INFLIGHT, n)):
                tasks.create_task(sender())
        return n / (time.monotonic() - started)


@contextlib.asynccontextmanager
async def open_service(
    bootstrap: str | None = None,
) -> AsyncIterator[Callable[[], ServiceProcess]]:
    """A maker of uvicorn service processes (``http``'s); ``bootstrap`` is ignored."""
    del bootstrap
    yield lambda: ServiceProcess.serving(MODULE)


@contextlib.asynccontextmanager
async def open_bench(
    bootstrap: str | None = None, *, inflight: int = 64
) -> AsyncIterator[AiohttpBench]:
    """Start uvicorn in a child process and a keep-alive session; ``bootstrap`` is ignored."""
    del bootstrap  # same signature as the Kafka targets
    service = ServiceProcess.serving(MODULE)
    (port,) = await service.start()
    connector = aiohttp.TCPConnector(limit=max(inflight, ONE_WAY_INFLIGHT))
    try:
        async with aiohttp.ClientSession(
            base_url=f"http://127.0.0.1:{port}",
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
        ) as session:
            yield AiohttpBench(session, service)
    finally:
        await service.stop()
