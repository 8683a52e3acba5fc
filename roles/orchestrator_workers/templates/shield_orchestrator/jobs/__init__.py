"""A job's life: the request a client sends, its intake (the job and its chunks
in one MULTI/EXEC), the tracker (counters in Lua, each chunk counted once), the
views, the durable history in PostgreSQL (models, migrations, the projection)
and the dead letters with their replay."""
