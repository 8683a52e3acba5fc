"""LightRAG: the processor the worker pool calls, its feeder (the one writer of a
workspace in this process), the commit of the file storages, how documents
merge at once (merge/: keyed locks, summaries after the lock), the LLM and
embedding clients, the cross-host lock and its writer fence in PostgreSQL, and
the read-back checks (verify)."""
