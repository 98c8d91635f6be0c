"""`kourier run` exits non-zero, with the error logged, when a task it needs dies."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import kafka_bootstrap
from tests.processes import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(120)]


def test_kourier_run_exits_1_when_its_fetch_loop_dies(tmp_path: Path) -> None:
    """A fetch loop that dies of a bug stops the process with exit 1 and the error in
    its log, so Kubernetes restarts it; it does not idle on as a zombie."""
    env = {
        **os.environ,
        "KOURIER_BOOTSTRAP_SERVERS": kafka_bootstrap(),
        "KOURIER_TOPIC_PREFIX": f"dying{uuid.uuid4().hex[:8]}.",
        "KOURIER_E2E_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kourier",
            "run",
            "tests.e2e.app:app",
            "--service",
            "dying",
            "--hooks",
            "tests.e2e.dying:hooks",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "the kourier-fetch task died" in result.stderr
    assert "fetch broke (tests.e2e.dying)" in result.stderr
    assert "a task it needs died" in result.stderr
