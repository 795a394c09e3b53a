"""The logic behind ``python -m shared.inspect_shards``: summary, verification, samples, grid, report.

Everything reads the dataset through ``shared.contract`` and ``shared.store``; the summary touches
only per-store attributes so it stays fast on thousands of stores.
"""
