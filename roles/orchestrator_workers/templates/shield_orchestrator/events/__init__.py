"""Events: the types a job and the pool announce, the Redis stream that carries
them (the publisher), and the hub that serves them to Server-Sent Events clients."""
