"""An app that answers with what it saw of its ASGI scope, to compare servers with.

Served by uvicorn and by kourier in tests/server/test_scope_like_uvicorn.py, and by
`kourier run tests.scope_app:app` in tests/e2e/test_cli_ux.py.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def what_i_saw(request: Request) -> JSONResponse:
    client = request.client
    return JSONResponse(
        {
            "root_path": request.scope["root_path"],
            "path": request.scope["path"],
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "scheme": request.url.scheme,
            "client_host_is_text": isinstance(client.host, str) if client else None,
            "client_port_is_int": isinstance(client.port, int) if client else None,
            "url_path": request.url.path,
            "link": str(request.url_for("where", name="x")),
            "headers": [[k.decode(), v.decode()] for k, v in request.scope["headers"]],
        }
    )


app = Starlette(routes=[Route("/where/{name}", what_i_saw, name="where")])
