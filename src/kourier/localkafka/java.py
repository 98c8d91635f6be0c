"""Finding Java: the ``java`` that runs the broker, its ``keytool``, and its version.

``JAVA_HOME`` first, then ``PATH``. Kafka 4.x brokers need Java 17 or newer; when Java
is missing or too old the error says what to install. This module must never start a
broker: it only asks ``java -version``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from kourier.localkafka.console import LocalKafkaError, say

MINIMUM_JAVA = 17

INSTALL_JAVA = (
    f"install a Java {MINIMUM_JAVA} or newer JDK (for example your system's openjdk-"
    f"{MINIMUM_JAVA}-jdk or openjdk-21-jdk package, or Eclipse Temurin) and put its bin "
    "folder on PATH or point JAVA_HOME at it"
)


def find_java() -> str | None:
    """The ``java`` executable: ``$JAVA_HOME/bin/java``, else the one on ``PATH``."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        say(f"JAVA_HOME={home} has no bin/java: looking for java on PATH instead")
    return shutil.which("java")


def java_missing_message() -> str:
    return f"Java was not found (no JAVA_HOME, no java on PATH): {INSTALL_JAVA}"


def require_java() -> str:
    """The ``java`` executable, or an error saying what to install."""
    java = find_java()
    if java is None:
        raise LocalKafkaError(java_missing_message())
    return java


def major_version(version_output: str) -> int | None:
    """The major version in ``java -version`` output: 17 from ``"17.0.15"``, 8 from
    ``"1.8.0_402"``; None if there is none."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1:  # Java 8 and older: "1.8.0_..."
        major = int(match.group(2) or 0)
    return major


def check_version(java: str) -> int:
    """The major version of ``java``; an error naming the fix if it is below 17."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"`{java} -version` failed ({exc}): {INSTALL_JAVA}") from exc
    text = (proc.stderr + proc.stdout).strip()
    major = major_version(text)
    if major is None:
        raise LocalKafkaError(f"cannot read the Java version from `{java} -version`:\n{text}")
    if major < MINIMUM_JAVA:
        raise LocalKafkaError(
            f"Kafka 4.x needs Java {MINIMUM_JAVA} or newer, and {java} is Java {major}: "
            f"{INSTALL_JAVA}\n`{java} -version` says:\n{text}"
        )
    return major


def find_tool(java: str, name: str) -> str | None:
    """A JDK tool (``keytool``) from the same JDK as ``java``, else from ``PATH``."""
    beside = Path(java).resolve().parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)
