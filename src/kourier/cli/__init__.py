"""The ``kourier`` command: run a service, call one, manage topics.

Errors print one clear line (no traceback unless ``--debug``) and exit non-zero. Each
command group lives in a module of its own; this one builds the parser and runs it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Collection, Sequence

from kourier import __version__
from kourier.cli import admin, call, gateway, kafka, run, services
from kourier.cli.common import (
    EXIT_BROKER,
    EXIT_HTTP_ERROR,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CLIError,
    positive_int,
)
from kourier.cli.run import load_app, load_hooks
from kourier.errors import KourierError, ReplyTimeout
from kourier.ops.logging import TransientKafkaNoise, configure_logging

__all__ = [
    "EXIT_BROKER",
    "EXIT_HTTP_ERROR",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "CLIError",
    "build_parser",
    "load_app",
    "load_hooks",
    "main",
    "positive_int",
]


EPILOG = """examples:
  kourier run examples.orders:app
  kourier request orders GET /orders/17
  kourier request orders POST /orders --json '{"item": "book"}' -H 'Authorization: Bearer x'
  kourier request orders GET /orders/feed --stream
  kourier send orders POST /events --json '{"kind": "ping"}'
  kourier topics ensure orders
  kourier dead-letters list orders
  kourier services
  kourier services describe orders

Every setting can also come from a KOURIER_<SETTING> environment variable
(e.g. KOURIER_BOOTSTRAP_SERVERS=127.0.0.1:9092)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kourier",
        description="Serve ASGI apps over Apache Kafka, and call them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kourier {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run.add_parser(sub)
    call.add_parsers(sub)
    admin.add_parsers(sub)
    services.add_parsers(sub)
    gateway.add_parsers(sub)
    kafka.add_parsers(sub)
    accept_global_options_after_commands(parser)
    return parser


def add_global_options(
    parser: argparse._ActionsContainer, *, default: object = None, skip: Collection[str] = ()
) -> None:
    """The options every command takes, before or after its name (less those in ``skip``,
    which a command defines itself)."""
    if "--debug" not in skip:
        parser.add_argument(
            "--debug",
            action="store_true",
            default=default or False,
            help="show tracebacks on errors",
        )
    if "--bootstrap-servers" not in skip:
        parser.add_argument(
            "--bootstrap-servers",
            metavar="HOST:PORT[,...]",
            default=default,
            help="Kafka brokers (default: KOURIER_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
        )
    if "--log-level" not in skip:
        parser.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            default=default,
            help="default: info for run, warning for the other commands",
        )


def accept_global_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """Give every command (and sub-command) the global options too.

    Their default there is SUPPRESS: a command's parser sets them only when they are
    given after the command, so ``kourier --debug request ...`` still counts. A command
    that defines one of them itself keeps its own.
    """
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for command in {id(p): p for p in action.choices.values()}.values():
            group = command.add_argument_group("global options (also before the command)")
            add_global_options(
                group, default=argparse.SUPPRESS, skip=set(command._option_string_actions)
            )
            accept_global_options_after_commands(command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("info" if args.command == "run" else "warning")
    try:
        # Text, or JSON with KOURIER_LOG_FORMAT=json; a --workers worker says which it is.
        handler = configure_logging(
            level.upper(),
            worker=getattr(args, "worker_index", None),
            batched=args.command == "run",  # a service's access log: a line per request
        )
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
    from kourier.cli.common import EXIT_NO_SERVICE, EXIT_UNAVAILABLE
    from kourier.errors import BrokerError, ServiceNotFound, ServiceUnavailable, SettingsError

    if isinstance(exc, ServiceNotFound):
        return EXIT_NO_SERVICE
    if isinstance(exc, ServiceUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(exc, ReplyTimeout):
        return EXIT_TIMEOUT
    if isinstance(exc, BrokerError):
        return EXIT_BROKER
    if isinstance(exc, SettingsError):
        return EXIT_USAGE
    return 1


if __name__ == "__main__":
    sys.exit(main())
