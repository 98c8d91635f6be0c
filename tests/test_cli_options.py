"""The CLI's parser: --version, global options after the command, run's new options."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from kourier import __version__
from kourier.cli import accept_global_options_after_commands, build_parser
from kourier.cli.admin import BODY_PREVIEW, _body_text
from kourier.cli.run import _without_options, crowded_cores


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """kourier --version prints 'kourier <version>' and exits 0."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"kourier {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [
            "--bootstrap-servers",
            "b:1",
            "--debug",
            "--log-level",
            "info",
            "request",
            "s",
            "GET",
            "/",
        ],
        [
            "request",
            "s",
            "GET",
            "/",
            "--bootstrap-servers",
            "b:1",
            "--debug",
            "--log-level",
            "info",
        ],
        ["--debug", "request", "s", "GET", "/", "--log-level", "info", "--bootstrap-servers=b:1"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv: list[str]) -> None:
    """--bootstrap-servers, --debug and --log-level mean the same on either side."""
    args = build_parser().parse_args(argv)
    assert (args.bootstrap_servers, args.debug, args.log_level) == ("b:1", True, "info")


def test_an_option_after_the_command_wins_over_one_before() -> None:
    """Given on both sides, the later (after the command) value is used."""
    args = build_parser().parse_args(
        ["--bootstrap-servers", "a:1", "dead-letters", "list", "s", "--bootstrap-servers", "b:1"]
    )
    assert args.bootstrap_servers == "b:1"


def test_not_given_the_global_options_keep_their_defaults() -> None:
    """Without them, every command sees the top-level defaults."""
    for argv in (["run", "m:app"], ["topics", "ensure", "s"], ["send", "s", "POST", "/"]):
        args = build_parser().parse_args(argv)
        assert (args.bootstrap_servers, args.debug, args.log_level) == (None, False, None)


def test_run_takes_root_path_and_access_log_switches() -> None:
    """--root-path and --access-log/--no-access-log reach the run command."""
    parse = build_parser().parse_args
    assert parse(["run", "m:app", "--root-path", "/api"]).root_path == "/api"
    assert parse(["run", "m:app"]).access_log is None  # the setting decides
    assert parse(["run", "m:app", "--no-access-log"]).access_log is False
    assert parse(["run", "m:app", "--access-log"]).access_log is True


def test_workers_do_not_inherit_a_worker_index() -> None:
    """The parent's argv loses --workers and --worker-index before each worker gets its own."""
    argv = ["run", "m:app", "--workers", "2", "--worker-index=1", "--health-port", "9"]
    assert _without_options(argv, ("--workers", "--health-port", "--worker-index")) == [
        "run",
        "m:app",
    ]


def test_a_long_body_is_cut_unless_full() -> None:
    """A body longer than the preview is cut with its size; --full shows all, one line."""
    body = ("x" * BODY_PREVIEW + "tail\n").encode()
    cut = _body_text(body, full=False)
    assert cut.startswith("x" * BODY_PREVIEW) and "tail" not in cut
    assert f"({len(body)} bytes; --full shows all)" in cut
    assert _body_text(body, full=True) == "x" * BODY_PREVIEW + "tail\\n"
    assert _body_text(b"\xff{}", full=False) == "\\xff{}"


def test_a_command_with_its_own_debug_option_keeps_it() -> None:
    """A command (or sub-command) that defines a global option itself is not refused."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    own = sub.add_parser("own")
    own.add_argument("--debug", type=int)
    nested = own.add_subparsers(dest="inner").add_parser("inner")
    accept_global_options_after_commands(parser)
    args = parser.parse_args(["own", "--debug", "3", "inner", "--bootstrap-servers", "b:1"])
    assert (args.debug, args.bootstrap_servers) == (3, "b:1")
    assert "--log-level" in nested._option_string_actions


def test_more_workers_than_cpus_is_named_a_waste() -> None:
    """--workers beyond the usable CPUs gets a reason and a count to use; up to them, none."""
    assert crowded_cores(2, 2) is None and crowded_cores(1, 1) is None
    warning = crowded_cores(3, 2)
    assert warning is not None
    assert warning.startswith("--workers 3 on 2 CPUs:") and "use --workers 2 or fewer" in warning
    assert "on 1 CPU:" in (crowded_cores(2, 1) or "")


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux interface"
)
def test_usable_cpus_follow_the_process_affinity() -> None:
    """A process limited to one CPU (as taskset or a container limits it) counts one."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from kourier.cli.run import usable_cpus; print(usable_cpus())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "1", result.stderr


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="CPU affinity is a Linux interface"
)
def test_workers_beyond_the_cpus_are_warned_about_before_they_start() -> None:
    """`kourier run --workers 2` limited to one CPU logs the waste before starting workers."""
    result = subprocess.run(
        [sys.executable, "-m", "kourier", "run", "tests.no_such_module:app", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )
    assert "WARNING" in result.stderr and "--workers 2 on 1 CPU:" in result.stderr
    assert result.returncode != 0  # the workers could not import the app
