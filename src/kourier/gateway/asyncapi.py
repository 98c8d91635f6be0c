"""An AsyncAPI 3.0 document of a service's Kafka side, built from its OpenAPI document.

The document names the service's three channels (request topic, the shared reply
topic, the dead-letter topic), the kourier record headers of each (docs/protocol.md)
and, for each HTTP operation of the service's OpenAPI document, a request message whose
payload is the operation's JSON request body and whose headers pin its method and
target, and a reply message whose payload is its JSON success response. OpenAPI's
``components.schemas`` are carried over, so their ``$ref``s still resolve.

It only transforms documents; it never calls a service (``describe`` does, through the
client it is given) and never changes its input.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from kourier import protocol
from kourier.gateway.openapi import Caller, fetch
from kourier.settings import Settings

VERSION = "3.0.0"
_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_ID_CHARS = re.compile(r"[^\w.\-]")
_PARAMETER = re.compile(r"\{[^}/]+\}")

_REQUEST_HEADERS: dict[str, Any] = {
    protocol.H_VERSION: {"type": "string", "const": "1", "description": "Wire format version."},
    protocol.H_TYPE: {
        "type": "string",
        "enum": ["request", "message"],
        "description": "request: two-way (a reply is expected); message: one-way.",
    },
    protocol.H_ID: {
        "type": "string",
        "pattern": r"^[A-Za-z0-9._:\-]{1,128}$",
        "description": "Request id; every reply record carries it back.",
    },
    protocol.H_METHOD: {"type": "string", "description": "HTTP method."},
    protocol.H_TARGET: {"type": "string", "description": "Origin-form target: path and query."},
    protocol.H_REPLY_TO: {
        "type": "string",
        "pattern": r"^.+:[0-9]+$",
        "description": "Two-way only: '<reply topic>:<partition>' where replies go.",
    },
    protocol.H_DEADLINE: {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "Absolute deadline, ms since the Unix epoch; later work is skipped.",
    },
    protocol.H_ATTEMPT: {
        "type": "string",
        "pattern": "^[0-9]+$",
        "description": "Attempt number of a retried request (1 when absent).",
    },
    "idempotency-key": {
        "type": "string",
        "description": "HTTP header: repeats with the same key within the window run once.",
    },
}
_REQUIRED = [protocol.H_VERSION, protocol.H_TYPE, protocol.H_ID, protocol.H_METHOD]

_REPLY_HEADERS: dict[str, Any] = {
    protocol.H_VERSION: {"type": "string", "const": "1"},
    protocol.H_TYPE: {"type": "string", "const": "reply"},
    protocol.H_ID: {"type": "string", "description": "The request's id."},
    protocol.H_SEQ: {"type": "string", "pattern": "^[0-9]+$", "description": "Item number."},
    protocol.H_STATUS: {
        "type": "string",
        "pattern": "^[1-5][0-9][0-9]$",
        "description": "HTTP status (item 0 only).",
    },
    protocol.H_END: {"type": "string", "const": "1", "description": "On the last item."},
    protocol.H_ERROR: {"type": "string", "description": "Error id of a failure in the service."},
    protocol.H_FROM: {"type": "string", "description": "The service that answered."},
}


def build(
    service: str, openapi: dict[str, Any] | None, settings: Settings | None = None
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``service``; ``openapi`` gives its messages."""
    settings = settings if settings is not None else Settings()
    openapi = openapi or {}
    operations = list(_operations(openapi))
    request_messages = {
        op_id: _request_message(op_id, method, path, op) for op_id, method, path, op in operations
    }
    reply_messages = {f"{op_id}.reply": _reply_message(op_id, op) for op_id, _, _, op in operations}
    if not operations:  # no OpenAPI document: any HTTP request, any reply
        request_messages = {"request": _request_message("request", "*", "/", {})}
        reply_messages = {"reply": _reply_message("request", {})}
    messages: dict[str, Any] = {**request_messages, **reply_messages}
    messages["deadLetter"] = _dead_letter_message()
    info = openapi.get("info", {})
    return {
        "asyncapi": VERSION,
        "info": {
            "title": f"{info.get('title') or service} over Kafka (kourier)",
            "version": str(info.get("version") or "unknown"),
            "description": (
                f"The Kafka side of service {service!r}: HTTP requests as records on its "
                "request topic, replies on the shared reply topic (the partition each "
                "request names), failures on its dead-letter topic. Wire format: kourier "
                "protocol v1."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": settings.bootstrap_servers.split(",")[0].strip(),
                "protocol": "kafka",
                "description": f"security protocol {settings.security_protocol}",
            }
        },
        "channels": {
            "requests": _channel(settings.request_topic(service), request_messages),
            "replies": _channel(settings.reply_topic, reply_messages),
            "deadLetters": _channel(
                settings.dead_letter_topic(service), {"deadLetter": messages["deadLetter"]}
            ),
        },
        "operations": _asyncapi_operations(request_messages, reply_messages),
        "components": {
            "schemas": copy.deepcopy(openapi.get("components", {}).get("schemas", {})),
            "messages": messages,
        },
    }


async def describe(
    client: Caller, service: str, settings: Settings | None = None, *, timeout: float = 5.0
) -> dict[str, Any]:
    """Fetch ``service``'s OpenAPI document over Kafka and build its AsyncAPI document.

    For ``kourier services describe NAME --asyncapi``. Raises what the call raises
    (``ServiceNotFound``, ``ReplyTimeout``...) or ``OpenAPIUnavailable``.
    """
    return build(service, await fetch(client, service, timeout=timeout), settings)


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(message id, METHOD, path template, operation) of each OpenAPI operation."""
    found = []
    seen: set[str] = set()
    for path, item in sorted(openapi.get("paths", {}).items()):
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if not isinstance(operation, dict):
                continue
            raw_id = operation.get("operationId") or f"{method}_{path}"
            op_id = _ID_CHARS.sub("_", raw_id).strip("_") or method
            while op_id in seen:
                op_id += "_"
            seen.add(op_id)
            found.append((op_id, method.upper(), path, operation))
    return found


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)}


def _channel(address: str, messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": address,
        "messages": {name: _ref("components", "messages", name) for name in messages},
    }


def _target_pattern(path: str) -> str:
    pieces = _PARAMETER.split(path)
    return "^" + "[^/?]+".join(re.escape(piece) for piece in pieces) + r"(\?.*)?$"


def _request_message(
    op_id: str, method: str, path: str, operation: dict[str, Any]
) -> dict[str, Any]:
    headers = copy.deepcopy(_REQUEST_HEADERS)
    if method != "*":
        headers[protocol.H_METHOD] = {"type": "string", "const": method}
        headers[protocol.H_TARGET] = {"type": "string", "pattern": _target_pattern(path)}
    for parameter in operation.get("parameters", []):
        if isinstance(parameter, dict) and parameter.get("in") == "header":
            headers[str(parameter["name"]).lower()] = copy.deepcopy(
                parameter.get("schema", {"type": "string"})
            )
    message: dict[str, Any] = {
        "name": op_id,
        "title": f"{method} {path}" if method != "*" else "Any HTTP request",
        "headers": {"type": "object", "properties": headers, "required": _REQUIRED},
        "correlationId": {"location": f"$message.header#/{protocol.H_ID}"},
    }
    if operation.get("summary"):
        message["summary"] = operation["summary"]
    body = _json_schema(operation.get("requestBody", {}))
    if body is not None:
        message["payload"] = body
    return message


def _reply_message(op_id: str, operation: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": f"{op_id}.reply",
        "title": f"Reply to {op_id}",
        "summary": "One reply item; a streamed body comes as several items in order.",
        "headers": {
            "type": "object",
            "properties": copy.deepcopy(_REPLY_HEADERS),
            "required": [protocol.H_VERSION, protocol.H_TYPE, protocol.H_ID, protocol.H_SEQ],
        },
        "correlationId": {"location": f"$message.header#/{protocol.H_ID}"},
    }
    responses = operation.get("responses", {})
    for status in sorted(responses):
        if str(status).startswith("2"):
            schema = _json_schema(responses[status])
            if schema is not None:
                message["payload"] = schema
            break
    return message


def _dead_letter_message() -> dict[str, Any]:
    headers = copy.deepcopy(_REQUEST_HEADERS)
    headers["kourier-dead-letter-reason"] = {"type": "string", "description": "What was wrong."}
    headers["kourier-dead-letter-source"] = {
        "type": "string",
        "description": "Where the record came from: topic[partition]@offset.",
    }
    return {
        "name": "deadLetter",
        "title": "A request the service could not process",
        "summary": "The original record (value and headers) with the reason it was set aside.",
        "headers": {"type": "object", "properties": headers},
    }


def _json_schema(holder: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a request body or response object, if it has one."""
    content = holder.get("content", {}) if isinstance(holder, dict) else {}
    for media_type, entry in content.items():
        if "json" in media_type and isinstance(entry, dict) and "schema" in entry:
            return copy.deepcopy(entry["schema"])  # type: ignore[no-any-return]
    return None


def _asyncapi_operations(
    request_messages: dict[str, Any], reply_messages: dict[str, Any]
) -> dict[str, Any]:
    return {
        "handleRequests": {
            "action": "receive",
            "title": "The service handles each request",
            "channel": _ref("channels", "requests"),
            "messages": [
                _ref("channels", "requests", "messages", name) for name in request_messages
            ],
            "reply": {
                "address": {
                    "location": f"$message.header#/{protocol.H_REPLY_TO}",
                    "description": "The reply topic and partition the request names.",
                },
                "channel": _ref("channels", "replies"),
                "messages": [
                    _ref("channels", "replies", "messages", name) for name in reply_messages
                ],
            },
        },
        "deadLetter": {
            "action": "send",
            "title": "The service sets aside what it cannot process",
            "channel": _ref("channels", "deadLetters"),
            "messages": [_ref("channels", "deadLetters", "messages", "deadLetter")],
        },
    }
