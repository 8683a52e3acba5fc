"""The LLM as the service spends it: the slots its chat calls hold, on this host and
across the cluster, with the 429 back-off (slots.py); the order its queue serves
the documents in (order.py); and the cache of its answers on the file storages
(cache.py)."""
