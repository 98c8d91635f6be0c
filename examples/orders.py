"""An ordinary FastAPI service. Nothing in it knows about Kafka.

Serve it over HTTP with ``uvicorn examples.orders:app`` or over Kafka with
``kourier run examples.orders:app``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

app = FastAPI(title="orders")

_ids = itertools.count(1)
orders: dict[int, dict[str, object]] = {}
events: list[dict[str, object]] = []


class NewOrder(BaseModel):
    item: str
    quantity: int = 1


class Event(BaseModel):
    kind: str
    order_id: int | None = None


@app.post("/orders", status_code=201)
async def create_order(order: NewOrder) -> dict[str, object]:
    order_id = next(_ids)
    orders[order_id] = {"id": order_id, "item": order.item, "quantity": order.quantity}
    return orders[order_id]


@app.get("/orders/{order_id}")
async def get_order(order_id: int) -> dict[str, object]:
    if order_id not in orders:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    return orders[order_id]


@app.post("/events", status_code=202)
async def record_event(event: Event) -> dict[str, str]:
    """A one-way endpoint: callers send to it and do not wait for an answer."""
    events.append(event.model_dump())
    return {"status": "accepted"}


@app.get("/events/count")
async def count_events() -> dict[str, int]:
    return {"count": len(events)}


@app.get("/orders/{order_id}/tracking")
async def tracking(order_id: int) -> StreamingResponse:
    """A streamed reply: NDJSON lines, one per step, as they happen."""

    async def steps() -> AsyncIterator[str]:
        for step in ("packed", "shipped", "in transit", "delivered"):
            await asyncio.sleep(0.05)
            yield json.dumps({"order_id": order_id, "status": step}) + "\n"

    return StreamingResponse(steps(), media_type="application/x-ndjson")
