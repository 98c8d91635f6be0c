"""bench.service_ab: variant specs, and the in-process A/B on this checkout."""

from __future__ import annotations

import argparse

from bench.service_ab import Variant, inproc_run


def test_a_variant_names_its_target_checkout_and_settings() -> None:
    """``NAME=TARGET:SRC+VAR=VALUE`` splits into its parts; the checkout is optional."""
    old = Variant.parse("old=kourier:../old/src+KOURIER_ACCESS_LOG=false")
    assert (old.name, old.target, old.src) == ("old", "kourier", "../old/src")
    assert old.env == {"KOURIER_ACCESS_LOG": "false"}
    raw = Variant.parse("raw=raw_aiokafka_app")
    assert (raw.target, raw.src, raw.env) == ("raw_aiokafka_app", None, {})


def test_the_in_process_run_times_a_whole_service_on_this_checkout() -> None:
    """An inproc run serves pre-built one-way records through a whole Service in a child
    process and reports its CPU per record."""
    args = argparse.Namespace(app="bare", n=300, two_way=False)
    figures = inproc_run(Variant.parse("this=src"), args)
    assert 0 < figures["cpu us/record"] < 10_000
