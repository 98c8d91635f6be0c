"""The parts of `kourier run --reload` that need no process: what is watched, the child's argv."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from kourier.cli.reload import child_arguments, snapshot, source_root


def test_the_child_runs_the_same_command_without_the_reload_options() -> None:
    """--reload and --reload-dir (both spellings) are dropped; every other argument stays."""
    argv = ["run", "a:app", "--reload", "--reload-dir", "src", "--http", "8000", "--reload-dir=x"]
    assert child_arguments(argv) == ["run", "a:app", "--http", "8000"]


def test_snapshot_sees_python_files_and_skips_caches_and_environments(tmp_path: Path) -> None:
    """Only .py files count, and hidden, cache and virtualenv directories are not walked."""
    (tmp_path / "app.py").write_text("")
    (tmp_path / "notes.txt").write_text("")
    for skipped in (".venv", "__pycache__", "node_modules"):
        (tmp_path / skipped).mkdir()
        (tmp_path / skipped / "x.py").write_text("")
    assert list(snapshot([tmp_path])) == [str(tmp_path / "app.py")]


def test_a_rewritten_file_changes_the_snapshot(tmp_path: Path) -> None:
    """A file written again with a later modification time is a change."""
    app = tmp_path / "app.py"
    app.write_text("A = 1")
    before = snapshot([tmp_path])
    os.utime(app, ns=(before[str(app)] + 1_000_000, before[str(app)] + 1_000_000))
    assert snapshot([tmp_path]) != before


def test_the_watched_tree_is_the_apps_package_or_its_modules_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package app watches its top-level package; a module app watches its directory."""
    (tmp_path / "shop" / "api").mkdir(parents=True)
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "api" / "__init__.py").write_text("")
    (tmp_path / "single.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert source_root("shop.api.main:app") == (tmp_path / "shop").resolve()
    assert source_root("single:app") == tmp_path.resolve()
    assert "shop" not in sys.modules, "finding the source tree must not import the app"
