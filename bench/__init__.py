"""Benchmarks for the app and the local gateway (development tooling, never shipped to Lambda).

``python -m bench [--quick] [--peer] [--out docs/benchmarks.md] [--plot docs/fanout.png]`` runs
every workload and writes the report.  Every figure is reported next to a baseline measured in
the same run, as a ratio: absolute numbers are noisy on shared machines.
"""
