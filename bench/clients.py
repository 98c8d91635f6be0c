"""Raw aiokafka against raw confluent-kafka: the same request/reply pattern, measured alike.

    python -m bench.clients --bootstrap 127.0.0.1:9092 [--save]

Scenarios, per target and repetition (each bounded to 60 s):

* sequential two-way: 2,000 calls one after another, after 200 warm-up calls (p50, p99);
* concurrent two-way: 64 calls in flight for 10 s after 1 s of warm-up load (req/s, p99);
* one-way: 100,000 messages of 200 B, end to end until the service saw the last (msgs/s).

Repetitions alternate the order of the targets so that background noise hits all alike;
the table shows the median of the repetitions. Every target gets fresh topics and a fresh
service process per repetition. The targets are any modules exposing ``open_bench`` (see
``bench.common``), so others can be added to ``TARGETS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from bench.common import REPO_ROOT, Bench, Round, bounded_scenario, median, percentile


@dataclass(frozen=True, slots=True)
class Target:
    """A module with ``open_bench(bootstrap, **options) -> AsyncContextManager[Bench]``."""

    module: str
    options: dict[str, int] = field(default_factory=dict)


TARGETS: dict[str, Target] = {
    "raw_aiokafka": Target("bench.baselines.raw_aiokafka"),
    "raw_confluent": Target("bench.baselines.raw_confluent"),
    # variants, for --targets
    "raw_aiokafka_linger1": Target("bench.baselines.raw_aiokafka", {"linger_ms": 1}),
    "raw_confluent_linger1": Target("bench.baselines.raw_confluent", {"linger_ms": 1}),
    "raw_confluent_inflight1": Target("bench.baselines.raw_confluent", {"max_in_flight": 1}),
}
DEFAULT_TARGETS = ["raw_aiokafka", "raw_confluent"]

T = TypeVar("T")

SCENARIO_LIMIT_S = 60.0
#: A round is not started with less than this left of the whole run's budget.
ROUND_MIN_S = 45.0
SESSION_SETUP_LIMIT_S = 60.0


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    scenario: str
    label: str
    higher_is_better: bool
    fmt: str


METRICS = [
    Metric("seq_p50_ms", "sequential", "p50 latency (ms)", False, "{:.2f}"),
    Metric("seq_p99_ms", "sequential", "p99 latency (ms)", False, "{:.2f}"),
    Metric("conc_rps", "concurrent", "throughput (req/s)", True, "{:,.0f}"),
    Metric("conc_p99_ms", "concurrent", "p99 latency (ms)", False, "{:.1f}"),
    Metric("one_way_mps", "one-way", "throughput (msgs/s)", True, "{:,.0f}"),
]


@dataclass(slots=True)
class Config:
    bootstrap: str
    targets: list[str]
    reps: int = 3
    seq_n: int = 2000
    warmup: int = 200
    inflight: int = 64
    seconds: float = 10.0
    one_way_n: int = 100_000
    size: int = 200
    budget_s: float = 570.0
    #: keyword arguments for every target's ``open_bench`` (e.g. linger_ms); empty = defaults
    options: dict[str, int] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[bench.clients] {message}", file=sys.stderr, flush=True)


async def _scenario(name: str, round_: Round, run: Callable[[], Awaitable[T]]) -> T | None:
    return await bounded_scenario(name, round_, run, limit_s=SCENARIO_LIMIT_S, log=log)


async def run_round(config: Config, rep: int, target: str) -> Round:
    round_ = Round(rep, target)
    spec = TARGETS[target]
    module = importlib.import_module(spec.module)
    options = {**spec.options, **config.options}
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.timeout(SESSION_SETUP_LIMIT_S):
            bench: Bench = await stack.enter_async_context(
                module.open_bench(config.bootstrap, **options)
            )
        log(f"rep {rep + 1} {target}: ready in {time.monotonic() - started:.1f}s")

        latencies = await _scenario(
            "sequential", round_, lambda: bench.sequential(config.seq_n, config.warmup)
        )
        if latencies:
            round_.values["seq_p50_ms"] = percentile(latencies, 50) * 1e3
            round_.values["seq_p99_ms"] = percentile(latencies, 99) * 1e3

        load = await _scenario(
            "concurrent", round_, lambda: bench.concurrent(config.inflight, config.seconds)
        )
        if load:
            round_.values["conc_rps"] = load.rate
            round_.values["conc_p99_ms"] = percentile(load.latencies, 99) * 1e3

        rate = await _scenario(
            "one-way", round_, lambda: bench.one_way(config.one_way_n, config.size)
        )
        if rate:
            round_.values["one_way_mps"] = rate
        closing = time.monotonic()
    log(f"rep {rep + 1} {target}: closed in {time.monotonic() - closing:.1f}s")
    log(f"rep {rep + 1} {target}: {_short(round_.values)} ({time.monotonic() - started:.1f}s)")
    return round_


def _short(values: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:,.2f}" for key, value in values.items())


async def run_all(config: Config) -> list[Round]:
    """Every round, target order rotating per repetition, within the whole-run budget."""
    rounds: list[Round] = []
    deadline = time.monotonic() + config.budget_s
    for rep in range(config.reps):
        shift = rep % len(config.targets)
        for target in config.targets[shift:] + config.targets[:shift]:
            remaining = deadline - time.monotonic()
            if remaining < ROUND_MIN_S:
                log(f"rep {rep + 1} {target}: skipped, {remaining:.0f}s of the budget left")
                rounds.append(Round(rep, target, errors=["skipped: out of time budget"]))
                continue
            try:
                async with asyncio.timeout(remaining):
                    rounds.append(await run_round(config, rep, target))
            except Exception as error:  # setup failure or budget exhausted mid-round
                log(f"rep {rep + 1} {target}: FAILED: {error!r}")
                rounds.append(Round(rep, target, errors=[f"{type(error).__name__}: {error}"]))
    return rounds


# -- report ---------------------------------------------------------------------------------


def kafka_version(bootstrap: str) -> str:
    """Ask scripts/kafka which broker it runs; 'unknown' if it is not the one we talk to."""
    script = REPO_ROOT / "scripts" / "kafka"
    if not script.exists():
        return "unknown"
    try:
        status = subprocess.run(
            [sys.executable, str(script), "status"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    found = re.search(r"Kafka (\d+\.\d+\.\d+)", status.stdout + status.stderr)
    if found is None or bootstrap.split(",")[0] not in status.stdout + status.stderr:
        return "unknown"
    return found.group(1)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(config: Config, kafka: str) -> list[str]:
    import confluent_kafka  # only for librdkafka's own version

    return [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Kafka: {kafka}, single node at {config.bootstrap} (scripts/kafka)",
        f"- clients: aiokafka {_version('aiokafka')}; confluent-kafka "
        f"{_version('confluent-kafka')} (librdkafka {confluent_kafka.libversion()[0]})",
        f"- Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"nproc {os.cpu_count()}",
    ]


def _cell(metric: Metric, value: float) -> str:
    return "n/a" if math.isnan(value) else metric.fmt.format(value)


def _verdict(metric: Metric, values: dict[str, float]) -> str:
    valid = {name: value for name, value in values.items() if not math.isnan(value)}
    if len(valid) < 2:
        return ""
    ranked = sorted(valid.items(), key=lambda item: item[1], reverse=metric.higher_is_better)
    (best, best_value), (_, runner_up) = ranked[0], ranked[1]
    if best_value == 0 or runner_up == 0:
        return best
    ratio = best_value / runner_up if metric.higher_is_better else runner_up / best_value
    return f"{best} {ratio:.2f}x"


def _overrides(config: Config) -> str:
    per_target = [
        f"{name}: "
        + ", ".join(f"{k}={v}" for k, v in {**TARGETS[name].options, **config.options}.items())
        for name in config.targets
        if TARGETS[name].options or config.options
    ]
    return "; ".join(per_target) + "." if per_target else "none."


def report(
    config: Config, rounds: Sequence[Round], env: Sequence[str], load: str, command: str
) -> str:
    targets = config.targets
    medians = {
        (metric.key, target): median(
            [r.values[metric.key] for r in rounds if r.target == target and metric.key in r.values]
        )
        for metric in METRICS
        for target in targets
    }
    titles = {
        "sequential": f"sequential two-way, {config.seq_n:,} calls after {config.warmup} warm-up",
        "concurrent": f"concurrent two-way, {config.inflight} in flight for {config.seconds:g} s",
        "one-way": f"one-way, {config.one_way_n:,} x {config.size} B, end to end",
    }
    lines = [
        "# Kafka clients: raw aiokafka vs raw confluent-kafka",
        "",
        *env,
        f"- load average (1 min) at start / end: {load}",
        f"- command: `{command}`",
        "",
        f"Median of {config.reps} repetitions; the order of the targets alternates between",
        "repetitions. Caller in this process, service side in its own process, fresh topics",
        "(1 partition) and service per repetition. All Kafka targets: acks=all, Nagle off,",
        "manual commits after the replies are acked, linger_ms=0 and fetch_max_wait_ms=5",
        "unless overridden: " + _overrides(config),
        "",
        "`better`: the best target and how many times better it is than the runner-up.",
        "",
        f"| scenario | metric | {' | '.join(targets)} | better |",
        f"|---|---|{'---:|' * len(targets)}---|",
    ]
    previous = ""
    for metric in METRICS:
        values = {t: medians[(metric.key, t)] for t in targets}
        title = titles[metric.scenario] if metric.scenario != previous else ""
        previous = metric.scenario
        cells = " | ".join(_cell(metric, values[t]) for t in targets)
        lines.append(f"| {title} | {metric.label} | {cells} | {_verdict(metric, values)} |")
    lines += [
        "",
        "Each repetition:",
        "",
        f"| rep | target | {' | '.join(m.scenario + ' ' + m.label for m in METRICS)} |",
        f"|---|---|{'---:|' * len(METRICS)}",
    ]
    for r in rounds:
        cells = " | ".join(_cell(m, r.values.get(m.key, math.nan)) for m in METRICS)
        lines.append(f"| {r.rep + 1} | {r.target} | {cells} |")
    errors = [f"- rep {r.rep + 1} {r.target}: {e}" for r in rounds for e in r.errors]
    if errors:
        lines += ["", "Failures:", "", *errors]
    return "\n".join(lines) + "\n"


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.clients", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, from: {', '.join(TARGETS)}",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seq-n", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--one-way-n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--budget", type=float, default=570.0, help="whole run, seconds")
    parser.add_argument("--linger-ms", type=int, help="override the targets' linger (default 0)")
    parser.add_argument(
        "--fetch-max-wait-ms", type=int, help="override the targets' fetch wait (default 5)"
    )
    parser.add_argument("--kafka-version", help="default: asked from scripts/kafka status")
    parser.add_argument("--save", action="store_true", help="write bench/results/clients-<date>.md")
    parser.add_argument("--out", type=Path, help="write the report to this file")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {sorted(TARGETS)}")
    if not args.bootstrap.startswith(("127.", "localhost")):
        parser.error("benchmarks only talk to a broker on this machine (127.0.0.1)")
    config = Config(
        bootstrap=args.bootstrap,
        targets=targets,
        reps=args.reps,
        seq_n=args.seq_n,
        warmup=args.warmup,
        inflight=args.inflight,
        seconds=args.seconds,
        one_way_n=args.one_way_n,
        size=args.size,
        budget_s=args.budget,
        options={
            key: value
            for key, value in (
                ("linger_ms", args.linger_ms),
                ("fetch_max_wait_ms", args.fetch_max_wait_ms),
            )
            if value is not None
        },
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> None:
    config, args = parse_args(argv)
    kafka = args.kafka_version or kafka_version(config.bootstrap)
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    rounds = asyncio.run(run_all(config))
    log(f"all rounds done in {time.monotonic() - started:.0f}s")
    load = f"{load_start:.2f} / {os.getloadavg()[0]:.2f}"
    command = shlex.join(["python", "-m", "bench.clients", *(argv or sys.argv[1:])])
    text = report(config, rounds, environment(config, kafka), load, command)
    print(text, end="")
    targets: list[Path] = []
    if args.save:
        targets.append(
            REPO_ROOT / "bench" / "results" / f"clients-{dt.datetime.now(dt.UTC):%Y-%m-%d}.md"
        )
    if args.out:
        targets.append(args.out)
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log(f"saved {path}")


if __name__ == "__main__":
    main()
