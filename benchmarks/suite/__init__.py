"""The benchmark suite behind ``python -m benchmarks``: one table of ratios ours/reference."""
