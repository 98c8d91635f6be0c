"""The broker's configuration files: ``server.properties`` per node and log4j2's file.

Pure functions from the layout to text, so that tests can read what a broker gets. KRaft
with every node both broker and controller; replication 1 for one node, 3 (min ISR 2)
for three; internal topics (offsets, transactions, share-group state) sized the same
way, because Kafka's defaults (3 replicas, 50 partitions) do not fit one small node.
This module must never write files or start processes.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from kourier.localkafka.layout import Node

SASL_USER = "kourier"
SASL_PASSWORD = "kourier-secret"
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")  # added to the metadata log at format
STORE_PASSWORD = "kourier-store"

LOG4J2_PROPERTIES = """\
# Written by kourier's local broker: no console output, one rolling file per node.
status = warn
name = kourier-kafka

appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2

rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE

logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def new_cluster_id() -> str:
    """A cluster id of the shape Kafka's ``Uuid.randomUuid()`` gives: URL-safe base64
    of 16 random bytes, no padding, never starting with ``-``."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(node: Node, nodes: list[Node], security: bool, certs: Path) -> str:
    """The ``server.properties`` of ``node`` in a cluster of ``nodes``."""
    props = _base(node, nodes)
    props.update(_listeners(node, security))
    if len(nodes) > 1:
        # Fail over in seconds, not the default tens of seconds: the fault tests wait.
        props["broker.heartbeat.interval.ms"] = 1000
        props["broker.session.timeout.ms"] = 4000
        props["replica.lag.time.max.ms"] = 10000
    if security:
        props.update(_security(certs))
    lines = [f"# Written by kourier's local broker for node {node.id} of {len(nodes)}."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _base(node: Node, nodes: list[Node]) -> dict[str, object]:
    replicas = 1 if len(nodes) == 1 else 3
    min_isr = 1 if len(nodes) == 1 else 2
    voters = ",".join(f"{n.id}@127.0.0.1:{n.controller_port}" for n in nodes)
    return {
        # KRaft, combined broker + controller, a static quorum
        "process.roles": "broker,controller",
        "node.id": node.id,
        "controller.quorum.voters": voters,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.data),
        # topics: kourier creates its own through the admin API
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "unclean.leader.election.enable": "false",
        # internal topics
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": 4,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": 4,
        # share groups (KIP-932, on by default from 4.2): their state topic
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "share.coordinator.state.topic.num.partitions": 4,
        # tests join groups often: no wait for more members
        "group.initial.rebalance.delay.ms": 0,
        # a small footprint
        "num.network.threads": 2,
        "num.io.threads": 2,
        "background.threads": 2,
        "num.replica.fetchers": 1,
        "num.recovery.threads.per.data.dir": 1,
        "log.cleaner.threads": 1,
        "log.cleaner.dedupe.buffer.size": 4 * 1024 * 1024,  # the default takes 128 MiB
    }


def _listeners(node: Node, security: bool) -> dict[str, object]:
    listeners = [f"PLAINTEXT://127.0.0.1:{node.port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    if security:
        listeners += [
            f"SASL_PLAINTEXT://127.0.0.1:{node.sasl_port}",
            f"SSL://127.0.0.1:{node.ssl_port}",
            f"MTLS://127.0.0.1:{node.mtls_port}",
        ]
        protocols += ["SASL_PLAINTEXT:SASL_PLAINTEXT", "SSL:SSL", "MTLS:SSL"]
    return {
        "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{node.controller_port}"]),
        "advertised.listeners": ",".join(listeners),
        "listener.security.protocol.map": ",".join(protocols),
    }


def _security(certs: Path) -> dict[str, object]:
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return {
        # The default is GSSAPI, which would break a SASL listener without Kerberos.
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{SASL_USER}="{SASL_PASSWORD}";'
        ),
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram,
        "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": scram,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(certs / "server.p12"),
        "ssl.keystore.password": STORE_PASSWORD,
        "ssl.key.password": STORE_PASSWORD,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": str(certs / "truststore.p12"),
        "ssl.truststore.password": STORE_PASSWORD,
        "ssl.client.auth": "none",
        "listener.name.mtls.ssl.client.auth": "required",
    }
