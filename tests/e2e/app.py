"""The service the end-to-end tests run with `kourier run tests.e2e.app:app`.

One-way messages are recorded in a file per process (KOURIER_E2E_DIR) so the test can
check, across processes, that every acknowledged message was handled. The fault tests
(tests/faults/) use ``/work/{id}`` (two-way with PUT, one-way with POST), which records
its id in the same file before doing its work, so the files also show what was handled
twice; and ``/fail`` records each attempt at a message that carries an id. ``/crash``
kills its own process, as a handler that runs out of memory would (queue mode's tests).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_log_path = Path(os.environ.get("KOURIER_E2E_DIR", ".")) / f"handled-{os.getpid()}.log"
_log = _log_path.open("a", buffering=1)


async def echo(request: Request) -> Response:
    body = await request.json()
    return JSONResponse({"echo": body, "pid": os.getpid()})


async def record(request: Request) -> Response:
    body = await request.json()
    _log.write(f"{body['id']}\n")
    return Response(status_code=202)


async def work(request: Request) -> Response:
    """Record the id (the side effect), then work ``ms`` milliseconds; answer the id."""
    work_id = request.path_params["work_id"]
    _log.write(f"{work_id}\n")
    await asyncio.sleep(int(request.query_params.get("ms", "0")) / 1000)
    return JSONResponse({"id": work_id, "pid": os.getpid()})


async def items(request: Request) -> Response:
    n = int(request.query_params.get("n", "3"))
    tag = request.query_params.get("tag", "")

    async def generate() -> AsyncIterator[str]:
        for i in range(n):
            yield json.dumps({"tag": tag, "i": i}) + "\n"

    return StreamingResponse(generate(), media_type="application/x-ndjson")


async def fail(request: Request) -> Response:
    body = await request.body()
    work_id = json.loads(body).get("id") if body else None
    if work_id is not None:
        _log.write(f"fail:{work_id}\n")
    return JSONResponse({"detail": "always fails"}, status_code=500)


async def crash(request: Request) -> Response:
    """Record the id, then kill this process at once (SIGKILL): a poison message."""
    body = await request.json()
    _log.write(f"crash:{body['id']}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return Response(status_code=500)  # never reached


app = Starlette(
    routes=[
        Route("/crash", crash, methods=["POST"]),
        Route("/fail", fail, methods=["POST"]),
        Route("/echo", echo, methods=["POST"]),
        Route("/record", record, methods=["POST"]),
        Route("/items", items),
        Route("/work/{work_id}", work, methods=["PUT", "POST"]),
    ]
)
