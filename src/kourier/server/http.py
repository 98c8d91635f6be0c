"""Serve the same app over HTTP beside Kafka, for a migration (``kourier run --http``).

uvicorn runs in the service's event loop with its own lifespan turned off: kourier runs
the app's lifespan once, and HTTP requests get the same lifespan state as Kafka ones.
The service owns the signals, so one SIGTERM drains both sides. uvicorn is optional
(``pip install 'kourier[http]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

from kourier.errors import SettingsError
from kourier.server.asgi import ASGIApp, Receive, Scope, Send


class HttpSide:
    def __init__(
        self, app: ASGIApp, port: int, host: str, state: dict[str, Any], root_path: str = ""
    ) -> None:
        try:
            import uvicorn
        except ImportError:
            raise SettingsError(
                "http: serving over HTTP as well needs uvicorn (pip install 'kourier[http]')"
            ) from None

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # leave signals to the service

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                scope["state"] = dict(state)
            await app(scope, receive, send)

        config = uvicorn.Config(
            with_state,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            root_path=root_path,
        )
        self._server = Server(config)
        self._host, self._port = host, port
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Bind here: uvicorn exits the process when it cannot bind; we say why instead.
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise SettingsError(
                f"http: cannot listen on {self._host}:{self._port}: {exc.strerror}"
            ) from None
        sock.set_inheritable(True)
        self._socket = sock
        self._task = asyncio.create_task(self._server.serve([sock]), name="kourier-http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise SettingsError("http: the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        for server in getattr(self._server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._socket.close()
