"""The FastAPI app every HTTP-shaped target serves (uvicorn in the HTTP baseline, kourier).

* ``POST /echo`` -- two-way: answers ``{"ok":true,"echo":<request JSON>}``.
* ``GET /items?n=`` -- streamed: ``n`` NDJSON lines, produced one by one.
* ``POST /events`` -- one-way: accepted with 202 and no body, and counted.
* ``POST /events/end?expect=N`` -- the end marker of a one-way burst: once ``N`` events
  have been handled since the last marker, the process prints ``END <N> <monotonic
  time>`` on stdout, as the raw baselines' services do when they see theirs. Counting
  handled events, not the marker's arrival, keeps the figure end to end where handlers
  run concurrently (kourier) and the marker may be handled before the last event.
* ``GET /sleep?ms=`` -- answers ``{"ok":true}`` after ``ms`` milliseconds: requests held
  in flight, for the memory scenario.

The raw Kafka baselines answer with the same bytes (``bench.common.echo_reply``,
``stream_item``; the NDJSON line adds only its newline) and count events alike. This
module must stay cheap to import: the services that load it are what is measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse

from bench.common import EventCount, stream_item

app = FastAPI(title="kourier bench app")


events_count = EventCount()


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": body}


@app.get("/items")
async def items(n: int = 10) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        for i in range(n):
            yield stream_item(i) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.post("/events", status_code=202)
async def events(request: Request) -> Response:
    await request.body()
    events_count.event()
    return Response(status_code=202)


@app.post("/events/end", status_code=202)
async def events_end(expect: int) -> Response:
    events_count.end(expect)
    return Response(status_code=202)


@app.get("/sleep")
async def sleep(ms: int = 1000) -> dict[str, Any]:
    await asyncio.sleep(ms / 1000)
    return {"ok": True}
