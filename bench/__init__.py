"""rctmon's benchmark suite (issue 6): `python -m bench` runs every benchmark and prints one table.

Benchmarks are not tests: nothing here asserts a timing. Each figure is printed beside a baseline measured in the
same run; docs/performance.md holds the latest table and the machine it ran on.
"""
