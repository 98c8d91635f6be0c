"""What a call to ``bench.app`` costs with no transport at all: the floor under every
HTTP-shaped target.

The app is called as an ASGI callable in this process, in a loop, with the same request
the targets send; the CPU time per call is what its service pays for FastAPI and the
handler whatever carries the request (uvicorn, kourier, ``raw_aiokafka_app``, which calls
it through the same hand-written ASGI call as here, ``bench.common.call_asgi``). The raw
echo baselines (``raw_aiokafka``, ``raw_confluent``) do not pay it: they answer with
hand-written code.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import ECHO_BODY, JSON_CONTENT, call_asgi, http_scope

#: (label, method, path, body, headers) of the calls whose cost is measured: what the
#: kourier target sends.
CALLS: list[tuple[str, str, str, bytes, tuple[tuple[bytes, bytes], ...]]] = [
    ("POST /echo", "POST", "/echo", ECHO_BODY, JSON_CONTENT),
    ("POST /events", "POST", "/events", b"x" * 200, ()),
]


async def _discard(status: int, body: bytes, more: bool) -> None:
    pass


async def _call(
    app: Any, method: str, path: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    await call_asgi(app, http_scope(method, path, headers=headers), body, _discard)


async def cost_us(calls: int = 10_000, warmup: int = 1_000) -> dict[str, float]:
    """CPU microseconds per call of each of ``CALLS``, in this process."""
    from bench.app import app

    costs: dict[str, float] = {}
    for label, method, path, body, headers in CALLS:
        for _ in range(warmup):
            await _call(app, method, path, body, headers)
        started = time.process_time()
        for _ in range(calls):
            await _call(app, method, path, body, headers)
        costs[label] = (time.process_time() - started) / calls * 1e6
    return costs
