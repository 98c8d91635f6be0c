"""Queue mode against ordered mode: two-way at 64 in flight and one-way, 1 and 2 instances.

python -m bench.queue --bootstrap 127.0.0.1:9092 [--seconds 10] [--events 20000]

Each run starts ``kourier run bench.app:app`` processes (``--queue`` or not) on
confluent-kafka (queue mode needs it; ordered mode uses it too, so the client is not the
difference), on fresh 2-partition topics, so 2 ordered instances both work. It measures
two-way ``POST /echo`` calls with 64 in flight (calls/s, p50 and p99), then one-way
``POST /events`` messages (sent with ``enqueue`` and one ``flush``; messages/s until the
instances' ``/metrics`` count every one handled). Ordered mode acknowledges with an offset
commit every 0.2 s; queue mode acknowledges every record to the broker and waits for the
answer: the gap between the two at one instance is the price of per-record acks (plus
the share group's fetch). Prints a markdown table; ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass

import httpx

from bench.common import ECHO_BODY, JSON_CONTENT, ServiceProcess, percentile
from kourier import Client, Settings

#: Calls kept in flight in the two-way measurement.
IN_FLIGHT = 64
_HANDLED = re.compile(r'^kourier_requests_total\{[^}]*route="/events"[^}]*\} ([0-9.e+]+)$', re.M)


@dataclass
class Figures:
    mode: str
    instances: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    events_per_s: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start(env: dict[str, str], queue: bool, count: int) -> list[tuple[ServiceProcess, int]]:
    started = []
    for _ in range(count):
        port = _free_port()
        argv = [sys.executable, "-m", "kourier", "run", "bench.app:app", "--service", "bench"]
        argv += ["--health-port", str(port), *(["--queue"] if queue else [])]
        service = ServiceProcess(argv, env=env, ready_log="ready: service")
        await service.start(timeout_s=90)
        started.append((service, port))
    return started


async def _handled_events(ports: list[int]) -> int:
    total = 0
    async with httpx.AsyncClient() as http:
        for port in ports:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            total += sum(int(float(v)) for v in _HANDLED.findall(text))
    return total


async def _two_way(client: Client, seconds: float) -> tuple[float, list[float]]:
    for _ in range(200):  # warm-up: connections, metadata, the app's first calls
        await client.request("bench", "POST", "/echo", content=ECHO_BODY, headers=JSON_CONTENT)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await client.request(
                "bench", "POST", "/echo", content=ECHO_BODY, headers=JSON_CONTENT, timeout=30
            )
            latencies.append(time.perf_counter() - started)

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return len(latencies) / (time.monotonic() - began), latencies


async def _one_way(client: Client, events: int, ports: list[int]) -> float:
    before = await _handled_events(ports)
    body = b"x" * 200
    began = time.monotonic()
    for _ in range(events):
        await client.enqueue("bench", "POST", "/events", content=body)
    await client.flush()
    while await _handled_events(ports) < before + events:
        if time.monotonic() - began > 300:
            raise RuntimeError("the one-way messages were not all handled in 300 s")
        await asyncio.sleep(0.05)
    return events / (time.monotonic() - began)


async def measure(
    bootstrap: str, mode: str, instances: int, seconds: float, events: int
) -> Figures:
    prefix = f"bq{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": bootstrap,
        "KOURIER_TOPIC_PREFIX": prefix,
        "KOURIER_PARTITIONS": "2",
        "KOURIER_KAFKA_CLIENT": "confluent",
    }
    services = await _start(env, mode == "queue", instances)
    try:
        settings = Settings.from_env(env)
        async with Client(settings) as client:
            rate, latencies = await _two_way(client, seconds)
            events_rate = await _one_way(client, events, [port for _, port in services])
    finally:
        for service, _ in services:
            await service.stop()
    return Figures(
        mode,
        instances,
        rate,
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
        events_rate,
    )


def table(rows: list[Figures]) -> str:
    lines = [
        f"| mode | instances | two-way calls/s ({IN_FLIGHT} in flight) | p50 ms | p99 ms "
        "| one-way messages/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.instances} | {r.calls_per_s:,.0f} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.events_per_s:,.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    rows = []
    for instances in args.instances:
        for mode in args.modes:
            figures = await measure(args.bootstrap, mode, instances, args.seconds, args.events)
            print(figures, file=sys.stderr, flush=True)
            rows.append(figures)
    return table(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=__doc__)
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KOURIER_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="two-way window per run")
    parser.add_argument("--events", type=int, default=20_000, help="one-way messages per run")
    parser.add_argument(
        "--instances", type=int, nargs="+", default=[1, 2], help="instance counts to run"
    )
    parser.add_argument(
        "--modes", nargs="+", default=["ordered", "queue"], choices=["ordered", "queue"]
    )
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(result)
    if args.out:
        with open(args.out, "w") as out:
            out.write(result + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
