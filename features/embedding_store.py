"""Item vectors in Redis and the changelog stream that HNSW replicas follow (writer side).

Writers (the embeddings dataflow, the item tower) use ``EmbeddingStore``: each write sets
``Keys.item_embedding(item)`` (msgpack via ``proto.codecs``: float32 bytes, version, write
time) and appends an entry to the stream ``Keys.embedding_changelog()`` in one MULTI/EXEC,
so the log order is the write order. The stream entry ID is the sequence number. An entry
carries the vector itself, so a follower applies exactly what was written, in order,
without reading the keys back. Deactivating an item is a delete (key removed, ``del``
entry logged). The stream is trimmed approximately to ``changelog_maxlen`` entries; a
follower whose snapshot is older than the trimmed log rebuilds from the keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from proto import codecs
from proto.keys import Keys

log = logging.getLogger(__name__)

OP_UPSERT = "up"
OP_DELETE = "del"
ZERO_ID = "0-0"


def parse_id(entry_id: str | bytes) -> tuple[int, int]:
    """A stream entry ID ``"<ms>-<n>"`` as a comparable tuple."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, n = text.partition("-")
    return int(ms), int(n or 0)


def usable(vecs: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Rows the index can take: finite, non-zero."""
    finite = np.asarray(np.isfinite(vecs).all(axis=1), dtype=np.bool_)
    nonzero = np.asarray((vecs != 0).any(axis=1), dtype=np.bool_)
    return finite & nonzero


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StoredVector:
    vector: npt.NDArray[np.float32]
    version: int
    updated_ms: int


def encode_vector(vector: npt.ArrayLike, version: int, updated_ms: int) -> bytes:
    vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    return codecs.encode({"v": vec.tobytes(), "ver": int(version), "ms": int(updated_ms)})


def decode_vector(raw: bytes | None) -> StoredVector | None:
    obj = codecs.decode(raw)
    if obj is None:
        return None
    vec = np.frombuffer(obj["v"], dtype=np.float32)
    return StoredVector(vec, int(obj.get("ver", 0)), int(obj.get("ms", 0)))


class EmbeddingStore:
    """Item vectors in Redis plus the changelog the HNSW replicas follow."""

    def __init__(
        self, client: redis.Redis, keys: Keys, *, changelog_maxlen: int | None = 1_000_000,
        txn_size: int = 500,
    ) -> None:
        self.client = client
        self.keys = keys
        self.log_key = keys.embedding_changelog()
        self.changelog_maxlen = changelog_maxlen  # approximate trim; None keeps everything
        self.txn_size = txn_size
        head, _, tail = keys.item_embedding("\0").partition("\0")
        self._key_head, self._key_tail = head, tail

    def item_of_key(self, key: str | bytes) -> str:
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(self._key_head) : len(text) - len(self._key_tail)]

    def _xadd(self, pipe: Any, entry: dict[str, Any]) -> None:
        maxlen = self.changelog_maxlen
        pipe.xadd(self.log_key, {"d": codecs.encode(entry)}, maxlen=maxlen, approximate=True)

    def put(self, item_id: str, vector: npt.ArrayLike, *, version: int | None = None,
            updated_ms: int | None = None) -> str:
        """Write one vector; returns its changelog sequence (stream entry ID)."""
        seq = self.put_many([item_id], np.asarray(vector, dtype=np.float32)[None, :],
                            version=version, updated_ms=updated_ms)
        assert seq is not None
        return seq

    def put_many(self, ids: Sequence[str], vectors: npt.ArrayLike, *, version: int | None = None,
                 updated_ms: int | None = None) -> str | None:
        """Write vectors (``version`` defaults to ``updated_ms``, which defaults to now);
        returns the last changelog sequence, None if nothing was written."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids for vectors of shape {vecs.shape}")
        bad = [ids[i] for i in np.flatnonzero(~usable(vecs))[:5]]
        if bad:
            raise ValueError(f"zero or non-finite vectors for items {bad}")
        ms = now_ms() if updated_ms is None else int(updated_ms)
        ver = ms if version is None else int(version)

        def write(pipe: Any, i: int) -> None:
            pipe.set(self.keys.item_embedding(ids[i]), encode_vector(vecs[i], ver, ms))
            self._xadd(pipe, {"op": OP_UPSERT, "item": ids[i], "v": vecs[i].tobytes(),
                              "ver": ver, "ms": ms})

        return self._transactions(len(ids), write)

    def delete(self, ids: Sequence[str], *, updated_ms: int | None = None) -> str | None:
        """Remove (deactivate) items; logged even if absent, so replicas converge."""
        ms = now_ms() if updated_ms is None else int(updated_ms)

        def write(pipe: Any, i: int) -> None:
            pipe.delete(self.keys.item_embedding(ids[i]))
            self._xadd(pipe, {"op": OP_DELETE, "item": ids[i], "ms": ms})

        return self._transactions(len(ids), write)

    def _transactions(self, n: int, write: Callable[[Any, int], None]) -> str | None:
        """``write(pipe, i)`` for i < n in MULTI/EXECs of ``txn_size`` (log order = write
        order); returns the last XADD's entry ID (each ``write`` ends with an XADD)."""
        last: str | None = None
        for start in range(0, n, self.txn_size):
            pipe = self.client.pipeline(transaction=True)
            for i in range(start, min(n, start + self.txn_size)):
                write(pipe, i)
            reply = pipe.execute()[-1]
            last = reply.decode() if isinstance(reply, bytes) else str(reply)
        return last

    def get(self, item_id: str) -> StoredVector | None:
        raw: Any = self.client.get(self.keys.item_embedding(item_id))
        return decode_vector(raw)

    def scan(self, batch: int = 1000) -> Iterator[tuple[str, StoredVector]]:
        """Every stored vector (SCAN + pipelined GETs; undecodable values are skipped)."""
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=self.keys.item_embedding("*"), count=batch):
            keys.append(key)
            if len(keys) >= batch:
                yield from self._fetch(keys)
                keys = []
        yield from self._fetch(keys)

    def _fetch(self, keys: list[bytes]) -> Iterator[tuple[str, StoredVector]]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        for key, raw in zip(keys, pipe.execute(), strict=True):
            try:
                stored = decode_vector(raw)
            except (codecs.CodecError, KeyError, ValueError) as exc:
                log.warning("skipping embedding %r: %s", key, exc)
                continue
            if stored is not None:
                yield self.item_of_key(key), stored

    def last_seq(self) -> str:
        """The newest changelog entry ID ("0-0" when the log is empty)."""
        newest: Any = self.client.xrevrange(self.log_key, count=1)
        return str(newest[0][0].decode()) if newest else ZERO_ID

    def log_covers(self, seq: str) -> bool:
        """True if every entry after ``seq`` is still in the log (not trimmed away)."""
        try:
            info = self.client.xinfo_stream(self.log_key)
        except redis.ResponseError:  # no stream: fine only if nothing was ever logged
            return seq == ZERO_ID
        after = parse_id(seq)
        if parse_id(info["last-generated-id"]) < after:
            return False  # the log is older than the snapshot: Redis was reset
        max_deleted = info.get("max-deleted-entry-id")  # Redis >= 7
        if max_deleted is not None:
            return parse_id(max_deleted) <= after
        if parse_id(info["last-generated-id"]) == after:
            return True
        # Redis 6: trimming removes the oldest entries, so the snapshot's own entry still
        # being there proves nothing after it was lost.
        return seq != ZERO_ID and bool(self.client.xrange(self.log_key, seq, seq, count=1))


@dataclass(frozen=True)
class Change:
    item: str
    op: str
    vector: npt.NDArray[np.float32] | None
    ms: int


def decode_change(fields: dict[bytes, bytes]) -> Change:
    obj = codecs.decode(fields.get(b"d"))
    if obj is None or obj.get("op") not in (OP_UPSERT, OP_DELETE):
        raise codecs.CodecError(f"not an embedding change: {obj!r}")
    vec = np.frombuffer(obj["v"], dtype=np.float32) if obj["op"] == OP_UPSERT else None
    return Change(str(obj["item"]), obj["op"], vec, int(obj.get("ms", 0)))
