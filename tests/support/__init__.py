"""Code the tests and the benchmarks share: servers on loopback, the rendered service, clients."""
