"""Prometheus metrics of the scorer."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)

REQUESTS = Counter("recsys_serve_requests_total", "Recommend calls", ["arm", "outcome"])
LATENCY = Histogram("recsys_serve_latency_seconds", "Recommend latency", buckets=_LAT)
STAGE_LATENCY = Histogram("recsys_serve_stage_seconds", "per-stage latency", ["stage"], buckets=_LAT)
FALLBACKS = Counter("recsys_serve_fallbacks_total", "answers from the fallback list", ["reason"])
CACHE = Counter("recsys_serve_cache_total", "result cache lookups", ["result"])
CANDIDATES = Histogram("recsys_serve_candidates", "candidates per source", ["source"],
                       buckets=(0, 1, 5, 10, 25, 50, 100, 200, 500, 1000))
PREDICTED = Gauge("recsys_serve_mean_prediction", "mean predicted probability of served items",
                  ["head"])
ANN_QUERIES = Counter("recsys_serve_ann_queries_total",
                      "ANN source queries by query vector: the promoted two-tower's session tower "
                      "(tower) or the recent items' pooled item2vec vectors (item2vec)", ["space"])
SOURCE_ERRORS = Counter("recsys_serve_source_errors_total", "retrieval sources that failed", ["source"])
IMPRESSIONS_DROPPED = Counter("recsys_serve_impressions_dropped_total",
                              "impressions not logged (Kafka queue full or down)")
FALLBACK_SIZE = Gauge("recsys_serve_fallback_items", "items in the in-memory fallback list")
ITEM_ROWS = Gauge("recsys_serve_item_rows", "item rows held in scorer memory")
ITEM_READS = Counter("recsys_serve_item_reads_total",
                     "item row parts read from Redis: first use, announced change, or past the TTL",
                     ["part"])
ITEM_EVICTIONS = Counter("recsys_serve_item_evictions_total",
                         "item rows evicted from scorer memory (least recently used first)")
ITEM_PRELOAD = Gauge("recsys_serve_item_preload_done", "1 once the start-up item warm-up has finished")


@cache
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, resolved once (a request records ~20 samples)."""
    return metric.labels(*labels)
