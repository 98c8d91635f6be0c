"""Raw aiokafka with ``bench.app`` behind it: what one writes by hand to put a FastAPI app
on Kafka without kourier.

Everything but the service's work per record is :mod:`bench.baselines.raw_aiokafka`'s:
the caller, the headers (``correlation-id``, ``reply-to``, ``reply-partition``), the
reply topic and futures, the consumer, producer and tuning, the offset commits. Where
that service answers with hand-written bytes, this one calls the FastAPI app kourier
serves, in process, through a minimal hand-written ASGI call
(:func:`bench.common.call_asgi`: an ``http`` scope, ``receive()`` giving the record's
value as the body, the ``send()`` messages collected into status and body), one record
after another in the order they were fetched:

* a request: ``POST /echo`` with ``content-type: application/json``; one reply record
  with the response body and a ``status`` header;
* a stream request (``kind: stream``, ``items: n``): ``GET /items?n=``; one reply record
  per ASGI body chunk as the app sends it (the first with the status), then an empty one
  marked ``last`` when the app says the body is complete;
* an event: ``POST /events`` with the record's value; the end marker (``kind: end``,
  ``expect: n``): ``POST /events/end?expect=n``, on which ``bench.app`` prints ``END``
  once it has handled ``n`` events, as it does under kourier.

The app's lifespan startup runs once before ``READY``, its shutdown at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import ConsumerRecord  # type: ignore[import-untyped]

from bench.baselines._shared import Ask, Baseline, Serving, Tuning, header, is_end_marker
from bench.baselines.raw_aiokafka import Caller, EchoService
from bench.common import (
    H_EXPECT,
    JSON_CONTENT,
    AsgiApp,
    call_asgi,
    http_scope,
)

MODULE = "bench.baselines.raw_aiokafka_app"


class AppService(EchoService):
    """:class:`EchoService` whose answers and event handling are ``bench.app``'s."""

    def __init__(self, serving: Serving, tuning: Tuning) -> None:
        super().__init__(serving, tuning)
        from bench.app import app

        self._app: AsgiApp = app

    async def run(self) -> None:
        async with lifespan(self._app):
            await super().run()

    async def _answer(self, record: ConsumerRecord[bytes, bytes]) -> list[asyncio.Future[Any]]:
        ask = Ask.of(record.headers)
        acks: list[asyncio.Future[Any]] = []
        if ask.items is None:
            chunks: list[bytes] = []

            async def collect(status: int, body: bytes, more: bool) -> None:
                chunks.append(body)

            scope = http_scope("POST", "/echo", headers=JSON_CONTENT)
            status = await call_asgi(self._app, scope, record.value or b"", collect)
            acks.append(await self._reply(ask, b"".join(chunks), status=status))
            return acks

        async def forward(status: int, body: bytes, more: bool) -> None:
            if body or not more:
                first = None if acks else status
                acks.append(await self._reply(ask, body, last=not more, status=first))

        scope = http_scope("GET", "/items", b"n=%d" % ask.items)
        await call_asgi(self._app, scope, b"", forward)
        return acks

    async def _handle_events(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if is_end_marker(record.headers):
                expect = header(record.headers, H_EXPECT) or b""
                scope = http_scope("POST", "/events/end", b"expect=" + expect)
            else:
                scope = http_scope("POST", "/events")
            status = await call_asgi(self._app, scope, record.value or b"", _ignore)
            if status != 202:
                raise RuntimeError(f"{scope['path']} answered {status} at {record.offset}")


async def _ignore(status: int, body: bytes, more: bool) -> None:
    pass


@contextlib.asynccontextmanager
async def lifespan(app: AsgiApp, timeout_s: float = 30.0) -> AsyncIterator[None]:
    """The app's ASGI lifespan: startup before the body, shutdown after it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    running: asyncio.Task[None] = asyncio.create_task(app(scope, inbox.get, outbox.put))
    try:
        await inbox.put({"type": "lifespan.startup"})
        async with asyncio.timeout(timeout_s):
            answer = await outbox.get()
        if answer["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"app startup: {answer}")
        yield
        await inbox.put({"type": "lifespan.shutdown"})
        async with asyncio.timeout(timeout_s):
            await outbox.get()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


# -- the benchmark target -------------------------------------------------------------------

BASELINE = Baseline("raw_aiokafka_app", MODULE, Tuning, Caller, AppService)
open_bench = BASELINE.open_bench
open_service = BASELINE.open_service

if __name__ == "__main__":
    BASELINE.main()
