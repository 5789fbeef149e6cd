"""Reference computations shared by the tests and the benchmarks (not part of the model API)."""
