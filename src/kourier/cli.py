"""The ``kourier`` command: run a service, call one, manage topics.

Errors print one clear line (no traceback unless ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from kourier.errors import KourierError, ReplyTimeout
from kourier.ops.logging import TransientKafkaNoise, configure_logging
from kourier.server.hooks import HOOK_NAMES, Hooks
from kourier.settings import Settings
from kourier.transports.base import Transport

EXIT_USAGE = 2
EXIT_TIMEOUT = 28  # curl's "operation timed out"
EXIT_HTTP_ERROR = 22  # curl's "HTTP page not retrieved" (with --fail)
EXIT_BROKER = 7  # curl's "failed to connect"


class CLIError(Exception):
    """A user-facing error: printed as one line."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _import_attr(spec: str, what: str) -> Any:
    """What ``spec`` (``module:attribute``, the attribute maybe dotted) names.

    ``what`` (``app``, ``--hooks``) begins each error line, to say which spec failed.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"{what} {spec!r} must be given as 'module:attribute'", EXIT_USAGE)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CLIError(
                f"{what} {spec!r}: could not import module {module_name!r}", EXIT_USAGE
            ) from exc
        raise
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise CLIError(
                f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}", EXIT_USAGE
            ) from None
    return found


def load_app(spec: str, *, factory: bool = False) -> Any:
    app = _import_attr(spec, "app")
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
        found = _import_attr(spec, "--hooks")
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


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(bootstrap_servers=args.bootstrap_servers, **extra)


# -- run ---------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _run_workers(args)
    from kourier.server.serve import serve

    app = load_app(args.app, factory=args.factory)
    hooks = load_hooks(_hook_specs(args))
    service = args.service or os.environ.get("KOURIER_SERVICE") or _default_service(args.app)
    settings = _settings(args, concurrency=args.concurrency)

    def ready(instance: object) -> None:
        logging.getLogger("kourier").info("ready: service %r", service)

    health_port = args.health_port
    if health_port is None and os.environ.get("KOURIER_HEALTH_PORT"):
        health_port = _port(os.environ["KOURIER_HEALTH_PORT"], "KOURIER_HEALTH_PORT")
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


def _port(text: str, name: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise CLIError(f"{name}: {text!r} is not a port number", EXIT_USAGE)
    return int(text)


def _run_workers(args: argparse.Namespace) -> int:
    """Run N worker processes of the same service; forward signals; wait for all.

    Each worker is a member of the service's consumer group. With a health port P,
    worker i serves its probes on P + i.
    """
    if args.http is not None:
        raise CLIError("--http with --workers: run one worker per HTTP port", EXIT_USAGE)
    argv = _without_options(sys.argv[1:], ("--workers", "--health-port"))
    health = args.health_port
    if health is None and os.environ.get("KOURIER_HEALTH_PORT"):
        health = _port(os.environ["KOURIER_HEALTH_PORT"], "KOURIER_HEALTH_PORT")
    env = {k: v for k, v in os.environ.items() if k != "KOURIER_HEALTH_PORT"}
    children = []
    for index in range(args.workers):
        extra = [] if health is None else ["--health-port", str(health + index)]
        children.append(subprocess.Popen([sys.executable, "-m", "kourier", *argv, *extra], env=env))

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


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


# -- request / send ----------------------------------------------------------------------


def _body(args: argparse.Namespace) -> tuple[list[tuple[str, str]], bytes | None]:
    headers: list[tuple[str, str]] = []
    for raw in args.header or []:
        name, sep, value = raw.partition(":")
        if not sep or not name.strip():
            raise CLIError(f"header {raw!r} must be 'Name: value'", EXIT_USAGE)
        headers.append((name.strip(), value.strip()))
    body: bytes | None = None
    if args.json is not None:
        try:
            json.loads(args.json)
        except ValueError as exc:
            raise CLIError(f"--json is not valid JSON: {exc}", EXIT_USAGE) from None
        body = args.json.encode()
        headers.append(("content-type", "application/json"))
    elif args.data is not None:
        body = args.data.encode()
    return headers, body


def _print_body(content: bytes, content_type: str) -> None:
    if "json" in content_type:
        try:
            print(json.dumps(json.loads(content), indent=2, ensure_ascii=False))
            return
        except ValueError:
            pass
    sys.stdout.write(content.decode("utf-8", "replace"))
    if content and not content.endswith(b"\n"):
        sys.stdout.write("\n")


async def _request(args: argparse.Namespace) -> int:
    from kourier.client import Client

    headers, body = _body(args)
    settings = _settings(args)
    async with Client(settings) as client:
        if args.stream:
            async with client.stream(
                args.service,
                args.method,
                args.path,
                headers=headers,
                content=body,
                timeout=args.timeout,
            ) as reply:
                status = reply.status_code
                if args.include:
                    _print_head(status, list(reply.headers.multi_items()))
                async for item in reply:
                    sys.stdout.write(item.decode("utf-8", "replace"))
                    sys.stdout.flush()
        else:
            response = await client.request(
                args.service,
                args.method,
                args.path,
                headers=headers,
                content=body,
                timeout=args.timeout,
            )
            status = response.status_code
            if args.include:
                _print_head(status, list(response.headers.multi_items()))
            _print_body(response.content, response.headers.get("content-type", ""))
    if args.fail and status >= 400:
        return EXIT_HTTP_ERROR
    return 0


def _print_head(status: int, headers: list[tuple[str, str]]) -> None:
    print(f"status: {status}")
    for name, value in headers:
        print(f"{name}: {value}")
    print()


async def _send(args: argparse.Namespace) -> int:
    from kourier.client import Client

    headers, body = _body(args)
    async with Client(_settings(args)) as client:
        request_id = await client.send(
            args.service, args.method, args.path, headers=headers, content=body
        )
    print(f"sent: {request_id}")
    return 0


# -- topics and dead letters ----------------------------------------------------------


@contextlib.asynccontextmanager
async def _connected(args: argparse.Namespace) -> AsyncIterator[tuple[Transport, Settings]]:
    from kourier.transports import kafka_transport

    settings = _settings(args)
    transport = kafka_transport(settings)
    await transport.start()
    try:
        yield transport, settings
    finally:
        await transport.stop()


async def _topics(args: argparse.Namespace) -> int:
    from kourier import admin

    async with _connected(args) as (transport, settings):
        if args.action == "ensure":
            await admin.ensure_topics(transport, settings, args.service)
        missing = 0
        for name, info in await admin.describe_topics(transport, settings, args.service):
            if info is None:
                missing += 1
                print(f"{name}: missing")
            else:
                print(
                    f"{name}: {info.partitions} partitions, "
                    f"replication factor {info.replication_factor}"
                )
    return 1 if missing else 0


async def _dead_letters(args: argparse.Namespace) -> int:
    from kourier import admin

    async with _connected(args) as (transport, settings):
        letters = await admin.read_dead_letters(transport, settings, args.service)
        if args.action == "list":
            for letter in letters:
                _print_letter(letter, as_json=args.json)
            if not args.json:
                print(f"{len(letters)} dead letters in {settings.dead_letter_topic(args.service)}")
            return 0
        if not args.all and not args.position:
            raise CLIError("replay: say which, with --position P:O (repeatable) or --all", 2)
        chosen = letters
        if not args.all:
            wanted = set(args.position)
            chosen = [letter for letter in letters if letter.position in wanted]
            unknown = wanted - {letter.position for letter in chosen}
            if unknown:
                raise CLIError(f"replay: no dead letter at {', '.join(sorted(unknown))}", 1)
        count = await admin.replay(transport, settings, args.service, chosen)
        print(f"replayed {count} dead letters to {settings.request_topic(args.service)}")
        return 0


def _print_letter(letter: Any, *, as_json: bool) -> None:
    fields = {
        "position": letter.position,
        "request_id": letter.header("kourier-id"),
        "method": letter.header("kourier-method"),
        "target": letter.header("kourier-target"),
        "attempts": letter.attempts,
        "reason": letter.reason,
        "source": letter.source,
    }
    if as_json:
        print(json.dumps(fields))
    else:
        print(
            f"{fields['position']}  {fields['method'] or '-'} {fields['target'] or '-'}  "
            f"id={fields['request_id'] or '-'}  attempts={fields['attempts']}  "
            f"reason: {fields['reason']}"
        )


# -- parser ------------------------------------------------------------------------------

EPILOG = """examples:
  kourier run examples.orders:app
  kourier request orders GET /orders/17
  kourier request orders POST /orders --json '{"item": "book"}' -H 'Authorization: Bearer x'
  kourier request orders GET /orders/feed --stream
  kourier send orders POST /events --json '{"kind": "ping"}'
  kourier topics ensure orders
  kourier dead-letters list orders

Every setting can also come from a KOURIER_<SETTING> environment variable
(e.g. KOURIER_BOOTSTRAP_SERVERS=127.0.0.1:9092)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kourier",
        description="Serve ASGI apps over Apache Kafka, and call them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers (default: KOURIER_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default: info for run, warning for the other commands",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="serve an ASGI app over Kafka",
        description="Serve an ASGI app over Kafka, as uvicorn serves it over HTTP.",
        epilog="examples:\n  kourier run examples.orders:app --service orders\n"
        "  kourier run myservice.main:app --hooks myservice.hooks:hooks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("app", help="the app as module:attribute, e.g. myservice.main:app")
    run.add_argument(
        "--service", help="service name (default: KOURIER_SERVICE or the module's last name)"
    )
    run.add_argument("--factory", action="store_true", help="call the attribute to get the app")
    run.add_argument("--concurrency", type=int, help="requests handled at once per instance")
    run.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="run N processes of the service (each a member of its consumer group)",
    )
    run.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve /livez, /readyz and /metrics on PORT (default: KOURIER_HEALTH_PORT; none)",
    )
    run.add_argument(
        "--stall-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="liveness fails after this long without progress while work waits "
        "(keep it above drain timeout + 30 s: a rebalance may wait that long; default 120)",
    )
    run.add_argument(
        "--topic",
        action="append",
        metavar="TOPIC",
        help="also consume this shared topic (repeatable): every service that does gets "
        "every request on it, for scatter-gather calls (Client.gather)",
    )
    run.add_argument(
        "--hooks",
        action="append",
        metavar="MODULE:ATTR",
        help="attach service hooks (repeatable; default: KOURIER_HOOKS, comma-separated): "
        "a mapping of event name to a callable or a list of callables, a Hooks object, "
        f"or a function of no arguments that returns one; events: {', '.join(HOOK_NAMES)}",
    )
    run.add_argument(
        "--http",
        type=int,
        metavar="PORT",
        help="serve the same app over HTTP on PORT as well (during a migration)",
    )
    run.set_defaults(func=cmd_run)

    for name, helptext in (
        ("request", "call a service and print its reply"),
        ("send", "send a one-way message (returns once the broker has it)"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("service")
        p.add_argument("method", type=str.upper)
        p.add_argument("path")
        p.add_argument("-H", "--header", action="append", help="'Name: value' (repeatable)")
        p.add_argument("--json", help="JSON body (sets content-type)")
        p.add_argument("-d", "--data", help="raw body")
        if name == "request":
            p.add_argument("--timeout", type=float, help="seconds to wait for the reply")
            p.add_argument("--stream", action="store_true", help="print items as they arrive")
            p.add_argument("-i", "--include", action="store_true", help="print status, headers")
            p.add_argument("-f", "--fail", action="store_true", help="exit 22 on status >= 400")
            p.set_defaults(func=lambda a: asyncio.run(_request(a)))
        else:
            p.set_defaults(func=lambda a: asyncio.run(_send(a)))
    topics = sub.add_parser(
        "topics",
        help="create or describe a service's topics",
        description="Create (ensure) or describe the topics a service needs: its request "
        "and dead-letter topics and the shared reply topic, with the configured partitions "
        "and replication (KOURIER_PARTITIONS, KOURIER_REPLICATION_FACTOR, ...).",
        epilog="examples:\n  kourier topics ensure orders\n  kourier topics describe orders",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    topics.add_argument("action", choices=["ensure", "describe"])
    topics.add_argument("service")
    topics.set_defaults(func=lambda a: asyncio.run(_topics(a)))

    dead = sub.add_parser(
        "dead-letters",
        help="list or replay a service's dead letters",
        description="List the records a service could not process, or publish copies of "
        "them to its request topic again. Replay does not delete them: replay each once.",
        epilog="examples:\n  kourier dead-letters list orders\n"
        "  kourier dead-letters replay orders --position 0:17\n"
        "  kourier dead-letters replay orders --all",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("service")
    dead.add_argument("--json", action="store_true", help="list: one JSON object per line")
    dead.add_argument(
        "--position", action="append", metavar="P:O", help="replay: partition:offset (repeat)"
    )
    dead.add_argument("--all", action="store_true", help="replay: every dead letter")
    dead.set_defaults(func=lambda a: asyncio.run(_dead_letters(a)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("info" if args.command == "run" else "warning")
    try:
        handler = configure_logging(level.upper())  # text, or JSON with KOURIER_LOG_FORMAT=json
    except ValueError as exc:
        print(f"kourier: error: KOURIER_LOG_FORMAT: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if level != "debug":
        # aiokafka reports transient broker states (a new topic's leader not yet known,
        # a rebalance) as errors and retries them itself; kourier reports what matters.
        quiet = logging.WARNING if args.command == "run" else logging.CRITICAL
        logging.getLogger("aiokafka").setLevel(quiet)
        handler.addFilter(TransientKafkaNoise())
    try:
        code: int = args.func(args)
        return code
    except KeyboardInterrupt:
        return 130
    except (CLIError, KourierError) as exc:
        if args.debug:
            raise
        code = exc.code if isinstance(exc, CLIError) else _exit_code(exc)
        print(f"kourier: error: {exc}", file=sys.stderr)
        return code


def _exit_code(exc: KourierError) -> int:
    from kourier.errors import BrokerError, SettingsError

    if isinstance(exc, ReplyTimeout):
        return EXIT_TIMEOUT
    if isinstance(exc, BrokerError):
        return EXIT_BROKER
    if isinstance(exc, SettingsError):
        return EXIT_USAGE
    return 1


if __name__ == "__main__":
    sys.exit(main())
