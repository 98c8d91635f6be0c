"""``kourier run --reload``: restart the service's process when its source changes.

A supervisor watches the app's source tree and runs the service as a child process
(``python -m kourier run ...`` without ``--reload``). On a change it stops the child as
a deployment does, with SIGTERM (in-flight work drains, offsets are committed, the
consumer group is left), waits for it, and starts a new one. Files are polled for
their modification times: no dependency, and a development loop does not need
inotify's speed (a change is seen within ``POLL_INTERVAL``). It must never run two
children at once, nor be used with ``--workers``: a dev loop serves one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from kourier.cli.common import EXIT_USAGE, CLIError, settings_from

logger = logging.getLogger("kourier.reload")

#: Seconds between two looks at the source tree.
POLL_INTERVAL = 0.5
#: Seconds a stopping child may take beyond the drain timeout before it is killed.
STOP_GRACE = 10.0
#: Directories never watched: tools' caches, virtual environments, installed packages.
SKIPPED_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "build"})

Snapshot = dict[str, int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart the service (draining it first) when a .py file of the app changes; "
        "for development, one worker",
    )
    parser.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="watch DIR instead of the app's package (repeatable; with --reload)",
    )


def run_with_reload(args: argparse.Namespace) -> int:
    """Serve ``args.app`` in a child process, restarting it on each source change."""
    if args.workers > 1:
        raise CLIError(
            "--reload runs one worker: drop --workers, or run several workers without --reload",
            EXIT_USAGE,
        )
    dirs = (
        [Path(d).resolve() for d in args.reload_dir] if args.reload_dir else [source_root(args.app)]
    )
    for directory in dirs:
        if not directory.is_dir():
            raise CLIError(f"--reload-dir {str(directory)!r} is not a directory", EXIT_USAGE)
    stop_within = settings_from(args).drain_timeout + STOP_GRACE
    argv = [sys.executable, "-m", "kourier", *child_arguments(sys.argv[1:])]
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("watching %s for changes", ", ".join(str(d) for d in dirs))
    files = snapshot(dirs)
    child = _start(argv)
    reported_exit = False
    while not stopping.wait(POLL_INTERVAL):
        now = snapshot(dirs)
        if now != files:
            logger.info("%s changed: restarting the service", _first_change(files, now))
            _stop(child, stop_within)
            files = snapshot(dirs)  # what the new child will import
            child = _start(argv)
            reported_exit = False
        elif child.poll() is not None and not reported_exit:
            logger.warning(
                "the service exited with code %d; it starts again when a file changes",
                child.returncode,
            )
            reported_exit = True
    _stop(child, stop_within)
    return child.returncode if child.returncode and child.returncode > 0 else 0


def source_root(spec: str) -> Path:
    """The directory to watch for ``module:attr``: its top-level package, or the
    directory of a top-level module; the working directory if it cannot be found."""
    top = spec.partition(":")[0].split(".")[0]
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = importlib.util.find_spec(top)  # a top-level name: imports nothing
    except (ImportError, ValueError):
        found = None
    if found is not None and found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations))).resolve()
    if found is not None and found.origin and os.path.isfile(found.origin):
        return Path(found.origin).resolve().parent
    return Path.cwd()


def snapshot(dirs: Iterable[Path]) -> Snapshot:
    """The modification time of every ``.py`` file under ``dirs``."""
    files: Snapshot = {}
    for directory in dirs:
        for root, subdirs, names in os.walk(directory):
            subdirs[:] = [d for d in subdirs if not d.startswith(".") and d not in SKIPPED_DIRS]
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    try:
                        files[path] = os.stat(path).st_mtime_ns
                    except FileNotFoundError:  # removed while we walked: the next look sees it
                        continue
    return files


def child_arguments(argv: Sequence[str]) -> list[str]:
    """The command line less ``--reload`` and ``--reload-dir DIR``: the child's own."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--reload-dir":
            skip = True
        elif arg != "--reload" and not arg.startswith("--reload-dir="):
            out.append(arg)
    return out


def _first_change(before: Snapshot, after: Snapshot) -> str:
    for path in sorted(before.keys() | after.keys()):
        if before.get(path) != after.get(path):
            return path
    return "a file"


def _start(argv: list[str]) -> subprocess.Popen[bytes]:
    # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which
    # stops the child once, with SIGTERM (a second signal would stop it without draining).
    child = subprocess.Popen(argv, start_new_session=True)
    logger.info("started the service (pid %d)", child.pid)
    return child


def _stop(child: subprocess.Popen[bytes], within: float) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(within)
    except subprocess.TimeoutExpired:
        logger.error("the service did not stop within %.0f s of SIGTERM: killing it", within)
        child.kill()
        child.wait()
