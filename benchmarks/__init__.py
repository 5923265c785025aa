"""Speed and quality benchmarks: they print tables and write JSON; never part of the pass/fail suite."""
