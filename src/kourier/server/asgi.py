"""The ASGI bridge: one request envelope in -> an HTTP scope; the app's sends -> replies.

This module knows ASGI and the wire envelopes, never the broker: replies leave through
a ``ReplySink`` that the caller of ``run_app`` provides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from kourier.protocol import Reply, Request
from kourier.server.cutoff import CANCELLED, Cutoff, HandlerCut

logger = logging.getLogger("kourier.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Publishes one reply record; returns once it is queued (the ack is awaited later).
ReplySink = Callable[[Reply], Awaitable[None]]

# Hop-by-hop headers of the app's response: they describe one HTTP connection, and the
# reply travels on none. (The request's reach the app, as under uvicorn.)
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"})

#: The ASGI ``client`` of a one-way message: it has no caller to name.
ONE_WAY_CLIENT = ("one-way", 0)


def build_scope(
    request: Request, service: str, state: dict[str, Any] | None, root_path: str = ""
) -> Scope:
    """The scope uvicorn would build for the same HTTP request (docs/design.md, "What
    the app sees"): every request header, ``host`` the service when the caller sent none,
    ``path`` under ``root_path``, the caller's scheme and reply address as ``client``."""
    path_raw = request.path
    # A copy: middleware may change the scope's list, and a retry builds its scope again.
    headers = list(request.headers)
    for name, _ in headers:
        if name == b"host":
            break
    else:
        headers.insert(0, (b"host", service.encode("ascii")))
    reply_to = request.reply_to
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": root_path + (unquote(path_raw) if "%" in path_raw else path_raw),
        "raw_path": (root_path + path_raw).encode("utf-8"),
        "query_string": request.query.encode("utf-8"),
        "root_path": root_path,
        "headers": headers,
        "client": ONE_WAY_CLIENT if reply_to is None else (reply_to.label, 0),
        "server": None,
        "extensions": {
            "kourier": {
                "request_id": request.id,
                "one_way": request.one_way,
                "key": request.key,
                "deadline_ms": request.deadline_ms,
                "attempt": request.attempt,
                "parent_id": request.parent_id,
            }
        },
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


class Outcome:
    """What became of one request: its status and, if the app failed, the error id."""

    __slots__ = ("error", "error_id", "items", "route", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.route: str | None = None
        self.error_id: str | None = None
        self.error: BaseException | None = None
        self.items = 0


def error_body(status: int, detail: str, error_id: str | None = None) -> bytes:
    payload: dict[str, Any] = {"detail": detail}
    if error_id is not None:
        payload["error_id"] = error_id
    return json.dumps(payload).encode()


JSON_HEADERS = [(b"content-type", b"application/json")]


async def run_app(
    app: ASGIApp,
    request: Request,
    service: str,
    sink: ReplySink,
    *,
    state: dict[str, Any] | None = None,
    max_reply_bytes: int = 900_000,
    root_path: str = "",
    cutoff: Cutoff | None = None,
) -> Outcome:
    """Run the app for one request; every reply record goes to ``sink`` in order.

    With ``cutoff`` the app is cancelled when that says (deadline, time limit, cancel):
    the outcome's error is then a ``HandlerCut``; a reply already started ends with an
    error end marker, one not started is a 504, and a cancelled one gets nothing more.
    """
    outcome = Outcome()
    done = False  # the response is complete
    # Made only if the app waits for a disconnect (few do): an Event per request was
    # a measurable share of the bridge's cost.
    disconnected: asyncio.Future[None] | None = None
    body_sent = False
    seq = 0
    start: tuple[int, list[tuple[bytes, bytes]]] | None = None
    held_error_body: bytes | None = None

    def complete() -> None:
        nonlocal done
        done = True
        if disconnected is not None and not disconnected.done():
            disconnected.set_result(None)

    async def emit(body: bytes, end: bool) -> None:
        nonlocal seq
        if len(body) <= max_reply_bytes:
            chunks = [body]
        else:
            chunks = [body[i : i + max_reply_bytes] for i in range(0, len(body), max_reply_bytes)]
        last_index = len(chunks) - 1
        for index, chunk in enumerate(chunks):
            reply = Reply(request.id, seq, chunk, end and index == last_index)
            if seq == 0 and start is not None:
                reply.status, reply.headers = start
            await sink(reply)
            seq += 1
            outcome.items += 1

    async def receive() -> Message:
        nonlocal body_sent, disconnected
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        if not done:
            if disconnected is None:
                disconnected = asyncio.get_running_loop().create_future()
            await disconnected
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal start, held_error_body
        kind = message["type"]
        if done:
            raise RuntimeError(f"ASGI message {kind!r} sent after the response completed")
        if kind == "http.response.body":
            if start is None:
                raise RuntimeError("http.response.body sent before http.response.start")
            body = message.get("body", b"")
            if body.__class__ is not bytes:
                body = bytes(body)
            if not message.get("more_body", False):
                if seq == 0 and start[0] >= 500:
                    # Frameworks (Starlette's error middleware) send their 500 and then
                    # raise: hold it until the app returns so the error id can go with it.
                    held_error_body = body
                else:
                    await emit(body, end=True)
                complete()
            elif body:
                # An empty chunk with more to come carries nothing worth a record.
                await emit(body, end=False)
                if cutoff is not None:
                    cutoff.item_sent()
        elif kind == "http.response.start":
            if start is not None:
                raise RuntimeError("http.response.start sent twice")
            status = int(message["status"])
            headers = []
            for name, value in message.get("headers", ()):
                name = bytes(name).lower()
                if name not in _HOP_BY_HOP:
                    headers.append((name, bytes(value)))
            start = (status, headers)
            outcome.status = status
        # Other messages (e.g. http.response.trailers, pathsend) are not part of v1.

    scope = build_scope(request, service, state, root_path)
    try:
        if cutoff is None:
            await app(scope, receive, send)
        else:
            await cutoff.run(app(scope, receive, send))
    except Exception as exc:
        outcome.route = _route(scope)
        outcome.error = exc
        outcome.error_id = uuid.uuid4().hex[:16]
        status, detail = 500, "Internal Server Error"
        if isinstance(exc, HandlerCut):
            _log_cut(exc, outcome.error_id, request)
            if exc.reason == CANCELLED:  # its caller stopped listening: nothing to send
                outcome.status = outcome.status or exc.status
                complete()
                return outcome
            status, detail = exc.status, f"handler {exc.describe()}"
        else:
            logger.exception(
                "handler failed: request_id=%s error_id=%s %s %s",
                request.id,
                outcome.error_id,
                request.method,
                request.path,
            )
        if held_error_body is not None and start is not None:
            status, headers = start
            await sink(
                Reply(
                    request.id,
                    0,
                    held_error_body,
                    status=status,
                    headers=[*headers, (b"x-error-id", outcome.error_id.encode())],
                    error_id=outcome.error_id,
                )
            )
            outcome.items += 1
        elif start is None or seq == 0:
            # Nothing has left yet (no status, or a status but no body): a whole 500 can
            # still replace it, rather than the app's status with an empty body.
            outcome.status = status
            reply = Reply(
                request.id,
                0,
                error_body(status, detail, outcome.error_id),
                end=True,
                status=status,
                headers=[*JSON_HEADERS, (b"x-error-id", outcome.error_id.encode())],
                error_id=outcome.error_id,
            )
            await sink(reply)
            outcome.items += 1
        elif not done:
            # The status is already out: end the stream with the error id so the caller
            # knows it is broken rather than complete.
            end = Reply(request.id, seq, b"", end=True, error_id=outcome.error_id)
            await sink(end)
            outcome.items += 1
        complete()
        return outcome
    outcome.route = _route(scope)
    if start is None:
        outcome.status = 500
        outcome.error_id = uuid.uuid4().hex[:16]
        logger.error(
            "app returned without a response: request_id=%s error_id=%s",
            request.id,
            outcome.error_id,
        )
        await sink(
            Reply(
                request.id,
                0,
                error_body(500, "Internal Server Error", outcome.error_id),
                status=500,
                headers=[*JSON_HEADERS, (b"x-error-id", outcome.error_id.encode())],
                error_id=outcome.error_id,
            )
        )
        outcome.items += 1
    elif held_error_body is not None:
        await emit(held_error_body, end=True)
    elif not done:
        await emit(b"", end=True)
    complete()
    return outcome


def _log_cut(cut: HandlerCut, error_id: str, request: Request) -> None:
    # A cancel is the caller's choice (info); a run past its time is worth a look.
    level = logging.INFO if cut.reason == CANCELLED else logging.WARNING
    logger.log(
        level,
        "handler %s: request_id=%s error_id=%s %s %s",
        cut.describe(),
        request.id,
        error_id,
        request.method,
        request.path,
    )


def _route(scope: Scope) -> str | None:
    """The route template the framework matched (Starlette and FastAPI set it)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None
