"""What the hand-written Kafka baselines share, whatever their Kafka client.

* :class:`Tuning` -- the knobs both sides of a session use, as ``serve`` flags;
* the wire contract's headers: :func:`request_headers`, :func:`reply_address`,
  :func:`stream_asks`, :func:`end_marker` for the caller, :class:`Ask` (what a request
  asks for, where its answers go) and :func:`is_end_marker` for the service;
* :class:`Replies` -- the caller's bookkeeping: correlation ids to the call waiting for
  its reply or the stream waiting for its items;
* :class:`EventTally` and :func:`serve` -- the service's one-way count (``END`` at the
  marker) and its life from ``READY`` to shutdown;
* :class:`Baseline` -- a baseline as the suite runs it: ``open_bench`` (a
  :class:`RawBench` on fresh topics), ``open_service`` (to time start-ups) and the
  ``serve`` command of its child process.

Each baseline module keeps only what its client makes different: the service's fetch
and reply loop and the caller's producer and reply reader.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, Self, TypeVar

from bench.common import (
    CALL_TIMEOUT_S,
    ECHO_BODY,
    H_CORRELATION,
    H_EXPECT,
    H_ITEMS,
    H_KIND,
    H_LAST,
    H_REPLY_PARTITION,
    H_REPLY_TO,
    H_STATUS,
    KIND_END,
    KIND_STREAM,
    Bench,
    Committer,
    ServiceProcess,
    Topics,
    announce,
    temporary_topics,
    wait_for_shutdown,
)

#: Seconds the service may wait for its partitions before it gives up.
ASSIGNMENT_LIMIT_S = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class Tuning:
    """The knobs the benchmark varies; both sides of a session use the same.

    A baseline adds its own as fields of a subclass; each field is an integer flag of
    ``serve`` (``linger_ms`` is ``--linger-ms``), left out while it is None.
    """

    linger_ms: int = 0
    fetch_max_wait_ms: int = 5

    def to_args(self) -> list[str]:
        args: list[str] = []
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                args += [_flag(spec.name), str(value)]
        return args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for spec in dataclasses.fields(cls):
            parser.add_argument(_flag(spec.name), type=int, default=spec.default)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        return cls(**{spec.name: getattr(args, spec.name) for spec in dataclasses.fields(cls)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- the wire contract ----------------------------------------------------------------------

#: Record headers as both clients take them (aiokafka: bytes values; librdkafka: any).
Headers = list[tuple[str, str | bytes | None]]
#: Record headers as the clients give them back (librdkafka may give a mapping).
ReadHeaders = Sequence[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None


def header(headers: ReadHeaders, key: str) -> bytes | None:
    """The value of header ``key`` (the first one, as bytes), or None."""
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    for name, value in pairs:
        if name == key:
            return value.encode() if isinstance(value, str) else value
    return None


def request_headers(correlation: bytes, address: Headers, asks: Headers) -> Headers:
    """A request's headers: its correlation id, where to reply, what else it asks for."""
    return [(H_CORRELATION, correlation), *address, *asks]


def reply_address(topics: Topics) -> Headers:
    """Where a caller's answers go: partition 0 of its reply topic."""
    return [(H_REPLY_TO, topics.replies.encode()), (H_REPLY_PARTITION, b"0")]


def stream_asks(n_items: int) -> Headers:
    """What makes a request a streamed one of ``n_items`` items."""
    return [(H_KIND, KIND_STREAM), (H_ITEMS, str(n_items).encode())]


def end_marker(n: int) -> Headers:
    """The headers of the record that closes a burst of ``n`` one-way events."""
    return [(H_KIND, KIND_END), (H_EXPECT, str(n).encode())]


def is_end_marker(headers: ReadHeaders) -> bool:
    return header(headers, H_KIND) == KIND_END


@dataclasses.dataclass(frozen=True, slots=True)
class Ask:
    """What one request record asks for, and where its answers go."""

    reply_to: str
    partition: int
    correlation: bytes
    #: How many items a streamed request asks for; None for a plain call.
    items: int | None

    @classmethod
    def of(cls, headers: ReadHeaders) -> Ask:
        found = dict(headers.items() if isinstance(headers, dict) else headers or ())
        stream = found.get(H_KIND) == KIND_STREAM
        return cls(
            _required(found, H_REPLY_TO).decode(),
            int(_required(found, H_REPLY_PARTITION)),
            _required(found, H_CORRELATION),
            int(_required(found, H_ITEMS)) if stream else None,
        )

    def reply_headers(self, *, last: bool = False, status: int | None = None) -> Headers:
        """The headers of one answer record: the request's correlation id, and whether it
        is the last of a stream or carries the status of an app's response."""
        headers: Headers = [(H_CORRELATION, self.correlation)]
        if status is not None:
            headers.append((H_STATUS, b"%d" % status))
        if last:
            headers.append((H_LAST, b"1"))
        return headers


def _required(headers: dict[str, str | bytes | None], key: str) -> bytes:
    value = headers.get(key)
    if value is None:
        raise ValueError(f"request without a {key} header")
    return value.encode() if isinstance(value, str) else value


# -- caller side ----------------------------------------------------------------------------

#: What a stream's queue carries: (value, is last), or why the stream failed.
StreamItem = tuple[bytes, bool] | BaseException
#: Publishes one request carrying the given correlation id.
SendRequest = Callable[[bytes], Awaitable[object]]


class Replies:
    """The calls and streams a caller waits on, by correlation id.

    The caller's reply reader hands every reply to :meth:`deliver`; a failed request
    goes to :meth:`fail`. Replies nobody waits for any more are dropped.
    """

    def __init__(self) -> None:
        self._calls: dict[bytes, asyncio.Future[bytes]] = {}
        self._streams: dict[bytes, asyncio.Queue[StreamItem]] = {}

    async def call(self, send: SendRequest, timeout_s: float) -> bytes:
        """Send a request with a fresh correlation id and wait for its one reply."""
        correlation = uuid.uuid4().bytes
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[correlation] = reply
        try:
            await send(correlation)
            async with asyncio.timeout(timeout_s):
                return await reply
        finally:
            self._calls.pop(correlation, None)

    async def stream(self, send: SendRequest, timeout_s: float) -> AsyncIterator[bytes]:
        """Send a request and yield its reply records up to the one marked last.

        An empty last record only ends the stream (a service that cannot tell the last
        item in advance sends one); ``timeout_s`` bounds the wait for each record.
        """
        correlation = uuid.uuid4().bytes
        items: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._streams[correlation] = items
        try:
            await send(correlation)
            while True:
                async with asyncio.timeout(timeout_s):
                    item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                value, last = item
                if value or not last:
                    yield value
                if last:
                    return
        finally:
            self._streams.pop(correlation, None)

    def accept(self, headers: ReadHeaders, value: bytes) -> None:
        """Hand a reply record to whoever waits for it (nobody: it is dropped)."""
        correlation = header(headers, H_CORRELATION)
        if correlation is not None:
            self.deliver(correlation, value, header(headers, H_LAST) is not None)

    def deliver(self, correlation: bytes, value: bytes, last: bool) -> None:
        reply = self._calls.pop(correlation, None)
        if reply is not None:
            if not reply.done():
                reply.set_result(value)
            return
        items = self._streams.get(correlation)
        if items is not None:
            items.put_nowait((value, last))

    def fail(self, correlation: bytes, error: BaseException) -> None:
        reply = self._calls.pop(correlation, None)
        if reply is not None and not reply.done():
            reply.set_exception(error)
        items = self._streams.get(correlation)
        if items is not None:
            items.put_nowait(error)


class RawCaller(abc.ABC):
    """The calling side of a raw baseline, as :class:`RawBench` uses it.

    Calls and streams are the same on every client: a request with a fresh correlation
    id, the reply address and what else it asks for, awaited in :class:`Replies` (which
    the client's reply reader feeds); :meth:`_send_request` is the client's part.
    """

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self._address = reply_address(topics)
        self._replies = Replies()

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def call(self, body: bytes, timeout_s: float = CALL_TIMEOUT_S) -> bytes:
        """One request; its one reply's value."""
        send = functools.partial(self._send_request, body, [])
        return await self._replies.call(send, timeout_s)

    def stream(self, n_items: int, timeout_s: float = CALL_TIMEOUT_S) -> AsyncIterator[bytes]:
        """One request for ``n_items`` items; yields them as they come."""
        send = functools.partial(self._send_request, b"", stream_asks(n_items))
        return self._replies.stream(send, timeout_s)

    @abc.abstractmethod
    async def _send_request(self, body: bytes, asks: Headers, correlation: bytes) -> None:
        """Publish one request (headers: :func:`request_headers`); a failed delivery goes
        to ``self._replies.fail``."""

    @abc.abstractmethod
    async def burst(self, n: int, size: int) -> None:
        """Send ``n`` one-way events of ``size`` bytes, then :func:`end_marker`."""

    @abc.abstractmethod
    async def delivered(self) -> None:
        """Return once the bursts so far are acknowledged; raise if any of it failed."""


TuningT = TypeVar("TuningT", bound=Tuning)


class RawBench(Bench):
    """A raw baseline's caller and its service process, as the suite measures them."""

    service: ServiceProcess

    def __init__(self, name: str, caller: RawCaller, service: ServiceProcess) -> None:
        self.name = name
        self._caller = caller
        self.service = service

    async def call(self) -> None:
        reply = await self._caller.call(ECHO_BODY)
        if not reply.startswith(b'{"ok":true'):
            raise RuntimeError(f"unexpected reply {reply[:80]!r}")

    def stream_items(self, n_items: int) -> AsyncIterator[bytes]:
        return self._caller.stream(n_items)

    async def one_way(self, n: int, size: int = 200) -> float:
        started = time.monotonic()
        await self._caller.burst(n, size)
        count, finished = await self.service.expect("END", timeout_s=60.0)
        await self._caller.delivered()
        if int(count) != n:
            raise RuntimeError(f"{self.name}: service saw {count} events, expected {n}")
        return n / (float(finished) - started)


# -- service side ---------------------------------------------------------------------------


class EventTally:
    """One-way events seen since the last end marker; ``END <count> <time>`` at the marker."""

    def __init__(self) -> None:
        self.seen = 0

    def event(self, headers: ReadHeaders) -> None:
        if is_end_marker(headers):
            announce("END", self.seen, repr(time.monotonic()))
            self.seen = 0
        else:
            self.seen += 1


async def serve(
    handle: Callable[[], Coroutine[Any, Any, None]], committer: Committer, assigned: asyncio.Event
) -> None:
    """Run the service's loop and its committer: ``READY`` once assigned, until shutdown.

    At shutdown the loop stops taking records and what it handled is committed.
    """
    async with asyncio.TaskGroup() as tasks:
        handling = tasks.create_task(handle())
        committing = tasks.create_task(committer.run())
        async with asyncio.timeout(ASSIGNMENT_LIMIT_S):
            await assigned.wait()
        announce("READY")
        await wait_for_shutdown()
        handling.cancel()
        await committer.drain()
        committing.cancel()


@dataclasses.dataclass(frozen=True, slots=True)
class Serving:
    """Where a service serves: the broker, its request and event topics, its group."""

    bootstrap: str
    requests: str
    events: str
    group: str

    @property
    def topics(self) -> list[str]:
        return [self.requests, self.events]


class Service(Protocol):
    async def run(self) -> None: ...


def serve_main(
    module: str,
    tuning: type[TuningT],
    make_service: Callable[[Serving, TuningT], Service],
    argv: Sequence[str] | None = None,
) -> None:
    """``python -m <module> serve ...``: the service side, run as a child process."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="run the service (used as a child process)")
    serving.add_argument("--bootstrap", required=True)
    serving.add_argument("--requests", required=True, help="request topic")
    serving.add_argument("--events", required=True, help="one-way event topic")
    serving.add_argument("--group", required=True, help="consumer group id")
    tuning.add_arguments(serving)
    args = parser.parse_args(argv)
    where = Serving(args.bootstrap, args.requests, args.events, args.group)

    async def run() -> None:  # the clients are made inside the event loop
        await make_service(where, tuning.from_args(args)).run()

    asyncio.run(run())


# -- the session ----------------------------------------------------------------------------


def service_process(module: str, bootstrap: str, topics: Topics, tuning: Tuning) -> ServiceProcess:
    """The service of ``module`` on ``topics`` as a child process, not started yet."""
    return ServiceProcess.serving(
        module,
        *("--bootstrap", bootstrap, "--requests", topics.requests),
        *("--events", topics.events, "--group", f"bench.{topics.run_id}.service"),
        *tuning.to_args(),
    )


@contextlib.asynccontextmanager
async def service_maker(
    module: str, bootstrap: str, partitions: int, tuning: Tuning
) -> AsyncIterator[Callable[[], ServiceProcess]]:
    """Unique topics and a maker of service processes on them (to time start-up)."""
    async with temporary_topics(bootstrap, partitions) as topics:
        yield lambda: service_process(module, bootstrap, topics, tuning)


@contextlib.asynccontextmanager
async def bench_session(
    name: str,
    module: str,
    bootstrap: str,
    partitions: int,
    tuning: TuningT,
    make_caller: Callable[[str, Topics, TuningT], RawCaller],
) -> AsyncIterator[RawBench]:
    """Unique topics, the service of ``module`` in a child process and a started caller."""
    async with temporary_topics(bootstrap, partitions) as topics:
        service = service_process(module, bootstrap, topics, tuning)
        caller = make_caller(bootstrap, topics, tuning)
        try:
            await asyncio.gather(service.start(), caller.start())
            yield RawBench(name, caller, service)
        finally:
            await caller.stop()
            await service.stop()


@dataclasses.dataclass(frozen=True)
class Baseline(Generic[TuningT]):
    """A raw baseline as the suite runs it; its module exposes ``open_bench`` and
    ``open_service`` (the target API, see bench/README.md) and runs :meth:`main`."""

    name: str
    #: The module whose ``python -m <module> serve ...`` runs the service.
    module: str
    tuning: type[TuningT]
    caller: Callable[[str, Topics, TuningT], RawCaller]
    service: Callable[[Serving, TuningT], Service]

    def open_bench(
        self, bootstrap: str, *, partitions: int = 1, **tuning: Any
    ) -> contextlib.AbstractAsyncContextManager[RawBench]:
        """Unique topics, the service in a child process and a started caller.

        ``tuning``: fields of the baseline's :class:`Tuning`.
        """
        settings = self.tuning(**tuning)
        return bench_session(self.name, self.module, bootstrap, partitions, settings, self.caller)

    def open_service(
        self, bootstrap: str, *, partitions: int = 1, **tuning: Any
    ) -> contextlib.AbstractAsyncContextManager[Callable[[], ServiceProcess]]:
        """Unique topics and a maker of service processes on them (to time start-up)."""
        return service_maker(self.module, bootstrap, partitions, self.tuning(**tuning))

    def main(self, argv: Sequence[str] | None = None) -> None:
        serve_main(self.module, self.tuning, self.service, argv)
