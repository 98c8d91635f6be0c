"""Where kourier's time goes: py-spy on the service and the caller during one scenario.

    python -m bench.profile one-way|concurrent|sequential [--seconds 15] [--out DIR] [--app A]

Starts a kourier session like ``bench.run`` does (``bench.targets.kourier``), warms it
up, then samples both processes with py-spy (200 Hz, raw collapsed stacks, idle time
left out) while the scenario runs, and prints who the CPU time belongs to. Each sample is
billed to the innermost frame of kourier, aiokafka, FastAPI/Starlette/pydantic (or the
bench app), httpx or the bench driver; stdlib and OpenTelemetry frames bill to whoever
called them, so an asyncio.wait inside aiokafka counts as aiokafka and a no-op span
opened by kourier counts as kourier's tracing. Stacks with none of those are the event
loop's own work.

py-spy is not a dependency of kourier: ``pip install py-spy`` into the venv first. It
needs ptrace rights over both processes (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bench.common import percentile
from bench.targets import kourier

SCENARIOS = ("one-way", "concurrent", "sequential")
RATE_HZ = 200

#: kourier's modules, most specific first, and what they are in the breakdown.
KOURIER_PARTS = [
    ("kourier/protocol.py", "kourier: wire format (encode, decode)"),
    ("kourier/server/idempotency.py", "kourier: idempotency gate"),
    ("kourier/ops/logging.py", "kourier: request-id log context"),
    ("kourier/ops/tracing.py", "kourier: tracing (spans, here no-op)"),
    ("kourier/client/calls.py", "kourier: call observation (span, metrics)"),
    ("kourier/ops/metrics.py", "kourier: metrics"),
    ("kourier/server/asgi.py", "kourier: ASGI bridge (scope, receive, send)"),
    ("kourier/server/consumer.py", "kourier: consume loop (tasks, order, commits)"),
    ("kourier/server/serve.py", "kourier: service, per-request flow"),
    ("kourier/transports/", "kourier: Kafka transport adapter"),
    ("kourier/client/caller.py", "kourier: Client (build, validate, publish)"),
    ("kourier/client/replies.py", "kourier: reply inbox"),
    ("kourier/client/responses.py", "kourier: Response, ReplyStream"),
    ("kourier/client/transport.py", "kourier: KourierTransport (httpx)"),
    ("kourier/", "kourier: other"),
]
#: Frames that bill their time to the caller: the event loop's entry, OpenTelemetry.
TRANSPARENT = (
    "kourier/cli.py",
    "kourier/__main__.py",
    "bench/profile.py",
    "trace/",
    "context/",
    "propagate/",
    "baggage/",
    "opentelemetry/",
    "_decorator.py",
)
APP = ("fastapi/", "starlette/", "pydantic", "annotated_doc", "bench/app.py", "bench/bare_app.py")
HTTPX = ("httpx/", "httpcore/", "h11/", "anyio/")
EVENT_LOOP = "event loop alone (asyncio scheduling, selectors)"


def owner(frames: Sequence[str]) -> str:
    """Who a sample's time belongs to; ``frames`` root first, as py-spy writes them."""
    for frame in reversed(frames):
        where = frame.rpartition(" (")[2]
        if where.startswith(TRANSPARENT):
            continue
        if where.startswith("aiokafka/"):
            return "aiokafka"
        if where.startswith("confluent_kafka/"):
            return "confluent-kafka"
        if where.startswith(APP):
            return "app: FastAPI/Starlette/pydantic + handler"
        if where.startswith(HTTPX):
            return "httpx (URL, Headers)"
        if where.startswith("kourier/"):
            return next(name for prefix, name in KOURIER_PARTS if where.startswith(prefix))
        if where.startswith("bench/"):
            return "bench driver"
    return EVENT_LOOP


def breakdown(path: Path) -> tuple[int, Counter[str]]:
    """Samples in a py-spy raw file, and their count per owner."""
    owners: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        total += int(count)
        owners[owner(stack.split(";"))] += int(count)
    return total, owners


def report(path: Path, label: str, seconds: float) -> str:
    total, owners = breakdown(path)
    busy = total / (seconds * RATE_HZ) * 100
    lines = [f"{label}: {total} samples, busy {busy:.0f}% of the time ({path})"]
    lines += [f"  {n / total * 100:5.1f}%  {name}" for name, n in owners.most_common()]
    return "\n".join(lines)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("bench.profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def _record(py_spy: str, pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    command = [py_spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(RATE_HZ)]
    command += ["-f", "raw", "-o", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def profile(
    bootstrap: str,
    scenario: str,
    seconds: float,
    py_spy: str,
    service_out: Path,
    caller_out: Path,
    app: str = kourier.APP,
) -> str:
    """Run ``scenario`` against a fresh kourier session under py-spy; what it measured."""
    async with kourier.open_bench(bootstrap, app=app) as bench:
        await bench.sequential(300, 100)
        spies = [
            _record(py_spy, bench.service.pid, service_out, seconds),
            _record(py_spy, os.getpid(), caller_out, seconds),
        ]
        await asyncio.sleep(1.0)  # py-spy attaches
        if scenario == "one-way":
            result = f"{await bench.one_way(100_000):,.0f} msgs/s"
        elif scenario == "concurrent":
            load = await bench.concurrent(64, seconds - 2, 0.5)
            result = f"{load.rate:,.0f} req/s, p99 {percentile(load.latencies, 99) * 1e3:.1f} ms"
        else:
            latencies = await bench.sequential(int(seconds * 250), 0)
            result = f"p50 {percentile(latencies, 50) * 1e3:.2f} ms"
        for spy in spies:
            await asyncio.to_thread(spy.wait)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--seconds", type=float, default=15.0, help="sampled, per process")
    parser.add_argument("--out", type=Path, default=Path("/tmp/kourier-profile"))
    parser.add_argument(
        "--app", default=kourier.APP, help="what kourier serves (bench.bare_app:app: no framework)"
    )
    args = parser.parse_args(argv)
    py_spy = _py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    service_out = args.out / f"{args.scenario}-service.txt"
    caller_out = args.out / f"{args.scenario}-caller.txt"
    result = asyncio.run(
        profile(
            args.bootstrap, args.scenario, args.seconds, py_spy, service_out, caller_out, args.app
        )
    )
    print(f"kourier {args.scenario}: {result}; load average {os.getloadavg()[0]:.2f}")
    print(report(service_out, "service (kourier run)", args.seconds))
    print(report(caller_out, "caller (kourier.Client)", args.seconds))


if __name__ == "__main__":
    main()
