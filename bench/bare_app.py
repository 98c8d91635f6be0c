"""``bench.app``'s routes as a bare ASGI callable: the raw baselines' work, no framework.

``kourier run bench.bare_app:app`` (the ``kourier_bare`` target) does per request what the
raw Kafka baselines' services do by hand, answering with the same bytes:

* ``POST /echo`` -- ``bench.common.echo_reply`` of the body (parse and re-encode the JSON);
* ``GET /items?n=`` -- ``n`` NDJSON lines, ``stream_item(i)`` each, one body chunk per line;
* ``POST /events`` -- 202, counted; ``POST /events/end?expect=N`` -- 202, and ``END``
  once ``N`` events have been handled (``bench.common.EventCount``, as ``bench.app``);
* ``GET /sleep?ms=`` -- ``{"ok":true}`` after ``ms`` milliseconds.

What kourier costs on top of a hand-written Kafka service is this target against the raw
baselines: the same work in the handler, kourier's bridge, consume loop and wire format
around it. FastAPI's own cost is what ``bench.app`` adds to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from bench.common import EventCount, echo_reply, stream_item

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = [(b"content-type", b"application/json")]
NDJSON = [(b"content-type", b"application/x-ndjson")]

events_count = EventCount()


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    method, path = scope["method"], scope["path"]
    if method == "POST" and path == "/echo":
        await _answer(send, 200, echo_reply(await _body(receive)), JSON)
    elif method == "POST" and path == "/events":
        await _body(receive)
        events_count.event()
        await _answer(send, 202, b"", [])
    elif method == "POST" and path == "/events/end":
        events_count.end(int(_query(scope, "expect")))
        await _answer(send, 202, b"", [])
    elif method == "GET" and path == "/items":
        await send({"type": "http.response.start", "status": 200, "headers": NDJSON})
        for i in range(int(_query(scope, "n", "10"))):
            line = stream_item(i) + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif method == "GET" and path == "/sleep":
        await asyncio.sleep(int(_query(scope, "ms", "1000")) / 1000)
        await _answer(send, 200, b'{"ok":true}', JSON)
    else:
        await _answer(send, 404, b'{"detail":"Not Found"}', JSON)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _query(scope: MutableMapping[str, Any], name: str, default: str | None = None) -> str:
    query: str = scope["query_string"].decode("latin-1")
    values = parse_qs(query).get(name)
    if values:
        return values[0]
    if default is None:
        raise ValueError(f"query parameter {name!r} is missing")
    return default


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
