"""The API's routers, one per concern: ingest, jobs (and cancel, verify), events
(SSE), dead letters, operations (health, metrics, queue, workers), the console."""
