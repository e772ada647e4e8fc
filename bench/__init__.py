"""Benchmarks: ``make bench`` prints one ``name: value`` line per figure, each measured in one run."""
