"""``kourier run``: serve an ASGI app over Kafka, one process or several workers."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kourier.cli import reload
from kourier.cli.common import (
    EXIT_USAGE,
    CLIError,
    import_attr,
    port_number,
    positive_int,
    settings_from,
)
from kourier.server.hooks import HOOK_NAMES, Hooks


def load_app(spec: str, *, factory: bool = False) -> Any:
    app = import_attr(spec, "app")
    if factory:
        app = app()
    if not callable(app):
        raise CLIError(f"{spec!r} is not an ASGI application (not callable)", EXIT_USAGE)
    return app


def load_hooks(specs: Sequence[str]) -> Hooks:
    """The service hooks ``--hooks`` (or KOURIER_HOOKS) names, in the order given.

    Each spec names a mapping of event name to a callable or a list of callables, a
    ``Hooks`` object, or a function of no arguments that returns either. Hooks hold no
    callables themselves, so a callable is always such a function: no ``--factory``.
    """
    hooks = Hooks()
    for spec in specs:
        found = import_attr(spec, "--hooks")
        if callable(found) and not isinstance(found, Hooks) and _takes_no_arguments(found):
            found = found()
        if isinstance(found, Hooks):
            hooks.extend(found)
            continue
        if not isinstance(found, Mapping):
            raise CLIError(
                f"--hooks {spec!r} is {_kind(found)}: give a mapping of event name to hooks, "
                "a Hooks object, or a function of no arguments that returns one",
                EXIT_USAGE,
            )
        for name, functions in found.items():
            if name not in HOOK_NAMES:
                raise CLIError(
                    f"--hooks {spec!r}: {name!r} is not a hook event; "
                    f"choose from {', '.join(HOOK_NAMES)}",
                    EXIT_USAGE,
                )
            for function in functions if isinstance(functions, list | tuple) else [functions]:
                if not callable(function):
                    raise CLIError(
                        f"--hooks {spec!r}: the {name!r} hook {function!r} is not callable",
                        EXIT_USAGE,
                    )
                hooks.add(name, function)
    return hooks


def _takes_no_arguments(function: Any) -> bool:
    try:
        inspect.signature(function).bind()
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): try the call
        pass
    return True


def _kind(found: Any) -> str:
    if callable(found):
        return "a callable that takes arguments"  # a single hook, or an ASGI app
    name = type(found).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _hook_specs(args: argparse.Namespace) -> list[str]:
    """``--hooks`` as given, else KOURIER_HOOKS (comma-separated), as KOURIER_SERVICE."""
    if args.hooks:
        return list(args.hooks)
    return [spec.strip() for spec in os.environ.get("KOURIER_HOOKS", "").split(",") if spec.strip()]


def cmd_run(args: argparse.Namespace) -> int:
    if args.reload:
        return reload.run_with_reload(args)
    if args.workers > 1:
        return _run_workers(args)
    from kourier.server.serve import serve

    app = load_app(args.app, factory=args.factory)
    hooks = load_hooks(_hook_specs(args))
    service = args.service or os.environ.get("KOURIER_SERVICE") or _default_service(args.app)
    settings = settings_from(
        args,
        concurrency=args.concurrency,
        root_path=args.root_path,
        access_log=args.access_log,
        consumption="queue" if args.queue else None,
    )
    if settings.access_log:
        from kourier.ops.access_log import access_log_hooks

        hooks.extend(access_log_hooks())

    def ready(instance: object) -> None:
        logging.getLogger("kourier").info("ready: service %r", service)

    health_port = args.health_port
    if health_port is None and os.environ.get("KOURIER_HEALTH_PORT"):
        health_port = port_number(os.environ["KOURIER_HEALTH_PORT"], "KOURIER_HEALTH_PORT")
    asyncio.run(
        serve(
            app,
            service,
            settings,
            hooks=hooks,
            http_port=args.http,
            health_port=health_port,
            stall_timeout=args.stall_timeout,
            topics=args.topic or (),
            ready=ready,
        )
    )
    return 0


def _run_workers(args: argparse.Namespace) -> int:
    """Run N worker processes of the same service; forward signals; wait for all.

    Each worker is a member of the service's consumer group. With a health port P,
    worker i serves its probes on P + i - 1. More workers than usable CPUs are started
    as asked, after a warning that says why they add nothing.
    """
    if args.http is not None:
        raise CLIError("--http with --workers: run one worker per HTTP port", EXIT_USAGE)
    crowded = crowded_cores(args.workers, usable_cpus())
    if crowded:
        logging.getLogger("kourier").warning("%s", crowded)
    argv = _without_options(sys.argv[1:], ("--workers", "--health-port", "--worker-index"))
    health = args.health_port
    if health is None and os.environ.get("KOURIER_HEALTH_PORT"):
        health = port_number(os.environ["KOURIER_HEALTH_PORT"], "KOURIER_HEALTH_PORT")
    env = {k: v for k, v in os.environ.items() if k != "KOURIER_HEALTH_PORT"}
    children = []
    for index in range(args.workers):
        extra = ["--worker-index", str(index + 1)]  # names the worker in its log lines
        if health is not None:
            extra += ["--health-port", str(health + index)]
        children.append(subprocess.Popen([sys.executable, "-m", "kourier", *argv, *extra], env=env))

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return _supervise(children, lambda: stopping)


def _supervise(children: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> int:
    """Wait for the workers; the first to end unasked stops the rest.

    A worker that dies (a dead task exits 1, an OOM kill, a crash) would otherwise leave
    the service at part of its strength with nothing said, and only the dead worker's own
    probe port turning red. Like one process whose task died, the whole run ends instead,
    with the worker's exit code (128 + n for signal n), so its supervisor (Kubernetes,
    systemd) restarts it.
    """
    log = logging.getLogger("kourier")
    codes: dict[int, int] = {}
    while len(codes) < len(children):
        pid, status = os.wait()
        index = next((i for i, c in enumerate(children) if c.pid == pid), None)
        if index is None:
            continue  # not a worker of ours
        code = os.waitstatus_to_exitcode(status)
        children[index].returncode = code
        codes[index] = code
        if stopping():
            continue
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        log.error(
            "worker %d of %d %s without being asked to stop: stopping the other workers "
            "(they drain first) so that the whole service is restarted",
            index + 1,
            len(children),
            how,
        )
        for child in children:
            if child.poll() is None:
                child.terminate()
        # As a shell reports a process a signal killed (128 + n); an unasked clean exit
        # is still a failure of the run.
        first = 128 - code if code < 0 else code or 1
        codes = {index: first}
        for other, child in enumerate(children):
            if other != index:
                child.wait()
                codes[other] = child.returncode
        return first
    return max(codes.values(), key=abs)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and taskset set)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def crowded_cores(workers: int, cpus: int) -> str | None:
    """Why ``workers`` workers on ``cpus`` CPUs is a waste, or None when it is not.

    A worker is one Python process: one core at most. Workers beyond the cores share
    them, and each then handles smaller batches per wake-up and evicts the others' code
    from the caches, so every request costs more CPU and the rate does not rise
    (docs/design.md, "Workers, cores and partitions").
    """
    if workers <= cpus:
        return None
    return (
        f"--workers {workers} on {cpus} CPU{'s' if cpus != 1 else ''}: workers beyond the "
        "CPUs share cores, which costs CPU per request and adds no throughput; "
        f"use --workers {cpus} or fewer"
    )


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` less the given options and their values (``--x V`` or ``--x=V``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            out.append(arg)
    return out


def _default_service(spec: str) -> str:
    return spec.partition(":")[0].rsplit(".", 1)[-1].replace("_", "-")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "run",
        help="serve an ASGI app over Kafka",
        description="Serve an ASGI app over Kafka, as uvicorn serves it over HTTP.",
        epilog="examples:\n  kourier run examples.orders:app --service orders\n"
        "  kourier run myservice.main:app --hooks myservice.hooks:hooks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("app", help="the app as module:attribute, e.g. myservice.main:app")
    parser.add_argument(
        "--service", help="service name (default: KOURIER_SERVICE or the module's last name)"
    )
    parser.add_argument("--factory", action="store_true", help="call the attribute to get the app")
    parser.add_argument("--concurrency", type=int, help="requests handled at once per instance")
    parser.add_argument(
        "--queue",
        action="store_true",
        help="take requests from a Kafka share group (queue mode: any number of instances, "
        "no per-key order, each request acknowledged on its own; needs "
        "KOURIER_KAFKA_CLIENT=confluent; default: KOURIER_CONSUMPTION or ordered)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N processes of the service (each a member of its consumer group; "
        "more than the CPUs or, in ordered mode, the partitions add no throughput)",
    )
    parser.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve /livez, /readyz and /metrics on PORT (default: KOURIER_HEALTH_PORT; none)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="liveness fails after this long without progress while work waits "
        "(keep it above drain timeout + 30 s: a rebalance may wait that long; default 120)",
    )
    parser.add_argument(
        "--topic",
        action="append",
        metavar="TOPIC",
        help="also consume this shared topic (repeatable): every service that does gets "
        "every request on it, for scatter-gather calls (Client.gather)",
    )
    parser.add_argument(
        "--hooks",
        action="append",
        metavar="MODULE:ATTR",
        help="attach service hooks (repeatable; default: KOURIER_HOOKS, comma-separated): "
        "a mapping of event name to a callable or a list of callables, a Hooks object, "
        f"or a function of no arguments that returns one; events: {', '.join(HOOK_NAMES)}",
    )
    parser.add_argument(
        "--http",
        type=int,
        metavar="PORT",
        help="serve the same app over HTTP on PORT as well (during a migration)",
    )
    parser.add_argument(
        "--root-path",
        metavar="PATH",
        help="the path prefix the app is mounted under, as uvicorn's --root-path: the "
        "ASGI root_path of every request (default: KOURIER_ROOT_PATH, none)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log one line per request on the kourier.access logger "
        "(default: KOURIER_ACCESS_LOG, on)",
    )
    # Set by --workers for each worker it starts: log lines say which worker wrote them.
    parser.add_argument("--worker-index", type=positive_int, help=argparse.SUPPRESS)
    reload.add_arguments(parser)
    parser.set_defaults(func=cmd_run)
