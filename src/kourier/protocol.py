"""Wire format v1: requests, one-way messages and replies <-> Kafka record parts.

A record is (key, value, headers). This module turns envelopes into those parts and
back, and nothing else: it never touches a broker. docs/protocol.md is the spec;
keep the two in step.

Decoding never trusts its input: any malformed record raises ``ProtocolError`` with a
message that says what is wrong, so the consumer can log it, dead-letter it and go on.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kourier.errors import ProtocolError

VERSION = b"1"
PREFIX = "kourier-"

H_VERSION = "kourier-v"
H_TYPE = "kourier-type"
H_ID = "kourier-id"
H_REPLY_TO = "kourier-reply-to"
H_METHOD = "kourier-method"
H_TARGET = "kourier-target"
H_DEADLINE = "kourier-deadline"
H_STATUS = "kourier-status"
H_SEQ = "kourier-seq"
H_END = "kourier-end"
H_ERROR = "kourier-error"
H_ATTEMPT = "kourier-attempt"
#: Optional on replies: which service answered (scatter-gather groups items by it).
H_FROM = "kourier-from"
#: Optional on requests: the URL scheme the caller used, ``https``; absent means http.
H_SCHEME = "kourier-scheme"
SCHEMES = ("http", "https")
#: Optional on requests: the id of the request whose handler made this call.
H_PARENT = "kourier-parent"
#: Optional on cancels: why the caller stopped waiting.
H_REASON = "kourier-reason"

TYPE_REQUEST = b"request"
TYPE_MESSAGE = b"message"
TYPE_REPLY = b"reply"
TYPE_CANCEL = b"cancel"

# Bounds that keep a hostile record from costing more than it should.
MAX_ID_LENGTH = 128
MAX_TARGET_LENGTH = 16_384
MAX_HEADERS = 256

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}$")
_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-z]{1,256}$")
_REASON = re.compile(rb"^[a-z0-9_-]{1,64}$")

KafkaHeaders = list[tuple[str, bytes]]
HttpHeaders = list[tuple[bytes, bytes]]


class _RequestIds:
    """Request ids: 20 random hex digits per process, then a 12-digit counter.

    As unique as a UUID4 in practice (80 random bits tell the processes apart, the
    counter the ids of one process), at a seventh of the cost: no system call per id.
    A forked child draws a prefix of its own.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(10).hex()
        self.counter = itertools.count(secrets.randbelow(1 << 32))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


_request_ids = _RequestIds()
os.register_at_fork(after_in_child=_request_ids.reseed)


def new_request_id() -> str:
    """A fresh request id: 32 lower-case hex digits, unique across processes."""
    return _request_ids.next()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ReplyAddress:
    """Where the replies to a request go: one partition of a reply topic."""

    topic: str
    partition: int

    def encode(self) -> bytes:
        return f"{self.topic}:{self.partition}".encode("ascii")

    @property
    def label(self) -> str:
        """``topic:partition``: the caller as a service knows it (its ASGI client host)."""
        return f"{self.topic}:{self.partition}"

    @classmethod
    def decode(cls, raw: bytes) -> ReplyAddress:
        topic, sep, partition = raw.decode("ascii", "replace").rpartition(":")
        if not sep or not topic or not partition.isdigit() or len(topic) > 249:
            raise ProtocolError(f"{H_REPLY_TO} {raw[:80]!r} is not 'topic:partition'")
        return cls(topic, int(partition))


@dataclass(slots=True)
class Request:
    """A call to a service: two-way when ``reply_to`` is set, one-way when it is not."""

    id: str
    method: str
    target: str
    headers: HttpHeaders = field(default_factory=list)
    body: bytes = b""
    deadline_ms: int | None = None
    reply_to: ReplyAddress | None = None
    key: bytes | None = None
    attempt: int = 1
    #: The scheme of the URL the caller used (``https://orders/...``): the ASGI scheme.
    scheme: str = "http"
    #: The request whose handler made this call (``kourier-parent``), if any.
    parent_id: str | None = None

    @property
    def one_way(self) -> bool:
        return self.reply_to is None

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(slots=True)
class Reply:
    """One record of a reply. Item 0 carries the status and headers; the last, ``end``."""

    request_id: str
    seq: int
    body: bytes = b""
    end: bool = True
    status: int | None = None
    headers: HttpHeaders = field(default_factory=list)
    error_id: str | None = None
    responder: str | None = None


def is_valid_request_id(value: str) -> bool:
    """True if ``value`` may be used as a request id on the wire."""
    return value.isascii() and _ID.match(value.encode("ascii")) is not None


def validate_user_headers(headers: Iterable[tuple[bytes, bytes]]) -> HttpHeaders:
    """Lower-case HTTP header names; refuse names that would collide with the protocol."""
    out: HttpHeaders = []
    for name, value in headers:
        lowered = _valid_names.get(name) if name.__class__ is bytes else None
        if lowered is None:
            lowered = _valid_name(name)
        out.append((lowered, value))
    return out


#: HTTP header names a caller sent -> their checked lower-case form (see _user_names).
_valid_names: dict[bytes, bytes] = {}


def _valid_name(name: bytes) -> bytes:
    lowered = name.lower()
    text = lowered.decode("latin-1")
    if text.startswith(PREFIX):
        raise ProtocolError(f"header {text!r}: names starting with {PREFIX!r} are reserved")
    if not _HEADER_NAME.match(text):
        raise ProtocolError(f"header {text[:60]!r} is not a valid HTTP header name")
    if len(_valid_names) >= _USER_NAMES_MAX:
        _valid_names.clear()
    _valid_names[bytes(name)] = lowered
    return lowered


def encode_request(request: Request) -> tuple[bytes | None, bytes, KafkaHeaders]:
    headers: KafkaHeaders = [
        (H_VERSION, VERSION),
        (H_TYPE, TYPE_MESSAGE if request.reply_to is None else TYPE_REQUEST),
        (H_ID, request.id.encode("ascii")),
        (H_METHOD, request.method.encode("ascii")),
        (H_TARGET, request.target.encode("utf-8")),
    ]
    if request.reply_to is not None:
        headers.append((H_REPLY_TO, request.reply_to.encode()))
    if request.deadline_ms is not None:
        headers.append((H_DEADLINE, str(request.deadline_ms).encode("ascii")))
    if request.attempt != 1:
        headers.append((H_ATTEMPT, str(request.attempt).encode("ascii")))
    if request.scheme != "http":
        headers.append((H_SCHEME, request.scheme.encode("ascii")))
    if request.parent_id is not None:
        headers.append((H_PARENT, request.parent_id.encode("ascii")))
    headers.extend((name.decode("latin-1"), value) for name, value in request.headers)
    return request.key, request.body, headers


def encode_reply(reply: Reply) -> tuple[bytes, bytes, KafkaHeaders]:
    headers: KafkaHeaders = [
        (H_VERSION, VERSION),
        (H_TYPE, TYPE_REPLY),
        (H_ID, reply.request_id.encode("ascii")),
        (H_SEQ, str(reply.seq).encode("ascii")),
    ]
    if reply.end:
        headers.append((H_END, b"1"))
    if reply.status is not None:
        headers.append((H_STATUS, str(reply.status).encode("ascii")))
    if reply.error_id is not None:
        headers.append((H_ERROR, reply.error_id.encode("ascii")))
    if reply.responder is not None:
        headers.append((H_FROM, reply.responder.encode("ascii")))
    headers.extend((name.decode("latin-1"), value) for name, value in reply.headers)
    return reply.request_id.encode("ascii"), reply.body, headers


def _split(headers: Sequence[tuple[str, bytes]]) -> tuple[dict[str, bytes], HttpHeaders]:
    if len(headers) > MAX_HEADERS + 16:
        raise ProtocolError(f"{len(headers)} headers is more than the {MAX_HEADERS} allowed")
    own: dict[str, bytes] = {}
    user: HttpHeaders = []
    for name, value in headers:
        # Exact types first: the common case costs two identity checks, not isinstance.
        if value.__class__ is not bytes:
            if value is None:
                value = b""
            elif isinstance(value, bytes | bytearray):
                value = bytes(value)
            else:
                raise ProtocolError("a header is not a (str, bytes) pair")
        if name.__class__ is not str and not isinstance(name, str):
            raise ProtocolError("a header is not a (str, bytes) pair")
        if name.startswith(PREFIX):
            if name in own:
                raise ProtocolError(f"header {name!r} appears twice")
            own[name] = value
        else:
            wire_name = _user_names.get(name)
            if wire_name is None:
                wire_name = _user_name(name)
            user.append((wire_name, value))
    version = own.get(H_VERSION)
    if version is None:
        raise ProtocolError(f"no {H_VERSION} header: not a kourier record")
    if version != VERSION:
        raise ProtocolError(f"unsupported wire format version {version[:16]!r}")
    return own, user


#: HTTP header names seen on the wire -> their lower-case bytes; a service sees the same
#: few names over and over, and the look-up replaces a lower(), a regex and an encode.
_user_names: dict[str, bytes] = {}
_USER_NAMES_MAX = 4096


def _user_name(name: str) -> bytes:
    lowered = name.lower()
    if not _HEADER_NAME.match(lowered):
        raise ProtocolError(f"header {name[:60]!r} is not a valid HTTP header name")
    wire_name = lowered.encode("latin-1")
    if len(_user_names) >= _USER_NAMES_MAX:
        _user_names.clear()
    _user_names[name] = wire_name
    return wire_name


def _required(own: dict[str, bytes], name: str) -> bytes:
    value = own.get(name)
    if not value:
        raise ProtocolError(f"missing {name} header")
    return value


def _int(own: dict[str, bytes], name: str) -> int | None:
    raw = own.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise ProtocolError(f"{name} {raw[:40]!r} is not a non-negative integer")
    return int(raw)


def record_type(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == H_TYPE:
            return value
    return None


def request_id_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The request id of a record, if it has a sane one (for error replies to bad records)."""
    for name, value in headers:
        if name == H_ID and isinstance(value, bytes) and _ID.match(value):
            return value.decode("ascii")
    return None


def reply_to_of(headers: Sequence[tuple[str, bytes]]) -> ReplyAddress | None:
    for name, value in headers:
        if name == H_REPLY_TO and isinstance(value, bytes):
            try:
                return ReplyAddress.decode(value)
            except ProtocolError:
                return None
    return None


_NOT_IN_TARGET = re.compile(rb"[ \r\n\t#]")
#: Reply addresses seen -> decoded (immutable, so shared): one per caller partition.
_reply_addresses: dict[bytes, ReplyAddress] = {}
_REPLY_ADDRESSES_MAX = 4096


def decode_request(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> Request:
    own, user = _split(headers)
    kind = _required(own, H_TYPE)
    if kind not in (TYPE_REQUEST, TYPE_MESSAGE):
        raise ProtocolError(f"{H_TYPE} {kind[:20]!r} is not a request or a message")
    raw_id = _required(own, H_ID)
    if not _ID.match(raw_id):
        raise ProtocolError(f"{H_ID} {raw_id[:40]!r} is not a valid request id")
    method_raw = _required(own, H_METHOD)
    method = _methods.get(method_raw)
    if method is None:
        method = _method(method_raw)
    target_raw = _required(own, H_TARGET)
    target = _targets.get(target_raw)
    if target is None:
        target = _target(target_raw)
    reply_to = None
    if kind == TYPE_REQUEST:
        raw_reply_to = _required(own, H_REPLY_TO)
        reply_to = _reply_addresses.get(raw_reply_to)
        if reply_to is None:
            reply_to = ReplyAddress.decode(raw_reply_to)
            if len(_reply_addresses) >= _REPLY_ADDRESSES_MAX:
                _reply_addresses.clear()
            _reply_addresses[raw_reply_to] = reply_to
    attempt = _int(own, H_ATTEMPT) or 1
    parent = own.get(H_PARENT)
    if parent is not None and not _ID.match(parent):
        raise ProtocolError(f"{H_PARENT} {parent[:40]!r} is not a valid request id")
    return Request(
        raw_id.decode("ascii"),
        method,
        target,
        user,
        value or b"",
        _int(own, H_DEADLINE),
        reply_to,
        key,
        attempt,
        _scheme(own),
        None if parent is None else parent.decode("ascii"),
    )


#: Methods and targets seen -> checked and decoded: a service sees the same few over and
#: over, and a look-up replaces the checks (bounded like ``_user_names``).
_methods: dict[bytes, str] = {}
_targets: dict[bytes, str] = {}
_SEEN_MAX = 4096


def _method(raw: bytes) -> str:
    if not _TOKEN.match(raw):
        raise ProtocolError(f"{H_METHOD} {raw[:40]!r} is not an HTTP method")
    method = raw.decode("ascii").upper()
    if len(_methods) >= _SEEN_MAX:
        _methods.clear()
    _methods[raw] = method
    return method


def _target(raw: bytes) -> str:
    if len(raw) > MAX_TARGET_LENGTH:
        raise ProtocolError(f"{H_TARGET} is longer than {MAX_TARGET_LENGTH} bytes")
    try:
        target = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{H_TARGET} is not UTF-8") from None
    # On the bytes: none of these characters can be part of a multi-byte UTF-8 sequence.
    if not raw.startswith(b"/") or _NOT_IN_TARGET.search(raw):
        raise ProtocolError(f"{H_TARGET} {target[:60]!r} is not an origin-form path")
    if len(_targets) >= _SEEN_MAX:
        _targets.clear()
    _targets[raw] = target
    return target


def _scheme(own: dict[str, bytes]) -> str:
    raw = own.get(H_SCHEME)
    if raw is None:
        return "http"
    scheme = raw.decode("ascii", "replace")
    if scheme not in SCHEMES:
        raise ProtocolError(f"{H_SCHEME} {scheme[:20]!r} is not one of {', '.join(SCHEMES)}")
    return scheme


def decode_reply(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> Reply:
    own, user = _split(headers)
    if _required(own, H_TYPE) != TYPE_REPLY:
        raise ProtocolError("not a reply record")
    raw_id = _required(own, H_ID)
    if not _ID.match(raw_id):
        raise ProtocolError(f"{H_ID} {raw_id[:40]!r} is not a valid request id")
    seq = _int(own, H_SEQ)
    if seq is None:
        raise ProtocolError(f"missing {H_SEQ} header")
    status = _int(own, H_STATUS)
    if seq == 0 and (status is None or not 100 <= status <= 599):
        raise ProtocolError(f"reply item 0 needs a {H_STATUS} between 100 and 599")
    error = own.get(H_ERROR)
    responder = own.get(H_FROM)
    if responder is not None and not _ID.match(responder):
        raise ProtocolError(f"{H_FROM} {responder[:40]!r} is not a valid responder name")
    return Reply(
        request_id=raw_id.decode("ascii"),
        seq=seq,
        body=value or b"",
        end=own.get(H_END) == b"1",
        status=status,
        headers=user,
        error_id=error.decode("ascii", "replace") if error else None,
        responder=responder.decode("ascii") if responder else None,
    )


@dataclass(frozen=True, slots=True)
class Cancel:
    """A caller's request to stop the handler of ``request_id`` (it stopped waiting)."""

    request_id: str
    reason: str | None = None


def encode_cancel(cancel: Cancel) -> tuple[bytes, bytes, KafkaHeaders]:
    headers: KafkaHeaders = [
        (H_VERSION, VERSION),
        (H_TYPE, TYPE_CANCEL),
        (H_ID, cancel.request_id.encode("ascii")),
    ]
    if cancel.reason is not None:
        headers.append((H_REASON, cancel.reason.encode("ascii")))
    return cancel.request_id.encode("ascii"), b"", headers


def decode_cancel(headers: Sequence[tuple[str, bytes]]) -> Cancel:
    own, _ = _split(headers)
    if _required(own, H_TYPE) != TYPE_CANCEL:
        raise ProtocolError("not a cancel record")
    raw_id = _required(own, H_ID)
    if not _ID.match(raw_id):
        raise ProtocolError(f"{H_ID} {raw_id[:40]!r} is not a valid request id")
    reason = own.get(H_REASON)
    if reason is not None and not _REASON.match(reason):
        raise ProtocolError(f"{H_REASON} {reason[:40]!r} is not 1-64 of a-z 0-9 _ -")
    return Cancel(raw_id.decode("ascii"), None if reason is None else reason.decode("ascii"))
