"""The benchmark's sections, in the order they run: each a `run(bench, section)` function."""
