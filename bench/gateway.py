"""What the HTTP gateway adds to a call's latency, against calling the service directly.

One ``kourier run bench.app:app`` service and one ``kourier gateway`` process on the
same broker. The benchmark's process calls ``POST /echo`` one call at a time, in
alternating blocks: with the native ``kourier.Client`` straight to the service, and with
httpx (keep-alive) through the gateway. Alternating blocks spread any drift in the
machine's load over both. The report gives p50/p90/p99 of each and the difference,
with the load average before and after, since a loaded machine moves the figures::

    .venv/bin/python -m bench.gateway --bootstrap 127.0.0.1:9092 --calls 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass

import httpx

from bench.common import ECHO_BODY, ServiceProcess, percentile
from kourier import Client, Settings

BLOCK = 50


@dataclass
class Latencies:
    """Milliseconds per call of one way of calling."""

    p50: float
    p90: float
    p99: float
    calls: int

    @classmethod
    def of(cls, seconds: list[float]) -> Latencies:
        ms = [s * 1000 for s in seconds]
        return cls(percentile(ms, 50), percentile(ms, 90), percentile(ms, 99), len(ms))


@dataclass
class Report:
    direct: Latencies
    gateway: Latencies
    added_p50_ms: float
    added_p99_ms: float
    load_before: float
    load_after: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(bootstrap: str, calls: int, warmup: int = 20) -> Report:
    """Start the service and the gateway, time ``calls`` calls each way, stop them."""
    prefix = f"benchgw{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "KOURIER_BOOTSTRAP_SERVERS": bootstrap, "KOURIER_TOPIC_PREFIX": prefix}
    port = _free_port()
    kourier = [sys.executable, "-m", "kourier"]
    service = ServiceProcess(
        [*kourier, "run", "bench.app:app", "--service", "bench"],
        env=env,
        ready_log="ready: service",
    )
    gateway = ServiceProcess(
        [*kourier, "gateway", "--port", str(port), "--service", "bench", "--no-docs"],
        env=env,
        ready_log="ready: gateway",
    )
    await service.start()
    try:
        await gateway.start()
        try:
            return await _time_both(bootstrap, prefix, f"http://127.0.0.1:{port}", calls, warmup)
        finally:
            await gateway.stop()
    finally:
        await service.stop()


async def _time_both(bootstrap: str, prefix: str, url: str, calls: int, warmup: int) -> Report:
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    headers = {"content-type": "application/json"}
    direct: list[float] = []
    through: list[float] = []
    load_before = os.getloadavg()[0]
    async with Client(settings) as client, httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def one_direct() -> float:
            started = time.perf_counter()
            response = await client.request(
                "bench", "POST", "/echo", content=ECHO_BODY, headers=headers
            )
            assert response.status_code == 200, response.status_code
            return time.perf_counter() - started

        async def one_through() -> float:
            started = time.perf_counter()
            response = await http.post("/bench/echo", content=ECHO_BODY, headers=headers)
            assert response.status_code == 200, response.text
            return time.perf_counter() - started

        for _ in range(warmup):
            await one_direct()
            await one_through()
        while len(direct) < calls:
            block = min(BLOCK, calls - len(direct))
            direct += [await one_direct() for _ in range(block)]
            through += [await one_through() for _ in range(block)]
    first, second = Latencies.of(direct), Latencies.of(through)
    return Report(
        first,
        second,
        second.p50 - first.p50,
        second.p99 - first.p99,
        load_before,
        os.getloadavg()[0],
    )


def render(report: Report) -> str:
    rows = [
        "| way | p50 ms | p90 ms | p99 ms | calls |",
        "|---|---|---|---|---|",
    ]
    for name, lat in (
        ("native Client, direct", report.direct),
        ("httpx via gateway", report.gateway),
    ):
        rows.append(f"| {name} | {lat.p50:.2f} | {lat.p90:.2f} | {lat.p99:.2f} | {lat.calls} |")
    rows.append(
        f"\nadded by the gateway: p50 {report.added_p50_ms:+.2f} ms, "
        f"p99 {report.added_p99_ms:+.2f} ms; load average {report.load_before:.2f} before, "
        f"{report.load_after:.2f} after ({os.cpu_count()} cores)"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KOURIER_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls each way (1000)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = asyncio.run(measure(args.bootstrap, args.calls))
    print(json.dumps(asdict(report), indent=1) if args.json else render(report))


if __name__ == "__main__":
    main()
