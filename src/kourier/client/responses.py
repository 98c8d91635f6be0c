"""What a call gives back: a whole ``Response``, or a ``ReplyStream`` read item by item.

Both read like httpx's response (``status_code``, ``headers``, ``text``, ``json()``,
``raise_for_status()``, ``aiter_lines()``), plus what HTTP cannot say: the request id
and, when the service failed, the error id it logged. Nothing here talks to a broker;
a stream pulls its items from its ``ReplyWaiter``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from kourier.client.replies import ReplyWaiter
from kourier.client.timeouts import timed_out
from kourier.errors import ReplyTimeout, StreamBroken
from kourier.protocol import Reply


class Response:
    """A complete reply: status, headers and the whole body."""

    def __init__(
        self,
        status_code: int,
        *,
        headers: httpx.Headers | list[tuple[bytes, bytes]],
        content: bytes,
        request_id: str,
        error_id: str | None = None,
        responder: str | None = None,
        method: str = "GET",
        url: str = "",
    ) -> None:
        self.status_code = status_code
        # Raw pairs become httpx.Headers when first read: many callers never look.
        self._headers = headers
        self.content = content
        self.request_id = request_id
        #: The id under which the service logged its failure (``kourier-error``), if any.
        self.error_id = error_id
        #: Which service answered, when it said so (``kourier-from``; scatter-gather).
        self.responder = responder
        self._method = method
        self._url = url

    @property
    def headers(self) -> httpx.Headers:
        headers = self._headers
        if not isinstance(headers, httpx.Headers):
            headers = self._headers = httpx.Headers(headers)
        return headers

    @classmethod
    def from_items(cls, items: Sequence[Reply], *, method: str, url: str) -> Response:
        """Join a reply's items (item 0 first, the end marker last) into one response."""
        first, last = items[0], items[-1]
        check_complete(first, last)
        assert first.status is not None  # decode_reply guarantees it for item 0
        return cls(
            first.status,
            headers=first.headers,
            content=first.body if len(items) == 1 else b"".join(item.body for item in items),
            request_id=first.request_id,
            error_id=first.error_id or last.error_id,
            responder=first.responder,
            method=method,
            url=url,
        )

    @property
    def text(self) -> str:
        return self.content.decode(charset_of(self.headers), errors="replace")

    def json(self, **kwargs: Any) -> Any:
        return json.loads(self.content, **kwargs)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def raise_for_status(self) -> Response:
        """Raise ``httpx.HTTPStatusError`` for a 4xx or 5xx status, as httpx does."""
        if self.status_code < 400:
            return self
        request = httpx.Request(self._method, self._url or "http://kourier/")
        response = httpx.Response(
            self.status_code, headers=self.headers, content=self.content, request=request
        )
        kind = "Client error" if self.status_code < 500 else "Server error"
        message = f"{kind} '{self.status_code} {response.reason_phrase}' for url '{self._url}'"
        if self.error_id is not None:
            message += f" (error id {self.error_id})"
        raise httpx.HTTPStatusError(message, request=request, response=response)

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}] {self.request_id}>"


class ReplyStream:
    """A reply read item by item, as each record arrives.

    ``status_code`` and ``headers`` come with item 0. Iterating yields the body of each
    item that has one, in order; items with an empty body (a header-only item 0, a bare
    end marker) are skipped. Each item after the first must come within ``idle_timeout``
    seconds of the previous one, or ``ReplyTimeout`` is raised.
    """

    def __init__(
        self,
        waiter: ReplyWaiter,
        first: Reply,
        idle_timeout: float,
        *,
        call: tuple[str, str, str] | None = None,
    ) -> None:
        assert first.status is not None  # decode_reply guarantees it for item 0
        self.request_id = waiter.request_id
        self.status_code = first.status
        # Raw pairs become httpx.Headers when first read, as in ``Response``.
        self._headers: httpx.Headers | None = None
        self.error_id = first.error_id
        self._waiter = waiter
        self._first = first
        self._pending: Reply | None = first
        self._idle_timeout = idle_timeout
        self._ended = False
        self._call = call  # (service, method, path): named if an item times out
        #: True once the service's end marker has been read: the whole reply is in.
        self.finished = first.end

    @property
    def headers(self) -> httpx.Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = httpx.Headers(self._first.headers)
        return headers

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as the service sent them, name and value pairs."""
        return self._first.headers

    def whole(self) -> bytes | None:
        """The body, if the whole reply came in item 0 and nothing has been read yet.

        Takes the reply as read and stops listening. None when there is more to read (or
        the end marker reports a failure): then iterate as usual.
        """
        first = self._first
        if not first.end or self._pending is not first:
            return None
        if first.error_id is not None and self.status_code < 500:
            return None  # reading it raises StreamBroken (``check_complete``)
        self._pending = None
        self._ended = True
        self._waiter.close()
        return first.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (item := await self._next_item()) is not None:
            if item.body:
                yield item.body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        async for chunk in self:
            yield chunk

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Text lines without their line endings, each as soon as it is complete."""
        charset = charset_of(self.headers)
        pending = ""
        async for chunk in self:
            pending += chunk.decode(charset, errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                yield line.removesuffix("\r")
        if pending:
            yield pending.removesuffix("\r")

    async def aiter_json(self) -> AsyncIterator[Any]:
        """One JSON value per non-blank line (NDJSON)."""
        async for line in self.aiter_lines():
            if line.strip():
                yield json.loads(line)

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    def unfinished(self) -> bool:
        """True while the service may still be sending (its end marker not read)."""
        return not self.finished

    async def aclose(self) -> None:
        """Stop listening: items that still come are dropped."""
        self._ended = True
        self._waiter.close()

    async def _next_item(self) -> Reply | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
        elif self._ended:
            return None
        else:
            deadline = asyncio.get_running_loop().time() + self._idle_timeout
            try:
                item = await self._waiter.next(deadline)
            except ReplyTimeout as exc:
                if self._call is None:
                    raise
                raise timed_out(
                    exc, *self._call, self._idle_timeout, what="the next streamed item"
                ) from None
        if item.end:
            self._ended = True
            self.finished = True
            check_complete(self._first, item)
            self._waiter.close()
        return item


def check_complete(first: Reply, last: Reply) -> None:
    """Raise ``StreamBroken`` if the end marker says the service failed mid-response.

    A failing service ends a reply it has already started (status below 500) with an
    error id on the end marker; a 5xx with an error id is a whole error response.
    """
    status = first.status or 0
    if last.end and last.error_id is not None and status < 500:
        raise StreamBroken(
            f"the service failed while answering {first.request_id} (error id {last.error_id})"
        )


def charset_of(headers: httpx.Headers) -> str:
    content_type: str = headers.get("content-type", "")
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
            try:
                "".encode(charset)
            except LookupError:
                break
            return charset
    return "utf-8"
