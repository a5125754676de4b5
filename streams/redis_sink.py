"""A Bytewax sink that applies state writes to Redis, one pipelined round trip per batch.

Writes are absolute values (SET, ZADD of the full score, replace a ZSET), never increments,
so replaying events after a crash (Bytewax resumes from its last snapshot) converges to the
same Redis state: the sink is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgpack
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from core.redis_client import redis_client
from core.settings import Settings
from features.writes import Write, materialize
from proto.keys import CHANGELOG_MAXLEN
from streams import flow_metrics as metrics

MSET_CHUNK = 1000  # keys per MSET command


def apply_writes(client: redis.Redis, writes: list[Write], ttl_s: int | None = None) -> int:
    """Apply writes in one pipeline; later writes to the same key win within a batch.

    Few commands: the SETs go out as MSETs (when there is no TTL) and a key's ZADD or SADD
    writes in a row as one command each (``_merged``); the resulting state is that of applying
    every write in order. "notify" writes (ids of changed items) become one XADD per stream,
    after everything else in the batch."""
    last: dict[tuple[str, str], Write] = {}
    adds: list[Write] = []
    notify: dict[str, dict[str, None]] = {}
    for w in writes:
        if w.op in ("set", "zreplace"):
            last[(w.op, w.key)] = w
        elif w.op == "notify":
            notify.setdefault(w.key, {})[w.value] = None
        else:
            adds.append(w)
    pipe = client.pipeline(transaction=False)
    values = [(w.key, materialize(w.value)) for w in last.values() if w.op == "set"]
    if ttl_s is None:
        for i in range(0, len(values), MSET_CHUNK):
            pipe.mset(dict(values[i:i + MSET_CHUNK]))
    else:
        for key, value in values:
            pipe.set(key, value, ex=ttl_s)
    for w in last.values():
        if w.op == "zreplace":  # replace a ZSET
            mapping = materialize(w.value)
            pipe.delete(w.key)
            if mapping:
                pipe.zadd(w.key, mapping)
    for op, key, arg in _merged(adds):
        if op == "zadd":
            pipe.zadd(key, arg)
        elif op == "sadd":
            pipe.sadd(key, *arg)
        elif op == "zrem":
            pipe.zrem(key, arg)
        elif op == "ztrim":  # keep the top ``arg`` members by score
            pipe.zremrangebyrank(key, 0, -int(arg) - 1)
        else:
            raise ValueError(f"unknown state write op {op!r}")
    for key, ids in notify.items():  # after the writes it announces: readers then see them
        pipe.xadd(key, {"ids": msgpack.packb(list(ids))}, maxlen=CHANGELOG_MAXLEN, approximate=True)
    pipe.execute()
    return len(last) + len(adds) + len(notify)


def _merged(adds: list[Write]) -> list[tuple[str, str, Any]]:
    """Writes as commands, a ZADD (SADD) merged into its key's previous command when that is a
    ZADD (SADD) too: only commands on other keys lie between them, so applying the merged
    command earlier gives the same state (a later score for a member wins, as it would)."""
    cmds: list[tuple[str, str, Any]] = []
    latest: dict[str, int] = {}  # key -> index of the key's latest command
    for w in adds:
        i = latest.get(w.key)
        if i is not None and cmds[i][0] == w.op == "zadd":
            cmds[i][2].update(w.value)
        elif i is not None and cmds[i][0] == w.op == "sadd":
            cmds[i][2].append(w.value)
        else:
            latest[w.key] = len(cmds)
            arg = dict(w.value) if w.op == "zadd" else [w.value] if w.op == "sadd" else w.value
            cmds.append((w.op, w.key, arg))
    return cmds


FRESHNESS_SAMPLES = 64


class _RedisPartition(StatelessSinkPartition[Write | Sequence[Write]]):
    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self._client = redis_client(settings, url=url, timeout_s=10)

    def write_batch(self, batch: list[Write | Sequence[Write]]) -> None:
        items: list[Write] = []
        for x in batch:  # a step may pass a whole tuple of writes as one item
            if isinstance(x, Write):
                items.append(x)
            else:
                items.extend(x)
        if not items:
            return
        for attempt in range(5):
            try:
                apply_writes(self._client, items)
                break
            except redis.AuthenticationError:  # a wrong password does not heal
                raise
            except redis.ConnectionError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * 2**attempt)
        kinds: dict[str, int] = {}
        for w in items:
            kinds[w.kind or w.op] = kinds.get(w.kind or w.op, 0) + 1
        for kind, n in kinds.items():
            metrics.WRITES.labels(kind).inc(n)
        step = max(1, len(items) // FRESHNESS_SAMPLES)  # a systematic sample per batch
        metrics.observe_freshness_many([w.ingest_ms for w in items[::step]])

    def close(self) -> None:
        self._client.close()


class RedisSink(DynamicSink[Write | Sequence[Write]]):
    """``settings``: the credentials and TLS options for ``url`` (``core.redis_client``)."""

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self._url, self._settings = url, settings

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisPartition:
        return _RedisPartition(self._url, self._settings)
