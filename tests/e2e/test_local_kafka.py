"""`kourier kafka` as a user runs it: a broker of this test's own, used, then stopped.

The broker gets its own runtime folder and base port (never the shared broker's), and the
jars come from the user's cache (fetched with Maven when it is empty).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kourier.localkafka.layout import cache_root
from kourier.localkafka.processes import stray_pids
from kourier.settings import Settings
from kourier.transports import kafka_transport
from kourier.transports.base import Record, TopicSpec
from tests.processes import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

KOURIER_KAFKA = [sys.executable, "-m", "kourier", "kafka"]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port() -> int:
    """A broker port whose controller port (+10000) is free too and stays below the usual
    range of ports for outgoing connections (32768 on), where a client may take it."""
    for base in range(20000 + os.getpid() % 2000, 22700, 7):
        if _free(base) and _free(base + 10000):
            return base
    raise RuntimeError("no free ports for a broker of the test's own")


@dataclass
class Broker:
    env: dict[str, str]
    folder: Path
    port: int
    stdout: str

    def run(self, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KOURIER_KAFKA, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        if os.environ.get("CI") == "true":
            pytest.fail("java is missing: CI must run the local broker test")
        pytest.skip("no Java on this machine: `kourier kafka start` needs Java 17+")
    folder = tmp_path_factory.mktemp("localkafka")
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("KOURIER_BOOTSTRAP_SERVERS", "KOURIER_KAFKA_PORT", "KAFKA_HOME")
        and not name.startswith("KOURIER_TEST_")
    }
    env["KOURIER_KAFKA_DIR"] = str(folder)
    broker = Broker(env, folder, free_base_port(), "")
    try:
        started = broker.run("start", "--port", str(broker.port), "--timeout", "150")
        assert started.returncode == 0, started.stderr[-3000:]
        broker.stdout = started.stdout
        yield broker
    finally:
        broker.run("stop", timeout=120)


def test_start_prints_only_the_env_lines(broker: Broker) -> None:
    """start's stdout is KEY=VALUE lines only, the last one naming the new broker."""
    lines = broker.stdout.splitlines()
    assert all(re.fullmatch(r"[A-Z_]+=\S+", line) for line in lines), lines
    assert lines[-1] == f"KOURIER_BOOTSTRAP_SERVERS={broker.bootstrap}"


async def test_kourier_produces_and_consumes(broker: Broker) -> None:
    """kourier's Kafka transport creates a topic, publishes one record and reads it back."""
    topic = f"localkafka.{uuid.uuid4().hex[:8]}"
    transport = kafka_transport(Settings(bootstrap_servers=broker.bootstrap))
    await transport.start()
    try:
        await transport.ensure_topics([TopicSpec(topic, 1)])
        await (await transport.publish(topic, b"hello", key=b"k", headers=[("h", b"1")]))
        reader = transport.partition_reader(topic, 0, from_beginning=True)
        await reader.start()
        try:
            records: list[Record] = []
            deadline = time.monotonic() + 30
            while not records and time.monotonic() < deadline:
                records = await reader.fetch(timeout=1.0)
        finally:
            await reader.stop()
    finally:
        await transport.stop()
    assert [(r.key, r.value, list(r.headers)) for r in records] == [(b"k", b"hello", [("h", b"1")])]


def test_share_groups_work_without_extra_settings(broker: Broker) -> None:
    """A share group (KIP-932, queue-like consumption) receives a record on the broker as
    started, with no settings beyond what `start` writes."""
    from confluent_kafka import Producer, ShareConsumer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"localkafka.share.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # kept until created
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    consumer = ShareConsumer({"bootstrap.servers": broker.bootstrap, "group.id": topic})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    consumer.subscribe([topic])
    received: list[bytes | None] = []
    try:
        deadline = time.monotonic() + 60
        # A new share group starts at the latest offset: publish until it has joined.
        while not received and time.monotonic() < deadline:
            producer.produce(topic, b"queued")
            producer.flush(10)
            received += [m.value() for m in consumer.poll(1.0) or [] if m.error() is None]
    finally:
        consumer.close()
    assert b"queued" in received


def test_status_env_and_start_again(broker: Broker) -> None:
    """status says the node runs and its memory; env and a second start print the same
    lines as the first start, without starting anything."""
    status = broker.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"node 1 127\.0\.0\.1:\d+: pid \d+, RSS \d+ MiB", status.stdout)
    assert broker.run("env").stdout == broker.stdout
    again = broker.run("start")
    assert again.returncode == 0 and again.stdout == broker.stdout
    assert "already running" in again.stderr


def test_stop_leaves_nothing_running(broker: Broker) -> None:
    """stop ends the broker: status then exits 1 and no JVM of its folder is left."""
    stopped = broker.run("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert broker.run("status").returncode == 1
    assert stray_pids(broker.folder.resolve()) == []


def test_start_from_kafka_home(broker: Broker, tmp_path: Path) -> None:
    """With KAFKA_HOME naming an unpacked Kafka, start runs the broker from its libs/
    folder (here a distribution made of the cached jars), and stop ends it."""
    cached = Path(broker.env.get("KOURIER_CACHE_DIR") or cache_root()) / "kafka-4.4.0" / "lib"
    if not cached.is_dir():
        pytest.skip(f"no cached 4.4.0 jars in {cached} to make a distribution of")
    libs = tmp_path / "kafka_2.13-4.4.0" / "libs"
    libs.mkdir(parents=True)
    for jar in cached.glob("*.jar"):
        (libs / jar.name).symlink_to(jar)
    env = {name: value for name, value in broker.env.items() if name != "KOURIER_KAFKA_VERSION"}
    home = Broker(
        {**env, "KAFKA_HOME": str(libs.parent), "KOURIER_KAFKA_DIR": str(tmp_path / "rt")},
        tmp_path / "rt",
        free_base_port(),
        "",
    )
    try:
        started = home.run("start", "--port", str(home.port), "--timeout", "150")
        assert started.returncode == 0, started.stderr[-3000:]
        assert f"Apache Kafka 4.4.0 from KAFKA_HOME ({libs})" in started.stderr
        assert started.stdout.splitlines()[-1] == f"KOURIER_BOOTSTRAP_SERVERS={home.bootstrap}"
        assert home.run("status").returncode == 0
    finally:
        assert home.run("stop").returncode == 0
    assert stray_pids(home.folder) == []
