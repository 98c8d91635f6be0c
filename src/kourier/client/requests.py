"""What a call sends: its method, target, headers and body, as the wire format wants them.

``Client`` builds each request from a call's arguments with these and checks the
method here; they never touch a broker. Anything already checked once (a method, a
path that needs no encoding) is remembered, so a burst of calls (``Client.enqueue``)
pays the pattern match once, not per message.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

Headers = (
    httpx.Headers | Mapping[str, str] | Sequence[tuple[str, str]] | Sequence[tuple[bytes, bytes]]
)
Primitive = str | int | float | bool | None
Params = httpx.QueryParams | Mapping[str, Primitive | Sequence[Primitive]] | str
Key = str | bytes

#: An HTTP method: a token.
_METHOD = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}$")
#: A target httpx would leave as it is: unreserved, sub-delims, ":@/?" and %XX only.
_SAFE_TARGET = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_TARGET_BASE = "http://kourier"
#: Paths already found to need no encoding (a set lookup instead of the pattern).
_safe_targets: set[str] = set()
_TARGETS_KEPT = 1024
#: Methods already found valid (a set lookup instead of the pattern on every call).
_checked_methods: set[str] = set()
_METHODS_KEPT = 64


def check_method(method: str) -> None:
    """``ValueError`` unless ``method`` is an HTTP method (a token of 1-32 characters)."""
    if method in _checked_methods:
        return
    if not _METHOD.match(method):
        raise ValueError(f"{method[:40]!r} is not an HTTP method")
    if len(_checked_methods) < _METHODS_KEPT:
        _checked_methods.add(method)


_JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def user_headers(headers: Headers | None, *, json_body: bool) -> list[tuple[bytes, bytes]]:
    """The call's headers as raw pairs; a JSON body adds its content type unless given."""
    if headers is None:
        return [_JSON_CONTENT_TYPE] if json_body else []
    if headers.__class__ is dict:
        # The common case, a dict of ASCII strings: the pairs httpx would make, without it.
        try:
            pairs = [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        except (AttributeError, UnicodeEncodeError):
            pass  # bytes, numbers or non-ASCII: httpx's rules below
        else:
            if json_body and not any(name.lower() == b"content-type" for name, _ in pairs):
                pairs.append(_JSON_CONTENT_TYPE)
            return pairs
    elif headers.__class__ is list and not json_body:
        # Raw pairs (``KourierTransport`` passes httpx's ``headers.raw``): httpx would
        # keep bytes as they are, so the list is the answer once every item is bytes.
        pairs = headers
        if all(
            pair.__class__ is tuple
            and len(pair) == 2
            and pair[0].__class__ is bytes
            and pair[1].__class__ is bytes
            for pair in pairs
        ):
            return list(pairs)
    parsed = httpx.Headers(headers)
    if json_body and "content-type" not in parsed:
        parsed["content-type"] = "application/json"
    return list(parsed.raw)


def body_of(content: bytes | str | None, json: Any) -> bytes:
    """The request body: ``content`` as bytes, or ``json`` encoded compactly."""
    if content is not None and json is not None:
        raise ValueError("give content or json, not both")
    if json is not None:
        return jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if isinstance(content, str):
        return content.encode("utf-8")
    return bytes(content or b"")


def target_of(path: str, params: Params | None) -> str:
    """The origin-form target: the path, percent-encoded as needed, and the query."""
    if not path.startswith("/"):
        raise ValueError(f"path {path[:60]!r} must start with '/'")
    if params is None:
        if path in _safe_targets:
            return path
        if _SAFE_TARGET.fullmatch(path):
            if len(_safe_targets) < _TARGETS_KEPT:
                _safe_targets.add(path)
            return path  # nothing to encode: the common case, without parsing a URL
    # Under a scheme and host, so that a path starting with "//" stays a path.
    url = httpx.URL(_TARGET_BASE + path)
    if params is not None:
        url = url.copy_merge_params(params)
    return url.raw_path.decode("ascii")
