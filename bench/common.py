"""Shared pieces of the benchmark suite.

A benchmark target (a hand-written baseline now, kourier later) is a :class:`Bench`: it
knows how to make one two-way call, one streamed call and a burst of one-way messages,
and inherits the scenario loops (:meth:`Bench.sequential`, :meth:`Bench.concurrent`,
:meth:`Bench.stream`) from here so every target is measured by the same code.

Each target module exposes ``open_bench(bootstrap: str, ...)``, an async context manager
that creates its topics, starts its service side in a separate process, yields a ready
:class:`Bench` and tears everything down again.

The rest is plumbing the Kafka baselines share: their wire contract, a hand-written ASGI
call (``http_scope``, ``call_asgi``), percentiles, unique throw-away topics, the service
subprocess and its line protocol on stdout, and an off-path offset committer.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import ctypes
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent

# -- the wire contract shared by the raw Kafka baselines ------------------------------------

#: Request body of every two-way call (the same JSON is POSTed to ``/echo`` over HTTP).
ECHO_BODY = b'{"msg":"hello","n":42}'

H_CORRELATION = "correlation-id"
H_REPLY_TO = "reply-to"
H_REPLY_PARTITION = "reply-partition"
H_KIND = "kind"  # absent for a plain call; b"stream" or b"end" (end of a one-way burst)
H_ITEMS = "items"  # number of reply records a b"stream" request asks for
H_LAST = "last"  # set on the final reply record of a stream
H_EXPECT = "expect"  # on the end marker of a one-way burst: how many events it closes
H_STATUS = "status"  # HTTP status of an answer from an app (the first record of a stream)

KIND_STREAM = b"stream"
KIND_END = b"end"

#: Default per-call timeout of the baselines, in seconds.
CALL_TIMEOUT_S = 10.0


def echo_reply(body: bytes) -> bytes:
    """What the echo service answers: the same JSON as ``POST /echo`` in bench.app."""
    return json.dumps({"ok": True, "echo": json.loads(body)}, separators=(",", ":")).encode()


def stream_item(i: int) -> bytes:
    """The i-th item of a streamed reply (one NDJSON line over HTTP, one record over Kafka)."""
    return json.dumps({"i": i, "item": f"item-{i}"}, separators=(",", ":")).encode()


# -- calling an ASGI app by hand -----------------------------------------------------------

#: An ASGI application (bench.app's FastAPI app), called as ``await app(scope, receive, send)``.
AsgiApp = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]
#: Gets each ``http.response.body`` as (status, body, more_body).
BodySink = Callable[[int, bytes, bool], Awaitable[None]]

JSON_CONTENT = ((b"content-type", b"application/json"),)


def http_scope(
    method: str,
    path: str,
    query: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> dict[str, Any]:
    """The ASGI ``http`` scope of one request (a fresh dict: frameworks write into it)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"bench"), *headers],
        "server": ("bench", 80),
        "client": None,
    }


async def call_asgi(app: AsgiApp, scope: dict[str, Any], body: bytes, on_body: BodySink) -> int:
    """One request through ``app``; its status.

    ``receive()`` gives ``body`` in one message and then waits (no disconnect while the
    app runs); each ``http.response.body`` the app sends goes to ``on_body`` as it comes.
    """
    status = 0
    pending = True

    async def receive() -> dict[str, Any]:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
        elif kind == "http.response.body":
            await on_body(status, message.get("body", b""), message.get("more_body", False))

    await app(scope, receive, send)
    return status


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, like numpy's default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """One streamed call: time to the first item and to the last one, in seconds."""

    items: int
    first_item_s: float
    total_s: float


@dataclass(frozen=True, slots=True)
class Throughput:
    """Result of a closed-loop run: completed calls, the measured window and each latency."""

    count: int
    elapsed_s: float
    latencies: list[float]
    #: Every call completed, warm-up and the window's tail included (to share out CPU time).
    completed: int = 0

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(slots=True)
class Scenario:
    """One measured run of one scenario against one target, ready to tabulate."""

    target: str
    scenario: str
    count: int = 0
    elapsed_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    rate: float = math.nan  # calls or messages per second, where the scenario has one

    def p(self, q: float) -> float:
        """Latency percentile in seconds."""
        return percentile(self.latencies, q)


# -- the benchmark target -------------------------------------------------------------------


class Bench(abc.ABC):
    """A target ready to be measured; subclasses supply the three primitives."""

    name: str
    #: The service's child process (its pid gives its resident memory), once started.
    service: ServiceProcess | None = None

    @abc.abstractmethod
    async def call(self) -> None:
        """One two-way call carrying ECHO_BODY; returns once the reply is parsed."""

    @abc.abstractmethod
    def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        """One call answered by ``n_items`` separate items, yielded as they arrive."""

    @abc.abstractmethod
    async def one_way(self, n: int, size: int = 200) -> float:
        """Send ``n`` messages of ``size`` bytes; messages/s until the service got them all."""

    async def sleep_call(self, ms: int) -> None:
        """One call the app answers after sleeping ``ms`` (``GET /sleep``); HTTP-shaped only."""
        raise NotImplementedError(f"{self.name}: no slow call (it does not serve bench.app)")

    async def sequential(self, n: int = 2000, warmup: int = 200) -> list[float]:
        """``n`` calls one after another (after ``warmup`` unmeasured ones); latencies in s."""
        for _ in range(warmup):
            await self.call()
        latencies: list[float] = []
        for _ in range(n):
            started = time.perf_counter()
            await self.call()
            latencies.append(time.perf_counter() - started)
        return latencies

    async def concurrent(
        self, inflight: int = 64, seconds: float = 10.0, warmup_s: float = 1.0
    ) -> Throughput:
        """Keep ``inflight`` calls outstanding; measure ``seconds`` after ``warmup_s`` of load.

        Only calls started inside the window count; the window closes when the last of them
        completes, so ``Throughput.rate`` is completed calls per second of measured time.
        """
        loop = asyncio.get_running_loop()
        window_start = loop.time() + warmup_s
        deadline = window_start + seconds
        latencies: list[float] = []
        last_done = window_start
        completed = 0

        async def worker() -> None:
            nonlocal last_done, completed
            while (started := loop.time()) < deadline:
                await self.call()
                completed += 1
                if started >= window_start:
                    done = loop.time()
                    latencies.append(done - started)
                    last_done = max(last_done, done)

        async with asyncio.TaskGroup() as tasks:
            for _ in range(inflight):
                tasks.create_task(worker())
        return Throughput(len(latencies), last_done - window_start, latencies, completed)

    async def stream(self, n_items: int) -> StreamTiming:
        """One streamed call of ``n_items`` items, timed to the first and the last item."""
        started = time.perf_counter()
        first = math.nan
        count = 0
        async for _ in self.stream_items(n_items):
            if count == 0:
                first = time.perf_counter() - started
            count += 1
        if count != n_items:
            raise RuntimeError(f"{self.name}: stream gave {count} items, expected {n_items}")
        return StreamTiming(count, first, time.perf_counter() - started)


# -- throw-away topics ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics one benchmark session uses, unique per run: ``bench.<id>.<role>``."""

    run_id: str
    requests: str
    replies: str
    events: str

    @classmethod
    def unique(cls, prefix: str = "bench") -> Topics:
        run_id = uuid.uuid4().hex[:8]
        base = f"{prefix}.{run_id}"
        return cls(run_id, f"{base}.requests", f"{base}.replies", f"{base}.events")

    @property
    def names(self) -> list[str]:
        return [self.requests, self.replies, self.events]


async def create_topics(
    bootstrap: str, names: Iterable[str], partitions: int = 1, timeout_s: float = 15.0
) -> None:
    """Create topics (the broker does not auto-create) and wait until all have leaders."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.errors import for_code  # type: ignore[import-untyped]

    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1) for name in names], timeout_ms=int(timeout_s * 1000)
        )
        for topic, code, *_ in response.topic_errors:
            if code:
                raise for_code(code)(f"create topic {topic}")
        async with asyncio.timeout(timeout_s):
            while True:
                described = await admin.describe_topics(names)
                if len(described) == len(names) and all(
                    t["error_code"] == 0
                    and t["partitions"]
                    and all(p["leader"] >= 0 for p in t["partitions"])
                    for t in described
                ):
                    return
                await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        await admin.delete_topics(list(names))
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def temporary_topics(bootstrap: str, partitions: int = 1) -> AsyncIterator[Topics]:
    """Unique request/reply/event topics for one session, deleted afterwards."""
    topics = Topics.unique()
    await create_topics(bootstrap, topics.names, partitions)
    try:
        yield topics
    finally:
        with contextlib.suppress(Exception):
            await delete_topics(bootstrap, topics.names)


# -- the service side in its own process ----------------------------------------------------

#: How many of a child's last stderr lines are kept, to explain a failure.
STDERR_TAIL = 40


class ServiceProcess:
    """A service running in a child process, from launch to ready to stopped.

    :meth:`serving` runs ``python -m <module> serve <args>``, a bench service that talks
    back with whitespace-separated lines on stdout (``READY ...``, ``END <count>
    <monotonic time>``) and exits when its stdin closes, so a dying parent never leaves
    it running. Any other command (``kourier run``) is ready once a line containing
    ``ready_log`` appears on its stderr; on Linux it gets SIGTERM when this process dies.

    ``launched_at`` and ``ready_at`` are ``time.monotonic()`` just before the launch and
    when readiness was read. With ``ready_url`` (a readiness probe), ``start`` then polls
    it every 10 ms until it answers 200 and notes when in ``url_ready_at``. The child's
    stderr is kept (the last lines) and shown when it fails.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_log: str | None = None,
        ready_url: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self._env = dict(os.environ if env is None else env)
        self._ready_log = ready_log
        self._ready_url = ready_url
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_reader: asyncio.Task[None] | None = None
        self._logged_ready: asyncio.Future[float] | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self.launched_at = math.nan
        self.ready_at = math.nan
        #: When ``ready_url`` first answered 200 (polled from ``ready_at`` on).
        self.url_ready_at = math.nan

    @classmethod
    def serving(cls, module: str, *args: str) -> ServiceProcess:
        """``python -m <module> serve <args>``, ready at its ``READY`` line."""
        return cls([sys.executable, "-m", module, "serve", *args])

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the service process is not running")
        return self._proc.pid

    @property
    def startup_s(self) -> float:
        """Seconds from launch to ready."""
        return self.ready_at - self.launched_at

    async def start(self, timeout_s: float = 60.0) -> list[str]:
        """Launch the child and wait until it is ready; the ``READY`` line's other fields."""
        env = dict(self._env)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        loop = asyncio.get_running_loop()
        self._logged_ready = loop.create_future()
        self.launched_at = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
            preexec_fn=None if self._ready_log is None else _die_with_parent,
        )
        self._stderr_reader = asyncio.create_task(self._read_stderr(self._proc))
        try:
            if self._ready_log is None:
                fields = await self.expect("READY", timeout_s)
                self.ready_at = time.monotonic()
                return fields
            exited = asyncio.create_task(self._proc.wait())
            either: list[asyncio.Future[Any]] = [self._logged_ready, exited]
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                exited.cancel()
            if not self._logged_ready.done():
                raise RuntimeError(self._failure(f"exited with {self._proc.returncode}"))
            self.ready_at = self._logged_ready.result()
            if self._ready_url is not None:
                async with asyncio.timeout(timeout_s):
                    self.url_ready_at = await _first_ok(self._ready_url)
            return []
        except BaseException:
            await self.stop()
            raise

    async def expect(self, word: str, timeout_s: float) -> list[str]:
        """Wait for the next stdout line starting with ``word``; returns its other fields."""
        assert self._proc is not None and self._proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self._proc.stdout.readline()
                if not line:
                    code = await self._proc.wait()
                    raise RuntimeError(self._failure(f"exited with {code} before {word}"))
                fields = line.decode().split()
                if fields and fields[0] == word:
                    return fields[1:]

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the child to stop, wait ``timeout_s`` at most, then kill it.

        A bench service is asked by closing its stdin: a signal could come before it has
        installed its handler and kill it on the spot, before it left its consumer group
        (the next member of that group would then wait for the session timeout). Any
        other command gets SIGTERM.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            if self._ready_log is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                async with asyncio.timeout(timeout_s):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader, self._stderr_reader = self._stderr_reader, None
        if reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(2.0):
                    await reader
            reader.cancel()

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            ready = self._logged_ready
            if self._ready_log and self._ready_log in text and ready and not ready.done():
                ready.set_result(time.monotonic())

    def _failure(self, what: str) -> str:
        tail = "\n".join(f"    {line}" for line in self.stderr_tail)
        return f"{shlex.join(self.argv[:5])} ... {what}; its stderr ends with:\n{tail}"


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
# Looked up in the parent: the child between fork and exec should do as little as it can.
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


async def _first_ok(url: str, interval_s: float = 0.01) -> float:
    """Poll ``url`` until it answers 200; the ``time.monotonic()`` of that answer."""
    while True:
        if await http_status(url) == 200:
            return time.monotonic()
        await asyncio.sleep(interval_s)


async def http_status(url: str) -> int:
    """The status of ``GET url`` (plain HTTP/1.0); 0 if nothing answers."""
    parsed = urllib.parse.urlsplit(url)
    try:
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port or 80)
    except OSError:
        return 0
    try:
        writer.write(f"GET {parsed.path or '/'} HTTP/1.0\r\nHost: {parsed.netloc}\r\n\r\n".encode())
        status_line = await reader.readline()
    except OSError:
        return 0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (VmRSS in /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def announce(*fields: object) -> None:
    """Service side: one line of the stdout protocol read by :class:`ServiceProcess`."""
    print(*fields, flush=True)


class EventCount:
    """Service side, for the apps kourier serves: events handled since the last end
    marker, and how many that marker expects; prints ``END <n> <monotonic time>`` once
    the handled events reach what the marker said."""

    def __init__(self) -> None:
        self.seen = 0
        self.expected: int | None = None

    def event(self) -> None:
        self.seen += 1
        self._check()

    def end(self, expect: int) -> None:
        self.expected = expect
        self._check()

    def _check(self) -> None:
        if self.expected is not None and self.seen >= self.expected:
            announce("END", self.expected, repr(time.monotonic()))
            self.seen -= self.expected
            self.expected = None


async def wait_for_shutdown() -> None:
    """Service side: return once stdin is closed or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def read_stdin() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.buffer.read()
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read_stdin, name="stdin-watch", daemon=True).start()
    await stop.wait()


# -- offset commits off the fetch path ------------------------------------------------------

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to consume


class Committer:
    """Commits consumed offsets once the replies they caused are acknowledged.

    The fetch loop hands over each batch's delivery futures and offsets and goes straight
    back to fetching; this task waits for the acks (at-least-once) and commits, coalescing
    whatever piled up meanwhile into a single commit.
    """

    def __init__(self, commit: Callable[[Offsets], Awaitable[None]]) -> None:
        self._commit = commit
        self._queue: asyncio.Queue[tuple[list[asyncio.Future[Any]], Offsets]] = asyncio.Queue()

    def submit(self, acks: list[asyncio.Future[Any]], offsets: Offsets) -> None:
        self._queue.put_nowait((acks, offsets))

    async def run(self) -> None:
        while True:
            acks, pending = await self._queue.get()
            taken = 1
            await asyncio.gather(*acks)
            while not self._queue.empty():
                more_acks, offsets = self._queue.get_nowait()
                taken += 1
                await asyncio.gather(*more_acks)
                pending.update(offsets)
            await self._commit(pending)
            for _ in range(taken):
                self._queue.task_done()

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait (bounded) until everything submitted so far has been committed."""
        async with asyncio.timeout(timeout_s):
            await self._queue.join()


_T = TypeVar("_T")


# -- the runners' rounds ------------------------------------------------------------


@dataclass(slots=True)
class Round:
    """One repetition of one target: the values it measured and what failed."""

    rep: int
    target: str
    values: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def describe(error: BaseException) -> str:
    """One line for a failure in a report (each member of an exception group)."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(describe(e) for e in error.exceptions)
    if isinstance(error, TimeoutError) and not str(error):
        return "TimeoutError: over the bound"
    return f"{type(error).__name__}: {error}"


async def bounded_scenario(
    name: str,
    round_: Round,
    run: Callable[[], Awaitable[_T]],
    *,
    limit_s: float,
    log: Callable[[str], None],
) -> _T | None:
    """Run one scenario under ``limit_s``; a failure is recorded in ``round_``, not fatal."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit_s):
            result = await run()
    except Exception as error:  # recorded in the report, the run goes on
        round_.errors.append(f"{name}: {describe(error)}")
        log(f"  {round_.target} {name} FAILED after {time.monotonic() - started:.1f}s: {error!r}")
        return None
    log(f"  {round_.target} {name} done in {time.monotonic() - started:.1f}s")
    return result
