"""The queue: the Redis streams of chunk tasks (normal and high priority) and
their consumer group, every Redis key name, the take-over of entries held by a
consumer whose heartbeat lapsed, and the Lua scripts of the stream. Nothing
here knows jobs, workers or LightRAG."""
