"""The ASGI apps the ops tests serve: an orders service with routes that misbehave."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from fastapi import FastAPI

from kourier.ops.logging import bind_request
from kourier.server.asgi import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("tests.orders")


class Controls:
    """Levers a test pulls on a running app: release a waiting handler, see a block."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.blocking = threading.Event()
        self.unblocked = threading.Event()


def orders_app() -> tuple[FastAPI, Controls]:
    app = FastAPI()
    controls = Controls()

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, Any]:
        logger.info("looking up order %s", order_id)
        return {"id": order_id}

    @app.post("/orders", status_code=202)
    async def take_order() -> dict[str, str]:
        return {"status": "accepted"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.get("/oops")
    async def oops() -> dict[str, str]:
        try:
            raise ValueError("no such warehouse")
        except ValueError:
            logger.exception("could not reserve stock")
        return {"status": "degraded"}

    @app.get("/wait")
    async def wait() -> dict[str, str]:
        await controls.release.wait()
        return {"status": "released"}

    @app.get("/block")
    async def block(seconds: float) -> dict[str, float]:
        # A handler that blocks the event loop, the bug liveness exists to catch.
        controls.blocking.set()
        time.sleep(seconds)  # noqa: ASYNC251
        controls.unblocked.set()
        return {"blocked": seconds}

    return app, controls


def with_request_id(app: ASGIApp, service: str) -> ASGIApp:
    """Binds the request id around the app, as the service will do itself once wired."""

    async def bound(scope: Scope, receive: Receive, send: Send) -> None:
        kourier = (scope.get("extensions") or {}).get("kourier")
        if kourier is None:
            await app(scope, receive, send)
            return
        with bind_request(kourier["request_id"], service):
            await app(scope, receive, send)

    return bound
