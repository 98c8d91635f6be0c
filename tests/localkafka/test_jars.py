"""Where the jars come from: KAFKA_HOME, the cache, or a Maven fetch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kourier.localkafka import jars
from kourier.localkafka.console import LocalKafkaError
from tests.localkafka.conftest import executable, only_on_path

# Maven as far as the fetch sees it: it copies every dependency of the pom, and Kafka
# brings its own transitive jars (log4j-core 2.25.5 and slf4j-api 1.7.36, as 4.4.0 does).
FAKE_MVN = """#!{python}
import re, sys
from pathlib import Path
args = sys.argv[1:]
pom = Path(args[args.index("-f") + 1]).read_text()
out = Path(next(a for a in args if a.startswith("-DoutputDirectory=")).split("=", 1)[1])
out.mkdir(parents=True, exist_ok=True)
with open(out.parent / "mvn-calls", "a") as calls:
    calls.write(" ".join(args) + "\\n")
for artifact, version in re.findall(
    r"<artifactId>([^<]+)</artifactId><version>([^<]+)</version>", pom
):
    (out / f"{{artifact}}-{{version}}.jar").write_text("")
    if artifact.startswith("kafka_"):
        for jar in ("kafka-clients-" + version, "log4j-core-2.25.5", "slf4j-api-1.7.36"):
            (out / f"{{jar}}.jar").write_text("")
"""


def distribution(folder: Path, version: str) -> Path:
    """An unpacked Kafka distribution as far as the jar lookup sees it."""
    libs = folder / "libs"
    libs.mkdir(parents=True)
    for name in (f"kafka_2.13-{version}.jar", f"kafka-clients-{version}.jar", "zstd.jar"):
        (libs / name).write_text("")
    return folder


def test_default_is_a_current_kafka_4() -> None:
    """Without settings, the jars are those of Apache Kafka 4.4.0, from Maven."""
    source = jars.choose_source()
    assert source.version == "4.4.0"
    assert source.kind == "maven"


def test_kafka_home_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KAFKA_HOME's libs/ folder is the class path, and its version is read from it."""
    home = distribution(tmp_path / "kafka_2.13-4.3.1", "4.3.1")
    monkeypatch.setenv("KAFKA_HOME", str(home))
    source = jars.choose_source()
    assert (source.kind, source.version) == ("kafka-home", "4.3.1")
    assert source.folder == (home / "libs").resolve()
    assert jars.fetch(source) == source.folder  # nothing to fetch


def test_kafka_home_without_kafka_jar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KAFKA_HOME that is not a Kafka distribution is an error saying what it should be."""
    (tmp_path / "wrong" / "libs").mkdir(parents=True)
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path / "wrong"))
    with pytest.raises(LocalKafkaError, match="not an unpacked Apache Kafka distribution"):
        jars.choose_source()


def test_kafka_home_of_kafka_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kafka 3.x distribution is refused: the configuration is for 4.x."""
    monkeypatch.setenv("KAFKA_HOME", str(distribution(tmp_path / "k", "3.9.1")))
    with pytest.raises(LocalKafkaError, match=r"a 4\.x release is needed"):
        jars.choose_source()


def test_kafka_home_and_another_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KAFKA_HOME and a different KOURIER_KAFKA_VERSION contradict each other: an error."""
    monkeypatch.setenv("KAFKA_HOME", str(distribution(tmp_path / "k", "4.2.0")))
    monkeypatch.setenv("KOURIER_KAFKA_VERSION", "4.4.0")
    with pytest.raises(LocalKafkaError, match=r"holds Apache Kafka 4\.2\.0 but"):
        jars.choose_source()
    monkeypatch.setenv("KOURIER_KAFKA_VERSION", "4.2.0")
    assert jars.choose_source().kind == "kafka-home"


@pytest.mark.parametrize("version", ["3.9.0", "4.2", "4.2.0</version>", "latest"])
def test_only_kafka_4_versions(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """KOURIER_KAFKA_VERSION must name a 4.x release (it also ends up in a pom)."""
    monkeypatch.setenv("KOURIER_KAFKA_VERSION", version)
    with pytest.raises(LocalKafkaError, match=r"4\.x release"):
        jars.choose_source()


def test_complete_cache_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder with its completion mark and the broker jar is used without Maven;
    one without the mark (an interrupted fetch) is fetched again."""
    monkeypatch.setenv("KOURIER_KAFKA_VERSION", "4.2.0")
    lib = jars.cache_dir("4.2.0") / "lib"
    lib.mkdir(parents=True)
    (lib / "kafka_2.13-4.2.0.jar").write_text("")
    assert jars.choose_source().kind == "maven"
    (lib.parent / ".complete").write_text("kafka 4.2.0\n")
    source = jars.choose_source()
    assert (source.kind, source.folder) == ("cache", lib)


@pytest.mark.parametrize(
    ("jar_names", "expected"),
    [
        # 4.0.x: no log4j at all in the pom
        (
            ["kafka_2.13-4.0.0.jar", "slf4j-api-1.7.36.jar"],
            [
                ("org.apache.logging.log4j", "log4j-core", "2.24.3"),
                ("org.apache.logging.log4j", "log4j-slf4j-impl", "2.24.3"),
            ],
        ),
        # 4.4.0: log4j-core 2.25.5 comes along; slf4j is still 1.7
        (
            ["log4j-api-2.25.5.jar", "log4j-core-2.25.5.jar", "slf4j-api-1.7.36.jar"],
            [("org.apache.logging.log4j", "log4j-slf4j-impl", "2.25.5")],
        ),
        # a later Kafka on SLF4J 2: the SLF4J 2 binding
        (
            ["log4j-core-2.26.0.jar", "slf4j-api-2.0.17.jar"],
            [("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.26.0")],
        ),
    ],
)
def test_logging_binding(jar_names: list[str], expected: list[tuple[str, str, str]]) -> None:
    """The log4j2 binding follows the slf4j-api and log4j-core that came with Kafka."""
    assert jars.logging_dependencies(jar_names) == expected


def test_fetch_with_maven_adds_the_binding_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch runs Maven twice (Kafka, then Kafka plus the binding), fills the cache and
    marks it complete; the next choice is the cache."""
    executable(tmp_path / "bin" / "mvn", FAKE_MVN.format(python=sys.executable))
    only_on_path(monkeypatch, tmp_path / "bin")
    source = jars.choose_source()
    assert source.kind == "maven" and source.maven is not None
    lib = jars.fetch(source)
    names = {p.name for p in lib.glob("*.jar")}
    assert {"kafka_2.13-4.4.0.jar", "log4j-slf4j-impl-2.25.5.jar"} <= names
    assert not any(name.startswith("log4j-slf4j2") for name in names)
    assert len((lib.parent / "mvn-calls").read_text().splitlines()) == 2
    assert jars.choose_source().kind == "cache"


def test_failing_maven_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When Maven fails (no network), the error shows its output and the KAFKA_HOME way."""
    executable(
        tmp_path / "bin" / "mvn", "#!/bin/sh\necho 'Could not resolve dependencies'\nexit 1\n"
    )
    only_on_path(monkeypatch, tmp_path / "bin")
    with pytest.raises(LocalKafkaError) as caught:
        jars.fetch(jars.choose_source())
    assert "Could not resolve dependencies" in str(caught.value)
    assert "KAFKA_HOME" in str(caught.value)
    assert not jars.is_cached("4.4.0")


def test_pom_lists_the_dependencies() -> None:
    """The generated pom is of packaging pom and lists each dependency."""
    text = jars.pom([("org.apache.kafka", "kafka_2.13", "4.4.0")])
    assert "<packaging>pom</packaging>" in text
    assert "<artifactId>kafka_2.13</artifactId><version>4.4.0</version>" in text
