"""Where a local broker lives: its runtime folder, its nodes and their ports, its state.

One runtime folder holds one broker (1 or 3 nodes): ``state.json`` says what was started
(version, nodes, base port, security, cluster id, jar folder), each ``node-N/`` holds that
node's ``server.properties``, data, logs and pid file. The settings read here come from
the environment at call time, never at import time, so tests can change them. This module
must never start or stop a process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kourier.localkafka.console import LocalKafkaError

DEFAULT_PORT = 9092
CONTROLLER_OFFSET = 10000  # controller port = broker port + 10000
SASL_OFFSET = 100  # SASL_PLAINTEXT listener
SSL_OFFSET = 200  # SSL listener, no client certificate
MTLS_OFFSET = 300  # SSL listener, client certificate required


def env_int(name: str, default: int) -> int:
    """An integer from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise LocalKafkaError(f"{name}={raw!r} is not an integer") from None


def runtime_dir() -> Path:
    """``KOURIER_KAFKA_DIR``, else the user's state folder (``kourier/kafka`` under
    ``XDG_STATE_HOME`` or ``~/.local/state``): one broker per user by default, as the
    default port is one per machine."""
    raw = os.environ.get("KOURIER_KAFKA_DIR")
    if raw:
        return Path(raw).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return (base / "kourier" / "kafka").resolve()


def cache_root() -> Path:
    """``KOURIER_CACHE_DIR``, else ``kourier`` under ``XDG_CACHE_HOME`` or ``~/.cache``."""
    raw = os.environ.get("KOURIER_CACHE_DIR")
    if raw:
        return Path(raw).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "kourier"


@dataclass(frozen=True)
class Node:
    """One broker process: KRaft broker and controller in one JVM."""

    id: int
    port: int
    base: Path  # the runtime folder

    @property
    def controller_port(self) -> int:
        return self.port + CONTROLLER_OFFSET

    @property
    def sasl_port(self) -> int:
        return self.port + SASL_OFFSET

    @property
    def ssl_port(self) -> int:
        return self.port + SSL_OFFSET

    @property
    def mtls_port(self) -> int:
        return self.port + MTLS_OFFSET

    @property
    def dir(self) -> Path:
        return self.base / f"node-{self.id}"

    @property
    def props(self) -> Path:
        return self.dir / "server.properties"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pidfile(self) -> Path:
        return self.dir / "pid"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ports(self, security: bool) -> list[int]:
        """Every port this node listens on."""
        ports = [self.port, self.controller_port]
        if security:
            ports += [self.sasl_port, self.ssl_port, self.mtls_port]
        return ports


def make_nodes(base: Path, port: int, count: int) -> list[Node]:
    """Nodes 1..count on consecutive broker ports from ``port``."""
    return [Node(id=i + 1, port=port + i, base=base) for i in range(count)]


@dataclass
class State:
    """What ``start`` started, kept in ``state.json`` for the later commands."""

    version: str
    nodes: int
    port: int
    security: bool
    cluster_id: str
    lib: str = ""  # the folder of jars on the class path
    runtime: str = "local"  # "docker" only in state files of older versions

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.node_list())

    def node_list(self) -> list[Node]:
        return make_nodes(runtime_dir(), self.port, self.nodes)

    def node(self, node_id: int) -> Node:
        for n in self.node_list():
            if n.id == node_id:
                return n
        raise LocalKafkaError(f"no node {node_id}: the broker has nodes 1..{self.nodes}")


def state_file() -> Path:
    return runtime_dir() / "state.json"


def load_state() -> State | None:
    """The state of the last ``start`` here, or None. Keys this version does not know
    (an older version's ``image``) are ignored, so an upgrade still finds its broker."""
    try:
        raw = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    known = {f.name for f in dataclasses.fields(State)}
    try:
        state = State(**{k: v for k, v in raw.items() if k in known})
    except TypeError:
        return None
    if state.runtime != "local":
        raise LocalKafkaError(
            f"{state_file()} describes a {state.runtime} broker, which this version no "
            f"longer manages: stop it yourself, then delete {runtime_dir()}"
        )
    return state


def save_state(state: State) -> None:
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
    tmp.replace(state_file())


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Serialise start/stop/kill-node/start-node across processes (e.g. test workers)."""
    folder = runtime_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
