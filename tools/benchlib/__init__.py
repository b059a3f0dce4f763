"""The benchmark library behind tools/bench.py and tools/bench_remote.py."""
