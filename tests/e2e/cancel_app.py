"""The service the cancellation tests run, in process and with `kourier run`.

Each handler reports what happened to it (started, cancelled, items produced) as one
line in ``EVENTS`` and, when KOURIER_E2E_DIR is set, in a file per process, so a test in
another process can see that a handler observed ``CancelledError``. ``/nested`` calls
this same service's ``/time-left`` through a ``Client`` started in the lifespan (or the
one ``make_app`` is given), to show what a nested call inherits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import kourier
from kourier.client import Client
from kourier.settings import Settings

logger = logging.getLogger("tests.cancel_app")
SERVICE = os.environ.get("KOURIER_E2E_SERVICE", "cancels")
EVENTS: list[str] = []
_dir = os.environ.get("KOURIER_E2E_DIR")
_log = (Path(_dir) / f"events-{os.getpid()}.log").open("a", buffering=1) if _dir else None


def event(line: str) -> None:
    EVENTS.append(line)
    if _log is not None:
        _log.write(line + "\n")


async def hang(request: Request) -> Response:
    """Record the start, then wait for ever; record the cancellation."""
    tag = request.path_params["tag"]
    event(f"start {tag}")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        event(f"cancelled {tag}")
        raise
    return Response(status_code=204)


async def stream(request: Request) -> Response:
    """An endless NDJSON stream, an item every ``ms`` milliseconds; records each item."""
    tag = request.path_params["tag"]
    pause = int(request.query_params.get("ms", "20")) / 1000

    async def items() -> AsyncIterator[str]:
        event(f"start {tag}")
        i = 0
        try:
            while True:
                event(f"item {tag} {i}")
                yield json.dumps({"i": i}) + "\n"
                i += 1
                await asyncio.sleep(pause)
        except (asyncio.CancelledError, GeneratorExit):
            # GeneratorExit: the cut came while Starlette was sending an item, and it
            # closes the generator where it was suspended, at its yield.
            event(f"cancelled {tag}")
            raise

    return StreamingResponse(items(), media_type="application/x-ndjson")


async def time_left(request: Request) -> Response:
    """What a handler sees of its request: time left, its id, its parent's id."""
    own: dict[str, Any] = request.scope["extensions"]["kourier"]
    logger.info("time left: %s", kourier.time_left())  # the log line shows both ids
    return JSONResponse(
        {
            "time_left": kourier.time_left(),
            "request_id": own["request_id"],
            "parent_id": own["parent_id"],
        }
    )


async def nested(request: Request) -> Response:
    """Call ``/time-left`` of this service with a long timeout of its own."""
    client: Client = request.app.state.client
    own = request.scope["extensions"]["kourier"]
    inner = await client.request(SERVICE, "GET", "/time-left", timeout=60)
    return JSONResponse({"request_id": own["request_id"], "nested": inner.json()})


def make_app(client: Client | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client is not None:
            app.state.client = client
            yield
            return
        async with Client(Settings.from_env()) as own:
            app.state.client = own
            yield

    return Starlette(
        routes=[
            Route("/hang/{tag}", hang, methods=["GET", "POST"]),
            Route("/stream/{tag}", stream),
            Route("/time-left", time_left),
            Route("/nested", nested),
        ],
        lifespan=lifespan,
    )


app = make_app()
