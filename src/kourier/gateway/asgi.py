"""The ASGI contract the gateway's parts share, and small helpers to answer with it.

Only types and plain answers live here; it must never know about Kafka or services.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def answer(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a whole response in two messages."""
    head = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode("ascii")),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def answer_json(send: Send, document: Any, status: int = 200) -> None:
    body = json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8")
    await answer(send, status, body, b"application/json")


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower case), as text, or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def base_url(scope: Scope) -> str:
    """Where the caller reached this app: scheme, host and the mount's root path."""
    scheme = scope.get("scheme", "http")
    host = header(scope, b"host")
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scheme}://{host}{scope.get('root_path', '')}"
