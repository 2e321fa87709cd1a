"""Benchmarks of eqprop (run on demand, never in the test suite): see benchmarks/README.md."""
