"""The live API page: ``/docs`` lists the services and shows each one's API, callable.

``GET /docs`` is one HTML page: a table of the services the catalog knows (instances,
versions, health) and Swagger UI over each service's OpenAPI document, fetched over
Kafka and rewritten so that "try it" calls go through this gateway. Swagger UI's files
come from the ``swagger-ui-py`` package (the ``gateway`` extra), served from this
process: the page loads nothing from the internet. Also served: ``/docs/services.json``,
``/docs/{service}/openapi.json`` and ``/docs/{service}/asyncapi.json``.

It must never answer a path outside ``/docs``, and never serve a file outside the
fixed list of Swagger UI assets.
"""

from __future__ import annotations

import html
import importlib.util
import json
import logging
import mimetypes
from pathlib import Path
from typing import Any

from kourier.errors import KourierError, ReplyTimeout, ServiceNotFound
from kourier.gateway import asyncapi, problems
from kourier.gateway.asgi import Scope, Send, answer, answer_json, base_url
from kourier.gateway.catalog import Catalog, ServiceView
from kourier.gateway.openapi import OpenAPICache, OpenAPIUnavailable, for_gateway
from kourier.gateway.routing import Routing
from kourier.settings import Settings

logger = logging.getLogger("kourier.gateway")

PREFIX = "/docs"
ASSETS = (
    "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js",
    "swagger-ui.css",
    "favicon-32x32.png",
)
INSTALL_HINT = "the docs page needs Swagger UI's files: pip install 'kourier[gateway]'"


def assets_dir() -> Path | None:
    """Where the installed ``swagger-ui-py`` keeps Swagger UI's files, or None."""
    # Found without importing the package: its __init__ loads web-framework glue.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / ASSETS[0]).is_file() else None


class DocsPage:
    """Answers the requests under ``/docs``."""

    def __init__(
        self,
        catalog: Catalog | None,
        openapi: OpenAPICache,
        routing: Routing,
        settings: Settings,
    ) -> None:
        self.catalog = catalog
        self.openapi = openapi
        self.routing = routing
        self.settings = settings
        self.assets = assets_dir()

    @staticmethod
    def handles(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def __call__(self, scope: Scope, path: str, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await answer(send, 405, b"method not allowed", headers=[(b"allow", b"GET, HEAD")])
            return
        rest = path[len(PREFIX) :].strip("/")
        if rest == "":
            await self._page(scope, send)
        elif rest == "services.json":
            await answer_json(send, await self._services_json())
        elif rest.startswith("static/"):
            await self._asset(rest.removeprefix("static/"), send)
        elif rest.endswith(("/openapi.json", "/asyncapi.json")) and rest.count("/") == 1:
            service, _, document = rest.partition("/")
            await self._document(scope, service, document, send)
        else:
            await answer(send, 404, b"not found")

    async def _services(self) -> list[ServiceView]:
        if self.catalog is None:
            return []
        return [info for _, info in sorted((await self.catalog.services()).items())]

    async def _services_json(self) -> list[dict[str, Any]]:
        return [
            {
                "name": info.name,
                "live": info.live,
                "instances": [
                    {
                        "instance_id": instance.instance_id,
                        "host": instance.host,
                        "pid": instance.pid,
                        "kourier_version": instance.kourier_version,
                        "app_version": instance.app_version,
                        "live": instance.live,
                    }
                    for instance in info.instances
                ],
            }
            for info in await self._services()
        ]

    async def _document(self, scope: Scope, service: str, kind: str, send: Send) -> None:
        known = {info.name for info in await self._services()}
        if self.catalog is not None and service not in known:
            await problems.not_found(service, sorted(known)).send(send)
            return
        try:
            document = await self.openapi.get(service)
        except OpenAPIUnavailable as exc:
            await problems.bad_reply(service, str(exc), None).send(send)
            return
        except ReplyTimeout:
            await problems.timed_out(service, self.openapi.timeout, None).send(send)
            return
        except ServiceNotFound as exc:
            await problems.not_found(service, why=str(exc)).send(send)
            return
        except KourierError as exc:
            await problems.unavailable(service, f"{exc}.").send(send)
            return
        if kind == "openapi.json":
            url = self.routing.server_url(base_url(scope), service)
            await answer_json(send, for_gateway(document, url, service))
        else:
            await answer_json(send, asyncapi.build(service, document, self.settings))

    async def _asset(self, name: str, send: Send) -> None:
        if self.assets is None or name not in ASSETS:
            await answer(send, 404, b"not found" if self.assets else INSTALL_HINT.encode())
            return
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        body = (self.assets / name).read_bytes()
        cache = [(b"cache-control", b"public, max-age=86400")]
        await answer(send, 200, body, content_type.encode("ascii"), cache)

    async def _page(self, scope: Scope, send: Send) -> None:
        root = scope.get("root_path", "")
        services = await self._services()
        knows = getattr(self.catalog, "knows_instances", True)
        body = render(services, root, knows_instances=knows, has_assets=self.assets is not None)
        await answer(send, 200, body.encode("utf-8"), b"text/html; charset=utf-8")


def _health(info: ServiceView, knows_instances: bool) -> str:
    if not knows_instances:
        return "not known (no registry)"
    live = sum(1 for instance in info.instances if instance.live)
    return "live" if info.live and live else "no live instance"


def _row(info: ServiceView, root: str, knows_instances: bool) -> str:
    name = html.escape(info.name)
    versions = sorted({instance.app_version or "-" for instance in info.instances})
    kourier = sorted({instance.kourier_version for instance in info.instances})
    health = _health(info, knows_instances)
    state = "live" if health == "live" else "down" if knows_instances else "unknown"
    count = str(len(info.instances)) if knows_instances else "-"
    return (
        f'<tr data-service="{name}" class="{state}"><td class="name">{name}</td>'
        f"<td>{count}</td><td>{html.escape(', '.join(versions) or '-')}</td>"
        f"<td>{html.escape(', '.join(kourier) or '-')}</td><td>{html.escape(health)}</td>"
        f'<td><a href="{root}{PREFIX}/{name}/openapi.json">OpenAPI</a> '
        f'<a href="{root}{PREFIX}/{name}/asyncapi.json">AsyncAPI</a></td></tr>'
    )


def render(
    services: list[ServiceView], root: str, *, knows_instances: bool, has_assets: bool
) -> str:
    """The HTML of the docs page."""
    rows = "\n".join(_row(info, root, knows_instances) for info in services) or (
        '<tr><td colspan="6">No services known to this gateway.</td></tr>'
    )
    urls = [
        {"url": f"{root}{PREFIX}/{info.name}/openapi.json", "name": info.name} for info in services
    ]
    config = json.dumps(urls).replace("</", "<\\/")
    static = f"{root}{PREFIX}/static"
    missing = "" if has_assets else f"<p class='warning'>{html.escape(INSTALL_HINT)}</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>kourier gateway: services</title>
<link rel="icon" href="{static}/favicon-32x32.png">
<link rel="stylesheet" href="{static}/swagger-ui.css">
<style>
body {{ margin: 0; font-family: sans-serif; }}
#services {{ margin: 1em 2em; border-collapse: collapse; }}
#services td, #services th {{ border: 1px solid #ccc; padding: .3em .8em; text-align: left; }}
#services tr.live td:nth-child(5) {{ color: #0a7d24; }}
#services tr.down td:nth-child(5) {{ color: #b00020; }}
h1 {{ margin: .6em 1em 0; font-size: 1.4em; }}
.warning {{ color: #b00020; margin: 1em 2em; }}
</style></head>
<body>
<h1>Services on Kafka, through this gateway</h1>
<table id="services">
<tr><th>service</th><th>instances</th><th>app versions</th><th>kourier</th>
<th>health</th><th>documents</th></tr>
{rows}
</table>
{missing}
<div id="swagger-ui"></div>
<script src="{static}/swagger-ui-bundle.js"></script>
<script src="{static}/swagger-ui-standalone-preset.js"></script>
<script>
const urls = {config};
if (urls.length && window.SwaggerUIBundle) {{
  window.ui = SwaggerUIBundle({{
    urls: urls,
    dom_id: "#swagger-ui",
    deepLinking: true,
    tryItOutEnabled: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  }});
}}
</script>
</body></html>
"""
