"""The public names: one sorted __all__, and nothing public left out of it."""

from __future__ import annotations

import kourier


def test_all_is_sorted_and_complete() -> None:
    """Every public name defined in kourier/__init__.py is in __all__, in order."""
    public = {name for name in vars(kourier) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(kourier, name)).__name__ == "module"}
    assert sorted(kourier.__all__) == kourier.__all__
    assert set(kourier.__all__) == public - modules
