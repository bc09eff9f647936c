"""Benchmarks. Run ``make bench`` (all) or ``make bench BENCH=name``; see bench/README.md."""
