"""What a call to ``bench.app`` costs with no transport at all: the floor under every
HTTP-shaped target.

The app is called as an ASGI callable in this process, in a loop, with the same request
the targets send; the CPU time per call is what its service pays for FastAPI and the
handler whatever carries the request (uvicorn, kourier). The raw Kafka baselines do not
pay it: they answer with hand-written code.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import ECHO_BODY

#: (label, method, path, body) of the calls whose cost is measured.
CALLS = [
    ("POST /echo", "POST", "/echo", ECHO_BODY),
    ("POST /events", "POST", "/events", b"x" * 200),
]


async def _call(app: Any, method: str, path: str, body: bytes) -> None:
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the app runs
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"bench")],
        "server": ("bench", 80),
        "client": None,
    }
    await app(scope, receive, send)


async def cost_us(calls: int = 10_000, warmup: int = 1_000) -> dict[str, float]:
    """CPU microseconds per call of each of ``CALLS``, in this process."""
    from bench.app import app

    costs: dict[str, float] = {}
    for label, method, path, body in CALLS:
        for _ in range(warmup):
            await _call(app, method, path, body)
        started = time.process_time()
        for _ in range(calls):
            await _call(app, method, path, body)
        costs[label] = (time.process_time() - started) / calls * 1e6
    return costs
