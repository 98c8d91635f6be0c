"""The FastAPI service the gateway tests call, in process and with `kourier run`.

``KOURIER_GATEWAY_DIR`` names a folder where one-way messages and cancelled handlers
are recorded (one line each), so a test in another process can see them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI(title="gateway test service", version="1.2.3")
#: What happened, for tests in the same process.
events: list[str] = []


def _record(line: str) -> None:
    events.append(line)
    folder = os.environ.get("KOURIER_GATEWAY_DIR")
    if folder:
        with (Path(folder) / f"events-{os.getpid()}.log").open("a") as out:
            out.write(line + "\n")


class Item(BaseModel):
    name: str
    quantity: int = 1


@app.post("/echo")
async def echo(item: Item, request: Request) -> dict[str, object]:
    """Echo the item, with what the service saw of the request."""
    return {
        "item": item.model_dump(),
        "query": str(request.url.query),
        "idempotency_key": request.headers.get("idempotency-key"),
        "forwarded_for": request.headers.get("x-forwarded-for"),
        "custom": request.headers.get("x-custom"),
    }


@app.get("/items")
async def items(n: int = 3, delay: float = 0.0) -> StreamingResponse:
    """``n`` NDJSON lines, ``delay`` seconds apart."""

    async def lines() -> AsyncIterator[str]:
        for i in range(n):
            if i and delay:
                await asyncio.sleep(delay)
            yield json.dumps({"i": i}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.get("/events")
async def server_sent_events(n: int = 3) -> StreamingResponse:
    async def events_stream() -> AsyncIterator[str]:
        for i in range(n):
            yield f"id: {i}\ndata: tick {i}\n\n"

    return StreamingResponse(events_stream(), media_type="text/event-stream")


@app.get("/broken")
async def broken() -> StreamingResponse:
    """One NDJSON line, then the handler fails mid-stream."""

    async def lines() -> AsyncIterator[str]:
        yield '{"i": 0}\n'
        raise RuntimeError("failed mid-stream on purpose")

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@app.get("/slow")
async def slow(tag: str, seconds: float = 30.0) -> dict[str, str]:
    """Sleep; record ``cancelled <tag>`` if the handler is cancelled first."""
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _record(f"cancelled {tag}")
        raise
    return {"tag": tag}


@app.post("/record", status_code=202)
async def record(request: Request) -> Response:
    """One-way work: record the body's ``id``."""
    body = await request.json()
    _record(f"recorded {body['id']}")
    return Response(status_code=202)
