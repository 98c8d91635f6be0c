"""ASGI apps the tests serve: a FastAPI app with every shape of handler."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

events: list[dict[str, Any]] = []
lifespan_log: list[str] = []


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    lifespan_log.append("startup")
    yield {"greeting": "hello"}
    lifespan_log.append("shutdown")


app = FastAPI(lifespan=lifespan)


class Order(BaseModel):
    item: str
    quantity: int = 1


@app.get("/hello/{name}")
async def hello(name: str, request: Request) -> dict[str, Any]:
    return {
        "hello": name,
        "greeting": request.state.greeting,
        "query": dict(request.query_params),
        "x-test": request.headers.get("x-test"),
        "host": request.headers.get("host"),
    }


@app.post("/orders", status_code=201)
async def create_order(order: Order) -> dict[str, Any]:
    return {"item": order.item, "quantity": order.quantity}


@app.post("/echo")
async def echo(request: Request) -> dict[str, Any]:
    body = await request.body()
    return {"size": len(body), "request_id": request.scope["extensions"]["kourier"]["request_id"]}


@app.get("/big")
async def big(size: int) -> StreamingResponse:
    return StreamingResponse(iter([b"x" * size]), media_type="application/octet-stream")


@app.get("/items")
async def items(n: int = 3, delay: float = 0.0) -> StreamingResponse:
    async def generate() -> AsyncIterator[str]:
        for i in range(n):
            if delay:
                await asyncio.sleep(delay)
            yield json.dumps({"i": i}) + "\n"

    return StreamingResponse(generate(), media_type="application/x-ndjson")


@app.get("/broken-before-body")
async def broken_before_body() -> StreamingResponse:
    async def generate() -> AsyncIterator[str]:
        raise RuntimeError("failed before the first item")
        yield ""  # pragma: no cover -- makes this an async generator

    return StreamingResponse(generate(), media_type="text/plain")


@app.get("/broken-stream")
async def broken_stream() -> StreamingResponse:
    async def generate() -> AsyncIterator[str]:
        yield "first\n"
        raise RuntimeError("stream failed")

    return StreamingResponse(generate(), media_type="text/plain")


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom")


@app.get("/slow")
async def slow(seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.post("/events", status_code=202)
async def event(request: Request) -> dict[str, str]:
    events.append(await request.json())
    return {"status": "accepted"}


failures: dict[str, int] = {}


@app.post("/flaky/{name}", status_code=202)
async def flaky(name: str, fail_times: int = 0) -> dict[str, int]:
    """Fails (500) the first ``fail_times`` calls for ``name``, then succeeds."""
    failures[name] = failures.get(name, 0) + 1
    if failures[name] <= fail_times:
        raise RuntimeError(f"{name} failure {failures[name]}")
    return {"calls": failures[name]}


counter = {"n": 0}


@app.post("/count")
async def count() -> dict[str, int]:
    counter["n"] += 1
    await asyncio.sleep(0.05)
    return {"n": counter["n"]}
