"""Fixtures for the local broker's tests: an environment of the test's own.

Every test gets its own runtime folder and cache folder, and no
``KOURIER_BOOTSTRAP_SERVERS``, ``KAFKA_HOME``, ``JAVA_HOME`` or ``KOURIER_KAFKA_*`` from
the caller's environment, so nothing here can reach a broker someone else runs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

#: The environment the tests were started in, before each test's own replaced it.
OUTSIDE = dict(os.environ)


@pytest.fixture(autouse=True)
def own_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KOURIER_") or name in ("KAFKA_HOME", "JAVA_HOME"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KOURIER_KAFKA_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("KOURIER_CACHE_DIR", str(tmp_path / "cache"))


def executable(path: Path, text: str) -> Path:
    """Write a script and make it executable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_java(folder: Path, version_line: str) -> Path:
    """A ``java`` that prints ``version_line`` for ``java -version``, as the JDK does."""
    return executable(folder / "java", f"#!/bin/sh\necho '{version_line}' >&2\n")


def only_on_path(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    """PATH holds only ``folders``: the machine's java and mvn are out of sight (the fake
    scripts name their interpreter by absolute path)."""
    monkeypatch.setenv("PATH", os.pathsep.join(map(str, folders)))
