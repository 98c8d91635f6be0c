"""The public names: one sorted __all__, and nothing public left out of it."""

from __future__ import annotations

import subprocess
import sys

import kourier
from tests.processes import ROOT


def test_all_is_sorted_and_complete() -> None:
    """Every public name kourier offers is in __all__, in order, and each resolves."""
    resolved = {name: getattr(kourier, name) for name in kourier.__all__}
    public = {name for name in dir(kourier) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(kourier, name)).__name__ == "module"}
    assert sorted(kourier.__all__) == kourier.__all__
    assert set(kourier.__all__) == public - modules
    assert all(value is not None for value in resolved.values())
    assert set(kourier._HOMES) == set(kourier.__all__)


def test_unknown_name_is_an_attribute_error() -> None:
    """A name kourier does not offer raises AttributeError, as for any module."""
    try:
        kourier.NoSuchName  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchName" in str(exc)
    else:
        raise AssertionError("kourier.NoSuchName resolved")


def test_importing_kourier_loads_no_kafka_client() -> None:
    """`import kourier` alone imports neither aiokafka nor httpx (they load on first use)."""
    code = "import sys, kourier; print([m for m in ('aiokafka', 'httpx') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
