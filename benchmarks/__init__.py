"""Side-by-side benchmarks: ours vs the plain torchvision / timm / smp loops. ``python -m benchmarks``
runs the suite (``benchmarks/suite``); the ``bench_*.py`` scripts are the longer single-topic ones."""
