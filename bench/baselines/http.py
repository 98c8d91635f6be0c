"""The HTTP baseline: bench.app under uvicorn in a child process, called with httpx.

The server binds 127.0.0.1 on a free port chosen by the kernel and reports it on stdout
(``READY <port>``). The caller is one ``httpx.AsyncClient`` with keep-alive and a pool as
large as the concurrency it is asked for.

* two-way: ``POST /echo`` with :data:`bench.common.ECHO_BODY`;
* streamed: ``GET /items?n=`` read line by line (NDJSON);
* one-way: ``POST /events`` answered 202, ``ONE_WAY_INFLIGHT`` requests outstanding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import uvicorn

from bench.common import (
    CALL_TIMEOUT_S,
    ECHO_BODY,
    Bench,
    ServiceProcess,
    announce,
    wait_for_shutdown,
)

MODULE = "bench.baselines.http"
APP = "bench.app:app"

#: HTTP has no fire-and-forget: one-way messages are POSTs with this many outstanding.
ONE_WAY_INFLIGHT = 64

JSON_HEADERS = {"content-type": "application/json"}


class HttpBench(Bench):
    name = "http"
    service: ServiceProcess

    def __init__(self, client: httpx.AsyncClient, service: ServiceProcess) -> None:
        self._client = client
        self.service = service

    async def call(self) -> None:
        response = await self._client.post("/echo", content=ECHO_BODY, headers=JSON_HEADERS)
        response.raise_for_status()
        if response.json().get("ok") is not True:
            raise RuntimeError(f"unexpected reply {response.text[:80]!r}")

    async def sleep_call(self, ms: int) -> None:
        response = await self._client.get("/sleep", params={"ms": ms})
        response.raise_for_status()

    async def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        async with self._client.stream("GET", "/items", params={"n": n_items}) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line:
                    yield line.encode()

    async def one_way(self, n: int, size: int = 200) -> float:
        payload = b"x" * size
        remaining = n

        async def sender() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await self._client.post("/events", content=payload)
                response.raise_for_status()

        started = time.monotonic()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(min(ONE_WAY_INFLIGHT, n)):
                tasks.create_task(sender())
        return n / (time.monotonic() - started)


@contextlib.asynccontextmanager
async def open_service(
    bootstrap: str | None = None,
) -> AsyncIterator[Callable[[], ServiceProcess]]:
    """A maker of uvicorn service processes (to time start-up); ``bootstrap`` is ignored."""
    del bootstrap
    yield lambda: ServiceProcess.serving(MODULE)


@contextlib.asynccontextmanager
async def open_bench(
    bootstrap: str | None = None, *, inflight: int = 64
) -> AsyncIterator[HttpBench]:
    """Start uvicorn in a child process and a keep-alive client; ``bootstrap`` is ignored."""
    del bootstrap  # same signature as the Kafka targets
    service = ServiceProcess.serving(MODULE)
    (port,) = await service.start()
    pool = max(inflight, ONE_WAY_INFLIGHT)
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=CALL_TIMEOUT_S
        ) as client:
            yield HttpBench(client, service)
    finally:
        await service.stop()


# -- service side ---------------------------------------------------------------------------


async def serve() -> None:
    # proto must be IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on
    # sockets whose proto says TCP, and without it every response waits ~40 ms for
    # Nagle against the client's delayed ACK.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(APP, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    async with asyncio.timeout(30):
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.01)
    announce("READY", port)
    shutdown = asyncio.create_task(wait_for_shutdown())
    await asyncio.wait([serving, shutdown], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    shutdown.cancel()
    await serving


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run bench.app under uvicorn (used as a child process)")
    parser.parse_args(argv)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
