"""The "fast as the raw client" suite: kourier against hand-written baselines, seven scenarios.

    python -m bench.run --bootstrap 127.0.0.1:9092 [--quick] [--save]

Per repetition, every target gets a fresh session (unique topics, its service in a
process of its own, the caller in this one) and runs, in order:

1. sequential two-way: 2,000 calls one after another after 200 warm-up calls (p50, p99);
2. concurrent two-way: 64 calls in flight for 10 s after 1 s of load (req/s, p99);
3. one-way: 100,000 messages of 200 B sent by this process and handled by the service,
   end to end until the service handled the last (msgs/s);
4. streamed reply: one call answered by 10,000 items (items/s at the caller);
5. memory: the service's resident memory (VmRSS) 1 s after it became ready, before any
   load; then, in a session of its own whose service takes 1,000 requests at once, the
   growth while 1,000 slow requests (``GET /sleep``) are in flight;
6. start-up (after the repetitions): launch to ready, 5 launches per service, on topics
   that exist; kourier also to its ``/readyz`` answering 200;
7. sending (each repetition, when kourier is a target): the caller's one-way sending
   rate, ``enqueue`` + ``flush`` against a raw aiokafka producer and FastStream's
   publisher (``bench/sending.py``), no service.

The order of the targets rotates between repetitions so background load hits all alike;
the report has the median of the repetitions. Every scenario is bounded (90 s), and the
whole run too (``--budget``, 25 min). ``--quick`` is the same suite with tiny counts.
``bench/report.py`` turns the rounds into the markdown report and marks the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib
import math
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from bench import app_cost, sending
from bench.common import (
    REPO_ROOT,
    Bench,
    Round,
    ServiceProcess,
    StreamTiming,
    bounded_scenario,
    cpu_seconds,
    describe,
    percentile,
    rss_bytes,
)

T = TypeVar("T")

SCENARIO_LIMIT_S = 90.0
SESSION_SETUP_LIMIT_S = 60.0
#: A session is not started with less than this left of the whole run's budget.
ROUND_MIN_S = 30.0
MB = 1e6
#: Items of the untimed stream before the timed one.
STREAM_WARMUP_ITEMS = 10


@dataclass(frozen=True, slots=True)
class Target:
    """A module exposing ``open_bench`` and ``open_service``, and what it can be asked."""

    module: str
    #: Keyword arguments for the module's ``open_bench`` and ``open_service``.
    options: dict[str, Any] = field(default_factory=dict)
    #: "kourier", "kourier_bare" (kourier serving bench.bare_app), "raw" (a hand-written
    #: Kafka baseline), "raw_app" (one whose service calls bench.app, kourier's app: not
    #: one of the "best raw") or "http".
    kind: str = "raw"
    one_way: bool = True
    #: Fewer one-way messages than ``Config.one_way_n``, to stay within the scenario bound.
    one_way_max: int | None = None
    #: Takes part in the in-flight memory scenario (it serves ``GET /sleep``).
    in_flight: bool = False
    #: Has a service of its own to time at start-up (kourier_httpx shares kourier's).
    startup: bool = True
    #: Has a streamed reply (FastStream has none: a handler returns one reply).
    stream: bool = True


TARGETS: dict[str, Target] = {
    "kourier": Target("bench.targets.kourier", {"caller": "native"}, "kourier", in_flight=True),
    "kourier_httpx": Target(
        "bench.targets.kourier", {"caller": "httpx"}, "kourier", one_way=False, startup=False
    ),
    "raw_aiokafka": Target("bench.baselines.raw_aiokafka"),
    "raw_confluent": Target("bench.baselines.raw_confluent"),
    # raw_aiokafka's caller and service, the service calling bench.app per record (one at
    # a time, so GET /sleep would not overlap: no in-flight scenario, as raw_aiokafka).
    "raw_aiokafka_app": Target("bench.baselines.raw_aiokafka_app", kind="raw_app"),
    # Each HTTP one-way message is a POST answered 202, 64 at a time: a few hundred a
    # second here (the httpx caller is the bottleneck), so 100,000 would not fit the 90 s
    # bound; 20,000 did not either with the machine's load average at 8.
    "http": Target("bench.baselines.http", kind="http", in_flight=True, one_way_max=10_000),
    # kourier serving bench.bare_app: the same routes without a framework, doing the raw
    # baselines' work per request, so against them it shows kourier's own cost.
    "kourier_bare": Target(
        "bench.targets.kourier",
        {"caller": "native", "app": "bench.bare_app:app"},
        "kourier_bare",
        in_flight=False,
    ),
    # variants, for --targets
    "kourier_confluent": Target(
        "bench.targets.kourier",
        {"caller": "native", "kafka_client": "confluent"},
        "kourier",
        in_flight=True,
    ),
    "kourier_httpx_confluent": Target(
        "bench.targets.kourier",
        {"caller": "httpx", "kafka_client": "confluent"},
        "kourier",
        one_way=False,
        startup=False,
    ),
    "raw_confluent_inflight1": Target("bench.baselines.raw_confluent", {"max_in_flight": 1}),
    # The peers a user would pick instead (issue #14): FastStream's Kafka broker with
    # DIY request/reply, and HTTP with a fast client (aiohttp) beside httpx's `http`.
    "faststream": Target("bench.baselines.faststream_rpc", kind="peer", stream=False),
    # aiohttp posts faster than httpx, but 64 POSTs at a time are still a few thousand a
    # second: 20,000 fit the bound.
    "http_aiohttp": Target(
        "bench.baselines.http_aiohttp", kind="http", in_flight=True, one_way_max=20_000
    ),
}
DEFAULT_TARGETS = [
    "kourier",
    "kourier_httpx",
    "kourier_bare",
    "raw_aiokafka",
    "raw_confluent",
    "raw_aiokafka_app",
    "http",
    "http_aiohttp",
    "faststream",
]


@dataclass(slots=True)
class Config:
    bootstrap: str
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    reps: int = 3
    seq_n: int = 2000
    warmup: int = 200
    inflight: int = 64
    seconds: float = 10.0
    warmup_s: float = 1.0
    one_way_n: int = 100_000
    size: int = 200
    stream_n: int = 10_000
    settle_s: float = 1.0
    slow_n: int = 1000
    slow_ms: int = 3000
    startups: int = 5
    #: Calls of bench.app in process, to measure what the app alone costs.
    app_calls: int = 10_000
    budget_s: float = 1500.0
    #: The Kafka client under kourier, for targets that do not fix one (None: env/default).
    kafka_client: str | None = None
    #: Messages per sender in the sending scenario (``bench.sending``), per repetition.
    send_n: int = 50_000

    @classmethod
    def quick(cls, bootstrap: str, **changes: Any) -> Config:
        """The same suite with tiny counts: seconds per target, for a smoke run."""
        tiny = cls(
            bootstrap,
            reps=1,
            seq_n=100,
            warmup=20,
            seconds=1.0,
            warmup_s=0.3,
            one_way_n=2000,
            stream_n=500,
            settle_s=0.3,
            slow_n=100,
            slow_ms=800,
            startups=2,
            app_calls=500,
            send_n=2000,
            budget_s=300.0,
        )
        return dataclasses.replace(tiny, **changes)

    def options(self, target: str) -> dict[str, Any]:
        spec = TARGETS[target]
        options = dict(spec.options)
        kourier = spec.kind in ("kourier", "kourier_bare")
        if kourier and self.kafka_client and "kafka_client" not in options:
            options["kafka_client"] = self.kafka_client
        return options


def log(message: str) -> None:
    print(f"[bench.run] {message}", file=sys.stderr, flush=True)


async def _scenario(name: str, round_: Round, run: Callable[[], Awaitable[T]]) -> T | None:
    return await bounded_scenario(name, round_, run, limit_s=SCENARIO_LIMIT_S, log=log)


@contextlib.asynccontextmanager
async def _session(config: Config, target: str, **extra: Any) -> AsyncIterator[Bench]:
    module = importlib.import_module(TARGETS[target].module)
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.timeout(SESSION_SETUP_LIMIT_S):
            bench: Bench = await stack.enter_async_context(
                module.open_bench(config.bootstrap, **config.options(target), **extra)
            )
        yield bench


# -- scenarios 1-4 and idle memory: one session per target and repetition ------------------


async def run_round(config: Config, rep: int, target: str) -> Round:
    round_ = Round(rep, target)
    spec = TARGETS[target]
    started = time.monotonic()
    async with _session(config, target) as bench:
        values = round_.values
        log(f"rep {rep + 1} {target}: ready in {time.monotonic() - started:.1f}s")
        if bench.service is not None:
            await asyncio.sleep(config.settle_s)
            values["idle_rss_mb"] = rss_bytes(bench.service.pid) / MB

        latencies = await _scenario(
            "sequential", round_, lambda: bench.sequential(config.seq_n, config.warmup)
        )
        if latencies:
            values["seq_p50_ms"] = percentile(latencies, 50) * 1e3
            values["seq_p99_ms"] = percentile(latencies, 99) * 1e3

        cpu = CpuMeter(bench)
        load = await _scenario(
            "concurrent",
            round_,
            lambda: bench.concurrent(config.inflight, config.seconds, config.warmup_s),
        )
        if load:
            values["conc_rps"] = load.rate
            values["conc_p99_ms"] = percentile(load.latencies, 99) * 1e3
            values["conc_cpu_us"], values["conc_service_cpu_us"] = cpu.per(load.completed)
            values["conc_caller_cpu_us"] = values["conc_cpu_us"] - values["conc_service_cpu_us"]

        if spec.one_way:
            n = min(config.one_way_n, spec.one_way_max or config.one_way_n)
            cpu = CpuMeter(bench)
            rate = await _scenario("one-way", round_, lambda: bench.one_way(n, config.size))
            if rate:
                values["one_way_mps"] = rate
                values["one_way_cpu_us"], values["one_way_service_cpu_us"] = cpu.per(n)

        async def streamed() -> StreamTiming:
            # A first stream pays one-off costs the timed one should not: under FastAPI
            # the first StreamingResponse imports anyio's asyncio backend (about 15 ms).
            await bench.stream(STREAM_WARMUP_ITEMS)
            return await bench.stream(config.stream_n)

        timing = await _scenario("stream", round_, streamed) if spec.stream else None
        if timing:
            values["stream_ips"] = timing.items / timing.total_s
            values["stream_first_ms"] = timing.first_item_s * 1e3
    log(f"rep {rep + 1} {target}: {_short(values)} ({time.monotonic() - started:.1f}s)")
    return round_


class CpuMeter:
    """CPU time the caller (this process) and the service used since it was made."""

    def __init__(self, bench: Bench) -> None:
        self._service = bench.service
        self._caller_s = cpu_seconds(os.getpid())
        self._service_s = self._service_cpu()

    def _service_cpu(self) -> float:
        return math.nan if self._service is None else cpu_seconds(self._service.pid)

    def per(self, calls: int) -> tuple[float, float]:
        """Microseconds per call: (caller + service, service alone)."""
        if calls <= 0:
            return math.nan, math.nan
        caller = cpu_seconds(os.getpid()) - self._caller_s
        service = self._service_cpu() - self._service_s
        return (caller + service) / calls * 1e6, service / calls * 1e6


# -- scenario 5: memory with requests in flight ---------------------------------------------


async def run_in_flight(config: Config, rep: int, target: str) -> Round:
    """RSS of a fresh service, then its peak while ``slow_n`` slow requests are in flight."""
    round_ = Round(rep, target)
    # kourier's service takes --concurrency requests at once; uvicorn takes every
    # connection, and the HTTP caller opens as many as it has calls in flight.
    size = "concurrency" if TARGETS[target].kind in ("kourier", "kourier_bare") else "inflight"
    async with _session(config, target, **{size: config.slow_n}) as bench:
        assert bench.service is not None
        pid = bench.service.pid
        await asyncio.sleep(config.settle_s)
        idle = rss_bytes(pid)
        result = await _scenario("in-flight", round_, lambda: _peak_rss(config, bench, pid))
        if result is not None:
            peak, elapsed = result
            round_.values["in_flight_rss_mb"] = (peak - idle) / MB * 1000 / config.slow_n
            round_.values["in_flight_s"] = elapsed
    log(f"rep {rep + 1} {target} in flight: {_short(round_.values)}")
    return round_


async def _peak_rss(config: Config, bench: Bench, pid: int) -> tuple[int, float]:
    """Start the slow calls, sample the service's RSS until all returned; (peak, seconds).

    The elapsed time tells whether they really were in flight together: close to
    ``slow_ms`` if so, a multiple of it if the service queued them.
    """
    peak = rss_bytes(pid)
    started = time.monotonic()
    calls = [asyncio.create_task(bench.sleep_call(config.slow_ms)) for _ in range(config.slow_n)]
    try:
        while not all(call.done() for call in calls):
            peak = max(peak, rss_bytes(pid))
            await asyncio.wait(calls, timeout=0.05)
        for call in calls:
            call.result()
    finally:
        for call in calls:
            call.cancel()
    return peak, time.monotonic() - started


# -- scenario 7: the caller's sending rate ------------------------------------------------


def senders(config: Config) -> list[str]:
    """kourier's ``enqueue`` and the raw producer always; FastStream's publisher when the
    run has the FastStream target."""
    return [s for s in sending.SENDERS if s != "faststream" or "faststream" in config.targets]


async def run_sending(config: Config, rep: int, deadline: float) -> list[Round]:
    """Each sender once (``bench.sending``), the order rotating; one Round each."""
    names = senders(config)
    shift = rep % len(names)
    rounds = []
    for sender in [*names[shift:], *names[:shift]]:
        round_ = Round(rep, f"send:{sender}")
        if deadline - time.monotonic() < ROUND_MIN_S:
            round_.errors.append("skipped: out of time budget")
        else:
            measure = functools.partial(
                sending.measure,
                sender,
                config.bootstrap,
                config.send_n,
                config.size,
                config.kafka_client,
            )
            values = await _scenario("sending", round_, measure)
            round_.values.update(values or {})
        rounds.append(round_)
    return rounds


# -- scenario 6: start-up ---------------------------------------------------------------------


async def run_startups(config: Config, targets: Sequence[str]) -> list[Round]:
    """``startups`` launches of each target's service, interleaved; one Round per launch."""
    rounds: list[Round] = []
    async with contextlib.AsyncExitStack() as stack:
        makers: dict[str, Callable[[], ServiceProcess]] = {}
        for target in targets:
            module: ModuleType = importlib.import_module(TARGETS[target].module)
            try:
                async with asyncio.timeout(SESSION_SETUP_LIMIT_S):
                    makers[target] = await stack.enter_async_context(
                        module.open_service(config.bootstrap, **config.options(target))
                    )
            except Exception as error:
                log(f"start-up {target}: FAILED to set up: {error!r}")
                rounds.append(Round(0, target, errors=[describe(error)]))
        launching = list(makers)
        for launch in range(config.startups):
            shift = launch % max(1, len(launching))
            for target in [*launching[shift:], *launching[:shift]]:
                round_ = Round(launch, target)
                launch_one = functools.partial(_launch, makers[target])
                result = await _scenario("start-up", round_, launch_one)
                if result is not None:
                    round_.values.update(result)
                rounds.append(round_)
    return rounds


async def _launch(make: Callable[[], ServiceProcess]) -> dict[str, float]:
    process = make()
    try:
        await process.start()
        values = {"startup_s": process.startup_s}
        if not math.isnan(process.url_ready_at):
            values["readyz_s"] = process.url_ready_at - process.launched_at
        return values
    finally:
        await process.stop()


# -- the whole run ----------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    rounds: list[Round] = field(default_factory=list)
    in_flight: list[Round] = field(default_factory=list)
    startups: list[Round] = field(default_factory=list)
    #: CPU microseconds per call of bench.app alone, by call (``bench.app_cost``).
    app_us: dict[str, float] = field(default_factory=dict)
    #: The sending scenario: one Round per sender and repetition, target ``send:<sender>``.
    sending: list[Round] = field(default_factory=list)

    def all(self) -> list[Round]:
        return [*self.rounds, *self.in_flight, *self.startups, *self.sending]


async def run_all(config: Config) -> Results:
    """Every repetition (targets rotating), then the start-ups, within the budget."""
    results = Results()
    deadline = time.monotonic() + config.budget_s
    results.app_us = await app_cost.cost_us(config.app_calls, config.app_calls // 10)
    targets = config.targets
    in_flight = [t for t in targets if TARGETS[t].in_flight]
    for rep in range(config.reps):
        shift = rep % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            results.rounds.append(await _bounded(deadline, rep, target, run_round, config))
        turn = shift % len(in_flight) if in_flight else 0
        for target in [*in_flight[turn:], *in_flight[:turn]]:
            results.in_flight.append(await _bounded(deadline, rep, target, run_in_flight, config))
        if "kourier" in targets:
            results.sending += await run_sending(config, rep, deadline)
    starting = [t for t in targets if TARGETS[t].startup]
    left = deadline - time.monotonic()
    if left < ROUND_MIN_S:
        log(f"start-up skipped: {left:.0f}s of the budget left")
    else:
        try:
            async with asyncio.timeout(left):
                results.startups = await run_startups(config, starting)
        except Exception as error:
            log(f"start-up FAILED: {error!r}")
            results.startups = [Round(0, t, errors=[describe(error)]) for t in starting]
    return results


async def _bounded(
    deadline: float,
    rep: int,
    target: str,
    run: Callable[[Config, int, str], Awaitable[Round]],
    config: Config,
) -> Round:
    remaining = deadline - time.monotonic()
    if remaining < ROUND_MIN_S:
        log(f"rep {rep + 1} {target}: skipped, {remaining:.0f}s of the budget left")
        return Round(rep, target, errors=["skipped: out of time budget"])
    try:
        async with asyncio.timeout(remaining):
            return await run(config, rep, target)
    except Exception as error:  # setup failure or budget exhausted mid-round
        log(f"rep {rep + 1} {target}: FAILED: {error!r}")
        return Round(rep, target, errors=[describe(error)])


def _short(values: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:,.2f}" for key, value in values.items())


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from: {', '.join(TARGETS)}",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; --quick 1)")
    parser.add_argument(
        "--kafka-client",
        choices=["aiokafka", "confluent"],
        help="the Kafka client under kourier (default: KOURIER_KAFKA_CLIENT, else kourier's)",
    )
    parser.add_argument("--budget", type=float, help="whole run, seconds (default 1500)")
    parser.add_argument("--kafka-version", help="default: asked from scripts/kafka status")
    parser.add_argument("--save", action="store_true", help="write bench/RESULTS.md")
    parser.add_argument("--out", type=Path, help="write the report to this file")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {sorted(TARGETS)}")
    if not args.bootstrap.startswith(("127.", "localhost")):
        parser.error("benchmarks only talk to a broker on this machine (127.0.0.1)")
    changes: dict[str, Any] = {"targets": targets, "kafka_client": args.kafka_client}
    if args.reps is not None:
        changes["reps"] = args.reps
    if args.budget is not None:
        changes["budget_s"] = args.budget
    if args.quick:
        config = Config.quick(args.bootstrap, **changes)
    else:
        config = dataclasses.replace(Config(args.bootstrap), **changes)
    return config, args


def main(argv: Sequence[str] | None = None) -> None:
    from bench import report
    from bench.clients import kafka_version

    config, args = parse_args(argv)
    kafka = args.kafka_version or kafka_version(config.bootstrap)
    load_start = os.getloadavg()
    started = time.monotonic()
    results = asyncio.run(run_all(config))
    log(f"all done in {time.monotonic() - started:.0f}s")
    command = shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])])
    text = report.render(
        config,
        results,
        report.environment(config, kafka, load_start, os.getloadavg(), command),
    )
    print(text, end="")
    paths = [REPO_ROOT / "bench" / "RESULTS.md"] if args.save else []
    if args.out:
        paths.append(args.out)
    for path in paths:
        path.write_text(text)
        log(f"saved {path}")


if __name__ == "__main__":
    main()
