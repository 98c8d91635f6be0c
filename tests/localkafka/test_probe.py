"""The wire probe: Metadata and FindCoordinator, against a scripted broker and a real one."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from kourier.localkafka import probe
from tests.conftest import kafka_bootstrap
from tests.localkafka.conftest import OUTSIDE

Answer = Callable[[int, int, int], bytes]  # api key, version, correlation id -> response


def string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text)) + text.encode()


def metadata_v4(correlation: int, brokers: dict[int, str], cluster: str) -> bytes:
    body = struct.pack(">ii", correlation, 0) + struct.pack(">i", len(brokers))
    for node_id, address in brokers.items():
        host, port = address.rsplit(":", 1)
        body += struct.pack(">i", node_id) + string(host) + struct.pack(">i", int(port))
        body += string(None)  # rack
    body += string(cluster) + struct.pack(">i", 1)  # controller id
    return body + struct.pack(">i", 0)  # no topics


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[Answer]]]:
    """A TCP server answering each connection's one request with the next scripted answer."""
    answers: list[Answer] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)  # so that the thread sees `done` soon after the test
    address = f"127.0.0.1:{server.getsockname()[1]}"
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with conn:
                size = struct.unpack(">i", conn.recv(4))[0]
                request = b""
                while len(request) < size:
                    request += conn.recv(size - len(request))
                api_key, version, correlation = struct.unpack_from(">hhi", request)
                response = answers.pop(0)(api_key, version, correlation)
                conn.sendall(struct.pack(">i", len(response)) + response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield address, answers
    finally:
        done.set()
        thread.join(5)
        server.close()


def test_metadata_lists_the_live_brokers(scripted: tuple[str, list[Answer]]) -> None:
    """A Metadata v4 answer is read into the cluster id, controller and live brokers."""
    address, answers = scripted
    seen: list[tuple[int, int]] = []

    def answer(api_key: int, version: int, correlation: int) -> bytes:
        seen.append((api_key, version))
        return metadata_v4(correlation, {1: "127.0.0.1:9092", 2: "127.0.0.1:9093"}, "c-1")

    answers.append(answer)
    view = probe.metadata(address)
    assert seen == [(3, 4)]
    assert view.cluster_id == "c-1"
    assert view.controller_id == 1
    assert view.brokers == {1: "127.0.0.1:9092", 2: "127.0.0.1:9093"}


def test_find_coordinator_returns_the_error_code(scripted: tuple[str, list[Answer]]) -> None:
    """FindCoordinator v1's error code comes back as is (15: not available yet)."""
    address, answers = scripted
    answers.append(lambda key, version, cid: struct.pack(">iih", cid, 0, 15))
    assert probe.find_coordinator(address, "g") == 15


def test_wrong_correlation_id_is_not_an_answer(scripted: tuple[str, list[Answer]]) -> None:
    """An answer to another request (wrong correlation id) counts as no answer."""
    address, answers = scripted
    answers.append(lambda key, version, cid: metadata_v4(cid + 1, {}, "c"))
    assert probe.answers(address) is None


def test_nothing_listening_is_not_an_answer() -> None:
    """A closed port gives None, not an exception."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert probe.answers(f"127.0.0.1:{port}", timeout=1) is None


@pytest.mark.kafka
def test_a_real_broker_answers() -> None:
    """A real broker answers the probe and lists the address it was reached at."""
    bootstrap = OUTSIDE.get("KOURIER_BOOTSTRAP_SERVERS") or kafka_bootstrap()
    first = bootstrap.split(",")[0]
    view = probe.metadata(first)
    assert first in view.brokers.values()
    assert view.cluster_id
    assert probe.find_coordinator(first, "kourier-localkafka-probe-test") == 0
