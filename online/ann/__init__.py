"""Approximate nearest neighbours: an HNSW replica of the item embeddings in Redis.

``index.AnnIndex`` wraps hnswlib (inner product over L2-normalised vectors, string item
ids); ``store.EmbeddingStore`` writes item vectors to Redis and appends every change to the
embedding changelog stream; ``follower.IndexFollower`` keeps an ``AnnIndex`` in a scorer
process up to date by following that changelog, with on-disk snapshots for fast restarts;
``bench`` is ``recsys bench ann``.
"""

from online.ann.index import AnnIndex, RWLock

__all__ = ["AnnIndex", "RWLock"]
