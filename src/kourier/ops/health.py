"""Kubernetes probes and the Prometheus endpoint of one service, on a port of their own.

``GET /livez``, ``GET /readyz`` and ``GET /metrics`` are answered by a thread, not by the
service's event loop: liveness must fail exactly when a handler blocks that loop, so
the loop cannot be the one to answer. The loop feeds the thread plain values (a
heartbeat every 0.5 s; every ``sample_interval`` the broker ping and the consumer's
lag); the thread only reads attributes and never awaits or calls into the loop.

- ready: the broker answers a ping, the consumer has joined its group (an empty
  assignment counts: more instances than partitions is healthy), the app's lifespan
  startup has finished, the service is not draining, and the loop is not blocked;
- live: no task the service depends on has died (the fetch and commit loops, this
  server's own heartbeat and ping tasks: a dead one turns both probes red at once),
  the loop's heartbeat is younger than ``stall_timeout``, and the consume loop
  has made progress within ``stall_timeout`` unless no work is waiting (nothing
  fetched-but-waiting at the concurrency bound, no lag). Set ``stall_timeout`` above
  your slowest handler and above a rebalance (``drain_timeout`` plus a margin).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from kourier._aio import cancel_and_wait, within
from kourier.ops.metrics import (
    INSTALL_HINT,
    LagSampler,
    ServiceMetrics,
    add_process_metrics,
    prometheus_available,
)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from kourier.server.consumer import RequestConsumer
    from kourier.server.queue import QueueConsumer
    from kourier.server.serve import Service

logger = logging.getLogger("kourier.ops")


class HealthServer:
    """Serves ``/livez``, ``/readyz`` and ``/metrics`` for ``service`` from a thread.

    ``registry`` is what ``/metrics`` exposes; by default the server installs a
    ``ServiceMetrics`` on the service (as ``self.metrics``) and exposes its registry,
    with the process's own metrics (memory, CPU, GC).
    Without prometheus-client, ``/metrics`` answers 501. Every ``sample_interval``
    seconds the loop pings the broker and reads the consumer lag (``self.lag``). Port 0
    picks a free port; ``port`` holds the real one after ``start``.
    """

    LIVEZ = "/livez"
    READYZ = "/readyz"
    METRICS = "/metrics"
    PATHS = (LIVEZ, READYZ, METRICS)

    def __init__(
        self,
        service: Service,
        port: int,
        host: str = "0.0.0.0",
        *,
        stall_timeout: float = 30.0,
        registry: CollectorRegistry | None = None,
        sample_interval: float = 5.0,
        ping_timeout: float = 2.0,
    ) -> None:
        if stall_timeout <= 0:
            raise ValueError(f"stall_timeout must be > 0, got {stall_timeout!r}")
        self.service = service
        self.host = host
        self.port = port
        self.stall_timeout = stall_timeout
        self.sample_interval = sample_interval
        self.ping_timeout = ping_timeout
        self.lag = LagSampler(service, sample_interval)
        self.metrics: ServiceMetrics | None = None
        if registry is None and prometheus_available():
            self.metrics = ServiceMetrics()
            self.metrics.install(service, lag=self.lag)
            registry = self.metrics.registry
            add_process_metrics(registry)
        self.registry = registry
        # Written by the loop, read by the HTTP thread: single attribute stores only.
        self._beat: float | None = None
        self._beat_interval = min(0.5, stall_timeout / 4)
        self._broker_ok: bool | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: The error one of this server's own tasks died of, if one did.
        self.failure: BaseException | None = None

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, answer from a thread, and start feeding it from this event loop."""
        if self._server is not None:
            raise RuntimeError("the health server is already started")
        server = _Server(self.host, self.port, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"kourier-health:{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="kourier-health-heartbeat"),
            asyncio.create_task(self._ping_loop(), name="kourier-health-ping"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_ended)
        self.lag.start()
        logger.info("health and metrics on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop answering, close the socket, join the threads."""
        await self.lag.stop()
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            await asyncio.to_thread(_close, server, thread)
        self._beat = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._server is None:
            return
        self.failure = task.exception() or RuntimeError(f"{task.get_name()} returned")
        logger.critical(
            "the %s task died: probes answer 503", task.get_name(), exc_info=self.failure
        )

    # -- fed by the loop ---------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(self._beat_interval)

    async def _ping_loop(self) -> None:
        while True:
            self._broker_ok = await self._ping()
            # After a failure look again soon, so readiness follows the broker within a
            # second; while the service starts (its transport not up yet), look again
            # the moment it is up, so start-up does not wait out a ping interval.
            delay = self.sample_interval if self._broker_ok else 0.5
            if self.service.ready.is_set():
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await within(self.service.ready.wait(), delay)

    async def _ping(self) -> bool:
        try:
            # The outer bound guards against a transport that ignores its own timeout.
            ping = self.service.transport.ping(self.ping_timeout)
            return bool(await within(ping, self.ping_timeout + 1.0))
        except Exception:
            logger.debug("broker ping failed", exc_info=True)
            return False

    # -- read by the thread ------------------------------------------------------------

    def liveness(self) -> str | None:
        """None if live, else why not (one line)."""
        failure = self.service.failure or self.failure
        if failure is not None:
            return f"a task it depends on died: {failure!r}"[:500]
        now = time.monotonic()
        beat = self._beat
        if beat is not None and now - beat > self.stall_timeout:
            return f"event loop blocked: no heartbeat for {now - beat:.1f}s"
        service = self.service
        consumer = service.consumer
        if consumer is None or service.draining:
            return None  # not consuming yet, or draining under its own drain_timeout
        idle = now - consumer.last_progress
        if idle <= self.stall_timeout:
            return None
        in_flight = consumer.in_flight
        if in_flight >= service.settings.concurrency:
            return f"consume loop stalled for {idle:.1f}s with {in_flight} requests held"
        lag = self.lag.total
        if lag:
            return f"consume loop stalled for {idle:.1f}s with {lag} records waiting"
        return None

    def readiness(self) -> str | None:
        """None if ready, else why not (one line)."""
        service = self.service
        if service.draining:
            return "draining: the service is stopping"
        if not service.ready.is_set():
            return "starting: lifespan startup or topic setup has not finished"
        stalled = self.liveness()
        if stalled is not None:
            return stalled
        if self._broker_ok is None:
            return "broker not checked yet"
        if not self._broker_ok:
            return "broker unreachable: ping failed"
        consumer = service.consumer
        if consumer is None or not consumer_joined(consumer):
            return "consumer has not joined its group yet"
        return None


def consumer_joined(consumer: RequestConsumer | QueueConsumer) -> bool:
    """True once the group gave the consumer an assignment, possibly an empty one."""
    return consumer.joined


class _Server(ThreadingHTTPServer):
    # Join request threads on close: nothing outlives ``stop``.
    daemon_threads = False
    block_on_close = True

    def __init__(self, host: str, port: int, health: HealthServer) -> None:
        self.health = health
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN: a DNS call on the loop's thread.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.health.host
        self.server_port = self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5.0  # a slow or silent client must not hold a thread for long

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        health = self.server.health
        try:
            if path == HealthServer.LIVEZ:
                self._probe(health.liveness(), "not live")
            elif path == HealthServer.READYZ:
                self._probe(health.readiness(), "not ready")
            elif path == HealthServer.METRICS:
                self._metrics(health)
            else:
                self._answer(404, b"not found: try /livez, /readyz or /metrics\n")
        except Exception as exc:
            logger.exception("health endpoint %s failed", path)
            self._answer(500, f"probe failed: {type(exc).__name__}\n".encode())

    def _probe(self, reason: str | None, what: str) -> None:
        if reason is None:
            self._answer(200, b"ok\n")
        else:
            self._answer(503, f"{what}: {reason}\n".encode())

    def _metrics(self, health: HealthServer) -> None:
        if health.registry is None:
            self._answer(501, f"{INSTALL_HINT}\n".encode())
            return
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        self._answer(200, encoder(health.registry), content_type)

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("health %s %s", self.address_string(), format % args)


def _close(server: _Server, thread: threading.Thread | None) -> None:
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join()
