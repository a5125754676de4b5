"""Prometheus counters the feature steps themselves keep (the dataflow's other metrics are in
``streams.flow_metrics``; the offline builder counts into the same ones)."""

from prometheus_client import Counter

DUPLICATES = Counter("recsys_stream_duplicates_total", "events ignored as duplicate event_id")
UNCATALOGUED = Counter("recsys_stream_uncatalogued_total",
                       "user events passed on without item category (catalog row never arrived)")
