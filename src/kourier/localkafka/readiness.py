"""When a broker is ready, and whether its ports are free before it starts.

Ready means: every node answers a Metadata request listing itself and the expected
number of live brokers, and then a group coordinator is found, which makes the broker
create ``__consumer_offsets`` during ``start`` rather than in the first test. This
module must never start or stop a process.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time

from kourier.localkafka.console import LocalKafkaError
from kourier.localkafka.layout import CONTROLLER_OFFSET, Node
from kourier.localkafka.probe import ClusterView, ProbeError, answers, find_coordinator
from kourier.localkafka.processes import NodeProcesses, node_log_tail

_READY_GROUP = "kourier-localkafka-ready"


def wait_ready(processes: NodeProcesses, nodes: list[Node], timeout: float, expect: int) -> None:
    """Wait until every node in ``nodes`` sees ``expect`` live brokers (itself among
    them), then until a group coordinator answers; an error with the logs otherwise."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        for node in list(pending):
            if not processes.alive(node):
                raise LocalKafkaError(_exit_message(node))
            view = answers(node.address)
            if view is not None and node.id in view.brokers and len(view.brokers) >= expect:
                pending.remove(node)
        if not pending:
            break
        if time.monotonic() >= deadline:
            logs = "\n".join(node_log_tail(n) for n in pending)
            ids = ", ".join(str(n.id) for n in pending)
            raise LocalKafkaError(f"node(s) {ids} not ready after {timeout:.0f}s\n{logs}")
        time.sleep(0.2)
    error = None
    while True:
        for node in nodes:
            with contextlib.suppress(ProbeError):
                error = find_coordinator(node.address, _READY_GROUP)
                if error == 0:
                    return
        if time.monotonic() >= deadline:
            raise LocalKafkaError(
                f"no group coordinator after {timeout:.0f}s (error code {error})\n"
                + "\n".join(node_log_tail(n) for n in nodes)
            )
        time.sleep(0.2)


def _exit_message(node: Node) -> str:
    logs = node_log_tail(node)
    taken = re.search(r"failed to bind to [\d.]+:(\d+): Address already in use", logs)
    if taken is None:
        return f"node {node.id} exited while starting\n{logs}"
    return (
        f"node {node.id} exited: port {taken.group(1)} was taken after it was checked. "
        "If it is in the system's range of ports for outgoing connections (often "
        "32768-60999), a client connection can hold it at any time: choose a --port whose "
        f"ports (+100, +200, +300, +{CONTROLLER_OFFSET}) stay below that range.\n{logs}"
    )


def wait_external(bootstrap: str, timeout: float) -> ClusterView:
    """Wait until one of the ``bootstrap`` addresses answers Metadata."""
    deadline = time.monotonic() + timeout
    addresses = [a.strip() for a in bootstrap.split(",") if a.strip()]
    while True:
        for address in addresses:
            view = answers(address)
            if view is not None:
                return view
        if time.monotonic() >= deadline:
            raise LocalKafkaError(
                f"KOURIER_BOOTSTRAP_SERVERS={bootstrap} is set but no broker there answered "
                f"within {timeout:.0f}s (a PLAINTEXT listener is needed); unset it to start "
                "a local broker instead"
            )
        time.sleep(0.5)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(nodes: list[Node], security: bool) -> None:
    """An error naming the first port that is out of range or taken."""
    for node in nodes:
        for port in node.ports(security):
            if not 1024 <= port <= 65535:
                raise LocalKafkaError(
                    f"port {port} (derived from --port) is out of the range 1024-65535"
                )
            if not port_free(port):
                hint = ""
                if answers(f"127.0.0.1:{port}") is not None:
                    hint = (
                        " A Kafka broker answers there: to use it, set "
                        f"KOURIER_BOOTSTRAP_SERVERS=127.0.0.1:{port}."
                    )
                raise LocalKafkaError(
                    f"port {port} on 127.0.0.1 is already in use by another process "
                    f"(needed by node {node.id}); choose another base port with --port "
                    f"or KOURIER_KAFKA_PORT.{hint}"
                )
