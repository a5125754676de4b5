"""The gRPC scorer: retrieval, ranking runtime, re-ranking, the HNSW index follower."""
