"""`python -m benchmarks.speed`: the command line of `benchmarks.speed.cli`."""

from benchmarks.speed.cli import main

main()
