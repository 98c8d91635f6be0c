"""An httpx transport over the caller, so httpx code reaches services through Kafka.

``httpx.AsyncClient(transport=KourierTransport(client), base_url="http://orders")``:
the URL's host names the service, its scheme reaches the app as the ASGI scheme, and
the rest of the request travels as is, every header included (the app sees what it
would see behind uvicorn). The response body is streamed item by item, so
``client.stream(...)`` with ``aiter_lines()`` sees NDJSON lines as they come.

kourier's errors become the httpx exceptions httpx code already catches; a request
that could never be sent (too large, a reserved ``kourier-`` header) keeps its own
error. A service that does not exist is ``httpx.ConnectError``, as an unknown host is
(a DNS failure). A service with no live instance is ``httpx.ConnectError`` too, as a
host that refuses connections is, not a 503 response: no server answered, so there is
no response to give, and code that retries on ``httpx.ConnectError`` (a common
pattern) then does the right thing. Each keeps its kourier error as ``__cause__``, so
code can tell them apart.

Per-request options go in ``extensions={"kourier": {"key": ..., "request_id": ...,
"retry": Retry(...) or False}}`` (without ``retry``, the client's default policy); the
response's ``extensions["kourier"]`` holds its request and error ids. httpx's own
``event_hooks`` run in httpx, before this transport sees the request; the client's
hooks run as for any of its calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from kourier.client.caller import Client
from kourier.client.cancel import CLOSED
from kourier.client.responses import ReplyStream
from kourier.errors import (
    BrokerError,
    KourierError,
    PublishError,
    ReplyTimeout,
    ServiceNotFound,
    ServiceUnavailable,
    StreamBroken,
)


class KourierTransport(httpx.AsyncBaseTransport):
    """Sends each httpx request as a kourier call through ``client``.

    The transport does not own the client: start and stop it yourself.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        options: dict[str, Any] = request.extensions.get("kourier") or {}
        timeout = (request.extensions.get("timeout") or {}).get("read")
        client = self.client
        url = request.url
        service = url.host
        body = await request.aread()
        try:
            reply = await client._open_stream(
                service,
                request.method,
                url.raw_path.decode("ascii"),
                headers=request.headers.raw,
                content=body,
                json=None,
                params=None,
                timeout=timeout,
                key=options.get("key"),
                request_id=options.get("request_id"),
                retry=options.get("retry"),
                scheme=url.scheme,
            )
        except KourierError as exc:
            raise as_httpx_error(exc, request) from exc
        if client.hooks.has("response"):
            try:
                await client.hooks.emit("response", reply)
            except BaseException as exc:
                await end_call(client, service, reply)
                if isinstance(exc, KourierError):
                    raise as_httpx_error(exc, request) from exc
                raise
        extensions = {"kourier": {"request_id": reply.request_id, "error_id": reply.error_id}}
        whole = reply.whole()
        if whole is not None:
            # The whole reply came in one record (most do): a plain body, no call to end.
            stream: httpx.AsyncByteStream = WholeBody(whole)
        else:
            stream = ReplyBody(reply, client, service, request)
        return httpx.Response(
            reply.status_code, headers=reply.raw_headers, stream=stream, extensions=extensions
        )


class WholeBody(httpx.AsyncByteStream):
    """A response body that arrived whole: one chunk, nothing to close."""

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body:
            yield self._body


class ReplyBody(httpx.AsyncByteStream):
    """The response body: reply items as they arrive; closing it ends the call."""

    def __init__(
        self, reply: ReplyStream, client: Client, service: str, request: httpx.Request
    ) -> None:
        self._reply = reply
        self._client = client
        self._service = service
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._reply:
                yield chunk
        except KourierError as exc:
            raise as_httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        await end_call(self._client, self._service, self._reply)


async def end_call(client: Client, service: str, reply: ReplyStream) -> None:
    """Stop listening; if the service may still be sending, tell it to stop (a cancel),
    as ``Client.stream`` does when its block ends early."""
    if reply.unfinished():
        client.cancels.send(service, reply.request_id, CLOSED)
    await reply.aclose()


def as_httpx_error(error: KourierError, request: httpx.Request) -> Exception:
    """The httpx exception httpx code expects for ``error``; others stay as they are."""
    message = str(error)
    if isinstance(error, ReplyTimeout):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(error, PublishError):
        return httpx.WriteError(message, request=request)
    if isinstance(error, BrokerError | ServiceNotFound | ServiceUnavailable):
        return httpx.ConnectError(message, request=request)
    if isinstance(error, StreamBroken):
        return httpx.RemoteProtocolError(message, request=request)
    return error
