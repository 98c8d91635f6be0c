"""Every code block of the user documentation runs, as a reader would run it.

README's "Use kourier in your service" section, docs/quickstart.md and docs/testing.md
are read in order. A Python or TOML block names its file on its first line
(``# orders.py``) and is written to a fresh directory. Shell blocks run line by line:

- ``kourier run ...`` and ``uvicorn ...`` start in the background until the document ends
  (kourier's when it logs "ready:", uvicorn's when its port answers);
- ``python FILE``, ``pytest ...`` and ``kourier ...`` commands must exit 0;
- ``export KOURIER_BOOTSTRAP_SERVERS=...`` points at the test broker instead (addresses
  differ per machine); ``pip install`` lines are checked, not run: every extra they name
  exists in pyproject.toml (the wheel test installs for real).

Ports 8000-8099 in a document become free ports, so runs never collide; a background
process started on a port that an earlier one holds replaces it (the document says to
stop the earlier one), and so does a second ``kourier run`` of the same app (a restart
with other options).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.processes import ROOT

DOCS = {
    "README": ("README.md", "## Use kourier in your service"),
    "quickstart": ("docs/quickstart.md", None),
    "testing": ("docs/testing.md", None),
}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
FILE_NAME = re.compile(r"^# ([\w./-]+\.(?:py|toml))\n")
#: A clean stop on SIGTERM: exit 0, or (uvicorn) the signal raised again once stopped.
STOPPED = (0, -signal.SIGTERM)
EXTRAS = set(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
)


@dataclass
class Block:
    language: str
    text: str


def blocks(doc: str) -> list[Block]:
    path, heading = DOCS[doc]
    text = (ROOT / path).read_text()
    if heading is not None:
        start = text.index(heading)
        level = heading.split(" ")[0]
        following = re.search(rf"^({level} |---$)", text[start + len(heading) :], re.M)
        text = text[start : start + len(heading) + following.start() if following else None]
    return [Block(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("doc", list(DOCS))
def test_every_block_names_its_file_or_is_a_shell_block(doc: str) -> None:
    """A reader can tell where each block goes: files name themselves; Python compiles."""
    found = blocks(doc)
    assert found, f"{doc} has no code blocks"
    for block in found:
        assert block.language in ("python", "toml", "sh"), block.language
        if block.language == "sh":
            continue
        named = FILE_NAME.match(block.text)
        assert named, (
            f"a {block.language} block in {doc} does not start with '# FILE':\n{block.text}"
        )
        if block.language == "python":
            compile(block.text, named.group(1), "exec")
        else:
            tomllib.loads(block.text)


class Reader:
    """Runs a document's blocks in one directory, as its reader would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports: dict[str, str] = {}
        self.background: list[tuple[subprocess.Popen[str], list[str], Path]] = []
        self.env = {
            **os.environ,
            "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
            "KOURIER_TOPIC_PREFIX": f"docs{uuid.uuid4().hex[:8]}.",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("PYTHONPATH", None)

    def write(self, block: Block) -> None:
        named = FILE_NAME.match(block.text)
        assert named is not None
        (self.directory / named.group(1)).write_text(self.free_ports(block.text))

    def free_ports(self, text: str) -> str:
        return re.sub(r"\b80\d\d\b", lambda m: self.ports.setdefault(m[0], str(free_port())), text)

    def shell(self, block: Block) -> None:
        for line in block.text.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                self.run(shlex.split(self.free_ports(command)))

    def run(self, argv: list[str]) -> None:
        match argv:
            case ["export", assignment] if assignment.startswith("KOURIER_BOOTSTRAP_SERVERS="):
                pass  # self.env already names the test broker
            case ["pip", "install", *requirements] | [
                "python",
                "-m",
                "pip",
                "install",
                *requirements,
            ]:
                for requirement in requirements:
                    for extras in re.findall(r"\[([\w,-]+)\]", requirement):
                        assert set(extras.split(",")) <= EXTRAS, f"unknown extra in {requirement}"
            case ["kourier", "run", *_]:
                self.start([sys.executable, "-m", "kourier", *argv[1:]], ready="ready:")
            case ["uvicorn", *_]:
                self.start([sys.executable, "-m", "uvicorn", *argv[1:]], ready="startup complete")
            case ["python", script, *args]:
                self.check([sys.executable, script, *args])
            case ["pytest", *args]:
                self.check(
                    [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-W", "error", *args]
                )
            case ["kourier", *args]:
                self.check([sys.executable, "-m", "kourier", *args])
            case _:
                raise AssertionError(f"the docs test does not know how to run: {argv}")

    def check(self, argv: list[str]) -> None:
        done = subprocess.run(
            argv, cwd=self.directory, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"

    def start(self, argv: list[str], *, ready: str) -> None:
        held = (set(self.ports.values()) & set(argv)) | {a for a in argv if ":app" in a}
        for earlier, earlier_argv, log in self.background:
            if held & set(earlier_argv) and earlier.poll() is None:
                earlier.terminate()
                assert earlier.wait(30) in STOPPED, f"{earlier_argv}:\n{log.read_text()}"
        log = self.directory / f"background-{len(self.background)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                argv, cwd=self.directory, env=self.env, stderr=out, stdout=out, text=True
            )
        self.background.append((process, argv, log))
        deadline = time.monotonic() + 60
        while ready not in log.read_text():
            assert process.poll() is None, f"{argv} exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{argv} not ready:\n{log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every background process (all of them, even when one misbehaved)."""
        for process, _, _ in self.background:
            if process.poll() is None:
                process.terminate()
        failures = []
        for process, argv, log in self.background:
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code not in STOPPED:
                failures.append(f"{argv} exited with {code}:\n{log.read_text()}")
        assert not failures, "\n".join(failures)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    reading = Reader(tmp_path)
    try:
        yield reading
    finally:
        reading.stop()


@pytest.mark.kafka
@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.parametrize("doc", list(DOCS))
def test_every_block_runs(doc: str, reader: Reader) -> None:
    """Files are written and every shell line runs, in document order, and succeeds."""
    for block in blocks(doc):
        if block.language == "sh":
            reader.shell(block)
        else:
            reader.write(block)
