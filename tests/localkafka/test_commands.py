"""The commands without a broker of their own: output contract, errors, state, strays."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kourier.cli import main as kourier_main
from kourier.localkafka import layout, processes
from kourier.localkafka.commands import build_parser, main
from kourier.localkafka.console import LocalKafkaError
from tests.conftest import kafka_bootstrap
from tests.localkafka.conftest import OUTSIDE
from tests.processes import ROOT

COMMANDS = ("start", "stop", "status", "env", "kill-node", "start-node", "logs")


def nothing_listens() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_every_command_is_there() -> None:
    """The parser offers every command of the old script."""
    help_text = build_parser("kourier kafka").format_help()
    for command in COMMANDS:
        assert command in help_text


def test_status_and_env_when_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """status and env exit 1 when no broker was started; env writes nothing on stdout."""
    assert main(["status"]) == 1
    assert "not running" in capsys.readouterr().out
    assert main(["env"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not running" in captured.err


def test_stop_when_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """stop with nothing to stop succeeds and says so on stderr only."""
    assert main(["stop"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not running" in captured.err


@pytest.mark.parametrize("argv", [["logs"], ["kill-node", "1"], ["start-node", "1"]])
def test_node_commands_need_a_broker(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Commands on nodes fail clearly, naming how to start one, when none was started."""
    assert main(argv, prog="kourier kafka") == 1
    assert "run `kourier kafka start`" in capsys.readouterr().err


def test_env_names_an_external_broker(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With KOURIER_BOOTSTRAP_SERVERS set, env prints it as the one stdout line."""
    monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    assert main(["env"]) == 0
    assert capsys.readouterr().out == "KOURIER_BOOTSTRAP_SERVERS=broker-a:9092,broker-b:9092\n"


def test_start_waits_for_an_external_broker_that_never_answers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """start with an external broker that does not answer fails after --timeout, naming it."""
    address = nothing_listens()
    monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", address)
    began = time.monotonic()
    assert main(["start", "--timeout", "1"]) == 1
    assert time.monotonic() - began < 10
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"KOURIER_BOOTSTRAP_SERVERS={address} is set but no broker there answered" in (
        captured.err
    )


@pytest.mark.kafka
def test_start_uses_an_external_broker_that_answers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """start with a running broker named in KOURIER_BOOTSTRAP_SERVERS only checks that it
    answers and prints the same address; stop then leaves it alone."""
    bootstrap = OUTSIDE.get("KOURIER_BOOTSTRAP_SERVERS") or kafka_bootstrap()
    monkeypatch.setenv("KOURIER_BOOTSTRAP_SERVERS", bootstrap)
    assert main(["start", "--timeout", "30"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"KOURIER_BOOTSTRAP_SERVERS={bootstrap}"
    assert main(["stop"]) == 0
    assert "not managed here: nothing to stop" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value"), [("KOURIER_KAFKA_RUNTIME", "docker"), ("KOURIER_KAFKA_IMAGE", "x:1")]
)
def test_docker_settings_are_refused(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The removed Docker path's settings make start fail with what to do instead."""
    monkeypatch.setenv(name, value)
    assert main(["start"]) == 1
    assert "no longer supported" in capsys.readouterr().err


def test_state_of_an_older_version_is_read() -> None:
    """A state.json written by the older script (with runtime and image) still names
    its broker, so an upgrade can stop what the old version started."""
    folder = layout.runtime_dir()
    folder.mkdir(parents=True)
    old = {
        "runtime": "local",
        "version": "4.1.1",
        "nodes": 1,
        "port": 19092,
        "security": True,
        "cluster_id": "abc",
        "lib": "/somewhere/lib",
        "image": "",
    }
    (folder / "state.json").write_text(json.dumps(old))
    state = layout.load_state()
    assert state is not None
    assert (state.version, state.port, state.security) == ("4.1.1", 19092, True)
    assert state.bootstrap == "127.0.0.1:19092"


def test_state_of_a_docker_broker_is_refused() -> None:
    """A Docker broker of an older version is not managed: the error says what to do."""
    folder = layout.runtime_dir()
    folder.mkdir(parents=True)
    state = {"runtime": "docker", "version": "4.1.0", "nodes": 1, "port": 9092}
    (folder / "state.json").write_text(json.dumps({**state, "security": False, "cluster_id": "x"}))
    with pytest.raises(LocalKafkaError, match="no longer manages"):
        layout.load_state()


def fake_jvm(marker: str) -> subprocess.Popen[bytes]:
    """A process whose command line looks like a broker JVM of the folder ``marker``."""
    code = "import time; time.sleep(60)"
    return subprocess.Popen(
        [sys.executable, "-c", code, "kafka.Kafka", f"{marker}/node-1/server.properties"]
    )


def test_stop_kills_strays_of_its_own_folder_only(tmp_path: Path) -> None:
    """stop kills a broker JVM that points into its runtime folder but has lost its pid
    file, and leaves one of another folder alone."""
    ours = fake_jvm(str(layout.runtime_dir()))
    theirs = fake_jvm(str(tmp_path / "someone-else"))
    try:
        time.sleep(0.2)
        assert ours.pid in processes.stray_pids(layout.runtime_dir())
        assert main(["stop"]) == 0
        assert ours.wait(10) is not None
        assert theirs.poll() is None
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_ps_and_proc_agree() -> None:
    """The process facts read through ps (used where there is no /proc) match /proc's."""
    if not Path("/proc").is_dir():
        pytest.skip("no /proc on this system: only the ps reading applies")
    proc = fake_jvm("/nowhere")
    try:
        time.sleep(0.2)
        from_proc = processes._proc_info(proc.pid)
        from_ps = processes._ps_info(proc.pid)
        assert from_proc is not None and from_ps is not None
        assert from_proc.cmdline == from_ps.cmdline
        assert from_proc.alive and from_ps.alive
        assert from_ps.rss_kib is not None and from_ps.rss_kib > 0
    finally:
        proc.kill()
        proc.wait()
    assert processes._ps_info(proc.pid) is None


def test_kourier_kafka_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`kourier kafka logs` without a broker exits 1 with one `kourier: error:` message."""
    assert kourier_main(["kafka", "logs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kourier: error: no broker was started in")
    assert "kourier kafka start" in err


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "kourier.localkafka"],
        [str(ROOT / "scripts" / "kafka")],
    ],
)
def test_runs_without_kourier_dependencies(command: list[str]) -> None:
    """`python -m kourier.localkafka` and scripts/kafka run on a bare Python (no site
    packages, so no aiokafka or httpx), with the stdout contract intact."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "KOURIER_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    result = subprocess.run(
        [sys.executable, "-S", *command, "env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "KOURIER_BOOTSTRAP_SERVERS=127.0.0.1:1\n"
