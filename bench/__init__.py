"""Benchmarks of the real-time module against a bare `websockets` baseline (docs/BENCHMARKS.md).

Run one scenario with `python -m bench SCENARIO` (`python -m bench --help` lists them); every
scenario prints a table and writes a JSON file under bench/results/. Nothing here is imported
by the product.
"""
