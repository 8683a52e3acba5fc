"""The worker pool: supervised consumers of the stream, a worker's loop (reads,
retries, pauses), the one module that writes a chunk's outcome (outcome.py),
the breakers that pause the pool on a dependency, failure classes, and the
interface a processor implements."""
