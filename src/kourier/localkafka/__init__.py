"""A real Apache Kafka broker on this machine, for tests and development.

``kourier kafka start|stop|status|env|logs|kill-node|start-node`` (and
``python -m kourier.localkafka ...``, which needs none of kourier's dependencies): the
broker's jars come from ``KAFKA_HOME`` or from Maven Central (fetched once, then
cached); one or three KRaft nodes run as JVMs on 127.0.0.1, with optional SASL and TLS
listeners. ``docs/broker.md`` describes it. The modules, each above the ones it uses:

    commands       the commands and their parser
    readiness      when a broker is ready; free ports
    processes      the JVMs: format, launch, kill, stop, find strays
    certs          test certificates for the TLS listeners; the KOURIER_TEST_* lines
    config         server.properties and log4j2's file (pure text)
    requirements   Java and the jars, or one error naming what to install
    jars           KAFKA_HOME, the jar cache, or a Maven fetch
    java           finding java and keytool; the Java version
    probe          the Kafka wire probe (Metadata, FindCoordinator)
    layout         the runtime folder, nodes, ports, state.json, the lock
    console        stdout KEY=VALUE lines, stderr messages, the error type

This package must never import anything outside the standard library and itself: it
runs before a virtualenv exists.
"""
