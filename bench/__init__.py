"""Benchmark suite for kourier: hand-written baselines and the runners that compare them."""
