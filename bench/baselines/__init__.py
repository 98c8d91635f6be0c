"""Hand-written baselines: what a competent engineer writes without kourier.

Every baseline module exposes ``open_bench(...)``, an async context manager that yields a
:class:`bench.common.Bench` (see ``bench/common.py`` for the shared API).
"""
