"""The Kafka wire probe: just enough of the protocol to tell whether a broker is ready.

Two requests on a plain TCP connection: Metadata v4 (which brokers are alive, as a
node sees it) and FindCoordinator v1 (is a group coordinator available). A PLAINTEXT
listener is needed. This module must never write to a broker: the probe is also pointed
at brokers that other people run.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass

_CLIENT_ID = "kourier-localkafka"


class ProbeError(Exception):
    """The broker did not answer, or answered something unexpected."""


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error as exc:
            raise ProbeError(f"short response: {exc}") from exc
        self.pos += struct.calcsize(fmt)
        return int(value)

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def nullable_string(self) -> str | None:
        size = self.int16()
        if size < 0:
            return None
        text = self.data[self.pos : self.pos + size].decode(errors="replace")
        self.pos += size
        return text

    def string(self) -> str:
        return self.nullable_string() or ""


def _receive(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ProbeError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _request(address: str, api_key: int, version: int, body: bytes, timeout: float) -> _Reader:
    host, _, port = address.rpartition(":")
    correlation = random.randint(1, 2**31 - 1)
    message = struct.pack(">hhi", api_key, version, correlation) + _string(_CLIENT_ID) + body
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(message)) + message)
            (size,) = struct.unpack(">i", _receive(sock, 4))
            data = _receive(sock, size)
    except (OSError, ValueError) as exc:
        raise ProbeError(str(exc)) from exc
    reader = _Reader(data)
    if reader.int32() != correlation:
        raise ProbeError("correlation id mismatch")
    return reader


@dataclass
class ClusterView:
    """A node's view of the cluster."""

    cluster_id: str | None
    controller_id: int
    brokers: dict[int, str]  # node id -> host:port, unfenced brokers only


def metadata(address: str, timeout: float = 3.0) -> ClusterView:
    """Metadata v4 with no topics: which brokers are alive, as seen from ``address``."""
    reader = _request(address, 3, 4, struct.pack(">i", 0) + b"\x00", timeout)
    reader.int32()  # throttle_time_ms
    brokers: dict[int, str] = {}
    for _ in range(reader.int32()):
        node_id, host, port = reader.int32(), reader.string(), reader.int32()
        reader.nullable_string()  # rack
        brokers[node_id] = f"{host}:{port}"
    cluster_id = reader.nullable_string()
    return ClusterView(cluster_id, reader.int32(), brokers)


def find_coordinator(address: str, group: str, timeout: float = 3.0) -> int:
    """FindCoordinator v1 for a group; the error code (0: found).

    Asking makes the broker create ``__consumer_offsets`` if it does not exist yet.
    """
    reader = _request(address, 10, 1, _string(group) + b"\x00", timeout)
    reader.int32()  # throttle_time_ms
    return reader.int16()


def answers(address: str, timeout: float = 2.0) -> ClusterView | None:
    """The cluster as ``address`` sees it, or None if nothing answers there."""
    try:
        return metadata(address, timeout)
    except ProbeError:
        return None
