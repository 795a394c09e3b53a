"""Benchmarks: each runs the product's own entry points, prints one JSON line per figure (device, torch,
commit, date recorded) and has a CPU smoke path the suite runs. Run them as modules from the checkout,
e.g. ``python -m bench.stage1 --device cpu``; results cited in the README live in ``bench/results/``."""
