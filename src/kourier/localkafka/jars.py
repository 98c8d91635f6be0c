"""Where the broker's jars come from: an unpacked Kafka, the cache, or Maven Central.

In order: ``KAFKA_HOME`` (an unpacked Apache Kafka 4.x distribution: its ``libs/``
folder is the class path as is); the cache (``kafka-VERSION/lib`` under the cache root),
filled once by Maven from ``org.apache.kafka:kafka_2.13``'s runtime dependencies plus
the log4j2 binding Kafka's pom leaves out. Choosing a source never touches the network
or the cache; only :func:`fetch` does. This module must never start a broker.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kourier.localkafka.console import LocalKafkaError, say
from kourier.localkafka.layout import cache_root

SCALA_VERSION = "2.13"
DEFAULT_VERSION = "4.4.0"
# Only used when Kafka's pom brings no log4j-core (4.0.x): the version Kafka 4.0 ships.
DEFAULT_LOG4J_VERSION = "2.24.3"
LOG4J_GROUP = "org.apache.logging.log4j"

_VERSION = re.compile(r"4\.\d+\.\d+")
_KAFKA_JAR = re.compile(rf"kafka_{re.escape(SCALA_VERSION)}-(\d+\.\d+\.\d+)\.jar")

INSTALL_MAVEN = (
    "install Maven (the maven package of your system; it is needed only for this first "
    "fetch, and needs access to Maven Central), or download and unpack an Apache Kafka "
    "4.x distribution (kafka_2.13-4.x.y.tgz) and set KAFKA_HOME to its folder"
)


@dataclass(frozen=True)
class JarSource:
    """Where the jars of one Kafka version are, or will be once fetched."""

    kind: str  # "kafka-home", "cache" or "maven" (not fetched yet)
    version: str
    folder: Path  # the class path folder
    maven: str | None = None  # the mvn executable, for "maven"; None if there is none

    def describe(self) -> str:
        if self.kind == "kafka-home":
            return f"Apache Kafka {self.version} from KAFKA_HOME ({self.folder})"
        if self.kind == "cache":
            return f"Apache Kafka {self.version} from the jar cache ({self.folder})"
        return f"Apache Kafka {self.version}, to fetch from Maven Central into {self.folder}"


def cache_dir(version: str) -> Path:
    return cache_root() / f"kafka-{version}"


def requested_version() -> str:
    """``KOURIER_KAFKA_VERSION``, else the default; only 4.x versions."""
    version = os.environ.get("KOURIER_KAFKA_VERSION", "").strip() or DEFAULT_VERSION
    if not _VERSION.fullmatch(version):
        raise LocalKafkaError(
            f"KOURIER_KAFKA_VERSION={version!r}: an Apache Kafka 4.x release such as "
            f"{DEFAULT_VERSION} is needed (KRaft only, Java 17, log4j2)"
        )
    return version


def distribution_version(libs: Path) -> str | None:
    """The Kafka version of a distribution's ``libs/`` folder (from its broker jar)."""
    try:
        names = sorted(p.name for p in libs.iterdir())
    except OSError:
        return None
    for name in names:
        match = _KAFKA_JAR.fullmatch(name)
        if match:
            return match.group(1)
    return None


def is_cached(version: str) -> bool:
    folder = cache_dir(version)
    lib = folder / "lib"
    return (folder / ".complete").exists() and (
        lib / f"kafka_{SCALA_VERSION}-{version}.jar"
    ).exists()


def choose_source() -> JarSource:
    """``KAFKA_HOME`` if set, else the cache if complete, else Maven (maybe missing)."""
    home = os.environ.get("KAFKA_HOME", "").strip()
    if home:
        return _from_kafka_home(Path(home).expanduser())
    version = requested_version()
    lib = cache_dir(version) / "lib"
    if is_cached(version):
        return JarSource("cache", version, lib)
    return JarSource("maven", version, lib, shutil.which("mvn"))


def _from_kafka_home(home: Path) -> JarSource:
    libs = home / "libs"
    version = distribution_version(libs)
    if version is None:
        raise LocalKafkaError(
            f"KAFKA_HOME={home} is not an unpacked Apache Kafka distribution: "
            f"{libs} has no kafka_{SCALA_VERSION}-*.jar. Point KAFKA_HOME at the folder "
            "that holds bin/ and libs/, or unset it to fetch the jars with Maven"
        )
    if not _VERSION.fullmatch(version):
        raise LocalKafkaError(
            f"KAFKA_HOME={home} holds Apache Kafka {version}: a 4.x release is needed"
        )
    wanted = os.environ.get("KOURIER_KAFKA_VERSION", "").strip()
    if wanted and wanted != version:
        raise LocalKafkaError(
            f"KAFKA_HOME={home} holds Apache Kafka {version} but KOURIER_KAFKA_VERSION="
            f"{wanted}: unset one of them"
        )
    return JarSource("kafka-home", version, libs.resolve())


def maven_missing_message(source: JarSource) -> str:
    return (
        f"the Apache Kafka {source.version} jars are not in the cache "
        f"({source.folder.parent}) and Maven (mvn) is not on PATH: {INSTALL_MAVEN}"
    )


def logging_dependencies(jar_names: list[str]) -> list[tuple[str, str, str]]:
    """The (group, artifact, version) to add so that Kafka logs through log4j2.

    Kafka's pom brings log4j-core from 4.1 on (none in 4.0.x) but never the binding from
    SLF4J, through which Kafka logs; without one the broker runs and logs nothing. The
    binding follows the slf4j-api that came along (1.x: log4j-slf4j-impl, 2.x:
    log4j-slf4j2-impl), at the log4j-core version.
    """
    deps: list[tuple[str, str, str]] = []
    core = _versions(jar_names, "log4j-core")
    log4j = core[-1] if core else DEFAULT_LOG4J_VERSION
    if not core:
        deps.append((LOG4J_GROUP, "log4j-core", log4j))
    slf4j = _versions(jar_names, "slf4j-api")
    binding = "log4j-slf4j2-impl" if slf4j and slf4j[-1].startswith("2.") else "log4j-slf4j-impl"
    deps.append((LOG4J_GROUP, binding, log4j))
    return deps


def _versions(jar_names: list[str], artifact: str) -> list[str]:
    pattern = re.compile(rf"{re.escape(artifact)}-(\d[\w.\-]*)\.jar")
    found = [m.group(1) for name in jar_names if (m := pattern.fullmatch(name))]
    return sorted(found, key=lambda v: [int(p) if p.isdigit() else -1 for p in v.split(".")])


_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by kourier's local broker: the jars of an Apache Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.kourier.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def pom(deps: list[tuple[str, str, str]]) -> str:
    """A pom of packaging ``pom`` whose runtime dependencies are ``deps``."""
    lines = [
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    ]
    return _POM.format(deps="\n".join(lines))


def fetch(source: JarSource) -> Path:
    """The class path folder of ``source``, fetching the jars with Maven if needed."""
    if source.kind != "maven":
        return source.folder
    if source.maven is None:
        raise LocalKafkaError(maven_missing_message(source))
    say(f"fetching Apache Kafka {source.version} jars from Maven Central (first run only)...")
    began = time.monotonic()
    cache = source.folder.parent
    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    kafka = ("org.apache.kafka", f"kafka_{SCALA_VERSION}", source.version)
    # Pass 1: Kafka alone, to learn which log4j and slf4j came along.
    _copy_dependencies(source.maven, cache, [kafka], staging)
    extra = logging_dependencies([p.name for p in staging.glob("*.jar")])
    _copy_dependencies(source.maven, cache, [kafka, *extra], staging)
    if not (staging / f"kafka_{SCALA_VERSION}-{source.version}.jar").exists():
        raise LocalKafkaError(
            f"Maven ran but kafka_{SCALA_VERSION}-{source.version}.jar is not in {staging}"
        )
    shutil.rmtree(source.folder, ignore_errors=True)
    staging.rename(source.folder)
    (cache / ".complete").write_text(
        f"kafka {source.version}\n" + "".join(f"{a} {v}\n" for _, a, v in extra)
    )
    count = len(list(source.folder.glob("*.jar")))
    say(f"fetched {count} jars in {time.monotonic() - began:.1f}s into {source.folder}")
    return source.folder


def _copy_dependencies(
    mvn: str, workdir: Path, deps: list[tuple[str, str, str]], outdir: Path
) -> None:
    (workdir / "pom.xml").write_text(pom(deps))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(workdir / "pom.xml"),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={outdir}",
    ]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        raise LocalKafkaError(
            "fetching the Kafka jars with Maven failed (Maven needs access to Maven "
            "Central for this first fetch; or set KAFKA_HOME to an unpacked Kafka):\n  "
            + shlex.join(cmd)
            + "\n"
            + "\n".join(out[-30:])
        )
