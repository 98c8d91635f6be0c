"""``kourier run --workers N`` scaling: one worker against two on a 2-partition topic.

python -m bench.workers --bootstrap 127.0.0.1:9092 [--reps 3] [--seconds 5] [--events 20000]

Each session starts ``kourier run <app> --service bench --workers N --health-port P`` on
fresh topics whose requests topic has 2 partitions (kourier's other settings are its
defaults, the reply topic has 1 partition as in ``bench.run``), waits until every
worker's ``/readyz`` answers (the first ``ready: service`` line is one worker's, and the
group rebalances when the next joins), and measures, after 2 s of untimed calls, from
one ``kourier.Client`` in this process:

* two-way ``POST /echo`` with 64 calls in flight, keyless (the Kafka client picks a
  partition per record) and keyed (each of the 64 callers its own key, so the keys
  spread over both partitions): calls/s, p50 and p99;
* one-way ``POST /events`` (``enqueue`` then one ``flush``): messages/s until the
  workers' ``/metrics`` count every one handled;
* the CPU time per call or message of each process: this caller, the workers (summed
  and each) and, when it can be found, the broker (``--broker-pid``, else the process
  listening on the bootstrap port; less its CPU per second while the session was idle,
  since it serves other clients too), and the cores each was busy; and each worker's
  share of the calls.

1 and 2 workers alternate within a repetition (the order flips every repetition) and
the table has medians. ``--pin`` places the processes on CPUs (Linux affinity, this
benchmark's own processes only; never the broker): ``apart`` puts this caller on CPU 0
and every worker on CPU 1, the service on a core of its own (as far as the broker, which
runs where the kernel puts it, lets it); ``spread`` puts worker i on CPU i - 1 (mod the
CPUs) and the caller on the last CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    ECHO_BODY,
    ServiceProcess,
    Throughput,
    cpu_seconds,
    create_topics,
    delete_topics,
    http_status,
    percentile,
)
from bench.targets.kourier import ECHO_PREFIX, JSON_HEADERS, SERVICE, free_port, kourier_env
from kourier import Client, Settings
from kourier.registry import registry_topic

#: Calls kept in flight in the two-way scenarios.
IN_FLIGHT = 64
#: Seconds of untimed calls at IN_FLIGHT before the measured scenarios.
WARMUP_S = 2.0
#: Partitions of the requests topic: one per worker at the most workers measured.
PARTITIONS = 2
ECHO_STATUS, EVENT_STATUS = 200, 202
APPS = {"bench": "bench.app:app", "bare": "bench.bare_app:app"}
_REQUESTS = re.compile(r"^kourier_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


@dataclass
class Figures:
    """One session: N workers serving one app, every scenario once."""

    app: str
    workers: int
    pin: str
    #: scenario -> calls or messages per second
    rate: dict[str, float] = field(default_factory=dict)
    #: scenario -> (p50, p99) in ms (two-way scenarios)
    latency_ms: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: scenario -> process role -> CPU µs per call or message
    cpu_us: dict[str, dict[str, float]] = field(default_factory=dict)
    #: scenario -> process role -> cores busy (CPU seconds per second of the scenario)
    cores: dict[str, dict[str, float]] = field(default_factory=dict)
    #: scenario -> each worker's share of the requests handled (sums to 1)
    shares: dict[str, list[float]] = field(default_factory=dict)


class Processes:
    """The pids whose CPU time a session reads: caller, workers, broker (if known).

    The broker serves other clients too (other benchmarks, tests): its CPU time per
    second while this session is idle (``idle_broker``) is taken off its share.
    """

    def __init__(self, workers: list[int], broker: int | None) -> None:
        self.roles: dict[str, list[int]] = {"caller": [os.getpid()]}
        for index, pid in enumerate(workers, start=1):
            self.roles[f"worker {index}"] = [pid]
        if broker is not None:
            self.roles["broker"] = [broker]
        self.idle_broker = 0.0

    def snapshot(self) -> tuple[float, dict[str, float]]:
        cpu = {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}
        return time.monotonic(), cpu

    async def measure_idle_broker(self, seconds: float = 1.0) -> None:
        """The broker's CPU seconds per second while this session sends nothing."""
        if "broker" in self.roles:
            began, before = self.snapshot()
            await asyncio.sleep(seconds)
            ended, after = self.snapshot()
            self.idle_broker = (after["broker"] - before["broker"]) / (ended - began)

    def usage(
        self, before: tuple[float, dict[str, float]], after: tuple[float, dict[str, float]], n: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """(CPU µs per call, cores busy) of each role between two snapshots, and of the
        workers together (``service``)."""
        wall = after[0] - before[0]
        used = {role: after[1][role] - before[1][role] for role in before[1]}
        if "broker" in used:
            used["broker"] = max(0.0, used["broker"] - self.idle_broker * wall)
        used["service"] = sum(v for role, v in used.items() if role.startswith("worker"))
        per_call = {role: v / n * 1e6 for role, v in used.items()}
        cores = {role: v / wall for role, v in used.items()}
        return per_call, cores


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this host, if this user may see it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
    return None


def free_ports(count: int) -> int:
    """A port P such that P ... P + count - 1 are free now (worker i serves on P + i - 1)."""
    while True:
        port = free_port()
        if all(_is_free(port + i) for i in range(1, count)):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` in pid order (the workers of ``--workers N``)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return sorted(found)


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` on ``cpus`` (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def place(layout: str, workers: list[int]) -> None:
    """Pin this caller and the workers as ``layout`` says (see the module docstring)."""
    cpus = sorted(os.sched_getaffinity(0))
    if layout == "none" or len(cpus) < 2:
        return
    if layout == "apart":
        pin(os.getpid(), {cpus[0]})
        for pid in workers:
            pin(pid, {cpus[1]})
    elif layout == "spread":
        pin(os.getpid(), {cpus[-1]})
        for index, pid in enumerate(workers):
            pin(pid, {cpus[index % len(cpus)]})


async def handled(ports: Sequence[int], status: int) -> list[int]:
    """Requests each worker has answered with ``status`` (its ``/metrics``): 200 for the
    echo, 202 for the events (the bare app has no routes for the metrics' route label)."""
    counts = []
    for port in ports:
        text = await _get(port, "/metrics")
        counts.append(
            sum(
                int(float(value))
                for labels, value in _REQUESTS.findall(text)
                if f'status="{status}"' in labels
            )
        )
    return counts


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        return (await reader.read()).decode()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def started_service(
    bootstrap: str, app: str, workers: int, extra_env: dict[str, str]
) -> AsyncIterator[tuple[dict[str, str], ServiceProcess, list[int]]]:
    """Fresh topics and ``kourier run --workers N`` on them, every worker ready.

    Yields the session's settings, the process and its health ports, one per worker.
    """
    env = {
        **kourier_env(bootstrap, f"bw.{uuid.uuid4().hex[:8]}."),
        "KOURIER_PARTITIONS": str(PARTITIONS),
        **extra_env,
    }
    settings = Settings.from_env(env)
    names = [settings.request_topic(SERVICE), settings.dead_letter_topic(SERVICE)]
    await create_topics(bootstrap, names, partitions=PARTITIONS)
    await create_topics(bootstrap, [settings.reply_topic], partitions=settings.reply_partitions)
    port = free_ports(workers)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KOURIER_")}
    argv = [sys.executable, "-m", "kourier", "run", app, "--service", SERVICE]
    argv += ["--workers", str(workers), "--health-port", str(port)]
    service = ServiceProcess(argv, env={**inherited, **env}, ready_log="ready: service")
    ports = [port + i for i in range(workers)]
    try:
        await service.start(timeout_s=90)
        # The first "ready" line is one worker's. A worker's /readyz answers 200 once its
        # consumer has joined the group, and the last join settles every member's share.
        try:
            async with asyncio.timeout(90):
                for p in ports:
                    await _until(functools.partial(_ready, p))
        except TimeoutError as err:
            tail = "\n".join(service.stderr_tail)
            raise RuntimeError(
                f"not every worker ready in 90 s; stderr ends with:\n{tail}"
            ) from err
        yield env, service, ports
    finally:
        await service.stop()
        with contextlib.suppress(Exception):
            await delete_topics(bootstrap, [*names, settings.reply_topic, registry_topic(settings)])


async def _ready(port: int) -> bool:
    return await http_status(f"http://127.0.0.1:{port}/readyz") == 200


async def _until(done: Callable[[], Awaitable[bool]], interval_s: float = 0.05) -> None:
    """Poll ``done`` until it is true (the caller bounds the wait)."""
    # Nothing to wait on but an HTTP answer: polling is the only way to learn it.
    while not await done():  # noqa: ASYNC110
        await asyncio.sleep(interval_s)


async def closed_loop(
    call: Callable[[int], Awaitable[None]], seconds: float, warmup_s: float
) -> Throughput:
    """``IN_FLIGHT`` callers for ``warmup_s + seconds``, as ``Bench.concurrent``: the
    calls started in the window count, and the window ends when the last of them does."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    deadline = start + seconds
    latencies: list[float] = []
    last_done = start
    completed = 0

    async def caller(index: int) -> None:
        nonlocal completed, last_done
        while (began := loop.time()) < deadline:
            await call(index)
            completed += 1
            if began >= start:
                done = loop.time()
                latencies.append(done - began)
                last_done = max(last_done, done)

    async with asyncio.TaskGroup() as tasks:
        for index in range(IN_FLIGHT):
            tasks.create_task(caller(index))
    return Throughput(len(latencies), last_done - start, latencies, completed)


async def measure(
    bootstrap: str,
    app: str,
    workers: int,
    *,
    seconds: float = 5.0,
    events: int = 20_000,
    warmup_s: float = WARMUP_S,
    pin_layout: str = "none",
    broker_pid: int | None = None,
    extra_env: dict[str, str] | None = None,
) -> Figures:
    """One session: ``workers`` workers of ``app`` (a key of ``APPS``), every scenario."""
    figures = Figures(app, workers, pin_layout)
    async with started_service(bootstrap, APPS[app], workers, extra_env or {}) as (
        env,
        service,
        ports,
    ):
        pids = [service.pid] if workers == 1 else child_pids(service.pid)
        own_cpus = os.sched_getaffinity(0)
        place(pin_layout, pids)
        procs = Processes(pids, broker_pid)
        try:
            async with Client(Settings.from_env(env)) as client:
                await procs.measure_idle_broker()

                async def echo(index: int, keyed: bool) -> None:
                    response = await client.request(
                        SERVICE,
                        "POST",
                        "/echo",
                        content=ECHO_BODY,
                        headers=JSON_HEADERS,
                        key=f"caller-{index}" if keyed else None,
                    )
                    if response.status_code != 200 or not response.content.startswith(ECHO_PREFIX):
                        raise RuntimeError(f"unexpected reply {response.content[:80]!r}")

                # Untimed load first: the app's and the clients' first calls, the reply
                # reader's start, and the workers' first fetches are not the rate.
                await closed_loop(functools.partial(echo, keyed=False), warmup_s, 0.0)
                for scenario, keyed in (("keyless", False), ("keyed", True)):
                    before_counts = await handled(ports, ECHO_STATUS)
                    before = procs.snapshot()
                    run = await closed_loop(functools.partial(echo, keyed=keyed), seconds, 1.0)
                    figures.cpu_us[scenario], figures.cores[scenario] = procs.usage(
                        before, procs.snapshot(), run.completed
                    )
                    figures.rate[scenario] = run.rate
                    figures.latency_ms[scenario] = (
                        percentile(run.latencies, 50) * 1000,
                        percentile(run.latencies, 99) * 1000,
                    )
                    after_counts = await handled(ports, ECHO_STATUS)
                    figures.shares[scenario] = _shares(before_counts, after_counts)
                await _one_way(client, ports, procs, events, figures)
        finally:
            pin(os.getpid(), own_cpus)
    return figures


async def _one_way(
    client: Client, ports: list[int], procs: Processes, events: int, figures: Figures
) -> None:
    body = b"x" * 200
    before_counts = await handled(ports, EVENT_STATUS)
    goal = sum(before_counts) + events
    before = procs.snapshot()
    began = time.monotonic()
    for _ in range(events):
        await client.enqueue(SERVICE, "POST", "/events", content=body)
    await client.flush()
    counts: list[int] = []

    async def all_handled() -> bool:
        nonlocal counts
        counts = await handled(ports, EVENT_STATUS)
        return sum(counts) >= goal

    async with asyncio.timeout(120):
        await _until(all_handled, interval_s=0.02)
    figures.rate["one-way"] = events / (time.monotonic() - began)
    figures.cpu_us["one-way"], figures.cores["one-way"] = procs.usage(
        before, procs.snapshot(), events
    )
    figures.shares["one-way"] = _shares(before_counts, counts)


def _shares(before: list[int], after: list[int]) -> list[float]:
    done = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(done) or 1
    return [d / total for d in done]


SCENARIOS = ("keyless", "keyed", "one-way")


def table(rows: list[Figures]) -> str:
    """Medians per (app, pin, workers), and each rate's ratio to one worker's."""
    groups: dict[tuple[str, str, int], list[Figures]] = {}
    for row in rows:
        groups.setdefault((row.app, row.pin, row.workers), []).append(row)
    lines = [
        "| app | pin | workers | scenario | rate /s (median; runs) | ÷ 1 worker "
        "| p50 / p99 ms | CPU µs per call: caller / service / broker "
        "| cores busy: caller / service / broker | workers' shares |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (app, pin_layout, workers), group in sorted(groups.items()):
        one = groups.get((app, pin_layout, 1), [])
        for scenario in SCENARIOS:
            rates = [g.rate[scenario] for g in group]
            rate = statistics.median(rates)
            base = [g.rate[scenario] for g in one]
            ratio = f"{rate / statistics.median(base):.2f}x" if base else ""
            lat = [g.latency_ms[scenario] for g in group if scenario in g.latency_ms]
            latency = (
                f"{statistics.median(p for p, _ in lat):.1f} / "
                f"{statistics.median(q for _, q in lat):.1f}"
                if lat
                else ""
            )
            shares = " / ".join(
                f"{statistics.median(g.shares[scenario][i] for g in group):.0%}"
                for i in range(workers)
            )
            lines.append(
                f"| {app} | {pin_layout} | {workers} | {scenario} "
                f"| {rate:,.0f} ({', '.join(f'{r:,.0f}' for r in rates)}) | {ratio} | {latency} "
                f"| {_roles(group, scenario, 'cpu_us', '.0f')} "
                f"| {_roles(group, scenario, 'cores', '.2f')} | {shares} |"
            )
    return "\n".join(lines)


def _roles(group: list[Figures], scenario: str, what: str, spec: str) -> str:
    """Medians of ``cpu_us`` or ``cores`` for caller / service / broker ("-": unknown)."""
    out = []
    for role in ("caller", "service", "broker"):
        values = [
            getattr(g, what)[scenario][role] for g in group if role in getattr(g, what)[scenario]
        ]
        out.append(format(statistics.median(values), spec) if values else "-")
    return " / ".join(out)


def summary(figures: Figures, load: float) -> str:
    """One session on one line, for the progress log."""
    parts = [f"{figures.app} pin={figures.pin} workers={figures.workers} load={load:.1f}:"]
    for scenario in SCENARIOS:
        cpu = figures.cpu_us[scenario]
        cores = figures.cores[scenario]
        parts.append(
            f"{scenario} {figures.rate[scenario]:,.0f}/s, µs "
            + " ".join(f"{role}={v:.0f}" for role, v in cpu.items())
            + ", cores "
            + " ".join(f"{role}={v:.2f}" for role, v in cores.items())
            + ";"
        )
    return " ".join(parts)


async def run(args: argparse.Namespace) -> str:
    broker = args.broker_pid
    if broker is None:
        broker = listening_pid(int(args.bootstrap.rsplit(":", 1)[1]))
    rows = []
    for rep in range(args.reps):
        order = list(args.workers) if rep % 2 == 0 else list(reversed(args.workers))
        for app in args.apps:
            for pin_layout in args.pin:
                for workers in order:
                    load = os.getloadavg()[0]
                    figures = await measure(
                        args.bootstrap,
                        app,
                        workers,
                        seconds=args.seconds,
                        events=args.events,
                        pin_layout=pin_layout,
                        broker_pid=broker,
                    )
                    print(f"rep {rep + 1} {summary(figures, load)}", file=sys.stderr, flush=True)
                    rows.append(figures)
    return table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KOURIER_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (medians over them)")
    parser.add_argument("--seconds", type=float, default=5.0, help="two-way window per run")
    parser.add_argument("--events", type=int, default=20_000, help="one-way messages per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--apps", nargs="+", default=["bench", "bare"], choices=sorted(APPS))
    parser.add_argument("--pin", nargs="+", default=["none"], choices=["none", "apart", "spread"])
    parser.add_argument("--broker-pid", type=int, help="the broker's pid, for its CPU time")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(result)
    if args.out:
        Path(args.out).write_text(result + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
