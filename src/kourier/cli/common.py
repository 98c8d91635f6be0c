"""What every ``kourier`` command shares: exit codes, the user-facing error, settings.

It must never import a command module: they import it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from kourier.settings import Settings
from kourier.transports.base import Transport

EXIT_USAGE = 2
EXIT_TIMEOUT = 28  # curl's "operation timed out"
EXIT_HTTP_ERROR = 22  # curl's "HTTP page not retrieved" (with --fail)
EXIT_BROKER = 7  # curl's "failed to connect"
EXIT_NO_SERVICE = 6  # curl's "could not resolve host": no such service
EXIT_UNAVAILABLE = 7  # curl's "failed to connect": no live instance of the service


class CLIError(Exception):
    """A user-facing error: printed as one line."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def import_attr(spec: str, what: str) -> Any:
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


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(bootstrap_servers=args.bootstrap_servers, **extra)


def port_number(text: str, name: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise CLIError(f"{name}: {text!r} is not a port number", EXIT_USAGE)
    return int(text)


@contextlib.asynccontextmanager
async def connected(args: argparse.Namespace) -> AsyncIterator[tuple[Transport, Settings]]:
    from kourier.transports import kafka_transport

    settings = settings_from(args)
    transport = kafka_transport(settings)
    await transport.start()
    try:
        yield transport, settings
    finally:
        await transport.stop()
