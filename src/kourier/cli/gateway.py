"""``kourier gateway``: serve the HTTP gateway (``kourier.gateway``) with uvicorn.

uvicorn comes with the ``gateway`` extra; without it the command says how to get it.
It must never start serving before its options are checked.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from kourier.cli.common import EXIT_USAGE, CLIError, import_attr, positive_int, settings_from

INSTALL_HINT = "kourier gateway needs uvicorn: pip install 'kourier[gateway]'"
logger = logging.getLogger("kourier.gateway")


def build_app(args: argparse.Namespace) -> Any:
    """The gateway the options describe, wrapped in each ``--middleware`` in order."""
    from kourier.gateway import Gateway, HostRouting, Limits

    settings = settings_from(args)
    try:
        gateway = Gateway.from_settings(
            settings,
            services=args.service,
            routing=HostRouting(args.host_suffix) if args.host_suffix else None,
            limits=Limits(
                max_body_bytes=args.max_body_bytes or settings.max_request_bytes,
                max_in_flight=args.max_in_flight,
            ),
            default_timeout=args.timeout,
            max_timeout=args.max_timeout,
            docs=not args.no_docs,
        )
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from exc
    app: Any = gateway
    for spec in args.middleware or ():
        wrap = import_attr(spec, "--middleware")
        if not callable(wrap):
            raise CLIError(f"--middleware {spec!r} is not callable", EXIT_USAGE)
        app = wrap(app)
    return app


def cmd_gateway(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise CLIError(INSTALL_HINT, EXIT_USAGE) from None
    if args.log_level is None:
        logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    app = build_app(args)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        lifespan="on",
        log_config=None,
        access_log=args.access_log,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        # uvicorn.Server offers a flag, not an event, for "listening".
        while not server.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if server.started:
            logger.info("ready: gateway on http://%s:%d", args.host, args.port)
        await task

    asyncio.run(serve())
    return 0 if server.started else 1


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "gateway",
        help="serve plain HTTP callers: each request becomes a call over Kafka",
        description="An HTTP gateway to the services on Kafka: /{service}/{path} is carried "
        "to the service as a kourier call and its reply streamed back. Serves /docs (the "
        "live API page), /livez, /readyz and /metrics. See docs/gateway.md.",
        epilog="examples:\n  kourier gateway --port 8080\n"
        "  kourier gateway --service orders --service billing\n"
        "  kourier gateway --middleware examples.gateway_auth:bearer_auth\n"
        "  curl -H 'X-Kourier-Timeout: 2' localhost:8080/orders/orders/17",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    parser.add_argument(
        "--service",
        action="append",
        metavar="NAME",
        help="serve only this service (repeatable); others get 404",
    )
    parser.add_argument(
        "--host-suffix",
        metavar=".SUFFIX",
        help="route by Host header: '<service><suffix>' (e.g. .api.example.com) "
        "instead of by the first path segment",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="deadline of a call without X-Kourier-Timeout (default: KOURIER_DEFAULT_TIMEOUT)",
    )
    parser.add_argument(
        "--max-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="largest X-Kourier-Timeout accepted (300)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=positive_int,
        metavar="N",
        help="largest request body; larger gets 413 (default: KOURIER_MAX_REQUEST_BYTES)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=1000,
        metavar="N",
        help="calls carried at once; one more gets 429 (1000)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not serve /docs")
    parser.add_argument("--root-path", default="", help="path prefix behind a proxy")
    parser.add_argument("--access-log", action="store_true", help="log each request")
    parser.add_argument(
        "--middleware",
        action="append",
        metavar="MODULE:ATTR",
        help="wrap the gateway: a callable taking the ASGI app and returning one "
        "(repeatable; the first given is innermost). The hook for auth.",
    )
    parser.set_defaults(func=cmd_gateway)
