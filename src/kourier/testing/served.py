"""An ASGI app served over a broker inside a test, with a ready native and httpx client.

``async with serve_app(app, "orders") as orders:`` starts a ``Service`` for the app (its
lifespan included) and a ``Client``; ``orders.client`` and ``orders.http`` call it, and
``orders.handled``/``orders.dead_letters`` say afterwards what the service did. With
``raise_app_exceptions`` (the default, as in Starlette's ``TestClient``) an exception the
app raised comes out of the call that caused it instead of a 500. It must never change
what the service does: it observes through hooks and one thin ASGI wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import httpx

from kourier.client import Client, KourierTransport
from kourier.client.responses import ReplyStream, Response
from kourier.protocol import Request
from kourier.server.asgi import ASGIApp, Receive, Scope, Send
from kourier.server.hooks import DeadLetterEvent, ErrorEvent, Hook, Hooks, ReplyEvent
from kourier.server.serve import Service
from kourier.settings import Settings
from kourier.testing.broker import memory_broker


class ServedApp:
    """A running service and the clients that call it, for one test."""

    def __init__(self, service: Service, client: Client, http: httpx.AsyncClient) -> None:
        #: The running ``kourier.Service``.
        self.service = service
        #: A started ``kourier.Client`` on the same broker.
        self.client = client
        #: An ``httpx.AsyncClient`` whose base URL is ``http://<service>``.
        self.http = http
        #: Every request the service finished handling (``ReplyEvent``: request, status,
        #: route, duration...), in the order they finished; one-way ones included.
        self.handled: list[ReplyEvent] = []
        #: Every exception the app raised (``ErrorEvent``: request, error, error id).
        self.errors: list[ErrorEvent] = []
        #: Every record the service dead-lettered (``DeadLetterEvent``: record, reason).
        self.dead_letters: list[DeadLetterEvent] = []

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def settings(self) -> Settings:
        return self.service.settings

    @property
    def messages(self) -> list[Request]:
        """The one-way messages the service has handled, in the order they finished."""
        return [event.request for event in self.handled if event.request.one_way]

    async def wait_until(self, check: Callable[[], object], timeout: float = 5.0) -> None:
        """Return once ``check()`` is true; ``TimeoutError`` if it is not within ``timeout``.

        One-way work finishes after ``send`` returns:
        ``await orders.wait_until(lambda: orders.messages)``.
        """
        async with asyncio.timeout(timeout):
            # Polled: ``check`` may look at any state (the app's own, a database...).
            while not check():  # noqa: ASYNC110
                await asyncio.sleep(0.005)


class _AppErrors:
    """Keeps what the app raised, by request id, until a call claims it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pending: dict[str, BaseException] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            # Kept before kourier turns it into a 500 reply: the reply cannot reach the
            # caller before the exception is here to be claimed.
            request_id = scope.get("extensions", {}).get("kourier", {}).get("request_id")
            if request_id is not None:
                self.pending[request_id] = exc
            raise

    def claim(self, request_id: str | None) -> None:
        if request_id is not None and request_id in self.pending:
            raise self.pending.pop(request_id)

    def on_response(self, response: Response | ReplyStream) -> None:
        self.claim(response.request_id)

    async def on_http_response(self, response: httpx.Response) -> None:
        self.claim(response.extensions.get("kourier", {}).get("request_id"))

    def raise_unclaimed(self) -> None:
        """Raise what the app raised in calls nobody waited for (one-way messages)."""
        if self.pending:
            first = next(iter(self.pending.values()))
            self.pending.clear()
            raise first


@contextlib.asynccontextmanager
async def serve_app(
    app: ASGIApp,
    service: str,
    settings: Settings | None = None,
    *,
    raise_app_exceptions: bool = True,
    hooks: Mapping[str, Hook | Sequence[Hook]] | None = None,
    client_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[ServedApp]:
    """Serve ``app`` as ``service`` for the ``async with`` block; yields a ``ServedApp``.

    ``settings`` default to ``Settings.from_env()``; when the environment names no broker
    (``KOURIER_BOOTSTRAP_SERVERS`` unset) the app gets a fresh in-memory broker of its
    own. With ``raise_app_exceptions`` an exception the app raises is raised again by
    the ``client``/``http`` call that caused it; one that no call can take (a one-way
    message's, or one raised after a streamed response began, which the caller sees as
    ``StreamBroken``) is raised when the block ends. ``hooks`` are more service hooks;
    ``client_options`` go to the ``Client`` (``retry``, ``hooks``...).
    """
    async with contextlib.AsyncExitStack() as stack:
        if settings is None:
            settings = Settings.from_env()
            if "KOURIER_BOOTSTRAP_SERVERS" not in os.environ:
                settings = stack.enter_context(memory_broker()).settings
        errors = _AppErrors(app)
        service_hooks = Hooks(hooks)
        served_app: ASGIApp = errors if raise_app_exceptions else app
        instance = Service(served_app, service, settings, hooks=service_hooks)
        options = dict(client_options or {})
        client_hooks = {name: list(fns) for name, fns in options.pop("hooks", {}).items()}
        if raise_app_exceptions:
            client_hooks.setdefault("response", []).insert(0, errors.on_response)
        client = Client(settings, hooks=client_hooks, **options)
        event_hooks = {"response": [errors.on_http_response]} if raise_app_exceptions else {}
        http = httpx.AsyncClient(
            transport=KourierTransport(client),
            base_url=f"http://{service}",
            event_hooks=event_hooks,
        )
        served = ServedApp(instance, client, http)
        service_hooks.add("reply", served.handled.append)
        service_hooks.add("error", served.errors.append)
        service_hooks.add("dead_letter", served.dead_letters.append)
        await stack.enter_async_context(instance)
        await stack.enter_async_context(client)
        await stack.enter_async_context(http)
        yield served
    if raise_app_exceptions:
        errors.raise_unclaimed()
