"""Block caches: cache-dit and the first-block cache, on shared checks and state."""
