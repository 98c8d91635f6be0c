"""What the baselines are measured against: kourier itself.

Every target module exposes ``open_bench(...)`` and ``open_service(...)`` like the
baselines (see ``bench/common.py`` and ``bench/README.md``).
"""
