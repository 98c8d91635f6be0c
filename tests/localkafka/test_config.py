"""The configuration files a local broker gets."""

from __future__ import annotations

import string
from pathlib import Path

from kourier.localkafka.config import (
    LOG4J2_PROPERTIES,
    new_cluster_id,
    server_properties,
)
from kourier.localkafka.layout import make_nodes


def parse(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pairs = [line.split("=", 1) for line in lines]
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), "a key is set twice"
    return dict(pairs)


def test_single_node(tmp_path: Path) -> None:
    """One node: a KRaft combined broker and controller on loopback, replication 1 for
    every topic and internal topic (offsets, transactions, share-group state)."""
    nodes = make_nodes(tmp_path, 9092, 1)
    props = parse(server_properties(nodes[0], nodes, False, tmp_path / "certs"))
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19092"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:19092"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["log.dirs"] == str(tmp_path / "node-1" / "data")
    for key in (
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1", key
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert "broker.session.timeout.ms" not in props
    assert "sasl.enabled.mechanisms" not in props


def test_three_nodes(tmp_path: Path) -> None:
    """Three nodes: all voters, replication 3 with min ISR 2 (one node may die), fast
    failover, consecutive ports."""
    nodes = make_nodes(tmp_path, 20000, 3)
    props = parse(server_properties(nodes[1], nodes, False, tmp_path / "certs"))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:30000,2@127.0.0.1:30001,3@127.0.0.1:30002"
    )
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:20001"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert props[key] == "3", key
    for key in ("min.insync.replicas", "share.coordinator.state.topic.min.isr"):
        assert props[key] == "2", key
    assert props["broker.session.timeout.ms"] == "4000"
    assert props["unclean.leader.election.enable"] == "false"


def test_security_listeners(tmp_path: Path) -> None:
    """--security adds SASL (SCRAM and PLAIN), TLS and mutual-TLS listeners whose stores
    are in the certificate folder; the controller stays on PLAINTEXT."""
    nodes = make_nodes(tmp_path, 9092, 1)
    certs = tmp_path / "certs"
    props = parse(server_properties(nodes[0], nodes, True, certs))
    assert props["listeners"].split(",") == [
        "PLAINTEXT://127.0.0.1:9092",
        "SASL_PLAINTEXT://127.0.0.1:9192",
        "SSL://127.0.0.1:9292",
        "MTLS://127.0.0.1:9392",
        "CONTROLLER://127.0.0.1:19092",
    ]
    assert "CONTROLLER" not in props["advertised.listeners"]
    assert "MTLS:SSL" in props["listener.security.protocol.map"].split(",")
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN"
    assert (
        'user_kourier="kourier-secret"'
        in (props["listener.name.sasl_plaintext.plain.sasl.jaas.config"])
    )
    assert props["ssl.keystore.location"] == str(certs / "server.p12")
    assert props["ssl.client.auth"] == "none"
    assert props["listener.name.mtls.ssl.client.auth"] == "required"


def test_log4j_writes_to_the_node_log_folder() -> None:
    """log4j2 writes one rolling file in the folder the JVM is given, nothing on the console."""
    assert "${sys:kafka.logs.dir}/server.log" in LOG4J2_PROPERTIES
    assert "Console" not in LOG4J2_PROPERTIES


def test_cluster_id_shape() -> None:
    """A cluster id is 22 URL-safe base64 characters that never start with '-'."""
    alphabet = set(string.ascii_letters + string.digits + "-_")
    for _ in range(500):
        cluster_id = new_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert set(cluster_id) <= alphabet
