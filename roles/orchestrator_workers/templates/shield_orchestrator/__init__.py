"""shield-orchestrator: asynchronous ingestion of text chunks into LightRAG.

The package's wings, each importing only from those listed before it:

- settings, deployed, bounds: what the service is configured with;
- queue/: the Redis stream of chunk tasks, its consumers' liveness, keys, scripts;
- metrics: the Prometheus registry;
- jobs/: a job's life: intake, tracker, history (PostgreSQL), events, dead letters;
- workers/: the pool of consumers, a worker's loop, the one place a chunk's
  outcome is settled, circuit breakers, failure classes;
- lightrag/: the processor that feeds LightRAG, its commit, clients, locks, verify;
- health, build_info: what the service reports about itself;
- api/: the HTTP API (routes, errors, schemas, the console's static files);
- service, commands, cli: the process (wiring, CLI commands, entry point).

Rendered onto the host by the Ansible role orchestrator_workers, as a tree of the
same shape; deployed.py holds the deploy-time values (its template is the only
Jinja), every other file is plain. This file is the one source of the version.
"""

__version__ = "1.0.0"
