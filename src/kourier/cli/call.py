"""``kourier request`` and ``kourier send``: call a service from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from kourier.cli.common import EXIT_HTTP_ERROR, EXIT_USAGE, CLIError, settings_from


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
    settings = settings_from(args)
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
    async with Client(settings_from(args)) as client:
        request_id = await client.send(
            args.service, args.method, args.path, headers=headers, content=body
        )
        live = await client.lookup.is_live(args.service)
    print(f"sent: {request_id}")
    if not live:
        print(
            f"kourier: warning: no instance of {args.service!r} is live; the message waits "
            "in its topic until one starts",
            file=sys.stderr,
        )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
