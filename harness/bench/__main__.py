"""`python -m harness.bench`: the benchmarks' command line (harness.bench.cli)."""

from harness.bench.cli import main

main()
