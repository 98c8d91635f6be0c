"""``kourier services``: the services in the registry, their instances and health.

It only reads: it never creates the registry topic, nor writes to it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import json
import time
from datetime import UTC, datetime
from typing import Any

from kourier.cli.common import (
    EXIT_NO_SERVICE,
    EXIT_UNAVAILABLE,
    CLIError,
    connected,
    settings_from,
)
from kourier.registry import InstanceInfo, ServiceInfo


async def _services(args: argparse.Namespace) -> int:
    from kourier.registry import Directory

    if args.asyncapi:
        return await _asyncapi(args)
    async with connected(args) as (transport, settings):
        directory = Directory(transport, settings.replace(create_topics=False))
        try:
            found = await directory.services()
        finally:
            await directory.stop()
    if args.action == "describe":
        return _describe(found, args.name, as_json=args.json)
    if args.json:
        print(json.dumps({"services": [_service_fields(s) for s in found.values()]}, indent=2))
        return 0
    if not found:
        print("no services in the registry (none has started since it was created)")
    for service in found.values():
        _print_service(service)
    return 0


async def _asyncapi(args: argparse.Namespace) -> int:
    """Print the AsyncAPI 3.0 document of a service's Kafka side, built from the OpenAPI
    document its app serves (fetched over Kafka, as the gateway's /docs does)."""
    from kourier.client import Client
    from kourier.gateway.asyncapi import describe
    from kourier.gateway.openapi import OpenAPIUnavailable

    if args.action != "describe" or args.name is None:
        raise CLIError(
            "--asyncapi: say which service: kourier services describe NAME --asyncapi", 2
        )
    settings = settings_from(args)
    async with Client(settings) as client:
        try:
            document = await describe(client, args.name, settings)
        except OpenAPIUnavailable as exc:
            raise CLIError(f"{args.name}: no AsyncAPI document: {exc}", 1) from None
    print(json.dumps(document, indent=2))
    return 0


def _describe(found: dict[str, ServiceInfo], name: str | None, *, as_json: bool) -> int:
    if name is None:
        raise CLIError("describe: say which service: kourier services describe NAME", 2)
    service = found.get(name)
    if service is None:
        close = difflib.get_close_matches(name, sorted(found), n=3, cutoff=0.6)
        hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
        raise CLIError(f"no service {name!r} in the registry{hint}", EXIT_NO_SERVICE)
    if as_json:
        print(json.dumps(_service_fields(service, routes=True), indent=2))
    else:
        _print_service(service)
        print("routes:")
        for method, path in _routes(service):
            print(f"  {method} {path}")
    return 0 if service.live else EXIT_UNAVAILABLE


def _print_service(service: ServiceInfo) -> None:
    live = service.live
    health = "up" if live else "down"
    print(f"{service.name}: {health}, {len(live)} of {len(service.instances)} instances live")
    now = time.time()
    for instance in service.instances:
        state = "live" if instance.live_at(now) else "gone"
        print(
            f"  {instance.instance_id}  {state}  {instance.host}:{instance.pid}  "
            f"heartbeat {now - instance.heartbeat_at:.0f} s ago  "
            f"up since {_when(instance.started_at)}  kourier {instance.kourier_version}  "
            f"app {instance.app_version or '-'}"
        )


def _routes(service: ServiceInfo) -> list[tuple[str, str]]:
    """Every route any instance announced (instances of two versions may differ)."""
    routes = {route for instance in service.instances for route in instance.routes}
    return sorted(routes, key=lambda route: (route[1], route[0]))


def _service_fields(service: ServiceInfo, *, routes: bool = False) -> dict[str, Any]:
    now = time.time()
    fields: dict[str, Any] = {
        "name": service.name,
        "live": len(service.live),
        "instances": [_instance_fields(i, now) for i in service.instances],
    }
    if routes:
        fields["routes"] = [list(route) for route in _routes(service)]
    return fields


def _instance_fields(instance: InstanceInfo, now: float) -> dict[str, Any]:
    fields = dataclasses.asdict(instance)
    fields["routes"] = [list(route) for route in instance.routes]
    fields["live"] = instance.live_at(now)
    return fields


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    services = sub.add_parser(
        "services",
        help="list the services in the registry, their instances and health",
        description="List the services whose instances announce themselves in the registry "
        "(live: a heartbeat in the last 3 heartbeat intervals), or describe one: its "
        "instances and routes. 'describe' exits 6 for an unknown service and 7 when none "
        "of its instances is live.",
        epilog="examples:\n  kourier services\n  kourier services describe orders --json\n"
        "  kourier services describe orders --asyncapi > orders.asyncapi.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    services.add_argument("action", nargs="?", choices=["list", "describe"], default="list")
    services.add_argument("name", nargs="?", help="describe: the service")
    services.add_argument("--json", action="store_true", help="print JSON")
    services.add_argument(
        "--asyncapi",
        action="store_true",
        help="describe: print the AsyncAPI 3.0 document of the service's Kafka side "
        "(request, reply and dead-letter channels), built from its app's OpenAPI document",
    )
    services.set_defaults(func=lambda a: asyncio.run(_services(a)))
