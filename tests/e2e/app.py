"""The service the end-to-end tests run with `kourier run tests.e2e.app:app`.

One-way messages are recorded in a file per process (KOURIER_E2E_DIR) so the test can
check, across processes, that every acknowledged message was handled.
"""

from __future__ import annotations

import json
import os
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


async def items(request: Request) -> Response:
    n = int(request.query_params.get("n", "3"))
    tag = request.query_params.get("tag", "")

    async def generate() -> AsyncIterator[str]:
        for i in range(n):
            yield json.dumps({"tag": tag, "i": i}) + "\n"

    return StreamingResponse(generate(), media_type="application/x-ndjson")


async def fail(request: Request) -> Response:
    return JSONResponse({"detail": "always fails"}, status_code=500)


app = Starlette(
    routes=[
        Route("/fail", fail, methods=["POST"]),
        Route("/echo", echo, methods=["POST"]),
        Route("/record", record, methods=["POST"]),
        Route("/items", items),
    ]
)
