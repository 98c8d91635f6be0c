"""The Kubernetes example stays true to the code: probe paths, port and settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from kourier.cli import build_parser
from kourier.ops.health import HealthServer
from kourier.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kubernetes" / "orders.yaml"


def _container() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(EXAMPLE.read_text()))
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_probe_paths_are_the_ones_the_health_server_serves() -> None:
    """/readyz and /livez in the manifest are paths HealthServer answers."""
    container = _container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    for path in ("/readyz", "/livez", "/metrics"):
        assert path in HealthServer.PATHS


def test_probe_port_is_the_health_port_the_command_gets() -> None:
    """The probes' named port is the container port that KOURIER_HEALTH_PORT sets."""
    container = _container()
    env = {e["name"]: e.get("value") for e in container["env"]}
    [port] = [p for p in container["ports"] if p["name"] == "health"]
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert int(env["KOURIER_HEALTH_PORT"]) == port["containerPort"]


def test_the_command_and_every_setting_are_real() -> None:
    """The command parses, and every KOURIER_* variable names a setting or a run option."""
    container = _container()
    command = container["command"]
    assert command[0] == "kourier"
    args = build_parser().parse_args(command[1:])
    assert args.command == "run"
    fields = {f.name.upper() for f in dataclasses.fields(Settings)}
    run_options = {"HEALTH_PORT", "LOG_FORMAT", "SERVICE"}
    for variable in container["env"]:
        name = variable["name"]
        assert name.startswith("KOURIER_")
        assert name.removeprefix("KOURIER_") in fields | run_options, name
