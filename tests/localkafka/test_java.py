"""Finding Java and checking its version; what the error says when it is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from kourier.localkafka import java, requirements
from kourier.localkafka.console import LocalKafkaError
from tests.localkafka.conftest import executable, fake_java, only_on_path


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_402"', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("no version here", None),
    ],
)
def test_major_version(output: str, major: int | None) -> None:
    """The major version is read from both the modern and the 1.x style of output."""
    assert java.major_version(output) == major


def test_java_on_path_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without JAVA_HOME, the java on PATH is used."""
    fake = fake_java(tmp_path / "bin", 'openjdk version "17.0.1"')
    only_on_path(monkeypatch, fake.parent)
    assert java.find_java() == str(fake)
    assert java.check_version(str(fake)) == 17


def test_java_home_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JAVA_HOME's java wins over the one on PATH."""
    on_path = fake_java(tmp_path / "path", 'openjdk version "11.0.2"')
    home = fake_java(tmp_path / "jdk21" / "bin", 'openjdk version "21.0.1"')
    only_on_path(monkeypatch, on_path.parent)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk21"))
    assert java.find_java() == str(home)


def test_bad_java_home_is_said_and_path_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A JAVA_HOME without bin/java is reported on stderr, and PATH is tried instead."""
    on_path = fake_java(tmp_path / "path", 'openjdk version "17.0.1"')
    only_on_path(monkeypatch, on_path.parent)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nothing"))
    assert java.find_java() == str(on_path)
    assert "has no bin/java" in capsys.readouterr().err


def test_old_java_is_refused_with_what_to_install(tmp_path: Path) -> None:
    """Java 11 is refused; the error names the version found and the one needed."""
    old = fake_java(tmp_path / "bin", 'openjdk version "11.0.2" 2019-01-15')
    with pytest.raises(LocalKafkaError) as caught:
        java.check_version(str(old))
    message = str(caught.value)
    assert "Java 17 or newer" in message and "is Java 11" in message
    assert "JDK" in message and "JAVA_HOME" in message


def test_missing_java_and_maven_are_named_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither java nor mvn (nor cached jars, nor KAFKA_HOME), one error names both
    and the KAFKA_HOME alternative."""
    only_on_path(monkeypatch, tmp_path / "empty")
    with pytest.raises(LocalKafkaError) as caught:
        requirements.check()
    message = str(caught.value)
    assert "Java was not found" in message and "Java 17" in message
    assert "Maven (mvn) is not on PATH" in message
    assert "KAFKA_HOME" in message
    assert "first fetch" in message


def test_missing_maven_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With Java but no Maven and no cache, the error is about Maven only."""
    good = fake_java(tmp_path / "bin", 'openjdk version "17.0.1"')
    only_on_path(monkeypatch, good.parent)
    with pytest.raises(LocalKafkaError) as caught:
        requirements.check()
    assert "Maven (mvn) is not on PATH" in str(caught.value)
    assert "Java was not found" not in str(caught.value)


def test_missing_java_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With Maven but no Java, the error is about Java only."""
    mvn = executable(tmp_path / "bin" / "mvn", "#!/bin/sh\nexit 0\n")
    only_on_path(monkeypatch, mvn.parent)
    with pytest.raises(LocalKafkaError) as caught:
        requirements.check()
    assert "Java was not found" in str(caught.value)
    assert "Maven" not in str(caught.value)


def test_old_java_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with Maven and Java 8 is told that Java is too old."""
    fake_java(tmp_path / "bin", 'java version "1.8.0_402"')
    executable(tmp_path / "bin" / "mvn", "#!/bin/sh\nexit 0\n")
    only_on_path(monkeypatch, tmp_path / "bin")
    with pytest.raises(LocalKafkaError, match="is Java 8"):
        requirements.check()


def test_keytool_beside_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keytool is taken from the JDK whose java runs the broker, before PATH."""
    good = fake_java(tmp_path / "jdk" / "bin", 'openjdk version "17.0.1"')
    keytool = executable(tmp_path / "jdk" / "bin" / "keytool", "#!/bin/sh\n")
    executable(tmp_path / "other" / "keytool", "#!/bin/sh\n")
    only_on_path(monkeypatch, tmp_path / "other")
    assert java.find_tool(str(good), "keytool") == str(keytool.resolve())
