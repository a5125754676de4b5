"""Redis key layout, defined once and versioned (Feast ``key_encoding_utils`` style).

All keys are ``{prefix}:{version}:...``. Per-user keys carry the hash tag ``{u:<id>}``
and per-item keys ``{i:<id>}`` so that in Redis Cluster one user's keys share a slot
(one pipelined round trip per request). Bump ``KEY_VERSION`` when a value layout changes
incompatibly: old and new writers then never read each other's values.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY_VERSION = "v1"
# entries a change-notification STREAM keeps (XADD MAXLEN ~: never fewer once reached)
CHANGELOG_MAXLEN = 100_000


@dataclass(frozen=True)
class Keys:
    prefix: str = "rs"
    version: str = KEY_VERSION

    @property
    def root(self) -> str:
        return f"{self.prefix}:{self.version}"

    # --- per user (hash tag keeps them in one cluster slot) --------------------------------
    def session(self, user_id: str) -> str:
        """msgpack: SessionState (last-N viewed, sequence, counts)."""
        return f"{self.root}:{{u:{user_id}}}:session"

    def user_features(self, user_id: str) -> str:
        """msgpack: UserFeatures."""
        return f"{self.root}:{{u:{user_id}}}:feat"

    def user_purchased(self, user_id: str) -> str:
        """SET of item ids the user bought (filtered out of recommendations)."""
        return f"{self.root}:{{u:{user_id}}}:bought"

    def result_cache(self, user_id: str) -> str:
        """msgpack: cached recommendation (with the session version it was built on)."""
        return f"{self.root}:{{u:{user_id}}}:cache"

    # --- per item ------------------------------------------------------------------------
    def item_features(self, item_id: str) -> str:
        """msgpack: ItemStats (decayed counts, last event time)."""
        return f"{self.root}:{{i:{item_id}}}:stats"

    def item_catalog(self, item_id: str) -> str:
        """msgpack: catalog fields (title, category, brand, price, active)."""
        return f"{self.root}:{{i:{item_id}}}:cat"

    def covisit(self, item_id: str) -> str:
        """ZSET related item -> weight."""
        return f"{self.root}:{{i:{item_id}}}:covis"

    def item_embedding(self, item_id: str) -> str:
        """msgpack: {"v": float32 bytes, "ver": int}."""
        return f"{self.root}:{{i:{item_id}}}:emb"

    # --- global --------------------------------------------------------------------------
    def popular(self) -> str:
        """ZSET item -> log2 decayed view score (forward decay, see features.sessions)."""
        return f"{self.root}:pop:views"

    def top_sellers(self) -> str:
        """ZSET item -> log2 decayed purchase score: the scorer's fallback list."""
        return f"{self.root}:pop:sales"

    def trending(self, category: str) -> str:
        """ZSET item -> log2 decayed short-horizon score within a category."""
        return f"{self.root}:trend:{category}"

    def new_items(self) -> str:
        """ZSET item -> first catalog time (ms): the newest items, trimmed (exploration pool)."""
        return f"{self.root}:new:items"

    def embedding_changelog(self) -> str:
        """STREAM of embedding writes (the HNSW replicas follow it)."""
        return f"{self.root}:emb:log"

    def item_changelog(self) -> str:
        """STREAM of changed item ids (field "ids": msgpack list), one entry per sink batch,
        trimmed to about ``CHANGELOG_MAXLEN`` entries: scorers drop their in-memory rows of
        those items (``online.item_feed``)."""
        return f"{self.root}:items:log"


def tower_keys(prefix: str, version: str) -> Keys:
    """Keys of the item-tower index of one two-tower model version (its own vector space)."""
    return Keys(prefix=f"{prefix}:tt:{version}")
