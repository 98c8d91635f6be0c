"""Ports checked before a start, and what a node that dies while starting reports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kourier.localkafka import readiness
from kourier.localkafka.console import LocalKafkaError
from kourier.localkafka.layout import State, make_nodes
from kourier.localkafka.processes import NodeProcesses


def test_taken_port_is_named() -> None:
    """A port in use stops the start with an error naming it and the way out."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        nodes = make_nodes(Path("/unused"), port, 1)
        with pytest.raises(LocalKafkaError) as caught:
            readiness.check_ports(nodes, security=False)
    assert f"port {port} on 127.0.0.1 is already in use" in str(caught.value)
    assert "--port" in str(caught.value)


def test_port_out_of_range() -> None:
    """A base port whose derived ports leave 1024-65535 is refused."""
    with pytest.raises(LocalKafkaError, match="out of the range"):
        readiness.check_ports(make_nodes(Path("/unused"), 60000, 1), security=False)


def test_node_dying_on_a_taken_port_says_why(tmp_path: Path) -> None:
    """A node that exits because its port was taken after the check gets an error that
    names the port and the range of ports for outgoing connections."""
    state = State(version="4.4.0", nodes=1, port=21092, security=False, cluster_id="c")
    node = make_nodes(tmp_path, 21092, 1)[0]
    node.logs.mkdir(parents=True)
    (node.logs / "server.log").write_text(
        "org.apache.kafka.common.KafkaException: Socket server failed to bind to "
        "127.0.0.1:31092: Address already in use.\n"
    )
    with pytest.raises(LocalKafkaError) as caught:
        readiness.wait_ready(NodeProcesses(state, tmp_path / "log4j"), [node], 5, expect=1)
    message = str(caught.value)
    assert "port 31092 was taken after it was checked" in message
    assert "outgoing connections" in message


def test_node_dying_for_another_reason_shows_its_log(tmp_path: Path) -> None:
    """A node that exits while starting for any other reason shows the end of its log."""
    state = State(version="4.4.0", nodes=1, port=21092, security=False, cluster_id="c")
    node = make_nodes(tmp_path, 21092, 1)[0]
    node.logs.mkdir(parents=True)
    (node.logs / "server.log").write_text("ERROR something else went wrong\n")
    with pytest.raises(LocalKafkaError) as caught:
        readiness.wait_ready(NodeProcesses(state, tmp_path / "log4j"), [node], 5, expect=1)
    assert "node 1 exited while starting" in str(caught.value)
    assert "something else went wrong" in str(caught.value)
