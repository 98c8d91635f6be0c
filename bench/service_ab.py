"""Alternated A/B of the service's CPU per message: two checkouts of kourier, or settings.

    python -m bench.service_ab kafka  NAME=TARGET[:SRC][+VAR=VALUE...] ... [--n N] [--rounds R]
    python -m bench.service_ab inproc NAME=SRC ... [--app bench|bare] [--two-way] [--n N]

A variant is a name, a target and optionally the ``src`` directory of another checkout
of kourier, put first on the service's ``PYTHONPATH`` (so ``old=kourier:../old/src``
runs the service of that checkout, the caller stays this one's), and ``KOURIER_*``
settings for the service (``+KOURIER_ACCESS_LOG=false``). Variants run in turn, the
order reversed every other round; the medians come last, with the load average seen
before each run.

``kafka``: a fresh session of the target per run (``kourier``, ``kourier_bare``, or a
raw baseline: ``raw_aiokafka_app``, ``raw_aiokafka``), 2,000 one-way messages not
counted, then ``--n`` one-way messages (msgs/s end to end and the service's CPU per
message from ``/proc``) and, with ``--inflight S``, ``S`` seconds of 64 calls in flight
(req/s and the service's CPU per call). ``inproc``: no broker: a whole ``Service``
(consume loop included) in a child process on ``--n`` pre-built records
(``bench.layers``' records and transport), CPU per record, median of 3 passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench.common import Bench, cpu_seconds

BOOTSTRAP = "127.0.0.1:9092"


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    target: str
    src: str | None
    env: dict[str, str]

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition("=")
        target_src, *settings = rest.split("+")
        target, _, src = target_src.partition(":")
        env = dict(setting.split("=", 1) for setting in settings)
        return cls(name, target, src or None, env)


@contextlib.contextmanager
def _service_side(variant: Variant) -> Iterator[None]:
    """The variant's checkout and settings for service processes started inside."""
    import bench.targets.kourier as kourier_target

    saved_path = os.environ.get("PYTHONPATH")
    original_env = kourier_target.kourier_env

    def with_settings(*args: Any, **kwargs: Any) -> dict[str, str]:
        return {**original_env(*args, **kwargs), **variant.env}

    if variant.src is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [variant.src, saved_path]))
    kourier_target.kourier_env = with_settings
    try:
        yield
    finally:
        kourier_target.kourier_env = original_env
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


def _open(variant: Variant, bootstrap: str) -> contextlib.AbstractAsyncContextManager[Bench]:
    if variant.target in ("kourier", "kourier_bare"):
        import bench.targets.kourier as kourier_target

        app = kourier_target.APP if variant.target == "kourier" else "bench.bare_app:app"
        return kourier_target.open_bench(bootstrap, app=app)
    module = importlib.import_module(f"bench.baselines.{variant.target}")
    opened: contextlib.AbstractAsyncContextManager[Bench] = module.open_bench(bootstrap)
    return opened


async def kafka_run(variant: Variant, args: argparse.Namespace) -> dict[str, float]:
    with _service_side(variant):
        async with _open(variant, args.bootstrap) as bench:
            await bench.one_way(2000)
            assert bench.service is not None
            pid = bench.service.pid
            before = cpu_seconds(pid)
            rate = await bench.one_way(args.n)
            figures = {"msgs/s": rate, "cpu us/msg": (cpu_seconds(pid) - before) / args.n * 1e6}
            if args.inflight:
                await bench.concurrent(inflight=64, seconds=0.5, warmup_s=0.3)
                before = cpu_seconds(pid)
                load = await bench.concurrent(inflight=64, seconds=args.inflight, warmup_s=0.0)
                figures["req/s"] = load.rate
                figures["cpu us/call"] = (cpu_seconds(pid) - before) / max(load.count, 1) * 1e6
            return figures


def inproc_run(variant: Variant, args: argparse.Namespace) -> dict[str, float]:
    """CPU per record of a whole Service, in a child process on the variant's checkout."""
    command = [sys.executable, "-m", "bench.service_ab", "_inproc", args.app, str(args.n)]
    if args.two_way:
        command.append("--two-way")
    env = dict(os.environ)
    # An inproc variant is NAME=SRC: the checkout's src directory ("src" for this one).
    env["PYTHONPATH"] = os.pathsep.join([variant.target, "."])
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return {"cpu us/record": float(out.split()[-1])}


async def _whole_service(app_name: str, n: int, two_way: bool) -> float:
    """The child's side of ``inproc``: median CPU µs per record of 3 passes."""
    from bench.layers import PrebuiltTransport, load_app, records
    from kourier import Settings
    from kourier.server.consumer import RequestConsumer
    from kourier.server.serve import Service

    app = load_app(app_name)
    passes = []
    for rep in range(4):  # the first is the warm-up
        transport = PrebuiltTransport(records(n, two_way))
        service = Service(app, "bench", Settings(), transport=transport)
        await service.start()
        consumer = service.consumer
        assert isinstance(consumer, RequestConsumer) and transport.consumer is not None
        gc.collect()
        gc.freeze()  # as serve() does once started
        started = time.process_time()
        # Polled, not signalled: a hook per record would be part of what is measured.
        while consumer.completed < n:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        elapsed = time.process_time() - started
        await service.stop()
        gc.unfreeze()
        if rep:
            passes.append(elapsed / n * 1e6)
    return statistics.median(passes)


async def _rounds(variants: Sequence[Variant], args: argparse.Namespace) -> None:
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else list(reversed(variants))
        for variant in order:
            load = os.getloadavg()[0]
            if args.mode == "kafka":
                figures = await kafka_run(variant, args)
            else:
                figures = inproc_run(variant, args)
            results[variant.name].append(figures)
            shown = "  ".join(f"{k} {v:,.1f}" for k, v in figures.items())
            print(f"round {round_} {variant.name:12s} load {load:4.1f}  {shown}", flush=True)
    print("medians:")
    for name, runs in results.items():
        shown = "  ".join(f"{k} {statistics.median(r[k] for r in runs):,.1f}" for k in runs[0])
        print(f"  {name:12s} {shown}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_inproc":
        app_name, n = argv[1], int(argv[2])
        print(f"{asyncio.run(_whole_service(app_name, n, '--two-way' in argv)):.2f}")
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("mode", choices=("kafka", "inproc"))
    parser.add_argument("variants", nargs="+", help="NAME=TARGET[:SRC][+VAR=VALUE...]")
    parser.add_argument("--bootstrap", default=BOOTSTRAP)
    parser.add_argument("--n", type=int, default=20_000, help="messages (records) per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=float, default=0.0, help="kafka: seconds at 64")
    parser.add_argument("--app", choices=("bench", "bare"), default="bench", help="inproc")
    parser.add_argument("--two-way", action="store_true", help="inproc: POST /echo")
    args = parser.parse_args(argv)
    variants = [Variant.parse(spec) for spec in args.variants]
    asyncio.run(_rounds(variants, args))


if __name__ == "__main__":
    main()
