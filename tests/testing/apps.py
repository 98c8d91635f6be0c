"""Small apps for the test kit's tests: one calls another through its own Client()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from kourier import Client

stock = FastAPI()
LEVELS = {"book": 3}


@stock.get("/stock/{item}")
async def level(item: str) -> dict[str, Any]:
    return {"item": item, "level": LEVELS.get(item, 0)}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    # The app's own client, from the environment: what a real service does.
    async with Client() as client:
        yield {"stock": client}


orders = FastAPI(lifespan=lifespan)


@orders.post("/orders", status_code=201)
async def create(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    reply = await request.state.stock.request("stock", "GET", f"/stock/{body['item']}")
    return {"item": body["item"], "in_stock": reply.json()["level"] > 0}


@orders.get("/boom")
async def boom() -> dict[str, Any]:
    raise LookupError("no such order")


@orders.get("/boom/stream")
async def boom_stream() -> StreamingResponse:
    raise KeyError("stream")


@orders.get("/stream/broken")
async def broken_stream() -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        yield b"first\n"
        raise ConnectionError("the source went away")

    return StreamingResponse(lines())


@orders.post("/events", status_code=202)
async def event(body: dict[str, Any]) -> None:
    if body.get("kind") == "bad":
        raise ValueError("cannot handle a bad event")
