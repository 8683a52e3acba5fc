"""Deploy-time values: the only file of the package that Ansible fills in.

Rendered by the role orchestrator_workers from its variables (a setting's name
is the role variable's name without the `orchestrator_workers_` prefix). No
logic lives here: settings.py reads, overrides (ORCHESTRATOR_<NAME>) and
validates these values. Secrets are never rendered: they come from the
environment file. The repository keeps this template rendered with the role's
defaults as deployed.py, so the package imports straight from the checkout
(scripts/render_service.py --check-deployed keeps the two in step).
"""

from typing import Final

DEFAULTS: Final[dict[str, str | int | float | bool]] = {
    "service_name": "shield-orchestrator",
    "state_dir": "/var/lib/shield-orchestrator",
    "log_level": "INFO",
    # HTTP API
    "listen_host": "0.0.0.0",
    "listen_port": 8000,
    "max_chunks_per_job": 1000,
    "max_chunk_bytes": 65536,
    "max_queue_depth": 100000,
    "sse_max_clients": 100,
    "api_docs_public": False,
    "sse_keepalive_seconds": 15.0,
    "sse_replay_events": 100,
    "events_stream_maxlen": 10000,
    # worker pool
    "pool_size": 4,
    "batch_size": 50,
    "block_ms": 1000,
    "task_timeout_seconds": 300.0,
    "retry_attempts": 3,
    "retry_backoff_seconds": 1.0,
    "recycle_after_tasks": 1000,
    "max_deliveries": 10,
    "heartbeat_ttl_seconds": 6.0,
    "graceful_shutdown_timeout": 60.0,
    "reclaim_interval_seconds": 2.0,
    # Redis names
    "stream_name": "shield:ingestion_queue",
    "consumer_group": "lightrag-workers",
    "events_stream": "shield:events",
    "key_prefix": "shield:",
    # job tracking
    "job_status_ttl": 3600,
    "pg_sync_interval": 0.5,
    # Redis
    "redis_host": "127.0.0.1",
    "redis_port": 6379,
    "redis_db": 0,
    "redis_sentinels": "",
    "redis_sentinel_master": "",
    "redis_username": "",
    # PostgreSQL
    "postgres_host": "127.0.0.1",
    "postgres_port": 5432,
    "postgres_db": "shield_orchestrator",
    "postgres_user": "orchestrator",
    "postgres_sslmode": "disable",
    "postgres_sslrootcert": "",
    "postgres_sslcert": "",
    "postgres_sslkey": "",
    # LightRAG
    "lightrag_storage": "local",
    "lightrag_workspace": "shield",
    "lightrag_lock_ttl_seconds": 10.0,
    "lightrag_llm_cache": True,
    # LLM and embeddings (OpenAI-compatible endpoints)
    "llm_base_url": "http://127.0.0.1:11434/v1",
    "llm_model": "qwen2.5:7b-instruct",
    "llm_timeout_seconds": 240.0,
    "llm_max_async": 4,
    "llm_cluster_max_async": 0,
    "llm_required": True,
    "embedding_base_url": "http://127.0.0.1:11434/v1",
    "embedding_model": "nomic-embed-text",
    "embedding_dim": 768,
    "embedding_timeout_seconds": 60.0,
    "embedding_max_async": 8,
    "llm_stall_seconds": 60.0,
}

# Bounds of the numeric settings (the role's orchestrator_workers__bounds):
# the role's preflight checks the same table before anything changes on a host.
BOUNDS: Final[dict[str, dict[str, float]]] = {
    "listen_port": {"min": 1, "max": 65535},
    "max_chunks_per_job": {"min": 1},
    "max_chunk_bytes": {"min": 1},
    "max_queue_depth": {"min": 1},
    "sse_max_clients": {"min": 1},
    "sse_keepalive_seconds": {"min": 1},
    "sse_replay_events": {"min": 0},
    "events_stream_maxlen": {"min": 1},
    "pool_size": {"min": 1, "max": 256},
    "batch_size": {"min": 1},
    "block_ms": {"min": 1},
    "task_timeout_seconds": {"min": 1},
    "retry_attempts": {"min": 1},
    "retry_backoff_seconds": {"min": 0},
    "recycle_after_tasks": {"min": 1},
    "graceful_shutdown_timeout": {"min": 1},
    "reclaim_interval_seconds": {"min": 1},
    "heartbeat_ttl_seconds": {"min": 3},
    "max_deliveries": {"min": 2},
    "lightrag_lock_ttl_seconds": {"min": 3},
    "job_status_ttl": {"min": 1},
    "pg_sync_interval": {"min": 0.1},
    "redis_port": {"min": 1, "max": 65535},
    "redis_db": {"min": 0},
    "postgres_port": {"min": 1, "max": 65535},
    "llm_timeout_seconds": {"min": 1},
    "llm_max_async": {"min": 1},
    "llm_cluster_max_async": {"min": 0},
    "llm_stall_seconds": {"min": 1},
    "embedding_dim": {"min": 1},
    "embedding_timeout_seconds": {"min": 1},
    "embedding_max_async": {"min": 1},
}
