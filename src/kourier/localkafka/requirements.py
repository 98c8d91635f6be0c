"""What the machine needs to run a local broker, checked before anything is written.

Java 17+ always; the jars from ``KAFKA_HOME``, the cache, or Maven (first run only).
Everything missing is named in one error, with what to install, so that a fresh machine
needs one round of installing, not one per missing piece. This module must never fetch
or start anything.
"""

from __future__ import annotations

from kourier.localkafka import java as java_lookup
from kourier.localkafka.console import LocalKafkaError
from kourier.localkafka.jars import JarSource, choose_source, maven_missing_message


def check() -> tuple[str, JarSource]:
    """The ``java`` executable and where the jars come from; one error naming every
    missing piece otherwise."""
    problems: list[str] = []
    java = java_lookup.find_java()
    if java is None:
        problems.append(java_lookup.java_missing_message())
    try:
        source: JarSource | None = choose_source()
    except LocalKafkaError as exc:
        problems.append(str(exc))
        source = None
    if source is not None and source.kind == "maven" and source.maven is None:
        problems.append(maven_missing_message(source))
    if problems or java is None or source is None:
        raise LocalKafkaError("cannot start a local Kafka broker:\n  - " + "\n  - ".join(problems))
    java_lookup.check_version(java)
    return java, source
